//! The hold handshake end to end with the real operator and agent: a snapshot of a 4-volume
//! raid0 pool holding a (fake) PGDATA is stamped with standby.signal by the agent, captured
//! by exactly one CreateSnapshots while held, released after — and a restore of it carries
//! the stamp while the source does not. A CreateSnapshots that answers after the hold's
//! deadline fails the snapshot (HoldDeadlineExceeded) and leaves nothing in AWS.
//!
//! The tests here run one at a time (a lock): the first counts CreateSnapshots calls in the
//! simulator, which counts every caller's.

mod snapshot_common;

use std::time::Duration;

use pgml_api::EbsSnapshot;
use pgml_api::common::keys;
use pgml_api::snapshot::{HoldState, SnapshotPhase};
use pgml_testbed::aws::SimAdmin;
use pgml_testbed::nodes::node_exec_ok;
use serde_json::json;
use snapshot_common::*;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// PostgreSQL's durable_rename of a checkpoint file, in the folder given as argument.
const DURABLE_RENAME: &str = "import os, sys
d = sys.argv[1]
t, p = d + '/replorigin_checkpoint.tmp', d + '/replorigin_checkpoint'
fd = os.open(t, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
os.write(fd, b'new-checkpoint'); os.fsync(fd); os.close(fd)
os.rename(t, p)
fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
";

/// Waits until the agent has undone its hold (Released or Expired).
async fn wait_hold_over(f: &Fixture, name: &str) -> EbsSnapshot {
    f.wait_snapshot(name, "hold released", Duration::from_secs(60), |s| {
        hold_over(s) == Some(true)
    })
    .await
}

#[tokio::test]
async fn a_held_snapshot_is_stamped_captured_once_and_released() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Fixture::start("snaphold", &[0, 1]).await;
    let (node, other) = (&f.sb.nodes[0], &f.sb.nodes[1]);
    let pool = f.unique("held");
    let p = f.ready_pool(&pool, node, "raid0", 4).await;
    let guid = p.status.unwrap().pool_guid.unwrap();
    let (_, sum) = fake_pgdata(node, &pool);

    // What a CHECKPOINT does to pg_logical/replorigin_checkpoint just before the snapshot:
    // a temporary file written and fsynced, renamed over the old one, its folder fsynced.
    // The copy must hold the new file and no temporary one (zfs-fuse's intent log does not
    // carry such a rename: the agent commits the pool's transaction group before the
    // capture).
    let dir = format!("{}/pg_logical", pgdata(node, &pool));
    node_exec_ok(node, &["mkdir", "-p", &dir]).unwrap();
    node_write(node, &format!("{dir}/replorigin_checkpoint"), "old");
    node_exec_ok(node, &["sync"]).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await; // the old file in a committed txg
    node_exec_ok(node, &["python3", "-c", DURABLE_RENAME, &dir]).unwrap();

    let sim = SimAdmin::from_sandbox(f.sb);
    let calls = sim.count("CreateSnapshots", "total").unwrap();
    f.snapshot("stamped", &pool, "").await;
    f.wait_phase("stamped", SnapshotPhase::Completed).await;
    assert_eq!(
        sim.count("CreateSnapshots", "total").unwrap() - calls,
        1,
        "one CreateSnapshots for the whole set"
    );
    let s = wait_hold_over(&f, "stamped").await;
    let st = s.status.clone().unwrap();
    assert_eq!(st.hold.as_ref().unwrap().state, HoldState::Released);
    let stamp = st
        .standby_signal
        .clone()
        .expect("the agent reports the stamp");
    assert!(stamp.stamped && !stamp.already_present, "{stamp:?}");
    assert_eq!(st.consistency.as_deref(), Some("None"));
    let members: Vec<i32> = st.snapshots.iter().map(|m| m.member_index).collect();
    assert_eq!(members, [0, 1, 2, 3]);
    // The capture happened while held.
    let held_at = st.hold.as_ref().unwrap().held_at.clone().unwrap();
    let deadline = st.hold.as_ref().unwrap().deadline.clone().unwrap();
    let captured = st.capture_time.clone().unwrap();
    assert!(held_at.0 <= captured.0 && captured.0 < deadline.0, "{st:?}");
    assert!(
        !has_standby_signal(node, &pool),
        "the source keeps standby.signal"
    );

    let uid = s.metadata.uid.clone().unwrap();
    for t in snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &uid).await {
        let id = t.snapshot_id().unwrap();
        let m = st
            .snapshots
            .iter()
            .find(|m| m.snapshot_id.as_deref() == Some(id))
            .expect("every tagged snapshot is in status");
        assert_eq!(
            tag(&t, keys::MEMBER_INDEX),
            Some(m.member_index.to_string().as_str())
        );
        assert_eq!(tag(&t, keys::POOL_GUID), Some(guid.as_str()));
        assert_eq!(tag(&t, keys::LAYOUT), Some("raid0"));
        assert_eq!(tag(&t, keys::SNAPSHOT), Some("stamped"));
    }

    // A restore of the set starts as a standby: the stamp is in the copy.
    let copy = f.unique("stampcopy");
    f.create_pool(&copy, other, "raid0", 4, Some("stamped"))
        .await;
    f.wait_pool_ready(&copy).await;
    assert!(
        has_standby_signal(other, &copy),
        "the restored PGDATA has no standby.signal"
    );
    assert_eq!(
        sha256(other, &format!("{}/base/16384", pgdata(other, &copy))),
        sum
    );
    let copied = format!("{}/pg_logical", pgdata(other, &copy));
    assert_eq!(
        node_exec_ok(other, &["ls", &copied]).unwrap().trim(),
        "replorigin_checkpoint",
        "the rename made durable before the snapshot is in the copy, the temporary file is not"
    );
    assert_eq!(
        node_exec_ok(other, &["cat", &format!("{copied}/replorigin_checkpoint")]).unwrap(),
        "new-checkpoint"
    );
    assert!(!has_standby_signal(node, &pool));
    assert_nothing_leaked(&f).await;
    f.finish().await;
}

#[tokio::test]
async fn a_capture_answered_after_the_deadline_fails_and_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Fixture::start("snaplate", &[2]).await;
    let node = &f.sb.nodes[2];
    let pool = f.unique("late");
    f.ready_pool(&pool, node, "raid0", 2).await;
    fake_pgdata(node, &pool);
    // This namespace's CreateSnapshots (its tags name the namespace) answers 9 s late:
    // after the 5 s hold.
    let _slow = SimAdmin::from_sandbox(f.sb)
        .fault(json!({
            "kind": "latency", "action": "CreateSnapshots", "match": f.name(), "ms": 9000,
        }))
        .unwrap();
    f.snapshot("slow", &pool, "freezeTimeoutSeconds: 5\n").await;
    let s = f.wait_phase("slow", SnapshotPhase::Failed).await;
    assert_eq!(ready_reason(&s), "HoldDeadlineExceeded", "{:?}", s.status);
    let uid = s.metadata.uid.clone().unwrap();
    let left = set_left_after(f.sb, &uid, Duration::from_secs(30)).await;
    assert!(
        left.is_empty(),
        "a late set was kept: {left:?}\n{}",
        f.logs()
    );
    wait_hold_over(&f, "slow").await;
    assert!(!has_standby_signal(node, &pool));
    assert_nothing_leaked(&f).await;
    f.finish().await;
}
