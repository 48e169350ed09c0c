//! Volumes: states, client tokens, modifications, deletions, tag filters.

use super::*;
use crate::fake::{FakeEc2, Outcome, Timing, glob};
use crate::{AttachmentState, Ec2, ErrorKind, ModifyVolume};

#[tokio::test]
async fn a_new_volume_answers_creating_then_is_available_with_its_tags() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    let v = fake.create_volume(&request("t0", 100, "p1")).await.unwrap();
    assert_eq!(v.state, "creating");
    assert!(v.volume_id.starts_with("vol-") && v.volume_id.len() == 21);
    assert_eq!(
        (v.size_gib, v.iops, v.throughput_mibps),
        (100, Some(3000), Some(125))
    );
    assert!(v.encrypted);
    let seen = fake.describe_volumes(&ids(&[&v.volume_id])).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].state, "available");
    assert_eq!(seen[0].tags, tags(&[("pool", "p1")]));
}

#[tokio::test]
async fn transitions_hold_for_as_many_describes_as_timing_says() {
    let fake = FakeEc2::with_timing(Timing {
        creating: 2,
        attaching: 1,
        detaching: 1,
        deleting: 1,
        ..Timing::default()
    });
    fake.add_instance(NODE, ZONE, "m6i.large");
    let id = created(&fake, "t0", 10, "p").await;
    let fake = &fake;
    let look = || {
        let id = id.clone();
        async move { fake.describe_volumes(&ids(&[&id])).await.unwrap() }
    };
    assert_eq!(look().await[0].state, "creating");
    // A look from the test does not count.
    assert_eq!(fake.volume(&id).unwrap().state, "creating");
    assert_eq!(look().await[0].state, "creating");
    assert_eq!(look().await[0].state, "available");

    let a = fake.attach_volume(&id, NODE, "/dev/xvdba").await.unwrap();
    assert_eq!(a, AttachmentState::Attaching);
    let v = &look().await[0];
    assert_eq!(v.state, "in-use");
    assert_eq!(v.attachments[0].state, AttachmentState::Attaching);
    let v = &look().await[0];
    assert_eq!(v.attachments[0].state, AttachmentState::Attached);
    assert_eq!(v.attachments[0].device, "/dev/xvdba");

    fake.detach_volume(&id, NODE, false).await.unwrap();
    assert_eq!(
        look().await[0].attachments[0].state,
        AttachmentState::Detaching
    );
    let v = &look().await[0];
    assert_eq!((v.state.as_str(), v.attachments.len()), ("available", 0));

    fake.delete_volume(&id).await.unwrap();
    assert_eq!(look().await[0].state, "deleting");
    assert!(look().await.is_empty(), "gone after deleting");
}

#[tokio::test]
async fn settle_ends_every_transition_but_a_stuck_attachment() {
    let fake = FakeEc2::with_timing(Timing {
        creating: 5,
        attaching: 5,
        ..Timing::default()
    });
    fake.add_instance(NODE, ZONE, "m6i.large");
    let a = fake.create_volume(&request("a", 10, "p")).await.unwrap();
    let b = fake.create_volume(&request("b", 10, "p")).await.unwrap();
    fake.settle();
    fake.stick_attachments(&b.volume_id);
    fake.attach_volume(&a.volume_id, NODE, "/dev/xvdba")
        .await
        .unwrap();
    fake.attach_volume(&b.volume_id, NODE, "/dev/xvdbb")
        .await
        .unwrap();
    fake.settle();
    let state = |id: &str| fake.volume(id).unwrap().attachments[0].state;
    assert_eq!(state(&a.volume_id), AttachmentState::Attached);
    assert_eq!(state(&b.volume_id), AttachmentState::Attaching);
    for _ in 0..3 {
        fake.describe_volumes(&ids(&[&b.volume_id])).await.unwrap();
    }
    assert_eq!(state(&b.volume_id), AttachmentState::Attaching, "stuck");
    fake.release_attachments(&b.volume_id);
    fake.settle();
    assert_eq!(state(&b.volume_id), AttachmentState::Attached);
}

