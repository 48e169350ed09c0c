//! The EBS data-plane simulator (ebssim, in front of moto), seen through the Rust AWS SDK:
//! volumes become image files, attachments become by-id links on a simulated node,
//! snapshots are copies taken when the request arrives, and every fault the simulator can
//! inject reaches the SDK the way AWS would send it.
//!
//! Needs the sandbox (`make sandbox-up`); Kubernetes is not used here. Tests run in
//! parallel: each makes its own volumes and scopes its fault rules to them (`match` on a
//! volume id, `volume_id`), removing only its own rules (FaultGuard).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    CopyTagsFromSource, InstanceSpecification, InstanceType, Placement, ResourceType,
    SnapshotState, Tag, TagSpecification, Volume, VolumeAttachmentState, VolumeState,
    VolumeStatusInfoStatus, VolumeType,
};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{SimAdmin, TEST_AMI, ebs_link, ebs_link_name};
use serde_json::json;

const MIB: u64 = 1024 * 1024;

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn tag_spec(kind: ResourceType, tags: &[(&str, &str)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}

async fn create_volume(ec2: &Client, az: &str, size: i32, test: &str) -> String {
    ec2.create_volume()
        .availability_zone(az)
        .size(size)
        .volume_type(VolumeType::Gp3)
        .tag_specifications(tag_spec(ResourceType::Volume, &[("test", test)]))
        .send()
        .await
        .expect("CreateVolume")
        .volume_id
        .expect("volume id")
}

async fn describe(ec2: &Client, vol: &str) -> Volume {
    let out = ec2
        .describe_volumes()
        .volume_ids(vol)
        .send()
        .await
        .expect("DescribeVolumes");
    out.volumes().first().cloned().expect("the volume")
}

async fn attach(ec2: &Client, vol: &str, instance: &str, device: &str) {
    ec2.attach_volume()
        .volume_id(vol)
        .instance_id(instance)
        .device(device)
        .send()
        .await
        .expect("AttachVolume");
}

async fn delete_volume(ec2: &Client, vol: &str) {
    ec2.delete_volume()
        .volume_id(vol)
        .send()
        .await
        .expect("DeleteVolume");
}

async fn snapshot_state(ec2: &Client, snap: &str) -> SnapshotState {
    let out = ec2
        .describe_snapshots()
        .snapshot_ids(snap)
        .send()
        .await
        .expect("DescribeSnapshots");
    out.snapshots()[0].state().cloned().expect("snapshot state")
}

fn write_at(dev: &Path, offset: u64, byte: u8, len: usize) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {}: {e}", dev.display()));
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&vec![byte; len]).unwrap();
    f.sync_all().unwrap();
}

