//! The chain every later feature stands on, end to end on the test bed:
//! EBS volumes made through the operator's EC2 adapter (idempotent by ClientToken) →
//! attached to a simulated node (by-id links) → a RAIDZ1 pool built there → one
//! crash-consistent CreateSnapshots of the live pool → volumes restored from the set in
//! another zone, attached to another node → the pool imported there by GUID under a new
//! name, with the data as it was at the capture instant (not as it was after).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use aws_config::retry::RetryConfig;
use pgml_aws::{CreateSnapshotSet, CreateVolume, Ec2, ErrorKind, SdkEc2, VolumeType, client_token};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{Made, ebs_link, sdk_config};
use pgml_testbed::nodes::{node_destroy_pool, node_dialect, node_exec_ok, node_zfs};
use pgml_testbed::sandbox::NodeInfo;
use pgml_zfs::command::{self, ImportSpec, ImportTarget, Layout, Mount, PoolSpec};
use pgml_zfs::{
    DatasetName, DevicePath, Dialect, Guid, Health, HostPath, PoolName, postgres_defaults,
};

const MEMBERS: usize = 5;

async fn wait_for_link(node: &NodeInfo, volume_id: &str) -> anyhow::Result<DevicePath> {
    let link = ebs_link(node, volume_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !link.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} did not appear",
            link.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(DevicePath::new(link.to_string_lossy().into_owned())?)
}

fn volume_request(az: &str, token: String, tags: &BTreeMap<String, String>) -> CreateVolume {
    CreateVolume {
        availability_zone: az.to_string(),
        volume_type: VolumeType::Gp3,
        size_gib: 1,
        iops: Some(3000),
        throughput_mibps: Some(125),
        encrypted: true,
        kms_key_id: None,
        snapshot_id: None,
        volume_initialization_rate_mibps: None,
        tags: tags.clone(),
        client_token: token,
    }
}

#[tokio::test]
async fn pool_snapshot_restored_on_another_node() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    ensure!(sb.nodes.len() >= 2, "needs two simulated nodes");
    let ec2 = SdkEc2::new(&sdk_config(sb, RetryConfig::standard()).await);
    let mut made = Made::default();
    let result = flow(sb, &ec2, &mut made).await;
    made.clean(&ec2).await;
    result
}

