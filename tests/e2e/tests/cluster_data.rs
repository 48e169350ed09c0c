//! PgmlCluster at the data level, with real PostgreSQL 15 run by the instance manager
//! (`pgml-instance run`) inside the simulated nodes, on ZfsPools built by the real operator
//! and agents. The test plays the cluster controller (issue 5's, written in parallel): it
//! creates the PgmlCluster, the instance Pods (Pending: nothing runs them; the instance
//! managers only read and annotate them), the pools and the seed snapshot, and writes
//! `status.targetPrimary/currentPrimary/instances` with server-side apply under its own
//! field manager. The PgmlCluster and its Pods live in a namespace of their own that no
//! operator watches (the operator binary now carries the cluster controller, which would
//! otherwise act on them); the pools and the snapshot live in a second namespace, watched by
//! the operator and the agents.
//!
//! One run, in order: (a) the bootstrap primary runs initdb and reports primary/ready;
//! (b) a replica seeded from an EbsSnapshot of the primary starts as a standby (the copy's
//! stale postmaster.pid removed, standby.signal kept), streams through its slot and has the
//! data; (c) a stray standby.signal put in the stopped primary's PGDATA is removed and it
//! comes back as primary; (d) a switchover: the old primary demotes first, the new one
//! promotes, the old one follows; (e) a failover: the primary's manager and PostgreSQL
//! killed, its Pod fenced, the replica promotes, the old one restarted stays stopped.
//! Through (d) and (e) both servers and both annotations are sampled: never two writable
//! primaries, never two instances reporting a running primary unless one is fenced.

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::instance_pod;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::manifests::{raid0_pool, zpool_name};
use pgml_testbed::nodes::{node_exec, node_exec_ok};
use pgml_testbed::pg::{Postgres, free_port};
use pgml_testbed::primaries::{Sampler, Target, assert_one_primary, report_of};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{snapshot_settled, wait_gone, wait_ready};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(240);
const ROLE: Duration = Duration::from_secs(60);
const CLUSTER: &str = "pgc";
const CONTROLLER: &str = "pgml-e2e-controller";
/// How often the sampler looks at both instances.
const EVERY: Duration = Duration::from_millis(100);

/// The test's pools: 2 volumes of 1 GiB.
fn pool_manifest(name: &str, ns: &str, node: &NodeInfo, restore_from: Option<&str>) -> ZfsPool {
    raid0_pool(name, ns, &node.name, (2, 1), restore_from)
}

fn cluster_manifest() -> PgmlCluster {
    serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
        "metadata": {"name": CLUSTER},
        "spec": {
            "instances": 2,
            "storage": {"zfs": {"template": {
                "layout": "raid0",
                "volumes": {"count": 2, "type": "gp3", "sizeGiB": 1},
                "datasets": [{"name": "pgdata"}]
            }}}
        }
    }))
    .unwrap()
}

/// What the controller would have written in `PgmlCluster.status`.
struct ClusterStatus {
    target: String,
    current: Option<String>,
    instances: Vec<(String, String)>,
}

