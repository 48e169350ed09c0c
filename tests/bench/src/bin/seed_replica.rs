//! Replica seeding: the time to add a streaming replica to a PgmlCluster from an EBS
//! snapshot (the default, `replicas.seedFrom: Snapshot`) against `pg_basebackup`
//! (`seedFrom: PgBasebackup`), at database sizes 10× apart.
//!
//! Everything real on the sandbox: the operator (cluster, ZfsPool and EbsSnapshot
//! controllers), node agents on three nodes, kwok, the instance managers run by
//! `pgml_testbed::kubelet` on the nodes' zfs-fuse pools, PostgreSQL 15, moto behind the EBS
//! simulator (snapshots and restored volumes are copy-on-write clones, as cheap as EBS makes
//! them).
//!
//! Per size: a cluster of one instance is filled with `pgbench -i -s <scale>`; then, for
//! each run and each method, `spec.instances` goes 1 → 2 and the clock runs from that patch
//! until the new replica streams (`pg_stat_wal_receiver.status = streaming`) and has
//! replayed past the primary's WAL position at the patch; then 2 → 1 and the replica's
//! objects are awaited gone. A seed from a snapshot includes the EbsSnapshot (hold,
//! CreateSnapshots), the restored pool (CreateVolume from the snapshots, attach, import) and
//! PostgreSQL's start as a standby; a pg_basebackup seed includes the empty pool (create,
//! attach, zpool create) and the copy.
//!
//! Environment: `PGML_BENCH_SCALES` (default `10,100`: about 160 MiB and 1.5 GiB),
//! `PGML_BENCH_RUNS` (default 3), `PGML_BENCH_OUT` (default `bench/results`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use pgml_api::{PgmlCluster, ZfsPool};
use pgml_bench::{Figure, Report, results_dir};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::kubelet::Kubelet;
use pgml_testbed::procs;
use serde_json::{Value, json};

const CLUSTER: &str = "seed";
const STEP: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Method {
    Snapshot,
    PgBasebackup,
}

impl Method {
    fn spec(self) -> &'static str {
        match self {
            Method::Snapshot => "Snapshot",
            Method::PgBasebackup => "PgBasebackup",
        }
    }
}

fn env_list(name: &str, default: &str) -> Vec<u32> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The cluster: ZFS RAID0 of two gp3 volumes big enough for the data and its WAL.
fn manifest(instances: i32, method: Method, size_gib: i64) -> Value {
    json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "PgmlCluster",
        "metadata": {"name": CLUSTER},
        "spec": {
            "instances": instances,
            "replicas": {"seedFrom": method.spec()},
            "storage": {"zfs": {"template": {
                "volumes": {"count": 2, "type": "gp3", "sizeGiB": size_gib},
                "layout": "raid0",
                "reclaimPolicy": "Delete",
            }}},
        },
    })
}

/// One replica added: its name, seconds from the patch, seconds from its claim Bound.
struct Seeded {
    name: String,
    total: f64,
    after_bound: f64,
}

struct Bench {
    ns: TestNamespace,
    kubelet: Kubelet,
    logs: Vec<String>,
}

impl Bench {
    fn clusters(&self) -> Api<PgmlCluster> {
        self.ns.api()
    }

    fn context(&self) -> String {
        self.logs.join("\n") + "\n" + &self.kubelet.logs(20)
    }

    async fn apply(&self, m: &Value) -> anyhow::Result<()> {
        self.clusters()
            .patch(
                CLUSTER,
                &PatchParams::apply("pgml-bench").force(),
                &Patch::Apply(m),
            )
            .await?;
        Ok(())
    }

    async fn wait<T>(
        &self,
        what: &str,
        mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(v) = probe().await? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {STEP:?}\n{}", self.context());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status(&self) -> anyhow::Result<pgml_api::cluster::PgmlClusterStatus> {
        Ok(self
            .clusters()
            .get(CLUSTER)
            .await?
            .status
            .unwrap_or_default())
    }

