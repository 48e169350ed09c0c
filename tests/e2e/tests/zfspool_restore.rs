//! `ZfsPool.spec.restoreFrom` end to end with the real operator and agents: a snapshot of a
//! 4-volume raid0 pool on one node is restored as a pool on a node in another zone, every
//! member created from its own member snapshot; the agent imports the copy under the new
//! name and the data written before the snapshot is there. A snapshot that does not fit
//! the pool (count, layout) is refused with SpecValid=False and nothing is created.

mod snapshot_common;

use std::collections::BTreeMap;

use pgml_api::ZfsPool;
use pgml_api::common::keys;
use pgml_api::snapshot::SnapshotPhase;
use pgml_testbed::aws::volumes_tagged;
use pgml_testbed::wait::{condition, has_condition, wait_for};
use snapshot_common::*;

fn reason(p: &ZfsPool, type_: &str) -> String {
    condition(p, type_)
        .and_then(|c| c["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_snapshot_restored_on_another_node_has_the_data() {
    let f = Fixture::start("restore", &[0, 1]).await;
    let (src_node, dst_node) = (&f.sb.nodes[0], &f.sb.nodes[1]);
    assert_ne!(src_node.az, dst_node.az, "the copy goes to another zone");
    let src = f.unique("orig");
    f.ready_pool(&src, src_node, "raid0", 4).await;
    let (_, sum) = fake_pgdata(src_node, &src);

    f.snapshot("seed", &src, "standbySignal: Never\n").await;
    let snap = f.wait_phase("seed", SnapshotPhase::Completed).await;
    let by_member: BTreeMap<i32, String> = snap
        .status
        .as_ref()
        .unwrap()
        .snapshots
        .iter()
        .map(|m| (m.member_index, m.snapshot_id.clone().unwrap()))
        .collect();
    // Written after the capture: must not be in the copy.
    let late = format!("{}/after-snapshot", pgdata(src_node, &src));
    node_write(src_node, &late, "late\n");

    let copy = f.unique("copy");
    f.create_pool(&copy, dst_node, "raid0", 4, Some("seed"))
        .await;
    let p = f.wait_pool_ready(&copy).await;
    let st = p.status.clone().unwrap();
    assert_eq!(st.restored_from.as_deref(), Some("seed"));
    assert_eq!(st.availability_zone.as_deref(), Some(dst_node.az.as_str()));
    assert_eq!(st.pool_name.as_deref(), Some(copy.as_str()));
    // A copy keeps its source's GUID (imported by it, under the new name).
    let src_guid = snap.status.as_ref().unwrap().pool_guid.clone();
    assert_eq!(st.pool_guid, src_guid);

    // Every member came from its own member snapshot.
    let uid = p.metadata.uid.clone().unwrap();
    let vols = volumes_tagged(f.sb, keys::POOL_UID, &uid).await;
    assert_eq!(vols.len(), 4);
    for v in &vols {
        let index: i32 = v
            .tags()
            .iter()
            .find(|t| t.key() == Some(keys::MEMBER_INDEX))
            .and_then(|t| t.value())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            v.snapshot_id(),
            Some(by_member[&index].as_str()),
            "member {index}"
        );
        assert_eq!(v.availability_zone(), Some(dst_node.az.as_str()));
    }

    // The data written before the snapshot, and nothing written after it.
    let table = format!("{}/base/16384", pgdata(dst_node, &copy));
    assert_eq!(
        sha256(dst_node, &table),
        sum,
        "restored table differs\n{}",
        f.logs()
    );
    let late_copy = format!("{}/after-snapshot", pgdata(dst_node, &copy));
    let out = pgml_testbed::nodes::node_exec(dst_node, &["test", "-e", &late_copy]).unwrap();
    assert!(
        !out.status.success(),
        "a file written after the capture is in the copy"
    );

    // The snapshot may go now: the pool no longer needs it.
    f.delete_snapshot("seed").await;
    pgml_testbed::wait::wait_gone(&f.snapshots(), "seed", SNAPSHOT_TIMEOUT).await;
    let again = f.pools().get(&copy).await.unwrap();
    assert!(has_condition(&again, "Ready", "True"));
    f.finish().await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_fit_the_pool_creates_nothing() {
    let f = Fixture::start("restorex", &[2]).await;
    let node = &f.sb.nodes[2];
    let src = f.unique("fit");
    f.ready_pool(&src, node, "raid0", 3).await;
    f.snapshot("three", &src, "standbySignal: Never\n").await;
    f.wait_phase("three", SnapshotPhase::Completed).await;

    // Wrong count, wrong layout, and a snapshot that does not exist.
    let cases = [
        (
            "count4",
            "raid0",
            4,
            "three",
            "RestoreMismatch",
            "holds 3 volumes",
        ),
        ("parity", "raidz1", 3, "three", "RestoreMismatch", "raid0"),
        (
            "ghost",
            "raid0",
            3,
            "nosuch",
            "SnapshotNotFound",
            "does not exist",
        ),
    ];
    for (name, layout, count, from, _, _) in cases {
        let name = f.unique(name);
        f.create_pool(&name, node, layout, count, Some(from)).await;
    }
    for (name, _, _, _, why, says) in cases {
        let name = f.unique(name);
        let p = wait_for(&f.pools(), &name, why, READY_TIMEOUT, |p: &ZfsPool| {
            reason(p, "Ready") == why
        })
        .await;
        let ready = condition(&p, "Ready").unwrap();
        assert!(
            ready["message"].as_str().unwrap().contains(says),
            "{name}: {ready}"
        );
        if why == "RestoreMismatch" {
            let sv = condition(&p, "SpecValid").unwrap();
            assert_eq!(sv["status"], "False", "{name}");
            assert_eq!(sv["reason"], "RestoreMismatch");
            assert_eq!(
                sv["observedGeneration"],
                serde_json::json!(p.metadata.generation)
            );
        }
        let uid = p.metadata.uid.clone().unwrap();
        assert!(
            volumes_tagged(f.sb, keys::POOL_UID, &uid).await.is_empty(),
            "{name}: volumes were created"
        );
        assert!(p.status.as_ref().unwrap().volumes.is_empty());
    }
    f.finish().await;
}