fn read_at(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(dev).unwrap_or_else(|e| panic!("open {}: {e}", dev.display()));
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn all(buf: &[u8], byte: u8) -> bool {
    buf.iter().all(|b| *b == byte)
}

/// Restores a snapshot to a new volume, attaches it to `instance` and returns (volume, link).
async fn restore(
    ec2: &Client,
    snap: &str,
    az: &str,
    instance: &str,
    device: &str,
    dev_dir: &Path,
) -> (String, PathBuf) {
    let vol = ec2
        .create_volume()
        .availability_zone(az)
        .snapshot_id(snap)
        .send()
        .await
        .expect("CreateVolume from snapshot")
        .volume_id
        .expect("volume id");
    attach(ec2, &vol, instance, device).await;
    let link = dev_dir.join(ebs_link_name(&vol));
    assert!(
        link.exists(),
        "{} after attaching the restored volume",
        link.display()
    );
    (vol, link)
}

async fn detach_and_delete(ec2: &Client, vol: &str, link: &Path) {
    ec2.detach_volume()
        .volume_id(vol)
        .send()
        .await
        .expect("DetachVolume");
    assert!(
        !link.exists(),
        "{} still there after DetachVolume",
        link.display()
    );
    delete_volume(ec2, vol).await;
}

#[tokio::test]
async fn gp3_and_io2_volumes_keep_their_parameters_and_tags() {
    let sb = Sandbox::get();
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let az = &sb.nodes[0].az;
    let name = unique("params");

    let gp3 = ec2
        .create_volume()
        .availability_zone(az)
        .size(20)
        .volume_type(VolumeType::Gp3)
        .iops(6000)
        .throughput(500)
        .tag_specifications(tag_spec(
            ResourceType::Volume,
            &[("Name", &name), ("role", "data")],
        ))
        .send()
        .await
        .expect("CreateVolume gp3");
    // EC2 answers `creating`; moto says `available` at once and the proxy puts it back.
    assert_eq!(gp3.state(), Some(&VolumeState::Creating));
    let gp3 = gp3.volume_id.unwrap();
    let io2 = ec2
        .create_volume()
        .availability_zone(az)
        .size(8)
        .volume_type(VolumeType::Io2)
        .iops(4000)
        .tag_specifications(tag_spec(ResourceType::Volume, &[("Name", &name)]))
        .send()
        .await
        .expect("CreateVolume io2")
        .volume_id
        .unwrap();

    let v = describe(&ec2, &gp3).await;
    assert_eq!(v.volume_type(), Some(&VolumeType::Gp3));
    assert_eq!(
        (v.size(), v.iops(), v.throughput()),
        (Some(20), Some(6000), Some(500))
    );
    assert_eq!(v.state(), Some(&VolumeState::Available));
    let tags: Vec<_> = v
        .tags()
        .iter()
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert!(
        tags.contains(&("Name", name.as_str())) && tags.contains(&("role", "data")),
        "{tags:?}"
    );
    let v = describe(&ec2, &io2).await;
    assert_eq!(
        (v.volume_type(), v.iops()),
        (Some(&VolumeType::Io2), Some(4000))
    );

    // Found by tag, as the operator finds its volumes.
    let found = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:Name")
                .values(&name)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(found.volumes().len(), 2);

    delete_volume(&ec2, &gp3).await;
    delete_volume(&ec2, &io2).await;
}

#[tokio::test]
async fn attach_write_snapshot_restore_detach_delete() {
    let sb = Sandbox::get();
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let node = &sb.nodes[0];
    let vol = create_volume(&ec2, &node.az, 1, "lifecycle").await;

    attach(&ec2, &vol, &node.instance_id, "/dev/sdf").await;
    let link = ebs_link(node, &vol);
    let image = std::fs::read_link(&link).expect("by-id link after AttachVolume");
    assert_eq!(
        std::fs::metadata(&link).unwrap().len(),
        1024 * MIB,
        "a 1 GiB device"
    );
    let v = describe(&ec2, &vol).await;
    assert_eq!(v.state(), Some(&VolumeState::InUse));
    assert_eq!(
        v.attachments()[0].state(),
        Some(&VolumeAttachmentState::Attached)
    );
    assert_eq!(
        v.attachments()[0].instance_id(),
        Some(node.instance_id.as_str())
    );

    // Before the snapshot: A at 0 and at 512 MiB.
    write_at(&link, 0, b'A', MIB as usize);
    write_at(&link, 512 * MIB, b'A', 4096);
    let snap = ec2
        .create_snapshot()
        .volume_id(&vol)
        .description("point in time")
        .send()
        .await
        .expect("CreateSnapshot");
    assert_eq!(
        snap.state(),
        Some(&SnapshotState::Pending),
        "EC2 answers pending"
    );
    let snap = snap.snapshot_id.unwrap();
    // Right after the answer: B over the same bytes. The snapshot must not see them.
    write_at(&link, 0, b'B', MIB as usize);
    write_at(&link, 512 * MIB, b'B', 4096);
    assert_eq!(snapshot_state(&ec2, &snap).await, SnapshotState::Completed);

    let other = &sb.nodes[sb.nodes.len() - 1];
    let (restored, rlink) = restore(
        &ec2,
        &snap,
        &node.az,
        &other.instance_id,
        "/dev/sdg",
        &other.dev_dir,
    )
    .await;
    assert!(
        all(&read_at(&rlink, 0, MIB as usize), b'A'),
        "restored volume has the pre-snapshot bytes"
    );
    assert!(all(&read_at(&rlink, 512 * MIB, 4096), b'A'));
    assert!(
        all(&read_at(&link, 0, 4096), b'B'),
        "the source keeps its later writes"
    );
    // Writes to the restored volume do not reach the snapshot or the source.
    write_at(&rlink, 0, b'C', 4096);
    assert!(all(&read_at(&link, 0, 4096), b'B'));

    // DetachVolume without InstanceId (moto alone answers 500 to that).
    detach_and_delete(&ec2, &restored, &rlink).await;
    detach_and_delete(&ec2, &vol, &link).await;
    assert!(
        !image.exists(),
        "image {} still there after DeleteVolume",
        image.display()
    );
    let err = ec2
        .describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidVolume.NotFound"));
    ec2.delete_snapshot()
        .snapshot_id(&snap)
        .send()
        .await
        .expect("DeleteSnapshot");
}

/// CreateSnapshots on an instance of the test's own (so other tests' volumes on the shared
/// nodes are not part of it): all member volumes captured at the request, exclusions
/// honoured (moto itself ignores ExcludeDataVolumeId and CopyTagsFromSource; the proxy
/// makes them work).
#[tokio::test]
async fn create_snapshots_captures_an_instance_s_volumes_at_the_request() {
    let sb = Sandbox::get();
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let admin = SimAdmin::from_sandbox(sb);
    let az = sb.nodes[0].az.clone();
    let run = ec2
        .run_instances()
        .image_id(TEST_AMI)
        .min_count(1)
        .max_count(1)
        .instance_type(InstanceType::from("m7i.large"))
        .placement(Placement::builder().availability_zone(&az).build())
        .send()
        .await
        .expect("RunInstances");
    let instance = run.instances()[0].instance_id().unwrap().to_string();
    let dev_dir = std::env::temp_dir()
        .join(unique("pgml-ebs-sim-node"))
        .join("by-id");
    admin.register_node(&instance, &dev_dir).unwrap();

    let test = unique("multi");
    let mut vols = vec![];
    for (i, dev) in ["/dev/sdf", "/dev/sdg", "/dev/sdh"].iter().enumerate() {
        let v = ec2
            .create_volume()
            .availability_zone(&az)
            .size(1)
            .volume_type(VolumeType::Gp3)
            .tag_specifications(tag_spec(
                ResourceType::Volume,
                &[("test", &test), ("member", &i.to_string())],
            ))
            .send()
            .await
            .unwrap()
            .volume_id
            .unwrap();
        attach(&ec2, &v, &instance, dev).await;
        write_at(&dev_dir.join(ebs_link_name(&v)), 0, b'a' + i as u8, 65536);
        vols.push(v);
    }

    let out = ec2
        .create_snapshots()
        .instance_specification(
            InstanceSpecification::builder()
                .instance_id(&instance)
                .exclude_boot_volume(true)
                .exclude_data_volume_ids(&vols[2])
                .build(),
        )
        .copy_tags_from_source(CopyTagsFromSource::Volume)
        .tag_specifications(tag_spec(ResourceType::Snapshot, &[("set", &test)]))
        .send()
        .await
        .expect("CreateSnapshots");
    for v in &vols {
        write_at(&dev_dir.join(ebs_link_name(v)), 0, b'Z', 65536);
    }
    let snaps = out.snapshots();
    let mut by_vol: Vec<(String, String)> = snaps
        .iter()
        .map(|s| {
            (
                s.volume_id().unwrap().to_string(),
                s.snapshot_id().unwrap().to_string(),
            )
        })
        .collect();
    by_vol.sort();
    let mut want = vec![vols[0].clone(), vols[1].clone()];
    want.sort();
    assert_eq!(
        by_vol.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(),
        want,
        "boot and excluded volumes left out"
    );
    for s in snaps {
        assert_eq!(s.state(), Some(&SnapshotState::Pending));
        let keys: Vec<_> = s.tags().iter().map(|t| t.key().unwrap()).collect();
        assert!(
            keys.contains(&"set") && keys.contains(&"member"),
            "tags from the request and the volume: {keys:?}"
        );
    }

    let other = &sb.nodes[0];
    for (i, (vol, snap)) in by_vol.iter().enumerate() {
        let member = vols.iter().position(|v| v == vol).unwrap();
        let (restored, link) = restore(
            &ec2,
            snap,
            &az,
            &other.instance_id,
            &format!("/dev/sd{}", (b'p' + i as u8) as char),
            &other.dev_dir,
        )
        .await;
        assert!(
            all(&read_at(&link, 0, 65536), b'a' + member as u8),
            "snapshot of member {member} has its pre-request bytes"
        );
        detach_and_delete(&ec2, &restored, &link).await;
        ec2.delete_snapshot()
            .snapshot_id(snap)
            .send()
            .await
            .unwrap();
    }

    // The excluded volume's snapshot was undone in moto too.
    let left = ec2
        .describe_snapshots()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("volume-id")
                .values(&vols[2])
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(left.snapshots().is_empty(), "{:?}", left.snapshots());

    for v in &vols {
        detach_and_delete(&ec2, v, &dev_dir.join(ebs_link_name(v))).await;
    }
    ec2.terminate_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dev_dir.parent().unwrap());
}