#[tokio::test]
async fn a_client_token_returns_its_volume_and_refuses_other_parameters() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    let first = fake.create_volume(&request("tok", 10, "p")).await.unwrap();
    let again = fake.create_volume(&request("tok", 10, "p")).await.unwrap();
    assert_eq!(again.volume_id, first.volume_id);
    assert_eq!(again.state, "available", "as it is now");
    let e = fake
        .create_volume(&request("tok", 20, "p"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "IdempotentParameterMismatch");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.action, "CreateVolume");
    // Another token is another volume; the tags differ, so does the request.
    let other = fake.create_volume(&request("tok2", 10, "p")).await.unwrap();
    assert_ne!(other.volume_id, first.volume_id);
    let e = fake
        .create_volume(&request("tok", 10, "q"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "IdempotentParameterMismatch");
    assert_eq!(
        fake.find_volumes(&filter(&[("pool", "*")]))
            .await
            .unwrap()
            .len(),
        2
    );

    // Once deleted, the token still answers its volume, now `deleted`, and makes none.
    fake.delete_volume(&first.volume_id).await.unwrap();
    let after = fake.create_volume(&request("tok", 10, "p")).await.unwrap();
    assert_eq!(
        (after.volume_id.as_str(), after.state.as_str()),
        (first.volume_id.as_str(), "deleted")
    );
    assert_eq!(
        fake.find_volumes(&filter(&[("pool", "p")]))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn concurrent_creates_with_one_token_make_one_volume() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    let req = request("same", 10, "p");
    let all = futures::future::join_all((0..8).map(|_| fake.create_volume(&req))).await;
    let made: std::collections::BTreeSet<String> =
        all.into_iter().map(|r| r.unwrap().volume_id).collect();
    assert_eq!(made.len(), 1);
    assert_eq!(fake.count("CreateVolume"), 8);
}

#[tokio::test]
async fn create_refuses_what_ec2_refuses() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    let e = fake
        .create_volume(&CreateVolume {
            availability_zone: "us-east-1z".into(),
            ..request("z", 10, "p")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InvalidParameterValue", ErrorKind::Invalid)
    );
    let e = fake
        .create_volume(&request("big", 20000, "p"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue");
    let e = fake
        .create_volume(&CreateVolume {
            snapshot_id: Some("snap-00000000000000999".into()),
            ..request("s", 10, "p")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InvalidSnapshot.NotFound", ErrorKind::NotFound)
    );
    let e = fake
        .create_volume(&CreateVolume {
            volume_type: VolumeType::Io2,
            ..request("io2", 10, "p")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, "MissingParameter");
    assert!(
        fake.find_volumes(&[])
            .await
            .unwrap()
            .iter()
            .all(|v| v.tags.is_empty()),
        "only the root volume"
    );
}

#[tokio::test]
async fn delete_of_an_attached_volume_is_volume_in_use_and_of_a_gone_one_succeeds() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    let v = created(&fake, "t", 10, "p").await;
    fake.attach_volume(&v, NODE, "/dev/xvdba").await.unwrap();
    let e = fake.delete_volume(&v).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("VolumeInUse", ErrorKind::Transient)
    );
    assert!(e.message.contains(NODE));
    fake.detach_volume(&v, NODE, false).await.unwrap();
    fake.delete_volume(&v).await.unwrap();
    assert_eq!(fake.volume(&v), None);
    fake.delete_volume(&v).await.unwrap();
    assert_eq!(
        fake.calls_of("DeleteVolume")[2].outcome,
        Outcome::Error("InvalidVolume.NotFound".into())
    );
}

#[tokio::test]
async fn modify_grows_in_place_and_refuses_shrinking_and_a_second_modification() {
    let fake = FakeEc2::with_timing(Timing {
        modifying: 1,
        ..Timing::default()
    });
    fake.add_instance(NODE, ZONE, "m6i.large");
    let v = created(&fake, "t", 10, "p").await;
    let grow = |size: i32| ModifyVolume {
        volume_id: v.clone(),
        size_gib: Some(size),
        iops: Some(4000),
        throughput_mibps: None,
    };
    fake.modify_volume(&grow(20)).await.unwrap();
    let now = fake.volume(&v).unwrap();
    assert_eq!(
        (now.size_gib, now.iops, now.throughput_mibps),
        (20, Some(4000), Some(125))
    );
    let e = fake.modify_volume(&grow(30)).await.unwrap_err();
    assert_eq!(e.code, "IncorrectModificationState");
    fake.describe_volumes(&ids(&[&v])).await.unwrap();
    let e = fake.modify_volume(&grow(15)).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InvalidParameterValue", ErrorKind::Invalid)
    );
    fake.modify_volume(&grow(30)).await.unwrap();
    assert_eq!(fake.volume(&v).unwrap().size_gib, 30);
    let e = fake
        .modify_volume(&ModifyVolume {
            volume_id: "vol-00000000000000999".into(),
            ..grow(40)
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::NotFound,
        "not swallowed: the adapter only forgives deletes"
    );
}

#[tokio::test]
async fn tag_filters_match_as_ec2s_do() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    let mut ids_by = BTreeMap::new();
    for (t, pool, member) in [
        ("a", "p1", "0"),
        ("b", "p1", "1"),
        ("c", "p2", "0"),
        ("d", "p10", "0"),
    ] {
        let mut r = request(t, 10, pool);
        r.tags.insert("member".into(), member.into());
        ids_by.insert(t, fake.create_volume(&r).await.unwrap().volume_id);
    }
    let (fake, ids_by) = (&fake, &ids_by);
    let found = |f: Vec<(String, String)>| async move {
        let got = fake.find_volumes(&f).await.unwrap();
        let mut names: Vec<&str> = got
            .iter()
            .map(|v| *ids_by.iter().find(|(_, id)| **id == v.volume_id).unwrap().0)
            .collect();
        names.sort();
        names
    };
    assert_eq!(found(filter(&[("pool", "p1")])).await, ["a", "b"]);
    assert_eq!(
        found(filter(&[("pool", "p1"), ("member", "1")])).await,
        ["b"]
    );
    assert_eq!(found(filter(&[("pool", "p?")])).await, ["a", "b", "c"]);
    assert_eq!(found(filter(&[("pool", "p1*")])).await, ["a", "b", "d"]);
    assert_eq!(found(filter(&[("owner", "*")])).await, Vec::<&str>::new());
    let any = fake
        .find_volumes_any("pool", &ids(&["p2", "p10", "nope"]))
        .await
        .unwrap();
    assert_eq!(any.len(), 2);
    assert!(fake.find_volumes_any("pool", &[]).await.unwrap().is_empty());
    assert_eq!(
        fake.count("DescribeVolumes"),
        6,
        "an empty list of values makes no call"
    );

    // CreateTags adds and overwrites; on an unknown resource it tags nothing.
    let a = ids_by["a"].clone();
    fake.create_tags(&ids(&[&a]), &tags(&[("member", "7"), ("x", "y")]))
        .await
        .unwrap();
    assert_eq!(found(filter(&[("member", "7"), ("x", "y")])).await, ["a"]);
    let e = fake
        .create_tags(
            &ids(&[&ids_by["b"], "vol-00000000000000999"]),
            &tags(&[("x", "z")]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "InvalidVolume.NotFound");
    assert_eq!(found(filter(&[("x", "z")])).await, Vec::<&str>::new());
    let e = fake
        .create_tags(&ids(&["bogus"]), &tags(&[("x", "z")]))
        .await
        .unwrap_err();
    assert_eq!(e.code, "InvalidID");
}

#[test]
fn glob_patterns() {
    assert!(glob("*", ""));
    assert!(glob("a*c", "abbbc"));
    assert!(glob("a?c", "abc"));
    assert!(!glob("a?c", "ac"));
    assert!(!glob("abc", "abcd"));
    assert!(glob(r"a\*", "a*"));
    assert!(!glob(r"a\*", "ab"));
    assert!(glob("*-1*", "pool-12"));
}
