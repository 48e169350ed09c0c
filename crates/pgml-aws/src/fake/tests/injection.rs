//! Rules (fail, fail after effect, throttle, no answer, delay; scoped, counted) and the
//! record of calls.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::fake::{FakeEc2, Outcome};
use crate::{Batched, Ec2, ErrorKind, classify};

fn world() -> FakeEc2 {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    fake
}

#[tokio::test]
async fn a_rule_fails_the_next_call_once_by_default_classified_as_sdk_ec2_classifies() {
    let fake = world();
    let rule = fake.on("CreateVolume").fail("InsufficientVolumeCapacity");
    let e = fake
        .create_volume(&request("t", 10, "p"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "InsufficientVolumeCapacity");
    assert_eq!(e.kind, ErrorKind::Transient);
    assert_eq!(e.action, "CreateVolume");
    assert!(
        fake.find_volumes(&filter(&[("pool", "p")]))
            .await
            .unwrap()
            .is_empty(),
        "failed before taking effect"
    );
    fake.create_volume(&request("t", 10, "p")).await.unwrap();
    assert_eq!(fake.fired(rule), 1);
    assert!(fake.unfired().is_empty());
}

#[tokio::test]
async fn every_code_is_classified_by_the_real_classifier() {
    let fake = world();
    for code in [
        "RequestLimitExceeded",
        "InternalError",
        "Unavailable",
        "VolumeInUse",
        "IncorrectState",
        "IdempotentParameterMismatch",
        "AttachmentLimitExceeded",
        "InvalidParameterValue",
        "InvalidVolume.NotFound",
        "InvalidVolumeID.Malformed",
        "UnauthorizedOperation",
        "SomethingNew",
    ] {
        fake.on("DescribeVolumes").fail(code);
        let e = fake.describe_volumes(&ids(&["vol-1"])).await.unwrap_err();
        let status = crate::fake::status_of(code);
        assert_eq!(e.kind, classify(Some(code), Some(status)), "{code}");
        assert_eq!(e.code, code);
    }
    // A status of its own: classified by it when the code says nothing.
    fake.on("DescribeVolumes")
        .fail_with("SomethingNew", 502, "bad gateway");
    let e = fake.describe_volumes(&ids(&["vol-1"])).await.unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Transient, "bad gateway")
    );
}

#[tokio::test]
async fn throttling_and_no_answer_are_retryable() {
    let fake = world();
    fake.on("AttachVolume").times(2).throttle();
    fake.on("DetachVolume").no_answer();
    let v = created(&fake, "t", 10, "p").await;
    for _ in 0..2 {
        let e = fake
            .attach_volume(&v, NODE, "/dev/xvdba")
            .await
            .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.kind),
            ("RequestLimitExceeded", ErrorKind::Throttled)
        );
        assert!(e.is_retryable());
    }
    fake.attach_volume(&v, NODE, "/dev/xvdba").await.unwrap();
    let e = fake.detach_volume(&v, NODE, false).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("DispatchFailure", ErrorKind::Transient)
    );
    assert_eq!(
        fake.volume(&v).unwrap().state,
        "in-use",
        "no answer, no effect"
    );
    assert_eq!(fake.count("AttachVolume"), 3);
    assert_eq!(fake.count_ok("AttachVolume"), 1);
}