#[tokio::test]
async fn throttling_is_request_limit_exceeded() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let no_retry = pgml_testbed::aws::ec2_client_with(sb, RetryConfig::disabled()).await;
    let vol = create_volume(&ec2, &sb.nodes[0].az, 1, "throttle").await;

    let _f = admin
        .fault(json!({"kind": "throttle", "action": "DescribeVolumes", "match": vol, "count": 1}))
        .unwrap();
    let err = no_retry
        .describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
    assert_eq!(err.message(), Some("Request limit exceeded."));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    // count 1: the next call goes through
    no_retry
        .describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .expect("after the one throttle");

    // With the SDK's standard retries (3 attempts) two throttles are absorbed.
    let before = admin.count("DescribeVolumes", "throttled").unwrap();
    let _g = admin
        .fault(json!({"kind": "throttle", "action": ["DescribeVolumes"], "match": vol, "count": 2}))
        .unwrap();
    let t = Instant::now();
    ec2.describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .expect("retried through two throttles");
    assert!(admin.count("DescribeVolumes", "throttled").unwrap() >= before + 2);
    eprintln!("two throttles absorbed by retries in {:?}", t.elapsed());

    // Probabilistic with a seed: deterministic.
    let _h = admin
        .fault(json!({"kind": "throttle", "action": "DescribeVolumes", "match": vol, "probability": 0.5, "seed": 7}))
        .unwrap();
    let mut outcomes = vec![];
    for _ in 0..10 {
        outcomes.push(
            no_retry
                .describe_volumes()
                .volume_ids(&vol)
                .send()
                .await
                .is_ok(),
        );
    }
    let oks = outcomes.iter().filter(|o| **o).count();
    assert!(oks > 0 && oks < 10, "{outcomes:?}");
    drop(_h);
    delete_volume(&ec2, &vol).await;
}