async fn apply_status(api: &Api<PgmlCluster>, s: &ClusterStatus) {
    let instances: Vec<Value> = s
        .instances
        .iter()
        .map(|(n, node)| json!({"name": n, "node": node, "pool": n}))
        .collect();
    let mut status = json!({"targetPrimary": s.target, "instances": instances});
    if let Some(c) = &s.current {
        status["currentPrimary"] = json!(c);
    }
    let patch = json!({"apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster", "status": status});
    api.patch_status(
        CLUSTER,
        &PatchParams::apply(CONTROLLER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("status apply: {e}"));
}

/// Waits until the instance's report satisfies `ok`; the report.
/// Inserts a row noted `note` on `primary` and waits (30 s) until `replica` has it.
fn insert_streamed(primary: &Postgres, replica: &Postgres, note: &str) -> anyhow::Result<String> {
    let id = primary.sql(&format!(
        "INSERT INTO items (note) VALUES ('{note}') RETURNING id"
    ))?;
    replica.wait_sql(
        &format!("SELECT count(*) FROM items WHERE id = {id}"),
        Duration::from_secs(30),
        |n| n == "1",
    )
}

/// Creates the instances' Pods, each on its node.
async fn create_pods(pods: &Api<Pod>, instances: [(&str, &NodeInfo); 2]) {
    for (name, node) in instances {
        pods.create(&PostParams::default(), &instance_pod(CLUSTER, name, node))
            .await
            .unwrap();
    }
}

/// The end of a switchover to `to`: waits for its report as primary on timeline 2, records
/// it as the current primary, then waits for `from` to stream from it as a replica.
async fn finish_switchover(
    clusters: &Api<PgmlCluster>,
    pods: &Api<Pod>,
    status: &mut ClusterStatus,
    to: &str,
    from: &str,
    what: &str,
    logs: &dyn Fn() -> String,
) {
    let r = wait_report(pods, to, what, logs, primary_ready).await;
    assert_eq!(r["timeline"], 2, "{r}");
    status.current = Some(to.to_string());
    apply_status(clusters, status).await;
    wait_report(
        pods,
        from,
        "replica of the new primary",
        logs,
        replica_streaming,
    )
    .await;
}

async fn wait_report(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    logs: &dyn Fn() -> String,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + ROLE;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(p) = pods.get(name).await {
            last = report_of(&p);
            if last.as_ref().is_some_and(&ok) {
                return last.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "{name} never reported {what} within {ROLE:?}; last report: {}\n{}",
        last.map(|v| v.to_string()).unwrap_or_default(),
        logs()
    );
}

fn is(r: &Value, key: &str) -> bool {
    r[key].as_bool() == Some(true)
}

fn primary_ready(r: &Value) -> bool {
    r["role"] == "primary" && is(r, "running") && is(r, "ready")
}

fn replica_streaming(r: &Value) -> bool {
    r["role"] == "replica" && is(r, "running") && is(r, "streaming")
}

/// Where a pool's dataset is mounted on its node, as ZFS says.
fn mount_point(node: &NodeInfo, dataset: &str) -> String {
    node_exec_ok(
        node,
        &["zfs", "get", "-H", "-o", "value", "mountpoint", dataset],
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
    .trim()
    .to_string()
}

fn data_file(node: &NodeInfo, pgdata: &str, file: &str) -> bool {
    node_exec(node, &["test", "-e", &format!("{pgdata}/{file}")]).is_ok_and(|o| o.status.success())
}

/// The two instances, for the sampler (trust on the socket).
fn targets(names: &[String; 2], ports: [u16; 2]) -> Vec<Target> {
    names
        .iter()
        .zip(ports)
        .map(|(pod, port)| Target {
            pod: pod.clone(),
            port,
            password: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_manager_bootstrap_seed_switchover_failover() {
    let started = Instant::now();
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    // Storage (pools, snapshot) where the operator and agents look; the cluster (PgmlCluster,
    // Pods) where only the instance managers and this test look.
    let storage = TestNamespace::new(&client, "pgc-data").await;
    let ns = TestNamespace::new(&client, "pgc-inst").await;
    let (node1, node2) = (&sb.nodes[0], &sb.nodes[1]);
    let (name1, name2) = (format!("{CLUSTER}-1"), format!("{CLUSTER}-2"));
    let operator: Proc = procs::operator(sb, storage.name());
    let agents: Vec<Proc> = [node1, node2]
        .iter()
        .map(|n| procs::agent(sb, n, storage.name()))
        .collect();
    let mut log_paths = format!("operator log: {}", operator.log_path().display());
    for a in &agents {
        log_paths += &format!("\nagent log: {}", a.log_path().display());
    }
    let pools: Api<ZfsPool> = storage.api();
    let snaps: Api<EbsSnapshot> = storage.api();
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let pp = PostParams::default();

    clusters.create(&pp, &cluster_manifest()).await.unwrap();
    pools
        .create(&pp, &pool_manifest(&name1, storage.name(), node1, None))
        .await
        .unwrap();
    create_pods(&pods, [(&name1, node1), (&name2, node2)]).await;
    let mut status = ClusterStatus {
        target: name1.clone(),
        current: None,
        instances: vec![(name1.clone(), node1.name.clone())],
    };
    apply_status(&clusters, &status).await;
    {
        let logs = || log_paths.clone();
        wait_ready(&pools, &name1, READY, &logs).await;
    }

    // (a) Bootstrap: initdb, started, reported primary and ready.
    let pgdata1 = format!(
        "{}/data",
        mount_point(
            node1,
            &format!("{}/pgdata", zpool_name(&name1, storage.name()))
        )
    );
    let port1 = free_port();
    // Declared before its manager: on a failure the manager is dropped (killed) first, so
    // that it cannot start the server again after this one's Drop stopped it.
    let pg1 = Postgres::new(node1, &pgdata1, port1);
    let mut inst1 = procs::instance(sb, node1, ns.name(), CLUSTER, &name1, &pgdata1, port1);
    log_paths += &format!("\ninstance log: {}", inst1.log_path().display());
    let logs = || log_paths.clone();
    let r = wait_report(&pods, &name1, "primary/ready", &logs, primary_ready).await;
    assert_eq!(r["address"], format!("127.0.0.1:{port1}"), "{r}");
    assert!(
        !is(&r, "standbySignal") && !is(&r, "fenced") && !is(&r, "demoted"),
        "{r}"
    );
    assert!(r["lsn"].is_string() && r["timeline"] == 1, "{r}");
    assert!(!pg1.in_recovery().unwrap());
    status.current = Some(name1.clone());
    apply_status(&clusters, &status).await;
    pg1.sql("CREATE TABLE items (id bigserial PRIMARY KEY, note text NOT NULL)")
        .unwrap();
    pg1.sql("INSERT INTO items (note) SELECT 'before the snapshot ' || g FROM generate_series(1, 1000) g")
        .unwrap();
    eprintln!("(a) bootstrap primary ready at {:?}", started.elapsed());

    // (b) Scale to 2: the new instance in status (its slot appears on the primary), a seed
    // snapshot of the primary, a pool restored from it, the instance manager on the copy.
    status.instances.push((name2.clone(), node2.name.clone()));
    apply_status(&clusters, &status).await;
    let slot2 = name2.replace('-', "_");
    pg1.wait_sql(
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot2}'"),
        Duration::from_secs(30),
        |n| n == "1",
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    let seed = format!("{name2}-seed");
    let snap: EbsSnapshot = serde_yaml::from_str(&format!(
        "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {{name: {seed}}}\nspec:\n  source: {{zfsPool: {{name: {name1}}}}}\n  freezeTimeoutSeconds: 20\n"
    ))
    .unwrap();
    snaps.create(&pp, &snap).await.unwrap();
    let snap = snapshot_settled(&snaps, &seed, READY, &logs)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        snap.status.as_ref().and_then(|s| s.phase),
        Some(SnapshotPhase::Completed),
        "{:#?}\n{}",
        snap.status,
        logs()
    );
    pools
        .create(
            &pp,
            &pool_manifest(&name2, storage.name(), node2, Some(&seed)),
        )
        .await
        .unwrap();
    wait_ready(&pools, &name2, READY, &logs).await;
    let pgdata2 = format!(
        "{}/data",
        mount_point(
            node2,
            &format!("{}/pgdata", zpool_name(&name2, storage.name()))
        )
    );
    assert!(
        data_file(node2, &pgdata2, "standby.signal"),
        "the seed must carry standby.signal"
    );
    assert!(
        data_file(node2, &pgdata2, "postmaster.pid"),
        "the seed of a running primary carries its postmaster.pid"
    );
    let port2 = free_port();
    let pg2 = Postgres::new(node2, &pgdata2, port2);
    let mut inst2 = procs::instance(sb, node2, ns.name(), CLUSTER, &name2, &pgdata2, port2);
    log_paths += &format!("\ninstance log: {}", inst2.log_path().display());
    let logs = || log_paths.clone();
    let r = wait_report(&pods, &name2, "replica/streaming", &logs, replica_streaming).await;
    assert!(is(&r, "standbySignal") && is(&r, "ready"), "{r}");
    assert!(
        inst2.log().contains("removed a stale postmaster.pid"),
        "{}",
        inst2.log()
    );
    assert!(pg2.in_recovery().unwrap());
    assert_eq!(pg2.sql("SELECT count(*) FROM items").unwrap(), "1000");
    insert_streamed(&pg1, &pg2, "streamed").unwrap();
    assert_eq!(
        pg1.sql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot2}'"
        ))
        .unwrap(),
        "t",
        "the replica streams through its slot"
    );
    assert_eq!(
        pg1.sql("SELECT application_name FROM pg_stat_replication")
            .unwrap(),
        name2
    );
    eprintln!("(b) seeded replica streaming at {:?}", started.elapsed());

    // (c) A stray standby.signal in the stopped primary's PGDATA (a crash during a
    // snapshot's hold leaves one): removed at start, back as primary.
    assert!(inst1.stop(Duration::from_secs(60)), "{}", inst1.log());
    assert!(!pg1.running(), "SIGTERM stops PostgreSQL");
    node_exec_ok(
        node1,
        &[
            "runuser",
            "-u",
            "postgres",
            "--",
            "touch",
            &format!("{pgdata1}/standby.signal"),
        ],
    )
    .unwrap();
    inst1.start();
    let r = wait_report(&pods, &name1, "primary/ready again", &logs, primary_ready).await;
    assert!(!is(&r, "standbySignal"), "{r}");
    assert!(!data_file(node1, &pgdata1, "standby.signal"));
    assert!(!pg1.in_recovery().unwrap());
    assert!(
        inst1.log().contains("removed a stray standby.signal"),
        "{}",
        inst1.log()
    );
    wait_report(&pods, &name2, "streaming again", &logs, replica_streaming).await;
    eprintln!(
        "(c) stray standby.signal handled at {:?}",
        started.elapsed()
    );

    // (d) Switchover to instance 2, sampled throughout.
    let names = [name1.clone(), name2.clone()];
    let sampling = Sampler::start(pods.clone(), targets(&names, [port1, port2]), EVERY);
    tokio::time::sleep(Duration::from_millis(500)).await;
    status.target = name2.clone();
    apply_status(&clusters, &status).await;
    finish_switchover(
        &clusters,
        &pods,
        &mut status,
        &name2,
        &name1,
        "primary after switchover",
        &logs,
    )
    .await;
    let samples = sampling.finish().await;
    assert_one_primary(&samples, "switchover");
    assert!(
        samples.iter().any(|s| s.writable_count() == 0),
        "a moment with no primary between the demotion and the promotion: {samples:?}"
    );
    assert!(inst1.log().contains("\"demoted\""), "{}", inst1.log());
    assert!(pg1.in_recovery().unwrap() && !pg2.in_recovery().unwrap());
    insert_streamed(&pg2, &pg1, "after switchover").unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    assert_eq!(pg1.sql("SELECT count(*) FROM items").unwrap(), "1002");
    let slot1 = name1.replace('-', "_");
    pg2.wait_sql(
        &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot1}'"),
        Duration::from_secs(30),
        |a| a == "t",
    )
    .unwrap();
    eprintln!(
        "(d) switchover done at {:?} ({} samples)",
        started.elapsed(),
        samples.len()
    );

    // (e) Failover: instance 2 (primary) loses its manager and PostgreSQL at once, the
    // controller fences its Pod and makes instance 1 the target.
    let sampling = Sampler::start(pods.clone(), targets(&names, [port1, port2]), EVERY);
    inst2.kill();
    pg2.stop("immediate").unwrap();
    pods.patch(
        &name2,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"pgml.io/fenced": "true"}}})),
    )
    .await
    .unwrap();
    status.target = name1.clone();
    apply_status(&clusters, &status).await;
    let r = wait_report(
        &pods,
        &name1,
        "primary after failover",
        &logs,
        primary_ready,
    )
    .await;
    assert_eq!(r["timeline"], 3, "{r}");
    status.current = Some(name1.clone());
    apply_status(&clusters, &status).await;
    assert!(!pg1.in_recovery().unwrap());
    // No slot kept for the fenced instance (it is rebuilt, never resumed).
    pg1.wait_sql(
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot2}'"),
        Duration::from_secs(30),
        |n| n == "0",
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    pg1.sql("INSERT INTO items (note) VALUES ('after failover')")
        .unwrap();
    assert_eq!(pg1.sql("SELECT count(*) FROM items").unwrap(), "1003");
    // The fenced instance's manager comes back: PostgreSQL stays down.
    inst2.start();
    let r = wait_report(&pods, &name2, "fenced", &logs, |r| {
        is(r, "fenced") && !is(r, "running")
    })
    .await;
    assert_eq!(r["role"], "none", "{r}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!pg2.running(), "a fenced instance started PostgreSQL");
    let samples = sampling.finish().await;
    assert_one_primary(&samples, "failover");
    eprintln!("(e) failover done at {:?}", started.elapsed());

    // Clean up: managers stop their servers; pools and the seed snapshot deleted.
    assert!(inst1.stop(Duration::from_secs(60)), "{}", inst1.log());
    assert!(inst2.stop(Duration::from_secs(60)), "{}", inst2.log());
    assert!(!pg1.running() && !pg2.running());
    drop((pg1, pg2));
    for name in [&name2, &name1] {
        pools.delete(name, &DeleteParams::default()).await.unwrap();
    }
    snaps.delete(&seed, &DeleteParams::default()).await.unwrap();
    for name in [&name2, &name1] {
        wait_gone(&pools, name, READY).await;
    }
    wait_gone(&snaps, &seed, READY).await;
    drop(agents);
    drop(operator);
    ns.cleanup().await;
    storage.cleanup().await;
    eprintln!("done in {:?}", started.elapsed());
}

