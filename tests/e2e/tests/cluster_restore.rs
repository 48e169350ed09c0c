//! Issue 18, restore from an EBS snapshot set (`spec.bootstrap.snapshot`): with the real
//! operator, a node agent and the instance managers run by the test bed's kubelet on real
//! PostgreSQL 15. A source cluster writes rows (t1), an EbsSnapshot of it completes, more
//! rows follow (t2). A new cluster bootstrapped from that snapshot comes up Healthy with
//! exactly the rows up to the capture (same checksum), on a new timeline (promoted, not
//! started as primary on the source's), accepts writes of its own; the source keeps its rows
//! and never sees the copy's; the snapshot is left as it was. A cluster naming a snapshot
//! that does not exist makes nothing and says why; `bootstrap` cannot change afterwards.
//! And ten restores with the operator SIGKILLed at a random moment of each all end Healthy
//! with the captured rows.

mod cluster_common;

use std::time::Duration;

use cluster_common::{ClusterFixture, TIMEOUT, apply_cluster, rows_and_sum, zfs_cluster};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use pgml_api::cluster::ClusterPhase;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::pg::Postgres;
use pgml_testbed::wait::wait_gone;
use serde_json::{Value, json};

const SOURCE: &str = "src";
const COPY: &str = "copy";
/// The zone both clusters are kept to: the sandbox has two nodes there (an agent on each).
/// The copy's pool, restored from the source pool's snapshot, has its GUID: the operator
/// places it on the node the snapshot was not taken on.
const ZONE: &str = "us-east-1a";

fn healthy(c: &PgmlCluster) -> bool {
    c.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(ClusterPhase::Healthy) && s.ready_instances == Some(1))
}

/// The fixture of a restore test: the operator and an agent on each of the sandbox's two
/// nodes in [`ZONE`], with the kubelet running the instance managers.
async fn fixture(prefix: &str) -> ClusterFixture {
    let sb = pgml_testbed::Sandbox::get();
    let in_zone: Vec<usize> = (0..sb.nodes.len())
        .filter(|i| sb.nodes[*i].az == ZONE)
        .collect();
    assert_eq!(in_zone.len(), 2, "the sandbox's nodes in {ZONE}");
    ClusterFixture::start(prefix, SOURCE, &in_zone, &[])
        .await
        .with_kubelet(&[], 25)
        .polling(Duration::from_millis(250))
}

fn volumes() -> Value {
    json!({"count": 1, "type": "gp3", "sizeGiB": 1})
}

fn pinned() -> Value {
    json!({"nodeSelector": {"topology.kubernetes.io/zone": ZONE}})
}

/// Cluster `name` restored from EbsSnapshot `from`, applied as kubectl would.
async fn apply_restored(clusters: &Api<PgmlCluster>, name: &str, from: &str) {
    let mut m = zfs_cluster(name, 1, volumes(), pinned());
    m["spec"]["bootstrap"] = json!({"snapshot": {"name": from}});
    apply_cluster(clusters, &m).await;
}

/// The source cluster, Healthy, with 100 rows; EbsSnapshot `at-t1` of it, Completed; then
/// 100 rows more. Returns the rows and checksum at the capture, the source's server and its
/// timeline.
async fn source_and_snapshot(f: &ClusterFixture) -> (String, Postgres, u32) {
    f.apply(&zfs_cluster(SOURCE, 1, volumes(), pinned())).await;
    f.wait_cluster("the source Healthy", healthy).await;
    let src = f.instance(&format!("{SOURCE}-1")).await.postgres();
    src.sql("CREATE TABLE written (id int PRIMARY KEY, payload text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())")
        .unwrap();
    src.sql(
        "INSERT INTO written (id, payload) SELECT i, md5(i::text) FROM generate_series(1, 100) i",
    )
    .unwrap();
    let at_t1 = rows_and_sum(&src);
    let timeline = src
        .sql("SELECT timeline_id FROM pg_control_checkpoint()")
        .unwrap()
        .parse()
        .unwrap();
    let done = f.snapshot_completed("at-t1", SOURCE).await;
    assert!(
        done.status.as_ref().unwrap().zfs_pool.is_some(),
        "a set of a ZFS pool"
    );
    src.sql(
        "INSERT INTO written (id, payload) SELECT i, md5(i::text) FROM generate_series(101, 200) i",
    )
    .unwrap();
    assert_ne!(rows_and_sum(&src), at_t1);
    (at_t1, src, timeline)
}