#[tokio::test]
async fn server_errors_are_service_errors() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let no_retry = pgml_testbed::aws::ec2_client_with(sb, RetryConfig::disabled()).await;
    let vol = create_volume(&ec2, &sb.nodes[0].az, 1, "5xx").await;
    let tag = |k: &str| Tag::builder().key(k).value("v").build();

    for (status, code) in [(500, "InternalError"), (503, "Unavailable")] {
        let _f = admin
            .fault(json!({"kind": "error", "status": status, "action": "CreateTags", "match": vol, "count": 1}))
            .unwrap();
        let err = no_retry
            .create_tags()
            .resources(&vol)
            .tags(tag("before"))
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(err, aws_sdk_ec2::error::SdkError::ServiceError(_)),
            "{err:?}"
        );
        assert_eq!(err.code(), Some(code));
        assert_eq!(
            err.raw_response().map(|r| r.status().as_u16()),
            Some(status)
        );
    }
    assert!(
        describe(&ec2, &vol)
            .await
            .tags()
            .iter()
            .all(|t| t.key() != Some("before")),
        "not applied"
    );

    // when=after: the action takes effect, the caller still sees a 500 (an ambiguous outcome).
    let _f = admin
        .fault(json!({"kind": "error", "action": "CreateTags", "match": vol, "count": 1, "when": "after"}))
        .unwrap();
    let err = no_retry
        .create_tags()
        .resources(&vol)
        .tags(tag("after"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InternalError"));
    assert!(
        describe(&ec2, &vol)
            .await
            .tags()
            .iter()
            .any(|t| t.key() == Some("after")),
        "applied"
    );
    delete_volume(&ec2, &vol).await;
}

#[tokio::test]
async fn latency_is_added() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let vol = create_volume(&ec2, &sb.nodes[0].az, 1, "latency").await;
    let _f = admin
        .fault(json!({"kind": "latency", "action": "*", "match": vol, "ms": 400, "count": 1}))
        .unwrap();
    let t = Instant::now();
    describe(&ec2, &vol).await;
    let slow = t.elapsed();
    let t = Instant::now();
    describe(&ec2, &vol).await;
    let fast = t.elapsed();
    assert!(slow >= Duration::from_millis(400), "{slow:?}");
    assert!(fast < Duration::from_millis(400), "{fast:?}");
    delete_volume(&ec2, &vol).await;
}