#[tokio::test]
async fn a_failure_after_effect_leaves_the_volume_and_its_token_finds_it_again() {
    let fake = world();
    fake.on("CreateVolume").after_effect().fail("InternalError");
    let req = request("crash-safe", 10, "p");
    let e = fake.create_volume(&req).await.unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InternalError", ErrorKind::Transient)
    );
    let made = fake.find_volumes(&filter(&[("pool", "p")])).await.unwrap();
    assert_eq!(made.len(), 1, "the call took effect");
    let again = fake.create_volume(&req).await.unwrap();
    assert_eq!(again.volume_id, made[0].volume_id);
    assert_eq!(
        fake.find_volumes(&filter(&[("pool", "p")]))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn scoping_skipping_and_always() {
    let fake = world();
    let a = created(&fake, "a", 10, "p").await;
    let b = created(&fake, "b", 10, "p").await;
    // Only b's attach, only its second try, and from then on every one.
    let rule = fake
        .on("AttachVolume")
        .matching(b.clone())
        .skip(1)
        .always()
        .fail("IncorrectState");
    fake.attach_volume(&a, NODE, "/dev/xvdba").await.unwrap();
    let e = fake
        .attach_volume(&b, NODE, "/dev/xvdba")
        .await
        .unwrap_err();
    assert_eq!(
        e.code, "InvalidParameterValue",
        "the first try of b goes through to EC2"
    );
    for _ in 0..3 {
        let e = fake
            .attach_volume(&b, NODE, "/dev/xvdbb")
            .await
            .unwrap_err();
        assert_eq!(e.code, "IncorrectState");
    }
    assert_eq!(fake.fired(rule), 3);
    assert!(
        fake.unfired().is_empty(),
        "a rule for every call is never owed a call"
    );
    fake.remove_rule(rule);
    fake.attach_volume(&b, NODE, "/dev/xvdbb").await.unwrap();

    // A predicate over the call's arguments; "*" for any action.
    let big = fake
        .on("*")
        .when(|c| {
            c.arg("Size")
                .is_some_and(|s| s.parse::<i32>().unwrap() > 100)
        })
        .times(5)
        .fail("VolumeLimitExceeded");
    let e = fake
        .create_volume(&request("c", 500, "p"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("VolumeLimitExceeded", ErrorKind::Invalid)
    );
    fake.create_volume(&request("d", 50, "p")).await.unwrap();
    assert_eq!(fake.unfired(), [big], "owed four more calls");
    fake.clear_rules();
    fake.create_volume(&request("c", 500, "p")).await.unwrap();
}

#[tokio::test]
async fn the_first_matching_failure_wins_and_the_next_keeps_its_turn() {
    let fake = world();
    let first = fake.on("DescribeVolumes").fail("InternalError");
    let second = fake.on("DescribeVolumes").throttle();
    let e = fake.describe_volumes(&ids(&["vol-1"])).await.unwrap_err();
    assert_eq!(e.code, "InternalError");
    let e = fake.describe_volumes(&ids(&["vol-1"])).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert_eq!((fake.fired(first), fake.fired(second)), (1, 1));
    fake.describe_volumes(&ids(&["vol-1"])).await.unwrap();
}

#[tokio::test]
async fn injected_not_found_on_a_deletion_is_success_as_through_sdk_ec2() {
    let fake = world();
    let v = created(&fake, "a", 10, "p").await;
    fake.on("DeleteVolume").fail("InvalidVolume.NotFound");
    fake.on("DetachVolume").fail("IncorrectState");
    fake.delete_volume(&v).await.unwrap();
    assert!(fake.volume(&v).is_some(), "refused before taking effect");
    let e = fake.detach_volume(&v, NODE, false).await.unwrap_err();
    assert_eq!(
        e.code, "IncorrectState",
        "not the 'available' message: an error"
    );
    fake.on("DescribeInstances")
        .fail("InvalidInstanceID.NotFound");
    assert_eq!(fake.describe_instance(NODE).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn delays_run_in_tokio_time_before_the_effect_or_before_the_answer() {
    let fake = Arc::new(world());
    fake.on("CreateVolume").delay(Duration::from_secs(10));
    fake.on("CreateVolume")
        .skip(1)
        .after_effect()
        .delay(Duration::from_secs(30));
    let start = tokio::time::Instant::now();
    let f = fake.clone();
    let slow = tokio::spawn(async move { f.create_volume(&request("a", 10, "p")).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        fake.volumes().iter().all(|v| v.tags.is_empty()),
        "not created yet"
    );
    assert_eq!(fake.calls()[0].outcome, Outcome::InFlight);
    slow.await.unwrap().unwrap();
    about(start.elapsed(), 10);

    let f = fake.clone();
    let held = tokio::spawn(async move { f.create_volume(&request("b", 10, "p")).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.find_volumes(&filter(&[("pool", "p")]))
            .await
            .unwrap()
            .len(),
        2,
        "created, the answer held"
    );
    assert!(!held.is_finished());
    held.await.unwrap().unwrap();
    about(start.elapsed(), 40);
}

/// `secs`, give or take the timer's millisecond.
fn about(elapsed: Duration, secs: u64) {
    let want = Duration::from_secs(secs);
    assert!(
        elapsed >= want && elapsed < want + Duration::from_millis(10),
        "{elapsed:?}, not {want:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_delayed_call_dropped_by_its_caller_never_takes_effect() {
    let fake = world();
    fake.on("CreateVolume").delay(Duration::from_secs(60));
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        fake.create_volume(&request("a", 10, "p")),
    )
    .await;
    assert!(r.is_err(), "timed out");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        fake.find_volumes(&filter(&[("pool", "p")]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(fake.calls_of("CreateVolume")[0].outcome, Outcome::InFlight);
}

#[test]
#[should_panic(expected = "knows no EC2 action")]
fn a_misspelt_action_is_refused() {
    let fake = FakeEc2::new();
    let _ = fake.on("CreateVolumes").fail("InternalError");
}

#[tokio::test]
async fn calls_are_recorded_in_order_with_their_key_arguments() {
    let fake = world();
    let v = created(&fake, "tok-1", 10, "p").await;
    fake.attach_volume(&v, NODE, "/dev/xvdba").await.unwrap();
    fake.find_volumes(&filter(&[("pool", "p")])).await.unwrap();
    // No call where SdkEc2 makes none.
    fake.describe_volumes(&[]).await.unwrap();
    fake.describe_instances(&[]).await.unwrap();
    fake.describe_snapshots(&[]).await.unwrap();
    fake.create_tags(&[], &tags(&[("a", "b")])).await.unwrap();
    fake.create_tags(&ids(&[&v]), &tags(&[])).await.unwrap();
    fake.delete_volume(&v).await.unwrap_err();
    assert_eq!(
        fake.actions(),
        [
            "CreateVolume",
            "AttachVolume",
            "DescribeVolumes",
            "DeleteVolume"
        ]
    );
    let calls = fake.calls();
    assert_eq!(calls[0].method, "create_volume");
    assert_eq!(calls[0].arg("ClientToken"), Some("tok-1"));
    assert_eq!(calls[0].arg("Size"), Some("10"));
    assert_eq!(calls[0].arg("tag:pool"), Some("p"));
    assert_eq!(calls[0].arg("SnapshotId"), None);
    assert_eq!(
        (
            calls[1].arg("VolumeId"),
            calls[1].arg("InstanceId"),
            calls[1].arg("Device")
        ),
        (Some(v.as_str()), Some(NODE), Some("/dev/xvdba"))
    );
    assert!(calls[1].mentions(NODE));
    assert_eq!(calls[2].method, "find_volumes");
    assert_eq!(calls[3].outcome, Outcome::Error("VolumeInUse".into()));
    assert_eq!(fake.count("DeleteVolume"), 1);
    assert_eq!(fake.count_ok("DeleteVolume"), 0);
    fake.forget_calls();
    assert!(fake.calls().is_empty());
    assert!(fake.volume(&v).is_some(), "the world stays");
}

#[tokio::test(start_paused = true)]
async fn the_batcher_over_the_fake_makes_one_describe_of_many() {
    let fake = Arc::new(world());
    let a = created(&fake, "a", 10, "p").await;
    let b = created(&fake, "b", 10, "p").await;
    let batched = Batched::new(fake.clone());
    let (ka, kb, kz) = (ids(&[&a]), ids(&[&b]), ids(&["vol-00000000000000999"]));
    let (x, y, z) = tokio::join!(
        batched.describe_volumes(&ka),
        batched.describe_volumes(&kb),
        batched.describe_volumes(&kz),
    );
    assert_eq!(x.unwrap()[0].volume_id, a);
    assert_eq!(y.unwrap()[0].volume_id, b);
    assert!(z.unwrap().is_empty());
    let describes = fake.calls_of("DescribeVolumes");
    assert_eq!(describes.len(), 1);
    assert_eq!(describes[0].args_named("VolumeId").len(), 3);
}