/// `replicas.seedFrom: PgBasebackup` on plain directories (no pools: the operator and agents
/// are not needed): the replica copies the primary with pg_basebackup and streams; a
/// replica's postmaster killed is started again by its manager; a manager killed while its
/// PostgreSQL runs is replaced by one that adopts the running server; a manager that dies between
/// the demotion's stop and its report (failpoint `instance.after-demote-stop`) leaves the
/// switchover waiting (the new primary never promotes beside a primary that may still
/// write), and once restarted it reports the demotion from the data directory and the
/// switchover completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basebackup_seed_crash_restart_and_a_demotion_resumed() {
    let started = Instant::now();
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "pgc-bb").await;
    let (node1, node2) = (&sb.nodes[0], &sb.nodes[1]);
    let (name1, name2) = (format!("{CLUSTER}-1"), format!("{CLUSTER}-2"));
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let pp = PostParams::default();
    let mut cluster = cluster_manifest();
    cluster.spec.replicas.seed_from = pgml_api::cluster::SeedFrom::PgBasebackup;
    clusters.create(&pp, &cluster).await.unwrap();
    create_pods(&pods, [(&name1, node1), (&name2, node2)]).await;
    let mut status = ClusterStatus {
        target: name1.clone(),
        current: None,
        instances: vec![
            (name1.clone(), node1.name.clone()),
            (name2.clone(), node2.name.clone()),
        ],
    };
    apply_status(&clusters, &status).await;

    let root = format!("/tmp/pgml-test-{}", ns.name());
    let (pgdata1, pgdata2) = (format!("{root}/{name1}"), format!("{root}/{name2}"));
    let (port1, port2) = (free_port(), free_port());
    // Before the managers, which are dropped (killed) first on a failure.
    let pg1 = Postgres::new(node1, &pgdata1, port1);
    let pg2 = Postgres::new(node2, &pgdata2, port2);
    let mut inst1 = procs::instance(sb, node1, ns.name(), CLUSTER, &name1, &pgdata1, port1);
    let mut inst2 = procs::instance(sb, node2, ns.name(), CLUSTER, &name2, &pgdata2, port2);
    let log_paths = format!(
        "instance logs: {} {}",
        inst1.log_path().display(),
        inst2.log_path().display()
    );
    let logs = || log_paths.clone();
    wait_report(&pods, &name1, "primary/ready", &logs, primary_ready).await;
    status.current = Some(name1.clone());
    apply_status(&clusters, &status).await;
    pg1.sql("CREATE TABLE items (id bigserial PRIMARY KEY, note text NOT NULL)")
        .unwrap();
    pg1.sql("INSERT INTO items (note) SELECT 'row ' || g FROM generate_series(1, 100) g")
        .unwrap();
    // The replica waited for the primary's report, then copied it.
    wait_report(&pods, &name2, "replica/streaming", &logs, replica_streaming).await;
    assert!(inst2.log().contains("pg_basebackup"), "{}", inst2.log());
    pg2.wait_sql("SELECT count(*) FROM items", Duration::from_secs(30), |n| {
        n == "100"
    })
    .unwrap();
    eprintln!("basebackup replica streaming at {:?}", started.elapsed());

    // The replica's postmaster dies: its manager starts it again.
    let pid = std::fs::read_to_string(format!("{pgdata2}/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + ROLE;
    while !inst2.log().contains("PostgreSQL exited by itself") {
        assert!(Instant::now() < deadline, "{}", inst2.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A new postmaster (another PID), in recovery, streaming.
    let deadline = Instant::now() + ROLE;
    loop {
        let now = std::fs::read_to_string(format!("{pgdata2}/postmaster.pid")).unwrap_or_default();
        if now
            .lines()
            .next()
            .is_some_and(|l| !l.is_empty() && l.trim() != pid)
            && pg2.running()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new postmaster: {}",
            inst2.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg2.wait_sql("SELECT status FROM pg_stat_wal_receiver", ROLE, |s| {
        s == "streaming"
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", inst2.log()));
    assert!(pg2.in_recovery().unwrap());
    wait_report(
        &pods,
        &name2,
        "streaming after a crash",
        &logs,
        replica_streaming,
    )
    .await;
    eprintln!("replica restarted after a crash at {:?}", started.elapsed());

    // The manager dies (SIGKILL) while PostgreSQL runs: a new one adopts the running
    // postmaster (its pid file is live: never removed, no second start).
    let postmaster = |dir: &str| {
        std::fs::read_to_string(format!("{dir}/postmaster.pid"))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let before = postmaster(&pgdata2);
    let starts = |log: &str| log.matches("starting PostgreSQL").count();
    let stale = |log: &str| log.matches("removed a stale postmaster.pid").count();
    let started_before = starts(&inst2.log());
    let stale_before = stale(&inst2.log());
    inst2.kill();
    inst2.start();
    let deadline = Instant::now() + ROLE;
    while inst2.log().matches("starting pgml-instance").count() < 2 || !inst2.log().ends_with('\n')
    {
        assert!(Instant::now() < deadline, "{}", inst2.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(postmaster(&pgdata2), before, "{}", inst2.log());
    assert_eq!(starts(&inst2.log()), started_before, "{}", inst2.log());
    assert_eq!(stale(&inst2.log()), stale_before, "{}", inst2.log());
    pg2.wait_sql("SELECT status FROM pg_stat_wal_receiver", ROLE, |s| {
        s == "streaming"
    })
    .unwrap();

    // A manager that dies right after stopping the primary for a switchover.
    assert!(inst1.stop(Duration::from_secs(60)), "{}", inst1.log());
    inst1.set_env("PGML_FAILPOINTS", "instance.after-demote-stop");
    inst1.start();
    wait_report(&pods, &name1, "primary again", &logs, primary_ready).await;
    pg2.wait_sql("SELECT status FROM pg_stat_wal_receiver", ROLE, |s| {
        s == "streaming"
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    pg1.sql("INSERT INTO items (note) VALUES ('last on the old primary')")
        .unwrap();
    status.target = name2.clone();
    apply_status(&clusters, &status).await;
    assert!(inst1.wait_exit(ROLE), "{}", inst1.log());
    assert!(!pg1.running());
    // Its last report still says running primary: the target must not promote.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        pg2.in_recovery().unwrap(),
        "promoted beside a silent primary"
    );
    inst1.unset_env("PGML_FAILPOINTS");
    inst1.start();
    finish_switchover(
        &clusters,
        &pods,
        &mut status,
        &name2,
        &name1,
        "primary after the switchover",
        &logs,
    )
    .await;
    assert_eq!(pg2.sql("SELECT count(*) FROM items").unwrap(), "101");
    insert_streamed(&pg2, &pg1, "new primary").unwrap();
    eprintln!("switchover resumed at {:?}", started.elapsed());

    // Fencing a running instance stops its PostgreSQL at once, and it stays down.
    pods.patch(
        &name1,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"pgml.io/fenced": "true"}}})),
    )
    .await
    .unwrap();
    let r = wait_report(&pods, &name1, "fenced and stopped", &logs, |r| {
        is(r, "fenced") && !is(r, "running")
    })
    .await;
    assert_eq!(r["role"], "none", "{r}");
    assert!(!pg1.running());
    assert!(
        inst1
            .log()
            .contains("fenced: stopping PostgreSQL immediately")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!pg1.running(), "a fenced instance started again");
    assert!(!pg2.in_recovery().unwrap(), "the primary is untouched");

    assert!(inst1.stop(Duration::from_secs(60)), "{}", inst1.log());
    assert!(inst2.stop(Duration::from_secs(60)), "{}", inst2.log());
    assert!(!pg1.running() && !pg2.running());
    drop((pg1, pg2));
    let _ = std::fs::remove_dir_all(&root);
    ns.cleanup().await;
}