#[tokio::test]
async fn attach_stuck_shows_attaching_until_cleared() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let node = &sb.nodes[0];
    let vol = create_volume(&ec2, &node.az, 1, "stuck").await;
    let link = ebs_link(node, &vol);

    let stuck = admin
        .fault(json!({"kind": "attach_stuck", "volume_id": vol}))
        .unwrap();
    attach(&ec2, &vol, &node.instance_id, "/dev/sdj").await;
    for _ in 0..3 {
        let v = describe(&ec2, &vol).await;
        assert_eq!(v.state(), Some(&VolumeState::InUse));
        assert_eq!(
            v.attachments()[0].state(),
            Some(&VolumeAttachmentState::Attaching)
        );
        assert!(!link.exists(), "no device while attaching");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stuck.clear();
    let v = describe(&ec2, &vol).await;
    assert_eq!(
        v.attachments()[0].state(),
        Some(&VolumeAttachmentState::Attached)
    );
    assert!(
        link.exists(),
        "device appears once the attachment completes"
    );
    ec2.detach_volume()
        .volume_id(&vol)
        .force(true)
        .send()
        .await
        .expect("force detach");
    assert!(!link.exists());

    // A slow attachment: attaching for 500 ms, then attached by itself.
    let _slow = admin
        .fault(json!({"kind": "attach_stuck", "volume_id": vol, "duration_ms": 500}))
        .unwrap();
    attach(&ec2, &vol, &node.instance_id, "/dev/sdj").await;
    assert_eq!(
        describe(&ec2, &vol).await.attachments()[0].state(),
        Some(&VolumeAttachmentState::Attaching)
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        describe(&ec2, &vol).await.attachments()[0].state(),
        Some(&VolumeAttachmentState::Attached)
    );
    assert!(link.exists());
    detach_and_delete(&ec2, &vol, &link).await;
}

