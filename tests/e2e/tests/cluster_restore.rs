//! Issue 18, restore from an EBS snapshot set (`spec.bootstrap.snapshot`): with the real
//! operator, a node agent and the instance managers run by the test bed's kubelet on real
//! PostgreSQL 15. A source cluster writes rows (t1), an EbsSnapshot of it completes, more
//! rows follow (t2). A new cluster bootstrapped from that snapshot comes up Healthy with
//! exactly the rows up to the capture (same checksum), on a new timeline (promoted, not
//! started as primary on the source's), accepts writes of its own; the source keeps its rows
//! and never sees the copy's; the snapshot is left as it was. A cluster naming a snapshot
//! that does not exist makes nothing and says why; `bootstrap` cannot change afterwards.

mod cluster_common;

use std::time::Duration;

use cluster_common::{ClusterFixture, zfs_cluster};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use pgml_api::cluster::ClusterPhase;
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use serde_json::json;

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

/// Rows and a checksum of the test table, as the server has them.
fn rows_and_sum(pg: &pgml_testbed::pg::Postgres) -> String {
    pg.sql("SELECT count(*) || ' ' || md5(coalesce(string_agg(id || ':' || payload, ',' ORDER BY id), '')) FROM written")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_bootstrapped_from_a_snapshot_has_exactly_the_captured_rows() {
    let sb = pgml_testbed::Sandbox::get();
    let in_zone: Vec<usize> = (0..sb.nodes.len())
        .filter(|i| sb.nodes[*i].az == ZONE)
        .collect();
    assert_eq!(in_zone.len(), 2, "the sandbox's nodes in {ZONE}");
    let f = ClusterFixture::start("pgml-restore", SOURCE, &in_zone, &[])
        .await
        .with_kubelet(&[], 25)
        .polling(Duration::from_millis(250));
    let volumes = json!({"count": 1, "type": "gp3", "sizeGiB": 1});
    let pinned = json!({"nodeSelector": {"topology.kubernetes.io/zone": ZONE}});
    f.apply(&zfs_cluster(SOURCE, 1, volumes.clone(), pinned.clone()))
        .await;
    f.wait_cluster("the source Healthy", healthy).await;
    let src = f.instance(&format!("{SOURCE}-1")).await.postgres();
    src.sql("CREATE TABLE written (id int PRIMARY KEY, payload text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())")
        .unwrap();
    src.sql(
        "INSERT INTO written (id, payload) SELECT i, md5(i::text) FROM generate_series(1, 100) i",
    )
    .unwrap();
    let at_t1 = rows_and_sum(&src);
    let src_timeline = src
        .sql("SELECT timeline_id FROM pg_control_checkpoint()")
        .unwrap();

    // The snapshot of the source, then rows it does not hold.
    let snaps: Api<EbsSnapshot> = f.ns.api();
    let snap: EbsSnapshot = serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
        "metadata": {"name": "at-t1"},
        "spec": {"source": {"cluster": {"name": SOURCE}}, "deletionPolicy": "Delete"},
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let done = f
        .wait_obj(&snaps, "at-t1", "the snapshot Completed", |s| {
            s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Completed)
        })
        .await;
    assert!(
        done.status.as_ref().unwrap().zfs_pool.is_some(),
        "a set of a ZFS pool"
    );
    src.sql(
        "INSERT INTO written (id, payload) SELECT i, md5(i::text) FROM generate_series(101, 200) i",
    )
    .unwrap();
    let src_after = rows_and_sum(&src);
    assert_ne!(src_after, at_t1);

    // A cluster naming a snapshot that does not exist: nothing made, and it says why.
    let clusters: Api<PgmlCluster> = f.ns.api();
    let mut missing = zfs_cluster("nosnap", 1, volumes.clone(), pinned.clone());
    missing["spec"]["bootstrap"] = json!({"snapshot": {"name": "no-such-snapshot"}});
    clusters
        .patch(
            "nosnap",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&missing),
        )
        .await
        .unwrap();
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
    let pools: Api<ZfsPool> = f.ns.api();
    assert!(
        pools.get_opt("nosnap-1").await.unwrap().is_none(),
        "no pool is made before the bootstrap snapshot is usable"
    );

    // The copy.
    let mut copy = zfs_cluster(COPY, 1, volumes, pinned);
    copy["spec"]["bootstrap"] = json!({"snapshot": {"name": "at-t1"}});
    clusters
        .patch(
            COPY,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&copy),
        )
        .await
        .unwrap();
    let c = f
        .wait_obj(&clusters, COPY, "the copy Healthy", healthy)
        .await;
    let st = c.status.clone().unwrap();
    assert_eq!(
        st.instances[0].seeded_from.as_deref(),
        Some("at-t1"),
        "{st:?}"
    );
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
    let cp = f.instance(&format!("{COPY}-1")).await.postgres();
    assert_eq!(
        rows_and_sum(&cp),
        at_t1,
        "the copy holds exactly the rows captured"
    );
    assert_eq!(cp.sql("SELECT pg_is_in_recovery()").unwrap(), "f");
    // The end-of-recovery checkpoint of a promotion comes later: one now, to read it.
    cp.sql("CHECKPOINT").unwrap();
    let copy_timeline = cp
        .sql("SELECT timeline_id FROM pg_control_checkpoint()")
        .unwrap();
    assert!(
        copy_timeline.parse::<u32>().unwrap() > src_timeline.parse::<u32>().unwrap(),
        "promoted onto a new timeline: the copy's {copy_timeline}, the source's {src_timeline}"
    );
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
        ("removed", serde_json::Value::Null),
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
