//! Steady state: with N PgmlClusters Ready on the object-level test bed, what the operator
//! writes to the apiserver over a quiet window (goal: 0), its CPU and peak memory, and how
//! fast a spec change reaches the status (spec change → `status.observedGeneration`).
//!
//! Per scale (default: 100 clusters reporting every 10 s, 100 and 1000 reported once), in a
//! namespace of its own:
//! - the chart's RBAC and a TokenRequest kubeconfig of the operator's ServiceAccount, so the
//!   apiserver's audit log names the operator (`system:serviceaccount:<ns>:<release>`);
//! - the real operator watching the namespace; no node agent (no ZfsPool);
//! - N clusters of one instance on `storage.persistentVolumeClaim` (no EC2 call, no pool),
//!   each with a PersistentVolume made beforehand and pre-bound to its claim (the part a
//!   CSI provisioner plays in a real cluster; kube-controller-manager's binder binds them);
//!   kwok runs the Pods; the bench writes each Pod's `pgml.io/instance-status` as its
//!   instance manager would: once as soon as the Pod exists, then every
//!   `PGML_BENCH_REPORT_EVERY` seconds (default 10, pgml-instance's REPORT_EVERY: an
//!   unchanged report is rewritten that often with a new `updated` time) — 0 writes it once;
//! - once every cluster is Ready and the operator has not written for 20 s, the quiet
//!   window (`PGML_BENCH_WINDOW_SECONDS`, default 300): the audit log's writes by the
//!   operator (its leader-election Lease apart), by everyone, the operator's reads, its CPU
//!   seconds per minute (from /proc utime+stime) and its peak RSS (VmHWM);
//! - then `PGML_BENCH_CHANGES` (default 100) spec changes, one at a time, to clusters taken
//!   at random (`spec.postgresql.parameters.work_mem`: a new ConfigMap and status, no Pod
//!   change), each timed from the patch until a watch sees the new observedGeneration.
//!
//! Environment: `PGML_BENCH_SCALES` (default `100:10,100:0,1000:0`: N clusters, `:S` their
//! reports rewritten every S s, 0 = once; no `:S`: `PGML_BENCH_REPORT_EVERY`),
//! `PGML_BENCH_WINDOW_SECONDS`, `PGML_BENCH_CHANGES`, `PGML_BENCH_OUT`. Heavy: run under
//! `flock /tmp/pgml-heavy.lock` on a shared machine. Details and findings:
//! docs/design/bench.md, "steady_state".

#[path = "../steady.rs"]
mod steady;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use pgml_api::PgmlCluster;
use pgml_bench::{Figure, Report, results_dir};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::rbac::{ChartRbac, Watch};
use serde_json::{Value, json};
use steady::{AuditEntry, ProcSample, percentile, proc_sample, read_audit, tally, unix_now};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How many API calls the bench has in flight when it creates or annotates.
const PARALLEL: usize = 24;
const BENCH_LABEL: &str = "pgml.io/bench-steady";
/// The sandbox's Service range is a /24 (254 addresses) and each cluster has 3 Services:
/// a second range for the bench's clusters (a ServiceCIDR object, removed at the end).
const SERVICE_CIDR: (&str, &str) = ("pgml-bench-steady", "10.96.0.0/16");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `N[:S]` each: N clusters, their instances' reports rewritten every S seconds (0: written
/// once; no `:S`: `default_every`).
fn env_scales(name: &str, default: &str, default_every: u64) -> Vec<(usize, u64)> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| {
            let (n, every) = s.trim().split_once(':').unwrap_or((s.trim(), ""));
            let every = if every.is_empty() {
                default_every
            } else {
                every.parse().ok()?
            };
            Some((n.parse().ok()?, every))
        })
        .collect()
}

fn cluster_name(i: usize) -> String {
    format!("c{i:04}")
}

fn manifest(name: &str) -> Value {
    json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
        "metadata": {"name": name},
        "spec": {
            "instances": 1,
            "storage": {"persistentVolumeClaim": {"size": "1Gi"}},
            "postgresql": {"parameters": {"work_mem": "4MB"}},
        },
    })
}

/// The volume a provisioner would have made for the instance's claim `<cluster>-1`.
fn volume(ns: &str, cluster: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("{ns}-{cluster}-1"), "labels": {BENCH_LABEL: ns}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": format!("/tmp/pgml-bench-steady/{ns}/{cluster}")},
            "claimRef": {"namespace": ns, "name": format!("{cluster}-1")},
        },
    })
}

