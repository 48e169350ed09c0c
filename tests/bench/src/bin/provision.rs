//! Provisioning against EC2's rate limits: the time to get N ZfsPools of four gp3 volumes
//! each Ready when the EBS simulator throttles every EC2 action with EC2's documented
//! per-action token buckets, against the lower bound those buckets allow; and the EC2 calls
//! made per pool, by action.
//!
//! Everything real on the sandbox: the operator, one node agent per node (zpool create on
//! that node's zfs-fuse), moto behind the EBS simulator with its token buckets on
//! (CreateVolume/DeleteVolume/CreateSnapshot(s): bucket 100, refill 5/s; AttachVolume,
//! DetachVolume, ModifyVolume and other mutating actions: 50, 5/s; Describe*: 100, 20/s;
//! every refill multiplied by `PGML_BENCH_REFILL_SCALE` so that a run takes minutes).
//!
//! Per size N: the buckets are reset full and the statistics zeroed; N ZfsPools (RAID0 of
//! four 1 GiB gp3 volumes) are created at once, spread over the nodes; the clock runs from
//! the first create until every pool has `Ready=True`. Then the rate limits are lifted, the
//! pools deleted and awaited gone (their volumes with them) before the next run.
//!
//! The lower bound: each pool needs its four volumes created and attached; attaches take
//! the AttachVolume bucket's tokens (size 50, refill r = 5/s × scale) and none may precede
//! its volume's create (CreateVolume bucket: 100, r). For V = 4N volumes the V-th attach
//! can be no earlier than max(0, (V − 50)/r) (creates never hold it back: the V-th create
//! is possible at (V − 100)/r); after its last attach a pool still needs the agent to see
//! the devices and create the zpool, measured first with one pool and no limits (the time
//! from `VolumesAttached=True` to `Ready=True`). Bound = max(0, (4N − 50)/r) + that tail.
//!
//! Environment: `PGML_BENCH_POOLS` (default `50,100,200`), `PGML_BENCH_RUNS` (default 3;
//! a list gives the runs per size, the last repeated),
//! `PGML_BENCH_REFILL_SCALE` (default 2), `PGML_BENCH_SHRINK` (default 1; k > 1 divides
//! every bucket's size and refill by k, so that N pools meet the buckets as k × N pools do
//! EC2's: a small-scale check written as `provision_shrunk`), `PGML_BENCH_POOLS_PER_NODE` (default 7: m7i.xlarge attaches 32 EBS volumes, the root one included; the
//! sandbox needs ceil(max N / that) nodes: `python -m sandbox nodes-add`, as
//! scripts/bench.sh does), `PGML_BENCH_OUT`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use pgml_api::ZfsPool;
use pgml_bench::{Figure, Report, Series, results_dir};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::SimAdmin;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::manifests::raid0_pool;
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::wait::has_condition;
use serde_json::{Value, json};

const VOLUMES: u32 = 4;
/// EC2's defaults (ec2-api-throttling): resource-intensive actions (CreateVolume, …) and the
/// other mutating ones (AttachVolume, …), per second, before the scale.
const ATTACH_BUCKET: f64 = 50.0;
const CREATE_BUCKET: f64 = 100.0;
const REFILL: f64 = 5.0;
const POLL: Duration = Duration::from_millis(250);

fn env_list(name: &str, default: &str) -> Vec<u32> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// The earliest the last of `pools` pools can have its last volume attached: the V-th
/// AttachVolume token, V = 4 × pools, never before its volume's create.
///
/// With every bucket's size and refill divided by `shrink`, N pools meet the buckets as
/// `shrink` × N pools meet EC2's (a quick small-scale check).
fn attach_bound_shrunk(pools: u32, scale: f64, shrink: u32) -> f64 {
    let v = f64::from(pools * VOLUMES * shrink);
    let r = REFILL * scale;
    let attach = ((v - ATTACH_BUCKET) / r).max(0.0);
    let create = ((v - CREATE_BUCKET) / r).max(0.0);
    attach.max(create)
}