#[tokio::test]
async fn snapshots_pending_or_in_error() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let node = &sb.nodes[0];
    let vol = create_volume(&ec2, &node.az, 1, "snapfault").await;

    // The next snapshot of this volume ends in error.
    let err_rule = admin
        .fault(json!({"kind": "snapshot_error", "volume_id": vol, "count": 1}))
        .unwrap();
    let bad = ec2
        .create_snapshot()
        .volume_id(&vol)
        .send()
        .await
        .unwrap()
        .snapshot_id
        .unwrap();
    let good = ec2
        .create_snapshot()
        .volume_id(&vol)
        .send()
        .await
        .unwrap()
        .snapshot_id
        .unwrap();
    assert_eq!(snapshot_state(&ec2, &bad).await, SnapshotState::Error);
    assert_eq!(
        snapshot_state(&ec2, &good).await,
        SnapshotState::Completed,
        "count 1: only the next one"
    );

    // A given snapshot stays pending; no volume can be made from it meanwhile.
    let pending = admin
        .fault(json!({"kind": "snapshot_pending", "snapshot_id": good}))
        .unwrap();
    assert_eq!(snapshot_state(&ec2, &good).await, SnapshotState::Pending);
    let err = ec2
        .create_volume()
        .availability_zone(&node.az)
        .snapshot_id(&good)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("IncorrectState"));
    pending.clear();
    assert_eq!(snapshot_state(&ec2, &good).await, SnapshotState::Completed);
    drop(err_rule);

    for s in [&bad, &good] {
        ec2.delete_snapshot().snapshot_id(s).send().await.unwrap();
    }
    delete_volume(&ec2, &vol).await;
}

#[tokio::test]
async fn a_failed_volume_loses_its_image_and_shows_impaired() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let node = &sb.nodes[0];
    let vol = create_volume(&ec2, &node.az, 1, "fail").await;
    attach(&ec2, &vol, &node.instance_id, "/dev/sdk").await;
    let link = ebs_link(node, &vol);
    write_at(&link, 0, b'x', 4096);
    let held = std::fs::File::open(&link).unwrap(); // a process holding the device open

    let status =
        |out: aws_sdk_ec2::operation::describe_volume_status::DescribeVolumeStatusOutput| {
            out.volume_statuses()[0]
                .volume_status()
                .unwrap()
                .status()
                .cloned()
                .unwrap()
        };
    let out = ec2
        .describe_volume_status()
        .volume_ids(&vol)
        .send()
        .await
        .expect("DescribeVolumeStatus");
    assert_eq!(status(out), VolumeStatusInfoStatus::Ok);

    let _f = admin
        .fault(json!({"kind": "volume_fail", "volume_id": vol}))
        .unwrap();
    assert!(
        std::fs::symlink_metadata(&link).is_ok() && std::fs::File::open(&link).is_err(),
        "the link dangles"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        (&held).read(&mut buf).unwrap(),
        0,
        "an open handle reads nothing"
    );
    let out = ec2
        .describe_volume_status()
        .volume_ids(&vol)
        .send()
        .await
        .unwrap();
    assert_eq!(status(out), VolumeStatusInfoStatus::Impaired);
    assert_eq!(
        describe(&ec2, &vol).await.state(),
        Some(&VolumeState::Error)
    );

    detach_and_delete(&ec2, &vol, &link).await;
}

/// The optional EC2 token buckets. Global to the proxy, so every class is made huge except
/// DescribeAvailabilityZones, which no other test uses.
#[tokio::test]
async fn token_buckets_throttle_like_ec2() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let no_retry = pgml_testbed::aws::ec2_client_with(sb, RetryConfig::disabled()).await;
    let huge = json!({"size": 1_000_000, "refill": 1_000_000});
    admin
        .set_ratelimits(json!({
            "enabled": true,
            "buckets": {
                "describe": huge, "describe_unfiltered": huge, "mutating": huge,
                "resource": huge, "tags": huge,
                "DescribeAvailabilityZones": {"size": 3, "refill": 2},
            }
        }))
        .unwrap();
    struct Off(SimAdmin);
    impl Drop for Off {
        fn drop(&mut self) {
            let _ = self.0.clear_ratelimits();
        }
    }
    let _off = Off(admin.clone());

    let mut results = vec![];
    for _ in 0..5 {
        results.push(
            no_retry
                .describe_availability_zones()
                .send()
                .await
                .map_err(|e| e.code().map(str::to_string)),
        );
    }
    let oks = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(oks, 3, "a bucket of 3: {results:?}");
    assert!(
        results[3..]
            .iter()
            .all(|r| r.as_ref().err() == Some(&Some("RequestLimitExceeded".into())))
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // refill 2/s: one token back
    no_retry
        .describe_availability_zones()
        .send()
        .await
        .expect("refilled");
}

