//! The seed's promise, end to end with real PostgreSQL 15: "an EBS backup works exactly like
//! pg_basebackup except it's instantaneous".
//!
//! A primary runs on a RAID0 ZfsPool of 4 EBS volumes under pgbench load; one EbsSnapshot of
//! the pool completes while the primary keeps committing; the set is restored as a pool on
//! another node; PostgreSQL started on the copy is a standby (standby.signal was in the
//! capture), streams from the primary, has every row committed before the capture and passes
//! pg_amcheck; it does not promote itself when the primary goes away. The primary's PGDATA
//! has no standby.signal after the snapshot, and a restart brings it back as primary.
//!
//! The real operator and agents run as processes; PostgreSQL is run by the test the way the
//! instance manager will run it (issue 5), inside the nodes' mount namespaces.

use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use pgml_api::snapshot::{HoldState, SnapshotPhase};
use pgml_api::{EbsSnapshot, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client};
use pgml_testbed::manifests::raid0_pool;
use pgml_testbed::nodes::node_exec_ok;
use pgml_testbed::pg::{Postgres, free_port};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{snapshot_settled, wait_gone, wait_ready};

const READY: Duration = Duration::from_secs(240);

/// The test's pools: 4 volumes of 2 GiB.
fn pool_manifest(name: &str, ns: &str, node: &NodeInfo, restore_from: Option<&str>) -> ZfsPool {
    raid0_pool(name, ns, &node.name, (4, 2), restore_from)
}