/// The bound's curve: pools that can be Ready by time t (the k-th pool's last attach token,
/// plus the tail).
fn bound_curve(pools: u32, scale: f64, shrink: u32, tail: f64) -> Vec<(f64, f64)> {
    (1..=pools)
        .map(|k| (attach_bound_shrunk(k, scale, shrink) + tail, f64::from(k)))
        .collect()
}

fn is_mutating(action: &str) -> bool {
    !action.starts_with("Describe") && !action.starts_with("Get") && !action.starts_with("List")
}

struct Bench {
    sb: &'static Sandbox,
    ns: TestNamespace,
    admin: SimAdmin,
    operator: Proc,
    agents: Vec<Proc>,
    nodes: usize,
}

/// One run: seconds to all Ready, the Ready count over time, the proxy's statistics.
struct Run {
    seconds: f64,
    ready: Vec<(f64, f64)>,
    stats: Value,
}

impl Bench {
    fn pools(&self) -> Api<ZfsPool> {
        self.ns.api()
    }

    fn context(&self) -> String {
        let mut s = format!("--- operator log: {}\n", self.operator.log_path().display());
        for a in &self.agents {
            s += &format!("--- agent log: {}\n", a.log_path().display());
        }
        s
    }

    /// Creates pools `names`, round-robin over the nodes, all at once.
    async fn create(&self, names: &[String]) -> anyhow::Result<()> {
        let mut set = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let node = &self.sb.nodes[i % self.nodes];
            let pool: ZfsPool = raid0_pool(name, self.ns.name(), &node.name, (VOLUMES, 1), None);
            let api = self.pools();
            set.spawn(async move { api.create(&PostParams::default(), &pool).await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok(())
    }

    /// Polls until `want` pools are Ready=True; the Ready count over time from `t0`.
    async fn wait_ready(
        &self,
        t0: Instant,
        want: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<(f64, f64)>> {
        let mut curve = vec![(0.0, 0.0)];
        let mut last = 0;
        loop {
            let list = self.pools().list(&ListParams::default()).await?;
            let ready = list
                .items
                .iter()
                .filter(|p| has_condition(*p, "Ready", "True"))
                .count();
            let t = t0.elapsed().as_secs_f64();
            if ready != last {
                curve.push((t, ready as f64));
                last = ready;
            }
            if ready >= want {
                return Ok(curve);
            }
            if t0.elapsed() > limit {
                bail!(
                    "{ready} of {want} pools Ready after {limit:?}\n{}",
                    self.context()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes every pool of the namespace and waits until they, and so their volumes, are
    /// gone; then checks that the simulator holds no volume but the nodes' root volumes.
    async fn delete_all(&self, baseline: Option<usize>) -> anyhow::Result<()> {
        let api = self.pools();
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let left = api.list(&ListParams::default()).await?.items.len();
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{left} pools not gone within 900s\n{}", self.context());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let vols = self.volumes()?;
        if let Some(baseline) = baseline
            && vols != baseline
        {
            bail!("{vols} volumes in the simulator after deleting every pool, {baseline} before");
        }
        Ok(())
    }

    fn volumes(&self) -> anyhow::Result<usize> {
        Ok(self.admin.state()?["volumes"]
            .as_object()
            .map_or(0, |v| v.len()))
    }

    /// One pool, no rate limits, polled closely: seconds from creation to
    /// `VolumesAttached=True` and to `Ready=True`.
    async fn single(&self, name: &str) -> anyhow::Result<(f64, f64)> {
        let t0 = Instant::now();
        self.create(&[name.to_string()]).await?;
        let mut attached = None;
        loop {
            let p = self.pools().get(name).await?;
            let t = t0.elapsed().as_secs_f64();
            if attached.is_none() && has_condition(&p, "VolumesAttached", "True") {
                attached = Some(t);
            }
            if has_condition(&p, "Ready", "True") {
                return Ok((attached.unwrap_or(t), t));
            }
            if t > 120.0 {
                bail!("pool {name} not Ready in 120s\n{}", self.context());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run(
        &self,
        n: u32,
        label: &str,
        (scale, shrink): (f64, u32),
        limit: Duration,
    ) -> anyhow::Result<Run> {
        // The simulator's buckets start full; the operator's own refill while it is idle
        // (the previous run's deletions drew on them): as long as the fullest takes.
        tokio::time::sleep(Duration::from_secs_f64(100.0 / (5.0 * scale)) + Duration::from_secs(1))
            .await;
        let mut cfg = json!({"enabled": true, "scale": scale});
        if shrink > 1 {
            let k = f64::from(shrink);
            cfg["buckets"] = json!({
                "resource": {"size": 100.0 / k, "refill": 5.0 / k},
                "mutating": {"size": 50.0 / k, "refill": 5.0 / k},
                "describe": {"size": 100.0 / k, "refill": 20.0 / k},
                "describe_unfiltered": {"size": 50.0 / k, "refill": 10.0 / k},
            });
        }
        self.admin.set_ratelimits(cfg)?;
        self.admin.reset_stats()?;
        let names: Vec<String> = (0..n).map(|i| format!("{label}-{i:03}")).collect();
        let t0 = Instant::now();
        self.create(&names).await?;
        let ready = self.wait_ready(t0, n as usize, limit).await?;
        let seconds = t0.elapsed().as_secs_f64();
        let stats = self.admin.stats()?;
        self.admin.clear_ratelimits()?;
        Ok(Run {
            seconds,
            ready,
            stats,
        })
    }
}

/// Calls per pool by action and outcome, from the proxy's statistics.
fn per_pool(stats: &Value, n: u32) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    if let Some(actions) = stats["actions"].as_object() {
        for (action, v) in actions {
            for outcome in ["ok", "throttled", "error"] {
                let c = v[outcome].as_u64().unwrap_or(0);
                if c > 0 {
                    out.insert(
                        (action.clone(), outcome.to_string()),
                        c as f64 / f64::from(n),
                    );
                }
            }
        }
    }
    out
}

/// From the operator's log: seconds from the first "created volume" to the last "attach
/// requested" of the pools named `<label>-*`, the part of a run EC2's buckets bound (the
/// rest is the operator seeing the pools and the agents building them).
fn ec2_phase(log: &str, label: &str) -> Option<f64> {
    use k8s_openapi::jiff::Timestamp;
    let needle = format!("/{label}-");
    let (mut first, mut last): (Option<Timestamp>, Option<Timestamp>) = (None, None);
    for line in log.lines().filter(|l| l.contains(&needle)) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(t) = v["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
        else {
            continue;
        };
        match v["message"].as_str() {
            Some("created volume") => first = Some(first.map_or(t, |f| f.min(t))),
            Some("attach requested") => last = Some(last.map_or(t, |l| l.max(t))),
            _ => {}
        }
    }
    Some(last?.duration_since(first?).as_secs_f64())
}

/// `PGML_EC2_RATE_LIMITS` for the operator: the buckets of [`Bench::run`]'s simulator.
fn operator_limits(scale: f64, shrink: u32) -> String {
    if shrink <= 1 {
        return format!("scale={scale}");
    }
    let k = f64::from(shrink);
    format!(
        "resource={}/{},mutating={}/{},describe={}/{},scale={scale}",
        100.0 / k,
        5.0 / k,
        50.0 / k,
        5.0 / k,
        100.0 / k,
        20.0 / k
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let sizes = env_list("PGML_BENCH_POOLS", "50,100,200");
    // One count, or one per size (the last repeated).
    let runs = env_list("PGML_BENCH_RUNS", "3");
    let scale = env_f64("PGML_BENCH_REFILL_SCALE", 2.0);
    let shrink = env_list("PGML_BENCH_SHRINK", "1")
        .first()
        .copied()
        .unwrap_or(1)
        .max(1);
    let per_node = env_list("PGML_BENCH_POOLS_PER_NODE", "7")
        .first()
        .copied()
        .unwrap_or(7)
        .max(1);
    let sb = Sandbox::get();
    let largest = sizes.iter().copied().max().unwrap_or(1);
    let nodes = (largest.div_ceil(per_node) as usize).max(1);
    if sb.nodes.len() < nodes {
        bail!(
            "{largest} pools at {per_node} per node need {nodes} nodes; the sandbox has {}: \
             `PYTHONPATH=tests/testbed .venv/bin/python -m sandbox nodes-add {}` first",
            sb.nodes.len(),
            nodes.saturating_sub(4)
        );
    }
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "bench-prov").await;
    // The operator is told the buckets it meets (as an account whose limits AWS raised
    // would configure it): the same scale, and under PGML_BENCH_SHRINK the same sizes.
    let limits = operator_limits(scale, shrink);
    let operator = procs::operator_with_env(
        sb,
        ns.name(),
        &[
            ("PGML_EC2_RATE_LIMITS", &limits),
            (
                "PGML_LOG_LEVEL",
                "debug,hyper=info,h2=info,tower=info,rustls=info,aws_smithy_runtime=info,aws_smithy_http_client=info,aws_sdk_ec2=info,aws_config=info",
            ),
        ],
    );
    let idx: Vec<usize> = (0..nodes).collect();
    let agents = procs::agents(sb, &idx, ns.name());
    let admin = SimAdmin::from_sandbox(sb);
    admin.clear_ratelimits()?;
    let bench = Bench {
        sb,
        ns,
        admin,
        operator,
        agents,
        nodes,
    };
    let mut report = Report::new(
        "provision",
        "make bench PGML_BENCH=provision (PGML_BENCH_POOLS, PGML_BENCH_RUNS, PGML_BENCH_REFILL_SCALE)",
    );
    if shrink > 1 {
        report.bench = "provision_shrunk".into();
    }
    let result = measure(&bench, &sizes, &runs, (scale, shrink), &mut report).await;
    let _ = bench.admin.clear_ratelimits();
    let _ = bench
        .pools()
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    // Also after a failure: the operator must stay until the pools' finalizers are done, or
    // the namespace could not go.
    if let Err(e) = bench.delete_all(None).await {
        eprintln!("cleanup: {e}");
    }
    let Bench {
        ns,
        mut operator,
        mut agents,
        ..
    } = bench;
    operator.stop(Duration::from_secs(10));
    for a in &mut agents {
        a.stop(Duration::from_secs(10));
    }
    ns.cleanup().await;
    result?;
    let (json, md) = report.write(&results_dir())?;
    println!("{}", report.markdown());
    println!("written: {} {}", json.display(), md.display());
    Ok(())
}

async fn measure(
    b: &Bench,
    sizes: &[u32],
    runs: &[u32],
    (scale, shrink): (f64, u32),
    report: &mut Report,
) -> anyhow::Result<()> {
    // moto's RunInstances root volumes: what stays after every pool is gone.
    let baseline = b.volumes()?;
    // The tail: from the last attach to Ready, one pool at a time, no limits.
    let (mut to_attached, mut to_ready, mut tail) = (vec![], vec![], vec![]);
    for i in 0..3 {
        let name = format!("single-{i}");
        let (a, r) = b.single(&name).await?;
        eprintln!("one pool, no limits: attached at {a:.2}s, Ready at {r:.2}s");
        to_attached.push(a);
        to_ready.push(r);
        tail.push(r - a);
        b.delete_all(Some(baseline)).await?;
    }
    let tail_fig = Figure::new("one pool, no limits: VolumesAttached to Ready", "s", tail);
    let tail_s = tail_fig.median;
    report.figures.push(Figure::new(
        "one pool, no limits: to VolumesAttached",
        "s",
        to_attached,
    ));
    report
        .figures
        .push(Figure::new("one pool, no limits: to Ready", "s", to_ready));
    report.figures.push(tail_fig);

    let mut runs_note = vec![];
    for (i, &n) in sizes.iter().enumerate() {
        let runs = runs.get(i).or(runs.last()).copied().unwrap_or(3).max(1);
        runs_note.push(format!("{runs} for {n}"));
        let bound = attach_bound_shrunk(n, scale, shrink) + tail_s;
        let limit = Duration::from_secs_f64(bound * 10.0 + 300.0);
        let mut secs = vec![];
        let mut calls: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        let (mut mutating, mut describes, mut throttled) = (vec![], vec![], vec![]);
        let mut curves = vec![];
        let mut phases = vec![];
        for run in 1..=runs {
            let r = b
                .run(n, &format!("r{run}-n{n}"), (scale, shrink), limit)
                .await?;
            let pp = per_pool(&r.stats, n);
            if let Some(p) = ec2_phase(&b.operator.log(), &format!("r{run}-n{n}")) {
                eprintln!("{n} pools, run {run}: first create to last attach {p:.1}s");
                phases.push(p);
            }
            let sum = |f: &dyn Fn(&str, &str) -> bool| -> f64 {
                pp.iter()
                    .filter(|((a, o), _)| f(a, o))
                    .map(|(_, v)| v)
                    .fold(0.0, |a, b| a + b)
            };
            let m = sum(&|a, o| o == "ok" && is_mutating(a));
            let d = sum(&|a, o| o == "ok" && !is_mutating(a));
            let t = sum(&|_, o| o == "throttled");
            eprintln!(
                "{n} pools, run {run}: all Ready in {:.1}s (bound {bound:.1}s, ratio {:.2}); per pool: {m:.2} mutating, {d:.2} describes, {t:.2} throttled; {pp:?}",
                r.seconds,
                r.seconds / bound
            );
            for (k, v) in pp {
                calls.entry(k).or_default().push(v);
            }
            secs.push(r.seconds);
            mutating.push(m);
            describes.push(d);
            throttled.push(t);
            curves.push((r.seconds, r.ready));
            b.delete_all(Some(baseline)).await?;
        }
        let time = format!("{n} pools: time to all Ready");
        let lb = format!("{n} pools: lower bound");
        report.figures.push(Figure::new(&time, "s", secs));
        report.figures.push(Figure::new(&lb, "s", vec![bound]));
        report.figures.push(Figure::new(
            format!("{n} pools: mutating calls per pool (ok)"),
            "calls",
            mutating,
        ));
        report.figures.push(Figure::new(
            format!("{n} pools: describe calls per pool (ok)"),
            "calls",
            describes,
        ));
        report.figures.push(Figure::new(
            format!("{n} pools: throttled responses per pool"),
            "calls",
            throttled,
        ));
        for ((action, outcome), v) in calls {
            // An action missing from a run counted 0 there.
            let mut v = v;
            v.resize(runs as usize, 0.0);
            report.figures.push(Figure::new(
                format!("{n} pools: {action} {outcome} per pool"),
                "calls",
                v,
            ));
        }
        report.ratio(&format!("{n} pools: measured / lower bound"), &time, &lb);
        if !phases.is_empty() {
            let phase = format!("{n} pools: first CreateVolume to last AttachVolume");
            let buckets = format!("{n} pools: bucket bound (no tail)");
            report.figures.push(Figure::new(&phase, "s", phases));
            report.figures.push(Figure::new(
                &buckets,
                "s",
                vec![attach_bound_shrunk(n, scale, shrink)],
            ));
            report.ratio(
                &format!("{n} pools: EC2 phase / bucket bound"),
                &phase,
                &buckets,
            );
        }
        // The median run's curve, and the bound's.
        curves.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, median_curve) = curves.swap_remove(curves.len() / 2);
        report.series.push(Series {
            name: format!("{n} pools (median run)"),
            x_label: "seconds since the first create".into(),
            y_label: "pools Ready".into(),
            points: median_curve,
            dashed: false,
        });
        report.series.push(Series {
            name: format!("{n} pools: lower bound"),
            x_label: "seconds since the first create".into(),
            y_label: "pools Ready".into(),
            points: bound_curve(n, scale, shrink, tail_s),
            dashed: true,
        });
        // What is measured so far, in case a later size fails or is stopped.
        let mut partial = report.clone();
        partial.notes.push(format!(
            "partial: sizes up to {n} pools of {sizes:?} (written after each size)"
        ));
        partial.write(&results_dir())?;
    }
    report.notes.push(format!(
        "runs per size: {}; refill scale {scale} (every bucket's refill x{scale}: CreateVolume 100 + {}/s, AttachVolume 50 + {}/s, Describe* 100 + {}/s); pools of {VOLUMES} x 1 GiB gp3, RAID0, spread round-robin over {} nodes (one agent each); the clock runs from the first create until every pool has Ready=True",
        runs_note.join(", "),
        REFILL * scale,
        REFILL * scale,
        20.0 * scale,
        b.nodes
    ));
    if shrink > 1 {
        report.notes.push(format!(
            "PGML_BENCH_SHRINK={shrink}: every bucket's size and refill divided by {shrink}, so N pools meet the buckets as {shrink} x N pools meet EC2's defaults (a small-scale check, not the benchmark); the bound is computed for that"
        ));
    }
    report.notes.push(format!(
        "lower bound = max(0, (4N - {ATTACH_BUCKET})/r, (4N - {CREATE_BUCKET})/r) + tail, r = {REFILL}/s x scale: the 4N-th AttachVolume token (no attach precedes its volume's create), plus the median time from VolumesAttached=True to Ready=True of one pool without limits ({tail_s:.2}s); see docs/design/bench.md"
    ));
    report.notes.push(
        "calls per pool count the proxy's responses during the run (creates to all Ready), by action and outcome; mutating = every action not Describe/Get/List, the goal being volumes x (CreateVolume + AttachVolume) = 8; throttled responses (503 RequestLimitExceeded, retried by the SDK or requeued) are counted apart".into(),
    );
    report.notes.push(
        "the simulator answers at once (moto makes volumes available and attachments attached instantly) and does not enforce EC2's per-instance attachment limit, the operator does (DescribeInstanceTypes: m7i.xlarge 32, root volume included, hence 7 pools per node); real EC2 adds the volume creation (seconds) and attachment (seconds) latencies, which overlap across pools and add to the tail only".into(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ec2_phase;
    use super::*;

    #[test]
    fn bound_is_the_last_attach_token() {
        // 50 pools, 200 volumes, r = 15/s: (200 - 50) / 15 = 10 s.
        assert_eq!(attach_bound_shrunk(50, 3.0, 1), 10.0);
        // Shrunk by 5: 10 pools are 50.
        assert_eq!(attach_bound_shrunk(10, 3.0, 5), 10.0);
        // Within the attach bucket: no wait.
        assert_eq!(attach_bound_shrunk(10, 1.0, 1), 0.0);
        assert_eq!(attach_bound_shrunk(200, 1.0, 1), 150.0);
    }

    #[test]
    fn the_ec2_phase_spans_the_run_s_first_create_and_last_attach() {
        let line = |ts: &str, msg: &str, pool: &str| {
            format!(
                r#"{{"timestamp":"{ts}","level":"INFO","message":"{msg}","spans":[{{"object.ref":"ZfsPool.v1alpha1.pgml.io/{pool}.ns"}}]}}"#
            )
        };
        let log = [
            line("2026-11-27T15:00:01.5Z", "created volume", "r1-n50-001"),
            line("2026-11-27T15:00:01.0Z", "created volume", "r1-n50-000"),
            line("2026-11-27T15:00:09.0Z", "attach requested", "r1-n50-001"),
            line("2026-11-27T15:00:17.25Z", "attach requested", "r1-n50-000"),
            // Another run's pools and other messages do not count.
            line("2026-11-27T15:01:00Z", "attach requested", "r2-n50-000"),
            line("2026-11-27T15:00:30Z", "detach requested", "r1-n50-000"),
            "not json /r1-n50-000".to_string(),
        ]
        .join("\n");
        assert_eq!(ec2_phase(&log, "r1-n50"), Some(16.25));
        assert_eq!(ec2_phase(&log, "r3-n50"), None);
    }
}
