//! Instances, attachments and detachments, faults of state.

use super::*;
use crate::fake::{FakeEc2, Outcome, ROOT_DEVICE, Timing};
use crate::{AttachmentState, Ec2, ErrorKind, InstanceTypeLimits};

#[tokio::test]
async fn instances_show_their_zone_root_device_and_attachments() {
    let fake = FakeEc2::new();
    let root = fake.add_instance(NODE, ZONE, "m6i.large");
    let i = fake.describe_instance(NODE).await.unwrap().unwrap();
    assert_eq!(i.availability_zone, ZONE);
    assert_eq!(i.instance_type, "m6i.large");
    assert_eq!(i.state, "running");
    assert_eq!(i.root_device_name.as_deref(), Some(ROOT_DEVICE));
    assert_eq!(i.block_devices, tags(&[(ROOT_DEVICE, &root)]));
    let v = fake.create_volume(&request("t", 10, "p")).await.unwrap();
    fake.attach_volume(&v.volume_id, NODE, "/dev/xvdba")
        .await
        .unwrap();
    let i = fake.describe_instance(NODE).await.unwrap().unwrap();
    assert_eq!(i.block_devices.get("/dev/xvdba"), Some(&v.volume_id));
    // Unknown and malformed IDs: None, as SdkEc2 answers EC2's NotFound / Malformed.
    assert_eq!(
        fake.describe_instance("i-0000000000000dead").await.unwrap(),
        None
    );
    assert_eq!(fake.describe_instance("node-1").await.unwrap(), None);
    let errs: Vec<Outcome> = fake.calls_of("DescribeInstances")[2..]
        .iter()
        .map(|c| c.outcome.clone())
        .collect();
    assert_eq!(
        errs,
        [
            Outcome::Error("InvalidInstanceID.NotFound".into()),
            Outcome::Error("InvalidInstanceID.Malformed".into())
        ]
    );
    let some = fake
        .describe_instances(&ids(&[NODE, "i-0000000000000dead"]))
        .await
        .unwrap();
    assert_eq!(some.len(), 1);
    let attached = fake.attached_volumes(NODE).await.unwrap();
    let mut got: Vec<&str> = attached.iter().map(|v| v.volume_id.as_str()).collect();
    got.sort();
    let mut want = vec![root.as_str(), v.volume_id.as_str()];
    want.sort();
    assert_eq!(got, want, "boot volume included");
}

#[tokio::test]
async fn instance_types_have_limits_and_an_unknown_type_is_refused_as_ec2_does() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    let l = fake.instance_type_limits("m6i.large").await.unwrap();
    assert_eq!(l.maximum_ebs_attachments, Some(28));
    fake.set_instance_type(InstanceTypeLimits {
        instance_type: "r6i.xlarge".into(),
        maximum_iops: Some(40000),
        ..Default::default()
    });
    let l = fake.instance_type_limits("r6i.xlarge").await.unwrap();
    assert_eq!(l.maximum_iops, Some(40000));
    let e = fake.instance_type_limits("x9.nano").await.unwrap_err();
    assert_eq!(e.code, "InvalidInstanceType");
    assert_eq!(
        e.kind,
        crate::classify(Some("InvalidInstanceType"), Some(400))
    );
}

#[tokio::test]
async fn attach_refuses_what_ec2_refuses() {
    let fake = FakeEc2::with_timing(Timing {
        creating: 1,
        ..Timing::default()
    });
    fake.add_instance(NODE, ZONE, "tiny.type");
    fake.add_instance("i-0000000000000b002", "us-east-1b", "tiny.type");
    fake.set_instance_type(InstanceTypeLimits {
        instance_type: "tiny.type".into(),
        maximum_ebs_attachments: Some(3),
        ..Default::default()
    });
    let fake = &fake;
    let mk = |t: &'static str| async move {
        fake.create_volume(&request(t, 10, "p"))
            .await
            .unwrap()
            .volume_id
    };
    let (a, b, c, d) = (mk("a").await, mk("b").await, mk("c").await, mk("d").await);

    let e = fake
        .attach_volume(&a, NODE, "/dev/xvdba")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("IncorrectState", ErrorKind::Transient),
        "still creating"
    );
    fake.settle();

    fake.attach_volume(&a, NODE, "/dev/xvdba").await.unwrap();
    let e = fake
        .attach_volume(&a, NODE, "/dev/xvdbb")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("VolumeInUse", ErrorKind::Transient)
    );
    let e = fake
        .attach_volume(&b, NODE, "/dev/xvdba")
        .await
        .unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue");
    assert!(e.message.contains("already in use"), "{}", e.message);
    let e = fake.attach_volume(&b, NODE, ROOT_DEVICE).await.unwrap_err();
    assert!(e.message.contains("already in use"));
    let e = fake.attach_volume(&b, NODE, "xvdbb").await.unwrap_err();
    assert_eq!(e.code, "InvalidParameterValue");
    let e = fake
        .attach_volume(&b, "i-0000000000000b002", "/dev/xvdba")
        .await
        .unwrap_err();
    assert_eq!(e.code, "InvalidVolume.ZoneMismatch");
    let e = fake
        .attach_volume("vol-00000000000000999", NODE, "/dev/xvdbc")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("InvalidVolume.NotFound", ErrorKind::NotFound)
    );
    let e = fake
        .attach_volume(&b, "i-0000000000000dead", "/dev/xvdbc")
        .await
        .unwrap_err();
    assert_eq!(e.code, "InvalidInstanceID.NotFound");

    // Root + a + b fill the three slots.
    fake.attach_volume(&b, NODE, "/dev/xvdbb").await.unwrap();
    let e = fake
        .attach_volume(&c, NODE, "/dev/xvdbc")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.kind),
        ("AttachmentLimitExceeded", ErrorKind::Invalid)
    );
    fake.detach_volume(&b, NODE, false).await.unwrap();
    fake.attach_volume(&c, NODE, "/dev/xvdbb").await.unwrap();

    fake.set_instance_state(NODE, "terminated");
    let e = fake
        .attach_volume(&d, NODE, "/dev/xvdbd")
        .await
        .unwrap_err();
    assert_eq!(e.code, "IncorrectInstanceState");
}