fn snapshot_manifest(name: &str, pool: &str) -> EbsSnapshot {
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {{name: {name}}}\nspec:\n  source: {{zfsPool: {{name: {pool}}}}}\n  freezeTimeoutSeconds: 20\n"
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Where a pool's `pgdata` dataset is mounted on its node: as the agent reports it in
/// `status.datasets` (what a local PersistentVolume points at), checked against ZFS.
fn pgdata_mount(pool: &ZfsPool, node: &NodeInfo) -> String {
    let status = pool.status.as_ref().expect("status");
    let ds = status
        .datasets
        .iter()
        .find(|d| d.name == "pgdata")
        .unwrap_or_else(|| panic!("no pgdata in status.datasets: {status:#?}"));
    assert!(ds.mounted, "{ds:?}");
    let path = ds.mount_path.clone().expect("mountPath");
    let zfs_name = format!("{}/pgdata", status.pool_name.as_deref().expect("poolName"));
    let zfs = node_exec_ok(
        node,
        &["zfs", "get", "-H", "-o", "value", "mountpoint", &zfs_name],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(path, zfs.trim(), "status.datasets disagrees with zfs get");
    path
}

fn count(pg: &Postgres, query: &str) -> i64 {
    pg.sql(query)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .parse()
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_a_loaded_primary_restores_as_a_streaming_standby() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "snap-pg").await;
    let (src_node, dst_node) = (&sb.nodes[0], &sb.nodes[1]);
    let operator: Proc = procs::operator(sb, ns.name());
    let agents: Vec<Proc> = [src_node, dst_node]
        .iter()
        .map(|n| procs::agent(sb, n, ns.name()))
        .collect();
    let log_paths = {
        let mut s = format!("operator log: {}", operator.log_path().display());
        for a in &agents {
            s += &format!("\nagent log: {}", a.log_path().display());
        }
        s
    };
    let logs = || log_paths.clone();
    let pools: Api<ZfsPool> = ns.api();
    let snaps: Api<EbsSnapshot> = ns.api();
    let pp = PostParams::default();

    // The primary's pool and PostgreSQL on it.
    pools
        .create(&pp, &pool_manifest("pg-primary", ns.name(), src_node, None))
        .await
        .unwrap();
    let src = wait_ready(&pools, "pg-primary", READY, &logs).await;
    let src_mount = pgdata_mount(&src, src_node);
    let primary = Postgres::new(src_node, &format!("{src_mount}/data"), free_port());
    primary.initdb().unwrap();
    primary.start().unwrap();
    primary.sql("CREATE EXTENSION amcheck").unwrap();
    primary
        .sql("CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
        .unwrap();
    primary.pgbench_init(5).unwrap();
    assert!(!primary.in_recovery().unwrap());

    // Load: TPC-B plus a tick every transaction of the second script, so any pause in
    // commits shows as a gap between ticks.
    let ticks_sql = std::env::temp_dir().join(format!("pgml-ticks-{}.sql", ns.name()));
    std::fs::write(
        &ticks_sql,
        "INSERT INTO ticks (at) VALUES (clock_timestamp());\n",
    )
    .unwrap();
    let script = format!("{}@1", ticks_sql.display());
    let bench = primary
        .pgbench(&[
            "-c",
            "2",
            "-j",
            "1",
            "-T",
            "25",
            "-b",
            "tpcb-like@3",
            "-f",
            &script,
        ])
        .unwrap();
    primary
        .wait_sql("SELECT count(*) FROM ticks", Duration::from_secs(30), |n| {
            n.parse::<i64>().unwrap_or(0) > 20
        })
        .unwrap();
    // Everything committed up to here must be in the copy.
    let committed_before = count(&primary, "SELECT max(id) FROM ticks");

    snaps
        .create(&pp, &snapshot_manifest("pg-snap", "pg-primary"))
        .await
        .unwrap();
    let snap = snapshot_settled(&snaps, "pg-snap", READY, logs)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let st = snap.status.clone().unwrap();
    assert_eq!(
        st.phase,
        Some(SnapshotPhase::Completed),
        "{st:#?}\n{}",
        logs()
    );
    assert_eq!(st.volume_count, Some(4), "{st:#?}");
    assert_eq!(st.snapshots.len(), 4, "{st:#?}");
    assert_eq!(
        st.consistency.as_deref(),
        Some("None"),
        "ZFS needs no freeze: {st:#?}"
    );
    let signal = st.standby_signal.clone().expect("standbySignal in status");
    assert!(
        signal.stamped && signal.removed && !signal.already_present,
        "{signal:?}"
    );
    let hold = st.hold.clone().expect("hold in status");
    assert_eq!(hold.state, HoldState::Released, "{hold:?}");
    assert!(!hold.frozen, "ZFS is never frozen: {hold:?}");

    // The primary never saw a pause and has no standby.signal left.
    let out = bench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed during the snapshot: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !primary.has_standby_signal(),
        "standby.signal left in the primary's PGDATA"
    );
    let capture = st.capture_time.clone().expect("captureTime").0;
    let around = count(
        &primary,
        &format!(
            "SELECT count(*) FROM ticks WHERE at BETWEEN '{capture}'::timestamptz - interval '2 seconds' AND '{capture}'::timestamptz + interval '2 seconds'"
        ),
    );
    assert!(
        around > 0,
        "no commit within 2 s of the capture at {capture}"
    );
    let max_gap_ms: f64 = primary
        .sql("SELECT coalesce(max(extract(epoch FROM at - prev) * 1000), 0) FROM (SELECT at, lag(at) OVER (ORDER BY at) AS prev FROM ticks) t")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        max_gap_ms < 2000.0,
        "commits paused for {max_gap_ms} ms during the run (capture at {capture})"
    );
    // What the run saw, for the record (`--nocapture` shows it).
    // Status times have one-second resolution.
    let held_s = match (&hold.held_at, &hold.released_at) {
        (Some(a), Some(b)) => b.0.duration_since(a.0).as_secs(),
        _ => -1,
    };
    let tps = report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .unwrap_or("tps = ?");
    println!(
        "snapshot_postgres: standby.signal held {held_s} s (releasedAt - heldAt, 1 s resolution); commits within 2 s of the capture: {around}; longest gap between commits: {max_gap_ms:.0} ms; pgbench {tps}"
    );

    // The set restored on another node.
    pools
        .create(
            &pp,
            &pool_manifest("pg-copy", ns.name(), dst_node, Some("pg-snap")),
        )
        .await
        .unwrap();
    let copy = wait_ready(&pools, "pg-copy", READY, &logs).await;
    assert_eq!(
        copy.status
            .as_ref()
            .and_then(|s| s.restored_from.as_deref()),
        Some("pg-snap")
    );
    let dst_mount = pgdata_mount(&copy, dst_node);
    let standby = Postgres::new(dst_node, &format!("{dst_mount}/data"), free_port());
    assert!(
        standby.has_standby_signal(),
        "the restored PGDATA must carry standby.signal (it was in PGDATA at the capture)"
    );
    let conninfo = format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=copy'",
        primary.port
    );
    // What the instance manager does before it starts a restored copy (issue 5).
    standby.remove_stale_pid().unwrap();
    standby
        .append_conf("postgresql.auto.conf", &[&conninfo])
        .unwrap();
    standby.start().unwrap();
    assert!(
        standby.in_recovery().unwrap(),
        "the copy started as a primary"
    );
    standby
        .wait_sql(
            "SELECT status FROM pg_stat_wal_receiver",
            Duration::from_secs(60),
            |s| s == "streaming",
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", standby.log_tail()));
    let present = count(
        &standby,
        &format!("SELECT count(*) FROM ticks WHERE id = {committed_before}"),
    );
    assert_eq!(
        present, 1,
        "row {committed_before}, committed before the capture, is missing"
    );

    // New writes on the primary stream to the copy.
    let after = primary
        .sql("INSERT INTO ticks (at) VALUES (clock_timestamp()) RETURNING id")
        .unwrap();
    standby
        .wait_sql(
            &format!("SELECT count(*) FROM ticks WHERE id = {after}"),
            Duration::from_secs(30),
            |n| n == "1",
        )
        .unwrap();
    standby.amcheck().unwrap_or_else(|e| panic!("{e:#}"));

    // The copy never promotes itself, even with the primary gone for a while.
    primary.stop("fast").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(standby.in_recovery().unwrap(), "the copy promoted itself");
    assert!(standby.has_standby_signal());

    // The primary restarts as a primary, and the copy follows it again.
    assert!(!primary.has_standby_signal());
    primary.start().unwrap();
    assert!(
        !primary.in_recovery().unwrap(),
        "the primary came back as a standby"
    );
    let again = primary
        .sql("INSERT INTO ticks (at) VALUES (clock_timestamp()) RETURNING id")
        .unwrap();
    standby
        .wait_sql(
            &format!("SELECT count(*) FROM ticks WHERE id = {again}"),
            Duration::from_secs(60),
            |n| n == "1",
        )
        .unwrap();

    // Clean up: servers, pools (volumes deleted), the snapshot (AWS snapshots deleted).
    standby.stop("fast").unwrap();
    primary.stop("fast").unwrap();
    drop((standby, primary));
    let _ = std::fs::remove_file(&ticks_sql);
    for name in ["pg-copy", "pg-primary"] {
        pools.delete(name, &DeleteParams::default()).await.unwrap();
    }
    snaps
        .delete("pg-snap", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["pg-copy", "pg-primary"] {
        wait_gone(&pools, name, READY).await;
    }
    wait_gone(&snaps, "pg-snap", READY).await;
    drop(agents);
    drop(operator);
    ns.cleanup().await;
}
