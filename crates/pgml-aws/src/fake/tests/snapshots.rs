//! CreateSnapshots, snapshot states and faults, snapshot searches and deletion, restore.

use super::*;
use crate::fake::{FakeEc2, Outcome, Timing};
use crate::{CreateSnapshotSet, Ec2, ErrorKind};

/// An instance with three attached members (`a`, `b`, `c`, tagged `member`) and one
/// volume still attaching (`d`); returns the members' IDs.
async fn pool(fake: &FakeEc2) -> Vec<String> {
    fake.add_instance(NODE, ZONE, "m6i.large");
    let mut out = Vec::new();
    for (i, t) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut r = request(t, 10 + i as i32, "p");
        r.tags.insert("member".into(), i.to_string());
        let id = fake.create_volume(&r).await.unwrap().volume_id;
        if *t == "d" {
            fake.stick_attachments(&id);
        }
        let device = crate::device_name_hint(i).unwrap();
        fake.attach_volume(&id, NODE, &device).await.unwrap();
        out.push(id);
    }
    out
}

fn set_request(exclude: &[&str]) -> CreateSnapshotSet {
    CreateSnapshotSet {
        instance_id: NODE.into(),
        exclude_volume_ids: ids(exclude),
        description: "set 1".into(),
        tags: tags(&[("set", "s1"), ("member", "overridden")]),
    }
}

