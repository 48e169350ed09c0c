//! The operator killed at every step of an EbsSnapshot (its failpoints, docs/design/
//! ebssnapshot.md), with the real agent holding the source: restarted unarmed, each
//! snapshot converges to Completed, the source's PGDATA has no standby.signal once it is
//! done, and every AWS snapshot of the namespace is in some object's status. Killed before
//! the deletion, the restarted operator still deletes the set.

mod snapshot_common;

use std::time::Duration;

use pgml_api::common::keys;
use pgml_api::snapshot::SnapshotPhase;
use pgml_testbed::failpoint;
use pgml_testbed::wait::wait_gone;
use snapshot_common::*;

const FAILPOINTS: [&str; 5] = [
    "snapshot.after-finalizer",
    "snapshot.after-preparing",
    "snapshot.before-capture",
    "snapshot.after-capture",
    "snapshot.after-captured",
];

/// Restarts the operator with `failpoint` armed (or none).
fn restart_operator(f: &mut Fixture, failpoint: Option<&str>) {
    failpoint::restart_armed(&mut f.operator, failpoint, Duration::from_secs(10));
}

/// The operator dies at its armed failpoint; then it is started again, unarmed.
fn expect_death_and_restart(f: &mut Fixture, fp: &str) {
    if let Err(e) = failpoint::died_at(&mut f.operator, fp, Duration::from_secs(60)) {
        panic!("the operator: {e}\n{}", f.logs());
    }
    f.operator.start();
}

/// Waits until the agent has released its hold (or never held) and standby.signal is gone.
async fn wait_released(f: &Fixture, name: &str, node: usize, pool: &str) {
    let n = &f.sb.nodes[node];
    f.wait_snapshot(name, "hold released", Duration::from_secs(60), |s| {
        hold_over(s).unwrap_or(true)
    })
    .await;
    assert!(
        !has_standby_signal(n, pool),
        "{name}: standby.signal left in the source's PGDATA\n{}",
        f.logs()
    );
}

#[tokio::test]
async fn operator_killed_at_every_step_converges_and_leaks_nothing() {
    let mut f = Fixture::start("snapkill", &[0]).await;
    let node = &f.sb.nodes[0];
    let pool = f.unique("killsrc");
    f.ready_pool(&pool, node, "raid0", 2).await;
    fake_pgdata(node, &pool);

    for fp in FAILPOINTS {
        let name = fp.trim_start_matches("snapshot.").to_string();
        restart_operator(&mut f, Some(fp));
        // A long hold: the restart happens within it.
        f.snapshot(&name, &pool, "freezeTimeoutSeconds: 40\n").await;
        expect_death_and_restart(&mut f, fp);
        let s = f.wait_settled(&name).await;
        assert_eq!(
            phase_of(&s),
            Some(SnapshotPhase::Completed),
            "{fp}: {} {:?}\n{}",
            ready_reason(&s),
            s.status,
            f.logs()
        );
        let st = s.status.clone().unwrap();
        assert_eq!(st.snapshots.len(), 2, "{fp}");
        assert!(
            st.snapshots
                .iter()
                .all(|m| m.state.as_deref() == Some("completed")),
            "{fp}: {:?}",
            st.snapshots
        );
        let uid = s.metadata.uid.clone().unwrap();
        let tagged = snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &uid).await;
        assert_eq!(tagged.len(), 2, "{fp}: the set in moto: {tagged:?}");
        wait_released(&f, &name, 0, &pool).await;
        assert_nothing_leaked(&f).await;
    }

    // Killed before the deletion: the restarted operator deletes the set.
    let victim = "after-captured";
    let uid = f
        .snapshots()
        .get(victim)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    restart_operator(&mut f, Some("snapshot.before-delete"));
    f.delete_snapshot(victim).await;
    expect_death_and_restart(&mut f, "snapshot.before-delete");
    wait_gone(&f.snapshots(), victim, SNAPSHOT_TIMEOUT).await;
    assert!(
        snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &uid)
            .await
            .is_empty(),
        "the deleted object's set is still in AWS"
    );
    assert_nothing_leaked(&f).await;
    f.finish().await;
}