/// An idle primary's report, as pgml-instance writes it.
fn report(pod: &str) -> Value {
    json!({"role": "primary", "running": true, "ready": true, "lsn": "0/3000148",
           "timeline": 1, "address": format!("{pod}.bench"), "updated": rfc3339_now()})
}

fn rfc3339_now() -> String {
    let t = unix_now();
    let secs = t as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil_from_days (H. Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn annotate(pods: &Api<Pod>, pod: &str) -> anyhow::Result<()> {
    let body =
        json!({"metadata": {"annotations": {"pgml.io/instance-status": report(pod).to_string()}}});
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .with_context(|| format!("annotating {pod}"))?;
    Ok(())
}

fn ready(c: &PgmlCluster) -> bool {
    c.status.as_ref().is_some_and(|s| {
        s.observed_generation == c.metadata.generation
            && s.conditions
                .iter()
                .any(|k| k.type_ == "Ready" && k.status == "True")
    })
}

/// The operator's /proc, sampled every second while the scale runs.
#[derive(Default)]
struct Samples(Vec<(Instant, ProcSample)>);

impl Samples {
    fn at(&self, t: Instant) -> Option<ProcSample> {
        self.0
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .or(self.0.first())
            .map(|(_, s)| *s)
    }

    fn peak_kib(&self) -> u64 {
        self.0.iter().map(|(_, s)| s.hwm_kib).max().unwrap_or(0)
    }
}

/// What one scale measured.
struct Scale {
    n: usize,
    report_every: u64,
    restarts: usize,
    ramp_seconds: f64,
    ramp_cpu_per_min: f64,
    steady_cpu_per_min: f64,
    peak_rss_mib: f64,
    rss_end_mib: f64,
    op_writes: usize,
    op_lease_writes: usize,
    all_writes: usize,
    op_reads: usize,
    op_writes_by_ua: usize,
    window: f64,
    latencies_ms: Vec<f64>,
    notes: Vec<String>,
}

struct Bench {
    sb: &'static Sandbox,
    client: Client,
    audit_log: std::path::PathBuf,
    window: Duration,
    changes: usize,
}

impl Bench {
    async fn run_scale(&self, n: usize, every: u64) -> anyhow::Result<Scale> {
        let ns = TestNamespace::new(&self.client, "steady").await;
        let name = ns.name().to_string();
        let result = self.scale_in(&ns, n, Duration::from_secs(every)).await;
        // Cleanup, whatever happened.
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        ns.cleanup().await;
        // Gone before the next scale starts: its deletion (kube-controller-manager's
        // garbage collector and namespace controller write thousands of times) would land
        // in the next window.
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(900);
        while namespaces.get_opt(&name).await.ok().flatten().is_some() && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let _ = pvs
            .delete_collection(
                &DeleteParams::background(),
                &ListParams::default().labels(&format!("{BENCH_LABEL}={name}")),
            )
            .await;
        result
    }

    async fn scale_in(
        &self,
        ns: &TestNamespace,
        n: usize,
        every: Duration,
    ) -> anyhow::Result<Scale> {
        let nsn = ns.name().to_string();
        let rbac = ChartRbac::install(self.sb, &self.client, &nsn, Watch::All, |_| {}).await?;
        let op_user = format!("system:serviceaccount:{nsn}:{}", rbac.fullname);
        let mut operator = procs::operator_with_env(self.sb, &nsn, &rbac.operator_env());
        let out = self.measure(ns, n, every, &mut operator, &op_user).await;
        operator.stop(Duration::from_secs(20));
        rbac.cleanup().await;
        out.map_err(|e| e.context(format!("operator log: {}", operator.log_path().display())))
    }

    async fn measure(
        &self,
        ns: &TestNamespace,
        n: usize,
        every: Duration,
        operator: &mut Proc,
        op_user: &str,
    ) -> anyhow::Result<Scale> {
        let nsn = ns.name().to_string();
        let pid = Arc::new(AtomicU32::new(
            operator.pid().context("operator not running")?,
        ));
        let samples = Arc::new(Mutex::new(Samples::default()));
        // CPU seconds add up across restarts (a new process starts from 0); the peak is the
        // highest of them.
        let sampler = {
            let (samples, pid) = (samples.clone(), pid.clone());
            tokio::spawn(async move {
                let (mut seen, mut base, mut last) = (0u32, 0.0f64, 0.0f64);
                loop {
                    let p = pid.load(Ordering::Relaxed);
                    if p != seen {
                        base += last;
                        last = 0.0;
                        seen = p;
                    }
                    if let Some(mut s) = proc_sample(p) {
                        last = s.cpu_seconds;
                        s.cpu_seconds += base;
                        samples.lock().unwrap().0.push((Instant::now(), s));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        // The operator exits when it loses its Lease (a Deployment's kubelet starts it
        // again): so does the bench, and says so.
        let mut restarts: Vec<String> = vec![];
        let keep_up = |operator: &mut Proc, restarts: &mut Vec<String>, when: &str| {
            if operator.running() {
                return;
            }
            let last = operator
                .log()
                .lines()
                .rev()
                .find(|l| l.contains("\"level\":\"ERROR\""))
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect::<String>();
            restarts.push(format!(
                "{when}: exited ({:?}), last error: {last}",
                operator.exit_status()
            ));
            operator.start();
            pid.store(operator.pid().unwrap_or(0), Ordering::Relaxed);
        };
        let mut notes = vec![];
        let clusters: Api<PgmlCluster> = ns.api();
        let pods: Api<Pod> = ns.api();
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let names: Vec<String> = (1..=n).map(cluster_name).collect();

        // Ramp-up: volumes and clusters in parallel batches; each Pod reported once it
        // exists; until every cluster is Ready.
        let started = Instant::now();
        let sem = Arc::new(Semaphore::new(PARALLEL));
        let mut set = JoinSet::new();
        for c in &names {
            let (pvs, clusters, sem) = (pvs.clone(), clusters.clone(), sem.clone());
            let (pv, m) = (volume(&nsn, c), manifest(c));
            set.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let pv: PersistentVolume = serde_json::from_value(pv)?;
                pvs.create(&PostParams::default(), &pv).await?;
                let m: PgmlCluster = serde_json::from_value(m)?;
                clusters.create(&PostParams::default(), &m).await?;
                anyhow::Ok(())
            });
        }
        let mut reported: std::collections::BTreeSet<String> = Default::default();
        let deadline = started + Duration::from_secs(1200);
        let ready_at = loop {
            keep_up(operator, &mut restarts, "ramp-up");
            while let Some(r) = set.try_join_next() {
                r??;
            }
            // Report each new Pod once.
            let list = pods.list(&ListParams::default()).await?.items;
            let mut batch = JoinSet::new();
            for p in list {
                let pn = p.name_any();
                if reported.contains(&pn) {
                    continue;
                }
                let (pods, sem) = (pods.clone(), sem.clone());
                reported.insert(pn.clone());
                batch.spawn(async move {
                    let _permit = sem.acquire_owned().await?;
                    annotate(&pods, &pn).await
                });
            }
            while let Some(r) = batch.join_next().await {
                r??;
            }
            let cs = clusters.list(&ListParams::default()).await?.items;
            let n_ready = cs.iter().filter(|c| ready(c)).count();
            if n_ready == n && set.is_empty() {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!(
                    "{n_ready} of {n} clusters Ready after {:?}",
                    started.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let ramp_seconds = ready_at.duration_since(started).as_secs_f64();
        eprintln!("steady: {n} clusters Ready in {ramp_seconds:.1} s");

        // The instance managers' periodic rewrite, from now on.
        let reporter = (!every.is_zero()).then(|| {
            let names = names.clone();
            let pods = pods.clone();
            tokio::spawn(async move {
                let gap = every / names.len().max(1) as u32;
                let mut next = Instant::now();
                let sem = Arc::new(Semaphore::new(PARALLEL));
                loop {
                    for c in &names {
                        next += gap;
                        tokio::time::sleep_until(next.into()).await;
                        let (pods, pod, sem) = (pods.clone(), format!("{c}-1"), sem.clone());
                        tokio::spawn(async move {
                            let _permit = sem.acquire_owned().await;
                            let _ = annotate(&pods, &pod).await;
                        });
                    }
                }
            })
        });

        // Settle: claims Bound (kube-controller-manager's binder), then no write by the
        // operator for 20 s (at most 5 minutes).
        let claims: Api<PersistentVolumeClaim> = ns.api();
        loop {
            let bound = claims
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .count();
            if bound >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("{bound} of {n} claims Bound");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let settle_from = Instant::now();
        let offset = steady::audit_len(&self.audit_log);
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = unix_now();
            let recent = read_audit(&self.audit_log, offset, now - 20.0, now)?;
            let ours = recent
                .iter()
                .filter(|e| e.user == op_user && e.is_write() && e.resource != "leases")
                .count();
            if ours == 0 && settle_from.elapsed() >= Duration::from_secs(20) {
                break;
            }
            if settle_from.elapsed() > Duration::from_secs(300) {
                notes.push(format!(
                    "the operator still wrote {ours} times in the last 20 s after 5 minutes of settling"
                ));
                break;
            }
        }

        // The quiet window.
        let (t0, i0) = (unix_now(), Instant::now());
        tokio::time::sleep(self.window).await;
        let (t1, i1) = (unix_now(), Instant::now());
        let restarts_before_window = restarts.len();
        keep_up(operator, &mut restarts, "steady window");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let entries = read_audit(&self.audit_log, offset, t0, t1)?;
        let window = t1 - t0;
        let all_writes: Vec<&AuditEntry> = entries.iter().filter(|e| e.is_write()).collect();
        let op: Vec<&AuditEntry> = entries.iter().filter(|e| e.user == op_user).collect();
        let op_writes: Vec<&AuditEntry> = op
            .iter()
            .copied()
            .filter(|e| e.is_write() && e.resource != "leases")
            .collect();
        let op_lease = op
            .iter()
            .filter(|e| e.is_write() && e.resource == "leases")
            .count();
        let op_reads = op.iter().filter(|e| !e.is_write()).count();
        let by_ua = all_writes
            .iter()
            .filter(|e| e.user_agent.contains("pgml-operator") && e.resource != "leases")
            .count();
        let top = |v: &[&AuditEntry], key: fn(&AuditEntry) -> String| {
            tally(v, key)
                .into_iter()
                .take(8)
                .map(|(k, c)| format!("{k}: {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !op_writes.is_empty() {
            notes.push(format!(
                "the operator's writes in the window by verb and resource: {}; by object: {}",
                top(&op_writes, |e| e.what()),
                top(&op_writes, |e| format!(
                    "{} {}/{}",
                    e.what(),
                    e.namespace,
                    e.name
                ))
            ));
        }
        notes.push(format!(
            "all writes in the {window:.0} s window by client: {}",
            top(&all_writes, |e| format!(
                "{} ({})",
                e.user,
                e.user_agent.split(' ').next().unwrap_or_default()
            ))
        ));
        notes.push(format!(
            "all writes by verb and resource: {}",
            top(&all_writes, |e| e.what())
        ));
        let op_all: Vec<&AuditEntry> = op.to_vec();
        notes.push(format!(
            "the operator's requests in the window ({:.1}/s): {}",
            op_all.len() as f64 / window,
            top(&op_all, |e| e.what())
        ));
        let (s0, s1, sr) = {
            let s = samples.lock().unwrap();
            (
                s.at(i0).unwrap_or(ProcSample {
                    cpu_seconds: 0.0,
                    rss_kib: 0,
                    hwm_kib: 0,
                }),
                s.at(i1).unwrap_or(ProcSample {
                    cpu_seconds: 0.0,
                    rss_kib: 0,
                    hwm_kib: 0,
                }),
                s.at(ready_at),
            )
        };
        let s_start = samples.lock().unwrap().0.first().map(|x| x.1);
        let ramp_cpu = match (s_start, sr) {
            (Some(a), Some(b)) => (b.cpu_seconds - a.cpu_seconds) / (ramp_seconds / 60.0),
            _ => f64::NAN,
        };
        let steady_cpu = (s1.cpu_seconds - s0.cpu_seconds) / (window / 60.0);

        // Reconcile latency: one change at a time.
        let latencies_ms = self.latencies(&clusters, &names).await?;
        keep_up(operator, &mut restarts, "latency");
        if restarts.len() > restarts_before_window {
            notes.push("the operator exited during the steady window or the latency runs: their figures are not those of one process".into());
        }
        let n_restarts = restarts.len();
        for r in restarts {
            notes.push(format!("operator restarted after it exited, {r}"));
        }
        if let Some(r) = reporter {
            r.abort();
        }
        let last = proc_sample(pid.load(Ordering::Relaxed));
        sampler.abort();
        let peak = samples
            .lock()
            .unwrap()
            .peak_kib()
            .max(last.map_or(0, |s| s.hwm_kib));
        Ok(Scale {
            n,
            report_every: every.as_secs(),
            restarts: n_restarts,
            ramp_seconds,
            ramp_cpu_per_min: ramp_cpu,
            steady_cpu_per_min: steady_cpu,
            peak_rss_mib: peak as f64 / 1024.0,
            rss_end_mib: last.map_or(0, |s| s.rss_kib) as f64 / 1024.0,
            op_writes: op_writes.len(),
            op_lease_writes: op_lease,
            all_writes: all_writes.len(),
            op_reads,
            op_writes_by_ua: by_ua,
            window,
            latencies_ms,
            notes,
        })
    }

    /// Changes `work_mem` of `changes` clusters taken at random, one at a time; each
    /// latency is from just before the patch until a watch event shows the new
    /// observedGeneration.
    async fn latencies(
        &self,
        clusters: &Api<PgmlCluster>,
        names: &[String],
    ) -> anyhow::Result<Vec<f64>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, i64, Instant)>();
        let api = clusters.clone();
        let watch = tokio::spawn(async move {
            let mut s = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(ev) = s.next().await {
                if let Ok(c) = ev {
                    let og = c
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0);
                    let _ = tx.send((c.name_any(), og, Instant::now()));
                }
            }
        });
        // Let the watch list first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        while rx.try_recv().is_ok() {}
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (unix_now() as u64);
        let mut out = vec![];
        for k in 0..self.changes {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let name = &names[(seed % names.len() as u64) as usize];
            let body = json!({"spec": {"postgresql": {"parameters": {"work_mem": format!("{}kB", 4096 + 64 * (k + 1))}}}});
            let t = Instant::now();
            let c = clusters
                .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await?;
            let want = c.metadata.generation.unwrap_or(0);
            let deadline = t + Duration::from_secs(120);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rx.recv()).await {
                    Ok(Some((got, og, at))) if &got == name && og >= want => {
                        out.push(at.duration_since(t).as_secs_f64() * 1000.0);
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("the watch of PgmlClusters ended"),
                    Err(_) => bail!("{name}: generation {want} not observed within 120 s"),
                }
            }
        }
        watch.abort();
        Ok(out)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let audit_log = sb.dir.join("k8s").join("audit.log");
    if !audit_log.exists() {
        bail!(
            "{} missing: the sandbox runs without its audit log (started with PGML_SANDBOX_AUDIT=0, or before tests/testbed/sandbox/k8s.py had it): restart it",
            audit_log.display()
        );
    }
    let bench = Bench {
        sb,
        client,
        audit_log,
        window: Duration::from_secs(env_num("PGML_BENCH_WINDOW_SECONDS", 300)),
        changes: env_num("PGML_BENCH_CHANGES", 100) as usize,
    };
    let cidrs: Api<ServiceCIDR> = Api::all(bench.client.clone());
    let cidr: ServiceCIDR = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": SERVICE_CIDR.0},
        "spec": {"cidrs": [SERVICE_CIDR.1]},
    }))?;
    cidrs
        .patch(
            SERVICE_CIDR.0,
            &PatchParams::apply("pgml-bench").force(),
            &Patch::Apply(&cidr),
        )
        .await
        .context("a ServiceCIDR for the clusters' Services")?;
    let scales = env_scales(
        "PGML_BENCH_SCALES",
        "100:10,100:0,1000:0",
        env_num("PGML_BENCH_REPORT_EVERY", 10),
    );
    let mut done: Vec<Scale> = vec![];
    for &(n, every) in &scales {
        eprintln!("steady: scale {n}, reports every {every} s");
        let s = bench.run_scale(n, every).await;
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                let _ = cidrs
                    .delete(SERVICE_CIDR.0, &DeleteParams::background())
                    .await;
                return Err(e);
            }
        };
        eprintln!(
            "steady: {n}: operator writes {} (+{} Lease), all {}, cpu {:.2} s/min, peak {:.1} MiB, latency p50 {:.0} ms p99 {:.0} ms",
            s.op_writes,
            s.op_lease_writes,
            s.all_writes,
            s.steady_cpu_per_min,
            s.peak_rss_mib,
            percentile(&s.latencies_ms, 50.0),
            percentile(&s.latencies_ms, 99.0)
        );
        done.push(s);
        // What is done so far, in case a later scale fails.
        bench_report(&done).write(&results_dir())?;
    }
    // Deleted once no Service has an address of it (the namespaces go in the background).
    let _ = cidrs
        .delete(SERVICE_CIDR.0, &DeleteParams::background())
        .await;
    let mut report = bench_report(&done);
    let (json, md) = report.write(&results_dir())?;
    eprintln!("steady: wrote {} and {}", json.display(), md.display());
    print!("{}", report.markdown());
    Ok(())
}

/// The report of the scales measured.
fn bench_report(done: &[Scale]) -> Report {
    let mut report = Report::new(
        "steady_state",
        "flock /tmp/pgml-heavy.lock make bench PGML_BENCH=steady_state (PGML_BENCH_SCALES, PGML_BENCH_WINDOW_SECONDS, PGML_BENCH_CHANGES, PGML_BENCH_REPORT_EVERY)",
    );
    for s in done {
        let n = if s.report_every == 0 {
            format!("{} clusters reported once", s.n)
        } else {
            format!("{} clusters reporting every {} s", s.n, s.report_every)
        };
        let w = format!("{:.0} s", s.window);
        let one = |name: String, unit: &str, v: f64| Figure::new(name, unit, vec![v]);
        report.figures.extend([
            one(
                format!("operator writes in {w} steady, {n} (Lease apart)"),
                "writes",
                s.op_writes as f64,
            ),
            one(
                format!("operator Lease renewals in {w}, {n}"),
                "writes",
                s.op_lease_writes as f64,
            ),
            one(
                format!("all clients' writes in {w}, {n}"),
                "writes",
                s.all_writes as f64,
            ),
            one(
                format!("operator reads per second, steady, {n}"),
                "req/s",
                s.op_reads as f64 / s.window,
            ),
            one(
                format!("operator CPU, steady, {n}"),
                "s/min",
                s.steady_cpu_per_min,
            ),
            one(
                format!("operator CPU, ramp-up, {n}"),
                "s/min",
                s.ramp_cpu_per_min,
            ),
            one(format!("operator peak RSS, {n}"), "MiB", s.peak_rss_mib),
            one(format!("time to all Ready, {n}"), "s", s.ramp_seconds),
            one(
                format!("operator restarts (exited, started again), {n}"),
                "restarts",
                s.restarts as f64,
            ),
            Figure::new(
                format!("reconcile latency (spec → observedGeneration), {n}"),
                "ms",
                s.latencies_ms.clone(),
            ),
            one(
                format!("reconcile latency p99, {n}"),
                "ms",
                percentile(&s.latencies_ms, 99.0),
            ),
        ]);
        report.notes.push(format!(
            "{n}: RSS at the end {:.1} MiB; the operator's writes matched by userAgent pgml-operator: {} (by its ServiceAccount: {})",
            s.rss_end_mib, s.op_writes_by_ua, s.op_writes
        ));
        report
            .notes
            .extend(s.notes.iter().map(|x| format!("{n}: {x}")));
    }
    report.notes.insert(0, String::from(
        "one run per scale (the counts and CPU figures are that run's; latency figures: median, min and max of the changes, p99 apart); clusters of one instance on storage.persistentVolumeClaim (no ZfsPool, no EC2), a PersistentVolume pre-bound to each claim, kwok Pods, instance reports written by the bench: once per Pod, then rewritten every 10 s with a new `updated` time as pgml-instance does (its REPORT_EVERY: \"reporting every 10 s\"), or never again (\"reported once\"); the operator is the workspace's debug build (what make bench builds)"
    ));
    report.notes.insert(1, "writes counted from kube-apiserver's audit log (level Metadata): the operator runs with its chart ServiceAccount's token, so its writes are those of system:serviceaccount:<ns>:<release>; its leader-election Lease renewals are counted apart".into());
    report.notes.insert(2, "the PgmlCluster controller reconciles at most 16 clusters at once (pgml_operator::cluster::CONCURRENCY, set after this bench's first run at 1000: unbounded, 1000 clusters created at once put the leader's Lease renewal behind a thousand reconciles' requests and the operator exited 45 s into the ramp: 'lost the leader Lease; exiting: could not renew the Lease for 10s (the renew deadline): renewal timed out')".into());
    report
}