/// Cluster `name`'s server holds exactly the captured rows and is a writable primary on a
/// later timeline than the source's; returns it.
async fn assert_restored(
    f: &ClusterFixture,
    name: &str,
    at_t1: &str,
    src_timeline: u32,
) -> Postgres {
    let cp = f.instance(&format!("{name}-1")).await.postgres();
    assert_eq!(
        rows_and_sum(&cp),
        at_t1,
        "{name} holds exactly the rows captured"
    );
    assert_eq!(cp.sql("SELECT pg_is_in_recovery()").unwrap(), "f", "{name}");
    // The end-of-recovery checkpoint of a promotion comes later: one now, to read it.
    cp.sql("CHECKPOINT").unwrap();
    let timeline: u32 = cp
        .sql("SELECT timeline_id FROM pg_control_checkpoint()")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        timeline > src_timeline,
        "{name} promoted onto a new timeline: {timeline}, the source's {src_timeline}"
    );
    cp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_bootstrapped_from_a_snapshot_has_exactly_the_captured_rows() {
    let f = fixture("pgml-restore").await;
    let (at_t1, src, src_timeline) = source_and_snapshot(&f).await;
    let src_after = rows_and_sum(&src);
    let snaps: Api<EbsSnapshot> = f.ns.api();
    let clusters: Api<PgmlCluster> = f.ns.api();
    let pools: Api<ZfsPool> = f.ns.api();

    // A cluster naming a snapshot that does not exist: nothing made, and it says why.
    apply_restored(&clusters, "nosnap", "no-such-snapshot").await;
    f.wait_obj(
        &clusters,
        "nosnap",
        "a condition naming the missing snapshot",
        |c| {
            c.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|k| {
                    k.message.contains(
                        "EbsSnapshot no-such-snapshot (spec.bootstrap.snapshot) does not exist",
                    )
                })
            })
        },
    )
    .await;
    assert!(
        pools.get_opt("nosnap-1").await.unwrap().is_none(),
        "no pool is made before the bootstrap snapshot is usable"
    );

    // The copy.
    apply_restored(&clusters, COPY, "at-t1").await;
    let c = f
        .wait_obj(&clusters, COPY, "the copy Healthy", healthy)
        .await;
    let st = c.status.clone().unwrap();
    assert_eq!(
        st.instances[0].seeded_from.as_deref(),
        Some("at-t1"),
        "{st:?}"
    );
    // The source's pg_wal link named the source's WAL path: made this pool's own.
    f.assert_wal_on_pgwal(&format!("{COPY}-1")).await;
    let pool = pools.get(&format!("{COPY}-1")).await.unwrap();
    let src_pool = pools.get(&format!("{SOURCE}-1")).await.unwrap();
    assert_ne!(
        pool.spec.node_name, src_pool.spec.node_name,
        "the restored pool is placed off the source pool's node (same GUID)"
    );
    assert_eq!(
        pool.spec
            .restore_from
            .as_ref()
            .map(|r| r.ebs_snapshot_name.as_str()),
        Some("at-t1")
    );
    let cp = assert_restored(&f, COPY, &at_t1, src_timeline).await;
    cp.sql("INSERT INTO written (id, payload) VALUES (1000, 'the copy''s own')")
        .unwrap();
    assert_eq!(
        cp.sql("SELECT count(*) FROM written").unwrap(),
        "101",
        "the copy takes writes"
    );
    assert_eq!(
        rows_and_sum(&src),
        src_after,
        "the source is untouched by the restore and the copy's writes"
    );
    assert!(
        snaps.get_opt("at-t1").await.unwrap().is_some(),
        "the bootstrap snapshot is the user's: left as it was"
    );

    // bootstrap is fixed once the cluster exists: neither changed nor removed.
    for (what, bootstrap) in [
        ("changed", json!({"snapshot": {"name": "another"}})),
        ("removed", Value::Null),
    ] {
        let patch = json!({"spec": {"bootstrap": bootstrap}});
        let e = clusters
            .patch(COPY, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err(what);
        assert!(
            e.to_string()
                .contains("bootstrap cannot be added, removed or changed"),
            "{what}: {e}"
        );
    }
    f.finish().await;
}

/// Issue 18's kill test of the snapshot path: ten restores from the same snapshot, the
/// operator SIGKILLed at a random moment of each (0–4 s after the apply: placement, the
/// pool's restore, the Pod, the promotion, the record of the identity) and started again
/// after up to 1 s. Every restore ends Healthy with exactly the captured rows, a writable
/// primary on a new timeline; each copy is then deleted with its pool. The delays come
/// from a seed printed first (`PGML_RESTORE_SEED` replays them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_end_healthy_whatever_moment_the_operator_is_killed() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("PGML_RESTORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("restore kill test: seed {seed} (PGML_RESTORE_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = fixture("pgml-restorekill").await;
    let (at_t1, _src, src_timeline) = source_and_snapshot(&f).await;
    let clusters: Api<PgmlCluster> = f.ns.api();
    let pools: Api<ZfsPool> = f.ns.api();
    for i in 0..10 {
        let name = format!("k{i}");
        apply_restored(&clusters, &name, "at-t1").await;
        let kill_after = Duration::from_millis(rng.random_range(0..4000));
        let down_for = Duration::from_millis(rng.random_range(0..1000));
        tokio::time::sleep(kill_after).await;
        f.operator.kill();
        tokio::time::sleep(down_for).await;
        f.operator.start();
        eprintln!("{name}: the operator killed {kill_after:?} after the apply, down {down_for:?}");
        f.wait_obj(&clusters, &name, "Healthy after an operator kill", healthy)
            .await;
        assert_restored(&f, &name, &at_t1, src_timeline).await;
        clusters
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&clusters, &name, TIMEOUT).await;
        wait_gone(&pools, &format!("{name}-1"), TIMEOUT).await;
    }
    f.finish().await;
}