    /// The instance names in status.
    async fn instances(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .status()
            .await?
            .instances
            .into_iter()
            .map(|i| i.name)
            .collect())
    }

    /// Waits until `pod`'s server answers `sql` with `want`.
    async fn wait_sql(&self, pod: &str, what: &str, sql: &str, want: &str) -> anyhow::Result<()> {
        self.wait(what, async || {
            let Some(i) = self.kubelet.instance(pod) else {
                return Ok(None);
            };
            Ok(i.postgres().sql(sql).ok().filter(|v| v == want).map(|_| ()))
        })
        .await
    }

    /// 1 → 2 with `method`; the seconds until the new replica streams and has replayed
    /// past the primary's position at the patch.
    async fn add_replica(&self, method: Method, size_gib: i64) -> anyhow::Result<Seeded> {
        let primary = self
            .kubelet
            .instance(&format!("{CLUSTER}-1"))
            .context("primary")?;
        let lsn = primary.postgres().sql("SELECT pg_current_wal_lsn()")?;
        let before = self.instances().await?;
        let t0 = Instant::now();
        self.apply(&manifest(2, method, size_gib)).await?;
        let name = self
            .wait("the new instance placed", async || {
                Ok(self
                    .instances()
                    .await?
                    .into_iter()
                    .find(|n| !before.contains(n)))
            })
            .await?;
        // Also when its claim is Bound: kube-controller-manager's binder takes 0-15 s
        // (its sync period) whatever the method, which the second figure leaves out.
        let pvcs: Api<PersistentVolumeClaim> = self.ns.api();
        let query = format!(
            "SELECT (SELECT status FROM pg_stat_wal_receiver) = 'streaming' \
             AND pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        );
        let mut bound_at: Option<Instant> = None;
        self.wait(&format!("{name} streaming past {lsn}"), async || {
            if bound_at.is_none() {
                let phase = pvcs
                    .get_opt(&name)
                    .await?
                    .and_then(|c| c.status)
                    .and_then(|s| s.phase);
                if phase.as_deref() == Some("Bound") {
                    bound_at = Some(Instant::now());
                }
            }
            let Some(i) = self.kubelet.instance(&name) else {
                return Ok(None);
            };
            Ok(i.postgres()
                .sql(&query)
                .ok()
                .filter(|v| v == "t")
                .map(|_| ()))
        })
        .await?;
        let done = Instant::now();
        let seeded = self
            .status()
            .await?
            .instances
            .into_iter()
            .find(|i| i.name == name)
            .and_then(|i| i.seeded_from)
            .unwrap_or_default();
        let expected = match method {
            Method::Snapshot => seeded.ends_with("-seed"),
            Method::PgBasebackup => seeded == "pg_basebackup",
        };
        if !expected {
            bail!("{name} was seeded from {seeded:?}, not as {method:?} asks");
        }
        let bound = bound_at.unwrap_or(done);
        Ok(Seeded {
            name,
            total: (done - t0).as_secs_f64(),
            after_bound: (done - bound).as_secs_f64(),
        })
    }

    /// 2 → 1, then waits until the replica's Pod, claim and pool are gone.
    async fn remove_replica(
        &self,
        name: &str,
        method: Method,
        size_gib: i64,
    ) -> anyhow::Result<()> {
        self.apply(&manifest(1, method, size_gib)).await?;
        let pods: Api<Pod> = self.ns.api();
        let pvcs: Api<PersistentVolumeClaim> = self.ns.api();
        let pools: Api<ZfsPool> = self.ns.api();
        self.wait(&format!("{name} removed"), async || {
            let gone = pods.get_opt(name).await?.is_none()
                && pvcs.get_opt(name).await?.is_none()
                && pools.get_opt(name).await?.is_none();
            Ok(gone.then_some(()))
        })
        .await
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let scales = env_list("PGML_BENCH_SCALES", "10,100");
    let runs = env_list("PGML_BENCH_RUNS", "3")
        .first()
        .copied()
        .unwrap_or(3);
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "bench-seed").await;
    let mut operator = procs::operator(sb, ns.name());
    let mut agents = procs::agents(sb, &[0, 1, 2], ns.name());
    let kubelet = Kubelet::start(sb, client.clone(), ns.name(), &[]);
    let mut logs = vec![format!(
        "--- operator log: {}",
        operator.log_path().display()
    )];
    logs.extend(
        agents
            .iter()
            .map(|a| format!("--- agent log: {}", a.log_path().display())),
    );
    let bench = Bench { ns, kubelet, logs };

    let mut report = Report::new(
        "seed_replica",
        "make bench PGML_BENCH=seed_replica (PGML_BENCH_SCALES, PGML_BENCH_RUNS)",
    );
    report.notes.push(format!(
        "{runs} runs per method and size, alternating snapshot and pg_basebackup; the clock runs from the patch of spec.instances 1 -> 2 until the new replica streams and has replayed past the primary's WAL position at the patch"
    ));
    report.notes.push(
        "the EBS simulator completes snapshots and volumes at once and copies nothing (copy-on-write clones): this measures the operator's whole path (placement, hold, CreateSnapshots, CreateVolume from the set, attach, import, PersistentVolume binding, PostgreSQL's start as a standby and its catch-up) against pg_basebackup's copy, not AWS's snapshot completion (which grows with the blocks changed since the previous snapshot of the volume) nor the lazy loading of a restored volume (Fast Snapshot Restore or spec.restoreFrom's initialization rate)".into(),
    );
    let mut result = Ok(());
    for &scale in &scales {
        if let Err(e) = one_size(&bench, scale, runs, &mut report).await {
            result = Err(e);
            break;
        }
    }
    let _ = bench
        .clusters()
        .delete(CLUSTER, &DeleteParams::default())
        .await;
    let mut kubelet = bench.kubelet;
    kubelet.shutdown();
    operator.stop(Duration::from_secs(10));
    for a in &mut agents {
        a.stop(Duration::from_secs(10));
    }
    bench.ns.cleanup().await;
    result?;
    for &scale in &scales {
        report.ratio(
            &format!("pg_basebackup / snapshot at scale {scale}"),
            &format!("pg_basebackup, scale {scale}"),
            &format!("snapshot, scale {scale}"),
        );
        report.ratio(
            &format!("pg_basebackup / snapshot at scale {scale}, after the claim is bound"),
            &format!("pg_basebackup after the claim is bound, scale {scale}"),
            &format!("snapshot after the claim is bound, scale {scale}"),
        );
    }
    if let (Some(&small), Some(&large)) = (scales.first(), scales.last())
        && small != large
    {
        report.ratio(
            &format!("snapshot: scale {large} / scale {small}"),
            &format!("snapshot, scale {large}"),
            &format!("snapshot, scale {small}"),
        );
        report.ratio(
            &format!("pg_basebackup: scale {large} / scale {small}"),
            &format!("pg_basebackup, scale {large}"),
            &format!("pg_basebackup, scale {small}"),
        );
    }
    let (json, md) = report.write(&results_dir())?;
    println!("{}", report.markdown());
    println!("written: {} {}", json.display(), md.display());
    Ok(())
}