#[tokio::test]
async fn detach_of_what_is_not_attached_succeeds_as_sdk_ec2_makes_it() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    fake.add_instance("i-0000000000000a002", ZONE, "m6i.large");
    let v = created(&fake, "t", 10, "p").await;
    fake.attach_volume(&v, NODE, "/dev/xvdba").await.unwrap();
    // Attached elsewhere: EC2 says InvalidAttachment.NotFound, which SdkEc2 takes as done.
    fake.detach_volume(&v, "i-0000000000000a002", false)
        .await
        .unwrap();
    assert_eq!(
        fake.volume(&v).unwrap().state,
        "in-use",
        "still attached to its instance"
    );
    fake.detach_volume(&v, NODE, true).await.unwrap();
    assert_eq!(fake.volume(&v).unwrap().state, "available");
    fake.detach_volume(&v, NODE, false).await.unwrap();
    fake.detach_volume("vol-00000000000000999", NODE, false)
        .await
        .unwrap();
    let outcomes: Vec<Outcome> = fake
        .calls_of("DetachVolume")
        .into_iter()
        .map(|c| c.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Error("InvalidAttachment.NotFound".into()),
            Outcome::Ok,
            Outcome::Error("IncorrectState".into()),
            Outcome::Error("InvalidVolume.NotFound".into()),
        ]
    );
    assert_eq!(fake.calls_of("DetachVolume")[1].arg("Force"), Some("true"));
}

#[tokio::test]
async fn state_faults_fail_lose_and_terminate() {
    let fake = FakeEc2::new();
    let root = fake.add_instance(NODE, ZONE, "m6i.large");
    let a = created(&fake, "a", 10, "p").await;
    let b = created(&fake, "b", 10, "p").await;
    fake.attach_volume(&a, NODE, "/dev/xvdba").await.unwrap();
    fake.attach_volume(&b, NODE, "/dev/xvdbb").await.unwrap();
    fake.fail_volume(&a);
    fake.lose_volume(&b);
    let seen = fake.describe_volumes(&ids(&[&a, &b])).await.unwrap();
    assert_eq!(seen.len(), 1, "a lost volume is left out");
    assert_eq!(seen[0].state, "error");
    assert_eq!(
        seen[0].attachments.len(),
        1,
        "a failed volume stays attached"
    );
    assert!(
        !fake
            .instance(NODE)
            .unwrap()
            .block_devices
            .contains_key("/dev/xvdbb")
    );

    fake.terminate_instance(NODE);
    let i = fake.describe_instance(NODE).await.unwrap().unwrap();
    assert_eq!(i.state, "terminated");
    assert!(i.block_devices.is_empty());
    assert_eq!(
        fake.volume(&root),
        None,
        "root volume deleted on termination"
    );
    assert!(fake.volume(&a).unwrap().attachments.is_empty());
}

#[tokio::test]
async fn inserted_volumes_are_found_with_their_attachments() {
    let fake = FakeEc2::new();
    fake.add_instance(NODE, ZONE, "m6i.large");
    fake.insert_volume(crate::Volume {
        volume_id: "vol-0000000000000beef".into(),
        availability_zone: ZONE.into(),
        state: "in-use".into(),
        volume_type: "gp3".into(),
        size_gib: 50,
        iops: Some(3000),
        throughput_mibps: Some(125),
        encrypted: true,
        snapshot_id: None,
        attachments: vec![crate::Attachment {
            instance_id: NODE.into(),
            device: "/dev/xvdba".into(),
            state: AttachmentState::Attached,
        }],
        tags: tags(&[("pool", "old")]),
    });
    let found = fake
        .find_volumes(&filter(&[("pool", "old")]))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].state, "in-use");
    let i = fake.instance(NODE).unwrap();
    assert_eq!(
        i.block_devices.get("/dev/xvdba").map(String::as_str),
        Some("vol-0000000000000beef")
    );
}