async fn flow(sb: &Sandbox, ec2: &SdkEc2, made: &mut Made) -> anyhow::Result<()> {
    let (a, b) = (&sb.nodes[0], &sb.nodes[1]);
    let d = node_dialect(a)?;
    let run_id = format!("{:08x}", rand_u32());
    let pool = PoolName::new(format!("snap{run_id}"))?;
    let tags = BTreeMap::from([("pgml.io/test".to_string(), format!("ebs-zfs-{run_id}"))]);

    // The instance behind node A, as the operator will find it from Node.spec.providerID.
    let inst = ec2
        .describe_instance(&a.instance_id)
        .await?
        .context("node A's instance")?;
    assert_eq!(inst.availability_zone, a.az);
    assert!(
        ec2.describe_instance("i-0000000000000dead")
            .await?
            .is_none()
    );

    // Volumes with deterministic tokens: repeating a create returns the same volume, and a
    // token reused with other parameters is refused (the operator relies on both).
    let mut vols = Vec::new();
    for i in 0..MEMBERS {
        let token = client_token(&[&run_id, &i.to_string()]);
        let v = ec2
            .create_volume(&volume_request(&a.az, token.clone(), &tags))
            .await?;
        made.volumes.push(v.volume_id.clone());
        let again = ec2
            .create_volume(&volume_request(&a.az, token.clone(), &tags))
            .await?;
        assert_eq!(
            again.volume_id, v.volume_id,
            "a repeated create made a second volume"
        );
        if i == 0 {
            let mut other = volume_request(&a.az, token, &tags);
            other.size_gib = 2;
            let err = ec2
                .create_volume(&other)
                .await
                .expect_err("token reuse with other parameters");
            assert_eq!(err.code, "IdempotentParameterMismatch");
            assert_eq!(err.kind, ErrorKind::Invalid);
        }
        vols.push(v.volume_id);
    }
    let found = ec2
        .find_volumes(&tags.clone().into_iter().collect::<Vec<_>>())
        .await?;
    assert_eq!(
        found.len(),
        MEMBERS,
        "exactly one volume per member: {found:#?}"
    );
    assert!(
        found
            .iter()
            .all(|v| v.volume_type == "gp3" && v.iops == Some(3000) && v.encrypted)
    );

    // Attach; the by-id links appear on node A only.
    let mut devices = Vec::new();
    for (i, v) in vols.iter().enumerate() {
        let hint = pgml_aws::device_name_hint(i + 20).unwrap();
        ec2.attach_volume(v, &a.instance_id, &hint).await?;
        made.attached.push((v.clone(), a.instance_id.clone()));
        devices.push(wait_for_link(a, v).await?);
        assert!(!ebs_link(b, v).exists());
    }

    // RAIDZ1 with the datasets mounted under node A's mount root.
    let spec = PoolSpec {
        name: pool.clone(),
        layout: Layout::Raidz1,
        devices,
        ashift: Some(12),
        pool_properties: vec![],
        fs_properties: postgres_defaults(),
        mount: Mount::None,
        altroot: Some(HostPath::new(a.mnt_dir.to_string_lossy().into_owned())?),
    };
    node_zfs(a, &command::create_pool(d, &spec)?)?;
    let destroy_a = scopeguard(a, &pool);
    let ds = DatasetName::from(pool.clone()).child("pgdata")?;
    let rel = HostPath::new(format!("/{pool}/pgdata"))?;
    node_zfs(
        a,
        &command::create_dataset(d, &ds, &postgres_defaults(), Some(&Mount::At(rel)), false),
    )?;
    let file_a = a.mnt_dir.join(pool.as_str()).join("pgdata").join("table");
    let path_a = file_a.to_string_lossy().into_owned();
    // fsync'ed, as Postgres makes a commit durable: on ZFS that is what a capture keeps.
    write_durably(a, &path_a, "before-capture")?;

    // One crash-consistent set of the live pool: the instance's other data volumes (other
    // tests' members) are excluded, so only this pool's five are captured.
    let others: Vec<String> = ec2
        .describe_instance(&a.instance_id)
        .await?
        .context("instance")?
        .block_devices
        .values()
        .filter(|v| !vols.contains(v))
        .cloned()
        .collect();
    let set = ec2
        .create_snapshot_set(&CreateSnapshotSet {
            instance_id: a.instance_id.clone(),
            exclude_volume_ids: others,
            description: format!("e2e {pool}"),
            tags: tags.clone(),
        })
        .await?;
    made.snapshots
        .extend(set.iter().map(|s| s.snapshot_id.clone()));
    // Written after the capture instant: must not be in the restored copy.
    write_durably(a, &path_a, "after-capture")?;
    let mut by_volume: BTreeMap<&str, &str> = BTreeMap::new();
    for s in &set {
        by_volume.insert(&s.volume_id, &s.snapshot_id);
    }
    for v in &vols {
        ensure!(
            by_volume.contains_key(v.as_str()),
            "no snapshot of {v} in the set {set:#?}"
        );
    }
    let tagged = ec2
        .find_snapshots(&tags.clone().into_iter().collect::<Vec<_>>())
        .await?;
    assert!(
        tagged.len() >= MEMBERS,
        "the set's snapshots carry the tags: {tagged:#?}"
    );

    // Restore the set in node B's zone and attach it there.
    for (i, v) in vols.iter().enumerate() {
        let mut req = volume_request(
            &b.az,
            client_token(&[&run_id, "restore", &i.to_string()]),
            &tags,
        );
        req.snapshot_id = Some(by_volume[v.as_str()].to_string());
        let r = ec2.create_volume(&req).await?;
        made.volumes.push(r.volume_id.clone());
        assert_eq!(r.snapshot_id.as_deref(), Some(by_volume[v.as_str()]));
        ec2.attach_volume(
            &r.volume_id,
            &b.instance_id,
            &pgml_aws::device_name_hint(i + 20).unwrap(),
        )
        .await?;
        made.attached
            .push((r.volume_id.clone(), b.instance_id.clone()));
        wait_for_link(b, &r.volume_id).await?;
    }

    // Node B finds the copy by its GUID, the same as the source pool's, and imports it
    // under another name; it was never exported (a crash copy), hence -f.
    let dev_b = HostPath::new(b.dev_dir.to_string_lossy().into_owned())?;
    let importable = pgml_zfs::parse_import_list(&node_zfs(
        b,
        &command::list_importable(std::slice::from_ref(&dev_b)),
    )?)?;
    let copy = importable
        .iter()
        .find(|p| p.name == pool.as_str())
        .with_context(|| format!("pool {pool} not importable on node B: {importable:#?}"))?;
    let guid = Guid(copy.id.context("import listing without pool id")?);
    let source_guid = pool_guid(a, d, &pool)?;
    assert_eq!(
        guid, source_guid,
        "the restored copy has the source pool's GUID"
    );
    let restored = PoolName::new(format!("rest{run_id}"))?;
    node_zfs(
        b,
        &command::import_pool(
            d,
            &ImportSpec {
                target: ImportTarget::Guid(guid),
                new_name: Some(restored.clone()),
                search_dirs: vec![dev_b],
                altroot: Some(HostPath::new(b.mnt_dir.to_string_lossy().into_owned())?),
                mount: true,
                force: true,
            },
        )?,
    )?;
    let destroy_b = scopeguard(b, &restored);
    let st = pgml_zfs::parse_status(&node_zfs(b, &command::status(d, Some(&restored)))?)?;
    assert_eq!(st[0].state, Health::Online);
    assert_eq!(st[0].members().len(), MEMBERS);
    // The dataset keeps its mount point under node B's root and holds the data as it was
    // when the set was captured.
    let file_b = b.mnt_dir.join(pool.as_str()).join("pgdata").join("table");
    let content = node_exec_ok(b, &["cat", &file_b.to_string_lossy()]).with_context(|| {
        let mounts = node_exec_ok(
            b,
            &[
                "zfs",
                "list",
                "-r",
                "-o",
                "name,mountpoint,mounted",
                restored.as_str(),
            ],
        );
        format!("the restored dataset, as node B sees it: {mounts:?}")
    })?;
    assert_eq!(content, "before-capture");
    assert_eq!(node_exec_ok(a, &["cat", &path_a])?, "after-capture");
    assert!(
        !Path::new(&file_b).exists(),
        "node B's mount leaked to the host"
    );

    drop(destroy_b);
    drop(destroy_a);
    Ok(())
}

fn write_durably(node: &NodeInfo, path: &str, content: &str) -> anyhow::Result<()> {
    let script = "printf %s \"$1\" | dd of=\"$0\" conv=fsync status=none";
    node_exec_ok(node, &["sh", "-c", script, path, content])?;
    Ok(())
}

fn pool_guid(node: &NodeInfo, d: Dialect, pool: &PoolName) -> anyhow::Result<Guid> {
    let out = node_zfs(node, &command::get_pool_properties(d, pool, &["guid"])?)?;
    let props = pgml_zfs::parse_zpool_get(&out)?;
    let g = props
        .iter()
        .find(|p| p.property == "guid")
        .with_context(|| format!("no guid in {out}"))?;
    Ok(Guid::parse(&g.value)?)
}

/// Destroys a pool on a node when dropped (also when the test fails half-way).
struct PoolGuard<'a>(&'a NodeInfo, PoolName);

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = node_destroy_pool(self.0, &self.1) {
            eprintln!("cleanup: destroying {} on {}: {e:#}", self.1, self.0.name);
        }
    }
}

fn scopeguard<'a>(node: &'a NodeInfo, pool: &PoolName) -> PoolGuard<'a> {
    PoolGuard(node, pool.clone())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ (std::process::id() << 12)
}