/// Non-EC2 services go through unchanged (here the EBS direct API).
#[tokio::test]
async fn other_services_pass_through() {
    let sb = Sandbox::get();
    let ebs = pgml_testbed::aws::ebs_client(sb).await;
    let out = ebs
        .start_snapshot()
        .volume_size(1)
        .send()
        .await
        .expect("EBS StartSnapshot through the proxy");
    assert!(out.snapshot_id().unwrap().starts_with("snap-"));
}

/// EBS direct APIs on snapshots made by CreateSnapshot (moto alone knows only StartSnapshot
/// ones): ListChangedBlocks between two snapshots of one volume names exactly the 512 KiB
/// blocks written in between; without a first snapshot, every block holding data.
#[tokio::test]
async fn list_changed_blocks_between_two_snapshots() {
    let sb = Sandbox::get();
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let ebs = pgml_testbed::aws::ebs_client(sb).await;
    let node = &sb.nodes[0];
    let vol = create_volume(&ec2, &node.az, 1, "changed-blocks").await;
    attach(&ec2, &vol, &node.instance_id, "/dev/sdl").await;
    let link = ebs_link(node, &vol);

    // 1 MiB at 0 (blocks 0, 1) before the first snapshot.
    write_at(&link, 0, b'A', MIB as usize);
    let snap = |d: &'static str| {
        let ec2 = ec2.clone();
        let vol = vol.clone();
        async move {
            ec2.create_snapshot()
                .volume_id(vol)
                .description(d)
                .send()
                .await
                .expect("CreateSnapshot")
                .snapshot_id
                .unwrap()
        }
    };
    let first = snap("first").await;
    // Then: 4 KiB inside block 1 changed, 1.5 MiB at 100 MiB (blocks 200–202) new, and
    // block 0 rewritten with the same bytes (not a change).
    write_at(&link, MIB / 2, b'B', 4096);
    write_at(&link, 100 * MIB, b'C', (MIB + MIB / 2) as usize);
    write_at(&link, 0, b'A', 4096);
    let second = snap("second").await;

    let out = ebs
        .list_changed_blocks()
        .first_snapshot_id(&first)
        .second_snapshot_id(&second)
        .send()
        .await
        .expect("ListChangedBlocks");
    assert_eq!(out.block_size(), Some(512 * 1024));
    let changed: Vec<i32> = out
        .changed_blocks()
        .iter()
        .filter_map(|b| b.block_index())
        .collect();
    assert_eq!(changed, vec![1, 200, 201, 202]);

    // Paged: two at a time, following NextToken.
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    for _page in 0..10 {
        let out = ebs
            .list_changed_blocks()
            .first_snapshot_id(&first)
            .second_snapshot_id(&second)
            .max_results(2)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("ListChangedBlocks page");
        paged.extend(out.changed_blocks().iter().filter_map(|b| b.block_index()));
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert!(token.is_none(), "NextToken never ran out: {paged:?}");
    assert_eq!(paged, changed);

    let all = ebs
        .list_changed_blocks()
        .second_snapshot_id(&second)
        .send()
        .await
        .expect("ListChangedBlocks without a first snapshot");
    let all: Vec<i32> = all
        .changed_blocks()
        .iter()
        .filter_map(|b| b.block_index())
        .collect();
    assert_eq!(all, vec![0, 1, 200, 201, 202]);

    detach_and_delete(&ec2, &vol, &link).await;
    for s in [first, second] {
        ec2.delete_snapshot()
            .snapshot_id(&s)
            .send()
            .await
            .expect("DeleteSnapshot");
    }
}
