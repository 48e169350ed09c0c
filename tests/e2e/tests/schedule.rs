//! Scheduled EbsSnapshots of a bare ZfsPool, end to end with the real operator and agent:
//! a schedule of every minute with keep-last 3, watched over five minutes, leaves exactly
//! three Completed sets, in Kubernetes and in moto. Schedules the apiserver or the
//! operator cannot run are refused and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use pgml_api::common::keys;
use pgml_api::schedule::scheduled_by;
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{snapshot_tag, snapshots_tagged};
use pgml_testbed::kube::{TestNamespace, client};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::wait::{has_condition, wait_for, wait_gone};
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn pool_manifest(name: &str, node: &str, extra: &str) -> ZfsPool {
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  reclaimPolicy: Delete\n  volumes: {{count: 2, type: gp3, sizeGiB: 1}}\n{extra}"
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn phase(s: &EbsSnapshot) -> Option<SnapshotPhase> {
    s.status.as_ref().and_then(|st| st.phase)
}

/// Creates a pool on `node` and waits until it is Ready.
async fn ready_pool(pools: &Api<ZfsPool>, name: &str, node: &str) {
    pools
        .create(&PostParams::default(), &pool_manifest(name, node, ""))
        .await
        .unwrap();
    wait_for(pools, name, "Ready", READY_TIMEOUT, |p: &ZfsPool| {
        has_condition(p, "Ready", "True")
    })
    .await;
}

/// Merges `snapshots` (schedule and retention) into the pool's spec.
async fn set_snapshots(pools: &Api<ZfsPool>, name: &str, snapshots: Value) {
    let patch = json!({"spec": {"snapshots": snapshots}});
    pools
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn keep_last_3() -> Value {
    json!({"keepLast": 3, "hourly": 0, "daily": 0, "weekly": 0})
}

async fn scheduled(api: &Api<EbsSnapshot>, label: &str) -> Vec<EbsSnapshot> {
    let lp = ListParams::default().labels(&format!("{}={label}", keys::SCHEDULED_BY));
    let mut items = api.list(&lp).await.expect("listing EbsSnapshots").items;
    items.sort_by_key(|s| s.metadata.name.clone());
    items
}

/// The AWS snapshots moto holds for the namespace, grouped into sets by
/// `pgml.io/snapshot-uid`: uid → (snapshot IDs, `pgml.io/pool` tag of each).
async fn sets_in_moto(sb: &Sandbox, ns: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let tag = |s: &aws_sdk_ec2::types::Snapshot, k: &str| {
        snapshot_tag(s, k).unwrap_or_default().to_string()
    };
    let mut sets: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for s in &snapshots_tagged(sb, keys::NAMESPACE, ns).await {
        sets.entry(tag(s, keys::SNAPSHOT_UID)).or_default().push((
            s.snapshot_id().unwrap_or_default().to_string(),
            tag(s, keys::POOL),
        ));
    }
    sets
}

/// A schedule of every minute, keep-last 3, over five minutes: one EbsSnapshot per
/// minute, named after its slot; retention keeps the 3 newest Completed; once the schedule
/// is removed (retention still set) exactly 3 remain, all Completed, and moto holds
/// exactly their 3 sets of 2 snapshots, tagged with the pool. Deleting them (policy Delete)
/// leaves nothing in moto.
#[tokio::test]
async fn every_minute_with_keep_last_3_leaves_exactly_3_sets() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "sched").await;
    let node = &sb.nodes[0];
    let _operator: Proc = procs::operator(sb, ns.name());
    let _agent: Proc = procs::agent(sb, node, ns.name());
    let pools: Api<ZfsPool> = ns.api();
    let snaps: Api<EbsSnapshot> = ns.api();
    let name = "every-minute";
    let label = scheduled_by("ZfsPool", name);

    ready_pool(&pools, name, &node.name).await;

    let retention = keep_last_3();
    let every_minute = json!({"schedule": "* * * * *", "retention": retention});
    set_snapshots(&pools, name, every_minute).await;
    let started = Instant::now();

    // Watch for five minutes: every slot's snapshot appears and completes, and retention
    // never lets more than 3 Completed (plus the one just finished) pile up.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut most_completed = 0;
    while started.elapsed() < Duration::from_secs(5 * 60 + 10) {
        let now = scheduled(&snaps, &label).await;
        let completed = now
            .iter()
            .filter(|s| phase(s) == Some(SnapshotPhase::Completed))
            .count();
        most_completed = most_completed.max(completed);
        for s in &now {
            seen.insert(s.metadata.name.clone().unwrap());
            assert_ne!(
                phase(s),
                Some(SnapshotPhase::Failed),
                "a scheduled snapshot failed: {:#?}",
                s.status
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(
        most_completed <= 4,
        "retention let {most_completed} Completed snapshots stand"
    );
    assert!(
        (5..=6).contains(&seen.len()),
        "one snapshot per minute over five minutes, got {seen:?}"
    );
    for n in &seen {
        let stamp = n
            .strip_prefix(&format!("{name}-"))
            .expect("named after the pool");
        assert!(
            stamp.len() == 12 && stamp.chars().all(|c| c.is_ascii_digit()),
            "{n}: <pool>-<yyyymmddhhmm>"
        );
    }

    // The status names the last one and the next slot.
    let pool = pools.get(name).await.unwrap();
    let st = pool.status.clone().unwrap().schedule;
    // Listed again after the status was read: a slot may have fired since the loop's
    // last look (CI saw `every-minute-…32` named in status, created after that look).
    let listed: BTreeSet<String> = scheduled(&snaps, &label)
        .await
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let last_name = st.last_scheduled_snapshot.as_deref().unwrap();
    assert!(
        seen.contains(last_name) || listed.contains(last_name),
        "{st:?}, seen {seen:?}, listed now {listed:?}"
    );
    seen.extend(listed);
    let next = st.next_schedule_time.clone().expect("nextScheduleTime").0;
    let last = st.last_schedule_time.clone().expect("lastScheduleTime").0;
    assert_eq!(next.as_second() - last.as_second(), 60, "{st:?}");
    assert!(
        has_condition(&pool, "Ready", "True"),
        "the ZfsPool controller's status survived the scheduler's applies"
    );

    // Stop the schedule, keep the retention: the last one completes and is kept.
    set_snapshots(
        &pools,
        name,
        json!({"schedule": null, "retention": retention}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let remaining = loop {
        let now = scheduled(&snaps, &label).await;
        // A slot that fired just before the schedule was removed is made too.
        seen.extend(now.iter().filter_map(|s| s.metadata.name.clone()));
        let settled = now.len() == 3
            && now.iter().all(|s| {
                phase(s) == Some(SnapshotPhase::Completed)
                    && s.metadata.deletion_timestamp.is_none()
            });
        if settled {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "never settled at 3 Completed: {:#?}",
            now.iter()
                .map(|s| (
                    s.metadata.name.clone(),
                    phase(s),
                    s.metadata.deletion_timestamp.clone()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // The newest three of what was made.
    let newest: Vec<String> = seen.iter().rev().take(3).rev().cloned().collect();
    let kept: Vec<String> = remaining
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(kept, newest);

    // moto: exactly those three sets, two snapshots each, tagged with the pool. Snapshots of
    // pruned objects are deleted by the EbsSnapshot controller's finalizer.
    let uids: BTreeSet<String> = remaining
        .iter()
        .map(|s| s.metadata.uid.clone().unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sets = sets_in_moto(sb, ns.name()).await;
        if sets.keys().cloned().collect::<BTreeSet<_>>() == uids {
            for (uid, members) in &sets {
                assert_eq!(members.len(), 2, "set {uid}: {members:?}");
                assert!(members.iter().all(|(_, pool)| pool == name), "{members:?}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moto holds sets {:?}, the objects {uids:?}",
            sets.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The snapshots outlive the pool: no owner reference.
    assert!(
        remaining
            .iter()
            .all(|s| s.metadata.owner_references.is_none()),
        "scheduled snapshots must not be owned by the pool"
    );
    pools.delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(&pools, name, READY_TIMEOUT).await;
    assert_eq!(
        scheduled(&snaps, &label).await.len(),
        3,
        "they outlived the pool"
    );

    // Deleting them (policy Delete) empties moto.
    for s in &kept {
        snaps.delete(s, &DeleteParams::default()).await.unwrap();
    }
    for s in &kept {
        wait_gone(&snaps, s, Duration::from_secs(60)).await;
    }
    assert!(sets_in_moto(sb, ns.name()).await.is_empty());
    ns.cleanup().await;
}

/// The apiserver refuses a ZfsPool whose schedule is not cron; one that looks like cron
/// but names no real time passes admission and the operator reports it, scheduling
/// nothing.
#[tokio::test]
async fn schedules_that_cannot_run_are_refused_or_reported() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "sched-bad").await;
    let pools: Api<ZfsPool> = ns.api();
    // No such node: the ZfsPool controller creates nothing, the scheduler still judges.
    let node = "ip-10-9-9-9.ec2.internal";

    let bad = pool_manifest(
        "not-cron",
        node,
        "  snapshots: {schedule: 'every 5 minutes'}\n",
    );
    let err = pools
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("a schedule that is not cron is refused");
    let msg = err.to_string();
    assert!(msg.contains("must be a cron schedule"), "{msg}");

    let _operator: Proc = procs::operator(sb, ns.name());
    let never = pool_manifest("feb-31", node, "  snapshots: {schedule: '0 0 31 2 *'}\n");
    pools.create(&PostParams::default(), &never).await.unwrap();
    let events: Api<Event> = ns.api();
    let deadline = Instant::now() + Duration::from_secs(60);
    let note = loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("InvalidSchedule")
                    && e.involved_object.name.as_deref() == Some("feb-31")
            });
        if let Some(e) = found {
            break e.message.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "no InvalidSchedule event");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(note.contains("never fires"), "{note}");
    let pool = pools.get("feb-31").await.unwrap();
    let st = pool.status.map(|s| s.schedule).unwrap_or_default();
    assert_eq!(st.next_schedule_time, None);
    let snaps: Api<EbsSnapshot> = ns.api();
    assert!(
        snaps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    pools
        .delete("feb-31", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pools, "feb-31", READY_TIMEOUT).await;
    ns.cleanup().await;
}

/// `<pool>-<yyyymmddhhmm>` → the stamp.
fn stamp_of(name: &str) -> String {
    name[name.len() - 12..].to_string()
}

/// The operator killed right after it created a slot's EbsSnapshot, before its status said
/// so, and started again at once: the same slot gets AlreadyExists, counted as done — one
/// object, then recorded in status. Then the operator is down for more than two slots:
/// started again, it makes only the latest missed slot, none of the ones before it.
#[tokio::test]
async fn a_crash_after_create_and_downtime_make_no_extra_snapshots() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "sched-crash").await;
    let node = &sb.nodes[1];
    let mut operator: Proc = procs::operator(sb, ns.name());
    operator.kill();
    operator.set_env("PGML_FAILPOINTS", "schedule.after-create");
    operator.start();
    let _agent: Proc = procs::agent(sb, node, ns.name());
    let pools: Api<ZfsPool> = ns.api();
    let snaps: Api<EbsSnapshot> = ns.api();
    let name = "crashy";
    let label = scheduled_by("ZfsPool", name);
    ready_pool(&pools, name, &node.name).await;
    let every_minute = json!({"schedule": "* * * * *", "retention": keep_last_3()});
    set_snapshots(&pools, name, every_minute).await;

    assert!(
        operator.wait_exit(Duration::from_secs(90)),
        "the failpoint did not fire: {}",
        operator.log()
    );
    let made = scheduled(&snaps, &label).await;
    assert_eq!(made.len(), 1, "{made:?}");
    let first = made[0].metadata.name.clone().unwrap();
    let last_of = |p: &ZfsPool| {
        p.status
            .as_ref()
            .and_then(|s| s.schedule.last_scheduled_snapshot.clone())
    };
    assert_eq!(last_of(&pools.get(name).await.unwrap()), None);

    operator.unset_env("PGML_FAILPOINTS");
    operator.start();
    wait_for(
        &pools,
        name,
        "the crashed slot recorded",
        Duration::from_secs(30),
        |p: &ZfsPool| last_of(p).as_deref() == Some(first.as_str()),
    )
    .await;
    assert_eq!(
        scheduled(&snaps, &label)
            .await
            .iter()
            .filter(|s| stamp_of(s.metadata.name.as_deref().unwrap()) == stamp_of(&first))
            .count(),
        1
    );
    wait_for(&snaps, &first, "Completed", Duration::from_secs(60), |s| {
        phase(s) == Some(SnapshotPhase::Completed)
    })
    .await;

    // Down for more than two slots.
    assert!(operator.stop(Duration::from_secs(10)), "graceful stop");
    let before: BTreeSet<String> = scheduled(&snaps, &label)
        .await
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    let last_before = pools.get(name).await.unwrap();
    let last_before = last_of(&last_before).unwrap();
    tokio::time::sleep(Duration::from_secs(150)).await;
    let restarted_at = k8s_openapi::jiff::Timestamp::now();
    operator.start();
    let after = wait_for(
        &pools,
        name,
        "a snapshot after the downtime",
        Duration::from_secs(30),
        |p: &ZfsPool| last_of(p).is_some_and(|l| l != last_before),
    )
    .await;
    let caught_up = last_of(&after).unwrap();
    // The latest slot at or before the restart (or the one after it, when the first
    // reconcile fell just past a minute's end).
    let floor = restarted_at.as_second() - restarted_at.as_second().rem_euclid(60);
    let expected: Vec<String> = [floor, floor + 60]
        .iter()
        .map(|&s| {
            let slot = k8s_openapi::jiff::Timestamp::from_second(s).unwrap();
            pgml_api::schedule::scheduled_snapshot_name(name, slot)
        })
        .collect();
    assert!(
        expected.contains(&caught_up),
        "{caught_up} not in {expected:?}"
    );
    let now: BTreeSet<String> = scheduled(&snaps, &label)
        .await
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect();
    let missed: Vec<&String> = now
        .iter()
        .filter(|n| !before.contains(*n) && stamp_of(n) < stamp_of(&caught_up))
        .collect();
    assert!(missed.is_empty(), "missed slots were made up: {missed:?}");
    assert!(
        stamp_of(&caught_up) > stamp_of(&last_before),
        "{last_before} → {caught_up}"
    );

    let _ = pools
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"snapshots": null}})),
        )
        .await;
    for s in &now {
        let _ = snaps.delete(s, &DeleteParams::default()).await;
    }
    for s in &now {
        wait_gone(&snaps, s, Duration::from_secs(90)).await;
    }
    pools.delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(&pools, name, READY_TIMEOUT).await;
    assert!(sets_in_moto(sb, ns.name()).await.is_empty());
    ns.cleanup().await;
}