#[tokio::test]
async fn a_set_covers_the_attached_volumes_but_the_boot_volume_and_the_excluded() {
    let fake = FakeEc2::new();
    let m = pool(&fake).await;
    let set = fake
        .create_snapshot_set(&set_request(&[&m[1]]))
        .await
        .unwrap();
    let mut of: Vec<&str> = set.iter().map(|s| s.volume_id.as_str()).collect();
    of.sort();
    // b excluded, d not attached yet, the root volume never.
    assert_eq!(of, [m[0].as_str(), m[2].as_str()]);
    for s in &set {
        assert_eq!(s.state, "pending");
        assert!(s.snapshot_id.starts_with("snap-"));
        assert!(s.start_time.is_some());
        assert_eq!(s.tags["set"], "s1");
        assert_eq!(s.tags["pool"], "p", "the volume's tags are copied");
        assert_eq!(s.tags["member"], "overridden", "the request's tags win");
        assert_eq!(
            fake.snapshot_description(&s.snapshot_id).as_deref(),
            Some("set 1")
        );
    }
    assert_eq!(
        set.iter()
            .find(|s| s.volume_id == m[2])
            .unwrap()
            .volume_size_gib,
        Some(12)
    );
    let call = &fake.calls_of("CreateSnapshots")[0];
    assert_eq!(call.args_named("ExcludeDataVolumeId"), [m[1].as_str()]);
    let e = fake
        .create_snapshot_set(&CreateSnapshotSet {
            instance_id: "i-0000000000000dead".into(),
            ..set_request(&[])
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InvalidInstanceID.NotFound", ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn snapshots_stay_pending_for_their_describes_then_complete_or_fail() {
    let fake = FakeEc2::with_timing(Timing {
        snapshot_pending: 2,
        ..Timing::default()
    });
    let m = pool(&fake).await;
    fake.fail_next_snapshots(1, Some(&m[2]), "the volume's data could not be read");
    let set = fake.create_snapshot_set(&set_request(&[])).await.unwrap();
    assert_eq!(set.len(), 3);
    let all: Vec<String> = set.iter().map(|s| s.snapshot_id.clone()).collect();
    let states = |got: &[crate::Snapshot]| -> Vec<(String, String)> {
        let mut v: Vec<_> = got
            .iter()
            .map(|s| (s.volume_id.clone(), s.state.clone()))
            .collect();
        v.sort();
        v
    };
    let pending = fake.describe_snapshots(&all).await.unwrap();
    assert!(
        pending
            .iter()
            .all(|s| s.state == "pending" && s.progress.as_deref() == Some("0%"))
    );
    fake.describe_snapshots(&all).await.unwrap();
    let done = fake.describe_snapshots(&all).await.unwrap();
    assert_eq!(
        states(&done),
        [
            (m[0].clone(), "completed".into()),
            (m[1].clone(), "completed".into()),
            (m[2].clone(), "error".into()),
        ]
    );
    let failed = done.iter().find(|s| s.volume_id == m[2]).unwrap();
    assert_eq!(
        failed.state_message.as_deref(),
        Some("the volume's data could not be read")
    );
    assert!(
        done.iter()
            .filter(|s| s.state == "completed")
            .all(|s| s.state_message.is_none())
    );

    // The fault was for one snapshot: the next set completes everywhere.
    fake.set_timing(Timing::default());
    let next = fake.create_snapshot_set(&set_request(&[])).await.unwrap();
    let next_ids: Vec<String> = next.iter().map(|s| s.snapshot_id.clone()).collect();
    let seen = fake.describe_snapshots(&next_ids).await.unwrap();
    assert!(
        seen.iter()
            .all(|s| s.state == "completed" && s.progress.as_deref() == Some("100%"))
    );

    // A completed snapshot can be made to fail afterwards too.
    fake.fail_snapshot(&next_ids[0], "lost");
    assert_eq!(fake.snapshot(&next_ids[0]).unwrap().state, "error");
}

#[tokio::test]
async fn snapshots_are_found_by_tag_and_deleted_idempotently() {
    let fake = FakeEc2::new();
    pool(&fake).await;
    let s1 = fake.create_snapshot_set(&set_request(&[])).await.unwrap();
    let mut other = set_request(&[]);
    other.tags = tags(&[("set", "s2")]);
    let s2 = fake.create_snapshot_set(&other).await.unwrap();
    assert_eq!(
        fake.find_snapshots(&filter(&[("set", "s1")]))
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        fake.find_snapshots(&filter(&[("set", "s*")]))
            .await
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        fake.find_snapshots(&filter(&[("set", "s2"), ("member", "0")]))
            .await
            .unwrap()
            .len(),
        1
    );
    let gone = s1[0].snapshot_id.clone();
    fake.delete_snapshot(&gone).await.unwrap();
    fake.delete_snapshot(&gone).await.unwrap();
    assert_eq!(
        fake.calls_of("DeleteSnapshot")
            .into_iter()
            .map(|c| c.outcome)
            .collect::<Vec<_>>(),
        [
            Outcome::Ok,
            Outcome::Error("InvalidSnapshot.NotFound".into())
        ]
    );
    let left = fake
        .describe_snapshots(&ids(&[&gone, &s2[0].snapshot_id]))
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "a deleted snapshot is left out");
    assert_eq!(fake.snapshots().len(), 5);
}

#[tokio::test]
async fn volumes_restore_from_completed_snapshots_only() {
    let fake = FakeEc2::with_timing(Timing {
        snapshot_pending: 1,
        ..Timing::default()
    });
    let m = pool(&fake).await;
    let set = fake.create_snapshot_set(&set_request(&[])).await.unwrap();
    let snap = set.iter().find(|s| s.volume_id == m[1]).unwrap();
    let from = |size: i32| CreateVolume {
        snapshot_id: Some(snap.snapshot_id.clone()),
        ..request("restore", size, "q")
    };
    let e = fake.create_volume(&from(11)).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("IncorrectState", ErrorKind::Transient)
    );
    fake.settle();
    let e = fake.create_volume(&from(5)).await.unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue", "smaller than the snapshot");
    let v = fake.create_volume(&from(11)).await.unwrap();
    assert_eq!(v.snapshot_id.as_deref(), Some(snap.snapshot_id.as_str()));
}

#[tokio::test]
async fn changed_bytes_are_what_the_test_set_and_404_for_unknown_snapshots() {
    let fake = FakeEc2::new();
    pool(&fake).await;
    let a = fake.create_snapshot_set(&set_request(&[])).await.unwrap();
    let b = fake.create_snapshot_set(&set_request(&[])).await.unwrap();
    let (first, second) = (&a[0].snapshot_id, &b[0].snapshot_id);
    assert_eq!(fake.changed_bytes(first, second).await.unwrap(), 0);
    fake.set_changed_bytes(first, second, 3 << 19);
    assert_eq!(fake.changed_bytes(first, second).await.unwrap(), 3 << 19);
    let e = fake
        .changed_bytes(first, "snap-00000000000000999")
        .await
        .unwrap_err();
    assert_eq!(e.code, "ResourceNotFoundException");
    assert_eq!(
        e.kind,
        crate::classify(Some("ResourceNotFoundException"), Some(404))
    );
    assert_eq!(e.action, "ListChangedBlocks");
}