/// One database size: a fresh cluster, filled, then the seeding runs.
async fn one_size(b: &Bench, scale: u32, runs: u32, report: &mut Report) -> anyhow::Result<()> {
    // pgbench's data is about 15 MiB per scale unit; room for it and its WAL, twice over.
    let size_gib = ((u64::from(scale) * 15 * 4).div_ceil(1024)).max(1) as i64;
    b.apply(&manifest(1, Method::Snapshot, size_gib)).await?;
    let first = format!("{CLUSTER}-1");
    b.wait_sql(
        &first,
        "the primary up",
        "SELECT NOT pg_is_in_recovery()",
        "t",
    )
    .await?;
    let pg = b.kubelet.instance(&first).context("primary")?.postgres();
    let t = Instant::now();
    pg.pgbench_init(scale)?;
    pg.sql("CHECKPOINT")?;
    let mib: f64 = pg
        .sql("SELECT pg_database_size('postgres') / 1048576.0")?
        .parse()?;
    eprintln!(
        "scale {scale}: {mib:.0} MiB loaded in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    report.notes.push(format!(
        "scale {scale}: database {mib:.0} MiB, pool 2 x {size_gib} GiB gp3 RAID0"
    ));
    let mut total = [vec![], vec![]];
    let mut after_bound = [vec![], vec![]];
    for run in 1..=runs {
        for (k, method) in [Method::Snapshot, Method::PgBasebackup]
            .into_iter()
            .enumerate()
        {
            let s = b.add_replica(method, size_gib).await?;
            eprintln!(
                "scale {scale} run {run}: {method:?} -> {} streaming in {:.1}s ({:.1}s after its claim was bound)",
                s.name, s.total, s.after_bound
            );
            total[k].push(s.total);
            after_bound[k].push(s.after_bound);
            b.remove_replica(&s.name, method, size_gib).await?;
        }
    }
    for (k, label) in ["snapshot", "pg_basebackup"].into_iter().enumerate() {
        report.figures.push(Figure::new(
            format!("{label}, scale {scale}"),
            "s",
            total[k].clone(),
        ));
        report.figures.push(Figure::new(
            format!("{label} after the claim is bound, scale {scale}"),
            "s",
            after_bound[k].clone(),
        ));
    }
    b.clusters()
        .delete(CLUSTER, &DeleteParams::default())
        .await?;
    b.wait("the cluster deleted", async || {
        Ok(b.clusters().get_opt(CLUSTER).await?.is_none().then_some(()))
    })
    .await?;
    let pools: Api<ZfsPool> = b.ns.api();
    b.wait("its pools deleted", async || {
        Ok(pools
            .list(&Default::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
}
