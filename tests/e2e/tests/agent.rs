//! The node agent, the real binary, inside a simulated node's mount namespace, against the
//! sandbox's apiserver. The test plays the controller's part itself (volumes through the EC2
//! adapter, attached, their IDs applied to status with field manager `pgml-operator`), so
//! that only the agent's half of the contract (docs/design/zfspool.md) is under test.
//!
//! An agent acts on every pool of its node, so two tests on one node take that node's lock;
//! tests on different nodes run side by side.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use aws_config::retry::RetryConfig;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use pgml_api::zfspool::ZfsPool;
use pgml_aws::{
    CreateSnapshotSet, CreateVolume, Ec2, ModifyVolume, SdkEc2, VolumeType, client_token,
};
use pgml_testbed::aws::{Made, SimAdmin, ebs_link, sdk_config};
use pgml_testbed::kube::TestNamespace;
use pgml_testbed::nodes::{node_exec, node_exec_ok, node_write_random, retry_while_busy};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{has_condition, try_wait_for};
use pgml_testbed::{Sandbox, workspace_bin};
use serde_json::{Value, json};

const TEST_FINALIZER: &str = "pgml.io/agent-test";

/// One agent per node at a time (tests in this file run in one process).
static NODE_LOCKS: [tokio::sync::Mutex<()>; 3] = [
    tokio::sync::Mutex::const_new(()),
    tokio::sync::Mutex::const_new(()),
    tokio::sync::Mutex::const_new(()),
];

/// The agent binary running inside a node; killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Watches `ns` only, so that objects other tests leave on the node are not touched.
    fn start(sb: &Sandbox, node: &NodeInfo, ns: &str, tag: &str) -> anyhow::Result<Agent> {
        let bin = workspace_bin("pgml-agent");
        let log = sb
            .dir
            .join("logs")
            .join(format!("agent-{}-{tag}.log", node.name));
        let file = std::fs::File::create(&log)?;
        let child = std::process::Command::new("nsenter")
            .args(["-t", &node.ns_pid.to_string(), "-m", "--"])
            .arg(&bin)
            .args(["--dev-dir", &node.dev_dir.to_string_lossy()])
            .args(["--mount-root", &node.mnt_dir.to_string_lossy()])
            .args(["--log-format", "text", "--resync-seconds", "3"])
            .env("NODE_NAME", &node.name)
            .env("PGML_WATCH_NAMESPACE", ns)
            // The nodes share the host's network: a port of its own for each agent.
            .env("PGML_METRICS_ADDR", "127.0.0.1:0")
            .env("KUBECONFIG", &sb.kube.kubeconfig)
            .env("RUST_LOG", "pgml_agent=debug,info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting pgml-agent in the node")?;
        Ok(Agent { child, log })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `flow` with an EC2 client and a fresh namespace named after `prefix`; what it made
/// in EC2 is removed whatever happened, the namespace only when it passed (kept to look at
/// otherwise).
async fn in_namespace(
    prefix: &str,
    flow: impl AsyncFnOnce(&SdkEc2, &TestNamespace, &mut Made) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let sb = Sandbox::get();
    let ec2 = SdkEc2::new(&sdk_config(sb, RetryConfig::standard()).await);
    let client = pgml_testbed::kube::client().await;
    let ns = TestNamespace::new(&client, prefix).await;
    let mut made = Made::default();
    let result = flow(&ec2, &ns, &mut made).await;
    made.clean(&ec2).await;
    if result.is_ok() {
        ns.cleanup().await;
    }
    result
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ (std::process::id() << 12)
}

/// Creates `n` 1 GiB gp3 volumes in the node's zone and attaches them; returns their IDs
/// once every by-id link is there.
async fn volumes_on(
    ec2: &SdkEc2,
    node: &NodeInfo,
    n: usize,
    run_id: &str,
    made: &mut Made,
) -> anyhow::Result<Vec<String>> {
    volumes_from(ec2, node, &vec![None; n], run_id, made).await
}

/// As [`volumes_on`], each volume made from the given snapshot (or empty).
async fn volumes_from(
    ec2: &SdkEc2,
    node: &NodeInfo,
    snapshots: &[Option<String>],
    run_id: &str,
    made: &mut Made,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for (i, snapshot_id) in snapshots.iter().enumerate() {
        let v = ec2
            .create_volume(&CreateVolume {
                availability_zone: node.az.clone(),
                volume_type: VolumeType::Gp3,
                size_gib: 1,
                iops: Some(3000),
                throughput_mibps: Some(125),
                encrypted: true,
                kms_key_id: None,
                snapshot_id: snapshot_id.clone(),
                volume_initialization_rate_mibps: None,
                tags: BTreeMap::from([("pgml.io/test".into(), format!("agent-{run_id}"))]),
                client_token: client_token(&[run_id, &i.to_string()]),
            })
            .await?;
        made.volumes.push(v.volume_id.clone());
        let used: Vec<String> = ec2
            .describe_instance(&node.instance_id)
            .await?
            .context("node instance")?
            .block_devices
            .keys()
            .cloned()
            .collect();
        let hint = (0..52)
            .filter_map(pgml_aws::device_name_hint)
            .find(|h| !used.contains(h))
            .context("no free device name")?;
        ec2.attach_volume(&v.volume_id, &node.instance_id, &hint)
            .await?;
        made.attached
            .push((v.volume_id.clone(), node.instance_id.clone()));
        ids.push(v.volume_id);
    }
    for v in &ids {
        let link = ebs_link(node, v);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !link.exists() {
            ensure!(
                Instant::now() < deadline,
                "{} did not appear",
                link.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(ids)
}

/// A ZfsPool on `node`, with the test's finalizer standing in for the controller's.
async fn create_pool(
    api: &Api<ZfsPool>,
    name: &str,
    node: &NodeInfo,
    count: usize,
    layout: &str,
    reclaim: &str,
) -> anyhow::Result<ZfsPool> {
    create_pool_with(api, name, node, count, layout, reclaim, json!({})).await
}

/// As [`create_pool`], with more spec fields merged in (e.g. `restoreFrom`).
async fn create_pool_with(
    api: &Api<ZfsPool>,
    name: &str,
    node: &NodeInfo,
    count: usize,
    layout: &str,
    reclaim: &str,
    extra: Value,
) -> anyhow::Result<ZfsPool> {
    let mut obj = json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "ZfsPool",
        "metadata": {"name": name, "finalizers": [TEST_FINALIZER]},
        "spec": {
            "nodeName": node.name,
            "volumes": {"count": count, "sizeGiB": 1},
            "layout": layout,
            "reclaimPolicy": reclaim,
        },
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        obj["spec"][k] = v.clone();
    }
    let obj: ZfsPool = serde_json::from_value(obj)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// The controller's part of status: volume IDs, attached, sizes (field manager pgml-operator).
async fn apply_controller_status(
    api: &Api<ZfsPool>,
    name: &str,
    volumes: &[String],
) -> anyhow::Result<()> {
    apply_controller_status_sized(api, name, volumes, 1).await
}

async fn apply_controller_status_sized(
    api: &Api<ZfsPool>,
    name: &str,
    volumes: &[String],
    size_gib: i64,
) -> anyhow::Result<()> {
    let vols: Vec<Value> = volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"index": i, "volumeId": v, "state": "in-use",
                   "attachmentState": "attached", "sizeGiB": size_gib, "type": "gp3"})
        })
        .collect();
    api.patch_status(
        name,
        &PatchParams::apply("pgml-operator").force(),
        &Patch::Apply(json!({
            "apiVersion": "pgml.io/v1alpha1",
            "kind": "ZfsPool",
            "status": {"phase": "Importing", "volumes": vols},
        })),
    )
    .await?;
    Ok(())
}

fn condition<'a>(p: &'a ZfsPool, type_: &str) -> Option<&'a pgml_api::common::Condition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Polls the object until `ok` holds; the agent's log is in the error otherwise.
async fn wait_for(
    api: &Api<ZfsPool>,
    name: &str,
    agent: &Agent,
    secs: u64,
    what: &str,
    ok: impl Fn(&ZfsPool) -> bool,
) -> anyhow::Result<ZfsPool> {
    let (timeout, every) = (Duration::from_secs(secs), Duration::from_millis(300));
    let log = || format!("agent log:\n{}", agent.log());
    try_wait_for(api, name, what, timeout, every, log, ok).await
}

/// Deletes the pool and waits (60s) until the agent reports `PoolReleased=True`.
async fn delete_and_release(
    api: &Api<ZfsPool>,
    name: &str,
    agent: &Agent,
) -> anyhow::Result<ZfsPool> {
    api.delete(name, &DeleteParams::default()).await?;
    wait_for(api, name, agent, 60, "released", |p| {
        has_condition(p, "PoolReleased", "True")
    })
    .await
}

fn ready(p: &ZfsPool) -> bool {
    has_condition(p, "PoolImported", "True")
        && has_condition(p, "PoolHealthy", "True")
        && has_condition(p, "DevicesFound", "True")
}

async fn remove_finalizer(api: &Api<ZfsPool>, name: &str) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    Ok(())
}

/// `zpool status` of one pool inside the node, parsed.
fn pool_status(node: &NodeInfo, pool: &str) -> anyhow::Result<pgml_zfs::PoolStatus> {
    let out = node_exec_ok(node, &["zpool", "status", pool])?;
    pgml_zfs::parse_status(&out)?
        .into_iter()
        .next()
        .context("no pool in zpool status")
}

fn pool_names(node: &NodeInfo) -> anyhow::Result<Vec<String>> {
    Ok(node_exec_ok(node, &["zpool", "list", "-H", "-o", "name"])?
        .lines()
        .map(str::to_string)
        .collect())
}

fn importable(node: &NodeInfo) -> anyhow::Result<Vec<pgml_zfs::PoolStatus>> {
    let out = node_exec(
        node,
        &["zpool", "import", "-d", &node.dev_dir.to_string_lossy()],
    )?;
    Ok(pgml_zfs::parse_import_answer(
        pgml_zfs::Dialect::ZfsFuse,
        out.status.code(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )?)
}

fn dataset_props(node: &NodeInfo, ds: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let out = node_exec_ok(
        node,
        &[
            "zfs",
            "get",
            "-H",
            "-o",
            "property,value",
            "mountpoint,mounted,recordsize,compression,atime,logbias,xattr",
            ds,
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The pool as the spec asks: layout, members by by-id path in member order, datasets
/// mounted under the node's mount root with the mapped properties, and the status the
/// agent reported for it.
fn check_built(node: &NodeInfo, p: &ZfsPool, vols: &[String], raidz1: bool) -> anyhow::Result<()> {
    let name = p.pool_name();
    let st = pool_status(node, &name)?;
    assert_eq!(st.state, pgml_zfs::Health::Online);
    let want = if raidz1 {
        pgml_zfs::ObservedLayout::Raidz1
    } else {
        pgml_zfs::ObservedLayout::Stripe
    };
    assert_eq!(st.layout(), want, "{name}: {st:#?}");
    let members: Vec<String> = st
        .members()
        .iter()
        .map(|m| m.ebs_volume_id().unwrap_or_else(|| m.name.clone()))
        .collect();
    assert_eq!(members, vols, "members by-id, in member order");
    for m in st.members() {
        assert!(
            m.name
                .starts_with(&node.dev_dir.to_string_lossy().into_owned()),
            "member {} is not a by-id path",
            m.name
        );
    }
    for (ds, rs, logbias) in [
        ("pgdata", "32K", "throughput"),
        ("pgwal", "128K", "latency"),
    ] {
        let props = dataset_props(node, &format!("{name}/{ds}"))?;
        let mp = node.mnt_dir.join(&name).join(ds);
        assert_eq!(props["mountpoint"], mp.to_string_lossy(), "{props:?}");
        assert_eq!(props["mounted"], "yes");
        assert_eq!(props["recordsize"], rs);
        assert_eq!(props["logbias"], logbias);
        // lz4 → on and xattr sa → on on zfs-fuse (logged as adjustments by the agent).
        assert_eq!(props["compression"], "on");
        assert_eq!(props["atime"], "off");
        assert_eq!(props["xattr"], "on");
    }
    let s = p.status.as_ref().context("status")?;
    assert_eq!(s.health.as_deref(), Some("ONLINE"));
    assert_eq!(s.zfs_dialect.as_deref(), Some("zfs-fuse"));
    assert!(
        s.pool_guid
            .as_deref()
            .is_some_and(|g| g.parse::<u64>().is_ok())
    );
    assert!(s.size.is_some());
    assert!(s.size_bytes.is_some_and(|b| b > 0));
    assert!(s.free_bytes.is_some_and(|b| b > 0));
    assert!(s.allocated_bytes.is_some());
    for (i, v) in vols.iter().enumerate() {
        let vs = s
            .volumes
            .iter()
            .find(|x| x.index == i as i32)
            .context("volume entry")?;
        assert_eq!(
            vs.volume_id.as_deref(),
            Some(v.as_str()),
            "controller's field kept"
        );
        assert_eq!(vs.attachment_state.as_deref(), Some("attached"));
        assert_eq!(
            vs.device.as_deref(),
            Some(ebs_link(node, v).to_string_lossy().as_ref())
        );
        assert_eq!(vs.member_state.as_deref(), Some("ONLINE"));
    }
    for c in &s.conditions {
        if ["PoolImported", "PoolHealthy", "DevicesFound"].contains(&c.type_.as_str()) {
            assert_eq!(c.observed_generation, p.metadata.generation, "{c:?}");
        }
    }
    assert_eq!(s.phase, Some(pgml_api::zfspool::PoolPhase::Importing));
    check_ownership(p)?;
    Ok(())
}

/// The agent's managed-fields entry holds only agent fields; the controller's entry still
/// holds the volume IDs.
fn check_ownership(p: &ZfsPool) -> anyhow::Result<()> {
    let mf = p
        .metadata
        .managed_fields
        .as_ref()
        .context("managedFields")?;
    let agent = mf
        .iter()
        .find(|m| m.manager.as_deref() == Some("pgml-agent"))
        .context("no pgml-agent managed fields")?;
    assert_eq!(agent.subresource.as_deref(), Some("status"));
    assert_eq!(agent.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_string(&agent.fields_v1)?;
    for controller_field in [
        "f:volumeId",
        "f:attachmentState",
        "f:phase",
        "f:sizeGiB",
        "f:state\"",
        "f:instanceId",
    ] {
        assert!(
            !fields.contains(controller_field),
            "pgml-agent owns {controller_field}: {fields}"
        );
    }
    assert!(fields.contains("f:memberState") && fields.contains("f:poolGuid"));
    let ctrl = mf
        .iter()
        .find(|m| m.manager.as_deref() == Some("pgml-operator"))
        .context("no pgml-operator managed fields")?;
    let cf = serde_json::to_string(&ctrl.fields_v1)?;
    assert!(
        cf.contains("f:volumeId") && !cf.contains("f:memberState"),
        "{cf}"
    );
    Ok(())
}

#[tokio::test]
async fn builds_raid0_and_raidz1_reports_and_releases_them() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    let _node = NODE_LOCKS[0].lock().await;
    let node = &sb.nodes[0];
    in_namespace("agent-build", async |ec2, ns, made| {
        build_flow(sb, node, ec2, ns, made).await
    })
    .await
}

async fn build_flow(
    sb: &Sandbox,
    node: &NodeInfo,
    ec2: &SdkEc2,
    ns: &TestNamespace,
    made: &mut Made,
) -> anyhow::Result<()> {
    let api: Api<ZfsPool> = ns.api();
    let run_id = format!("{:08x}", rand_u32());
    let agent = Agent::start(sb, node, ns.name(), &run_id)?;
    let (stripe, raidz) = (format!("s{run_id}"), format!("z{run_id}"));
    create_pool(&api, &stripe, node, 4, "raid0", "Delete").await?;
    create_pool(&api, &raidz, node, 5, "raidz1", "Retain").await?;

    // Before the controller reports volumes: the agent says what it waits for.
    let p = wait_for(&api, &stripe, &agent, 30, "waiting reported", |p| {
        condition(p, "PoolImported").is_some_and(|c| c.reason == "WaitingForVolumes")
    })
    .await?;
    assert_eq!(
        condition(&p, "DevicesFound").map(|c| c.status.as_str()),
        Some("Unknown")
    );

    let sv = volumes_on(ec2, node, 4, &format!("{run_id}s"), made).await?;
    let zv = volumes_on(ec2, node, 5, &format!("{run_id}z"), made).await?;
    apply_controller_status(&api, &stripe, &sv).await?;
    apply_controller_status(&api, &raidz, &zv).await?;

    let s = wait_for(&api, &stripe, &agent, 90, "raid0 ready", ready).await?;
    let z = wait_for(&api, &raidz, &agent, 90, "raidz1 ready", ready).await?;
    check_built(node, &s, &sv, false)?;
    check_built(node, &z, &zv, true)?;
    let log = agent.log();
    assert!(log.contains("ZFS detected"), "{log}");
    assert!(
        log.contains("property adjusted"),
        "adjustments are logged: {log}"
    );

    // Resyncs (every 3 s) that find nothing new write nothing.
    let (rv_s, rv_z) = (
        s.metadata.resource_version.clone(),
        z.metadata.resource_version.clone(),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(api.get(&stripe).await?.metadata.resource_version, rv_s);
    assert_eq!(api.get(&raidz).await?.metadata.resource_version, rv_z);

    // Deletion: Retain exports (importable afterwards), Delete destroys.
    api.delete(&raidz, &DeleteParams::default()).await?;
    api.delete(&stripe, &DeleteParams::default()).await?;
    let z = wait_for(&api, &raidz, &agent, 60, "raidz1 released", |p| {
        has_condition(p, "PoolReleased", "True")
    })
    .await?;
    let s = wait_for(&api, &stripe, &agent, 60, "raid0 released", |p| {
        has_condition(p, "PoolReleased", "True")
    })
    .await?;
    assert_eq!(condition(&z, "PoolReleased").unwrap().reason, "Exported");
    assert_eq!(condition(&s, "PoolReleased").unwrap().reason, "Destroyed");
    let names = pool_names(node)?;
    assert!(
        !names.contains(&raidz) && !names.contains(&stripe),
        "{names:?}"
    );
    let imp = importable(node)?;
    let exported = imp
        .iter()
        .find(|p| p.name == raidz)
        .context("the Retain pool is importable after export")?;
    assert_eq!(
        exported.id.map(|g| g.to_string()),
        z.status.as_ref().and_then(|s| s.pool_guid.clone()),
        "importable under the GUID the agent reported"
    );
    assert!(
        !imp.iter().any(|p| p.name == stripe),
        "the Delete pool was destroyed"
    );
    // The agent released them; the test (as the controller) lets the objects go.
    remove_finalizer(&api, &raidz).await?;
    remove_finalizer(&api, &stripe).await?;

    // A new object over the retained volumes: the exported pool is imported (same GUID),
    // not created over, with its data sets mounted again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_opt(&raidz).await?.is_some() {
        ensure!(Instant::now() < deadline, "{raidz} was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    create_pool(&api, &raidz, node, 5, "raidz1", "Delete").await?;
    apply_controller_status(&api, &raidz, &zv).await?;
    let again = wait_for(&api, &raidz, &agent, 90, "re-imported", ready).await?;
    assert_eq!(
        again.status.as_ref().and_then(|s| s.pool_guid.clone()),
        z.status.as_ref().and_then(|s| s.pool_guid.clone()),
        "the same pool, imported"
    );
    check_built(node, &again, &zv, true)?;
    let log = agent.log();
    assert!(log.contains("importing pool"), "{log}");
    api.delete(&raidz, &DeleteParams::default()).await?;
    let gone = wait_for(&api, &raidz, &agent, 60, "re-imported pool released", |p| {
        has_condition(p, "PoolReleased", "True")
    })
    .await?;
    assert_eq!(
        condition(&gone, "PoolReleased").unwrap().reason,
        "Destroyed"
    );
    remove_finalizer(&api, &raidz).await?;
    Ok(())
}

#[tokio::test]
async fn agent_killed_mid_build_converges() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    let _node = NODE_LOCKS[1].lock().await;
    let node = &sb.nodes[1];
    in_namespace("agent-kill", async |ec2, ns, made| {
        kill_flow(sb, node, ec2, ns, made).await
    })
    .await
}

async fn kill_flow(
    sb: &Sandbox,
    node: &NodeInfo,
    ec2: &SdkEc2,
    ns: &TestNamespace,
    made: &mut Made,
) -> anyhow::Result<()> {
    let api: Api<ZfsPool> = ns.api();
    let run_id = format!("{:08x}", rand_u32());
    let name = format!("k{run_id}");
    create_pool(&api, &name, node, 5, "raidz1", "Delete").await?;
    let vols = volumes_on(ec2, node, 5, &run_id, made).await?;
    apply_controller_status(&api, &name, &vols).await?;

    // Killed at once, and after a few short random spans; then the moment the pool
    // appears (before or while its datasets are created).
    for (round, ms) in [0u64, 300, 700, 1100].into_iter().enumerate() {
        let mut a = Agent::start(sb, node, ns.name(), &format!("{run_id}-{round}"))?;
        tokio::time::sleep(Duration::from_millis(ms + u64::from(rand_u32() % 200))).await;
        a.kill();
    }
    let mut a = Agent::start(sb, node, ns.name(), &format!("{run_id}-appear"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pool_names(node)?.contains(&name) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();

    let agent = Agent::start(sb, node, ns.name(), &format!("{run_id}-final"))?;
    let p = wait_for(&api, &name, &agent, 90, "ready after restarts", ready).await?;
    check_built(node, &p, &vols, true)?;
    let same_name = pool_names(node)?.iter().filter(|n| **n == name).count();
    assert_eq!(same_name, 1, "exactly one pool");
    assert!(
        !importable(node)?.iter().any(|p| p
            .members()
            .iter()
            .any(|m| m.ebs_volume_id().is_some_and(|v| vols.contains(&v)))),
        "no second (exported) pool on these volumes"
    );
    // The pool existed before the last start: that agent adopted it, never created one.
    let log = agent.log();
    assert!(!log.contains("creating pool"), "{log}");
    assert!(!log.contains("refusing"), "{log}");

    delete_and_release(&api, &name, &agent).await?;
    assert!(!pool_names(node)?.contains(&name));
    remove_finalizer(&api, &name).await?;
    Ok(())
}

#[tokio::test]
async fn refuses_devices_with_a_foreign_pool_or_a_file_system() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    let _node = NODE_LOCKS[2].lock().await;
    let node = &sb.nodes[2];
    in_namespace("agent-foreign", async |ec2, ns, made| {
        foreign_flow(sb, node, ec2, ns, made).await
    })
    .await
}

async fn foreign_flow(
    sb: &Sandbox,
    node: &NodeInfo,
    ec2: &SdkEc2,
    ns: &TestNamespace,
    made: &mut Made,
) -> anyhow::Result<()> {
    let api: Api<ZfsPool> = ns.api();
    let run_id = format!("{:08x}", rand_u32());
    let vols = volumes_on(ec2, node, 4, &run_id, made).await?;
    let link = |v: &str| ebs_link(node, v).to_string_lossy().into_owned();

    // Someone else's pool on the first two volumes, exported (importable, not active).
    let foreign = format!("f{run_id}");
    node_exec_ok(
        node,
        &[
            "zpool",
            "create",
            "-m",
            "none",
            &foreign,
            &link(&vols[0]),
            &link(&vols[1]),
        ],
    )?;
    node_exec_ok(node, &["zpool", "export", &foreign])?;
    // A file system on the fourth.
    node_exec_ok(node, &["mkfs.ext4", "-q", "-F", &link(&vols[3])])?;

    let agent = Agent::start(sb, node, ns.name(), &run_id)?;
    let (a, b) = (format!("a{run_id}"), format!("b{run_id}"));
    create_pool(&api, &a, node, 3, "raid0", "Delete").await?;
    create_pool(&api, &b, node, 1, "raid0", "Delete").await?;
    apply_controller_status(&api, &a, &vols[..3]).await?;
    apply_controller_status(&api, &b, &vols[3..]).await?;

    let pa = wait_for(&api, &a, &agent, 60, "refusal (labels)", |p| {
        condition(p, "PoolImported")
            .is_some_and(|c| c.status == "False" && c.reason == "DeviceInUse")
    })
    .await?;
    let msg = &condition(&pa, "PoolImported").unwrap().message;
    assert!(
        msg.contains(&link(&vols[0])) || msg.contains(&link(&vols[1])),
        "names the device: {msg}"
    );
    assert!(msg.contains(&foreign), "names the pool: {msg}");
    let pb = wait_for(&api, &b, &agent, 60, "refusal (file system)", |p| {
        condition(p, "PoolImported")
            .is_some_and(|c| c.status == "False" && c.reason == "DeviceInUse")
    })
    .await?;
    let msg = &condition(&pb, "PoolImported").unwrap().message;
    assert!(
        msg.contains(&link(&vols[3])) && msg.contains("ext4"),
        "{msg}"
    );

    // Nothing was created over, nothing destroyed.
    let names = pool_names(node)?;
    assert!(!names.contains(&a) && !names.contains(&b), "{names:?}");
    assert!(importable(node)?.iter().any(|p| p.name == foreign));
    let blkid = node_exec_ok(node, &["blkid", "-p", "-o", "export", &link(&vols[3])])?;
    assert!(blkid.contains("TYPE=ext4"), "{blkid}");

    // Never built: released at once.
    api.delete(&a, &DeleteParams::default()).await?;
    api.delete(&b, &DeleteParams::default()).await?;
    for n in [&a, &b] {
        let p = wait_for(&api, n, &agent, 30, "released", |p| {
            has_condition(p, "PoolReleased", "True")
        })
        .await?;
        assert_eq!(condition(&p, "PoolReleased").unwrap().reason, "NotImported");
        remove_finalizer(&api, n).await?;
    }
    assert!(importable(node)?.iter().any(|p| p.name == foreign));
    Ok(())
}

#[tokio::test]
async fn lost_raidz1_member_is_reported_and_replaced() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    let _node = NODE_LOCKS[0].lock().await;
    let node = &sb.nodes[0];
    in_namespace("agent-replace", async |ec2, ns, made| {
        replace_flow(sb, node, ec2, ns, made).await
    })
    .await
}

async fn replace_flow(
    sb: &Sandbox,
    node: &NodeInfo,
    ec2: &SdkEc2,
    ns: &TestNamespace,
    made: &mut Made,
) -> anyhow::Result<()> {
    let api: Api<ZfsPool> = ns.api();
    let run_id = format!("{:08x}", rand_u32());
    let name = format!("r{run_id}");
    let agent = Agent::start(sb, node, ns.name(), &run_id)?;
    create_pool(&api, &name, node, 3, "raidz1", "Delete").await?;
    let mut vols = volumes_on(ec2, node, 3, &run_id, made).await?;
    apply_controller_status(&api, &name, &vols).await?;
    wait_for(&api, &name, &agent, 60, "ready", ready).await?;

    // Data written before the failure, with its checksum.
    let file = node.mnt_dir.join(&name).join("pgdata").join("table");
    let file = file.to_string_lossy().into_owned();
    node_write_random(node, &file, 8)?;
    let sum = node_exec_ok(node, &["sha256sum", &file])?;

    // Member 1's volume fails: its image is gone. zfs-fuse notices on I/O.
    let admin = SimAdmin::from_sandbox(sb);
    admin.add_fault(json!({"kind": "volume_fail", "volume_id": vols[1]}))?;
    node_exec_ok(
        node,
        &[
            "dd",
            "if=/dev/urandom",
            &format!("of={file}.2"),
            "bs=1M",
            "count=4",
            "conv=fsync",
            "status=none",
        ],
    )?;
    let _ = node_exec(node, &["zpool", "scrub", &name]);
    let p = wait_for(&api, &name, &agent, 90, "DEGRADED reported", |p| {
        p.status.as_ref().and_then(|s| s.health.as_deref()) == Some("DEGRADED")
    })
    .await?;
    let s = p.status.as_ref().unwrap();
    let m1 = s.volumes.iter().find(|v| v.index == 1).unwrap();
    assert_ne!(m1.member_state.as_deref(), Some("ONLINE"), "{s:#?}");
    assert!(
        m1.device.is_none(),
        "the failed volume has no device: {m1:?}"
    );
    let healthy = condition(&p, "PoolHealthy").unwrap();
    assert_eq!(
        (healthy.status.as_str(), healthy.reason.as_str()),
        ("False", "Degraded")
    );
    assert!(healthy.message.contains(&vols[1]), "{}", healthy.message);
    assert_eq!(condition(&p, "DevicesFound").unwrap().status, "False");
    // Readable throughout.
    assert_eq!(node_exec_ok(node, &["sha256sum", &file])?, sum);

    // The controller's part: a replacement volume for index 1, attached, recorded.
    let new = volumes_on(ec2, node, 1, &format!("{run_id}r"), made).await?;
    vols[1] = new[0].clone();
    apply_controller_status(&api, &name, &vols).await?;
    let p = wait_for(&api, &name, &agent, 120, "ONLINE after the replace", |p| {
        ready(p)
            && p.status.as_ref().is_some_and(|s| {
                s.health.as_deref() == Some("ONLINE")
                    && s.resilver.as_ref().is_some_and(|r| !r.in_progress)
                    && s.volumes
                        .iter()
                        .all(|v| v.member_state.as_deref() == Some("ONLINE"))
            })
    })
    .await?;
    let st = pool_status(node, &name)?;
    let members: Vec<String> = st
        .members()
        .iter()
        .filter_map(|m| m.ebs_volume_id())
        .collect();
    assert_eq!(members, vols, "the new volume took member 1's place");
    let log = agent.log();
    assert!(log.contains("replacing member"), "{log}");
    let r = p.status.as_ref().unwrap().resilver.clone().unwrap();
    assert_eq!(r.percent_done, Some(100), "{r:?}");
    assert_eq!(node_exec_ok(node, &["sha256sum", &file])?, sum);

    delete_and_release(&api, &name, &agent).await?;
    remove_finalizer(&api, &name).await?;
    Ok(())
}

#[tokio::test]
async fn grown_volumes_grow_the_pool() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    let _node = NODE_LOCKS[1].lock().await;
    let node = &sb.nodes[1];
    in_namespace("agent-grow", async |ec2, ns, made| {
        grow_flow(sb, node, ec2, ns, made).await
    })
    .await
}

async fn grow_flow(
    sb: &Sandbox,
    node: &NodeInfo,
    ec2: &SdkEc2,
    ns: &TestNamespace,
    made: &mut Made,
) -> anyhow::Result<()> {
    let api: Api<ZfsPool> = ns.api();
    let run_id = format!("{:08x}", rand_u32());
    let name = format!("g{run_id}");
    let agent = Agent::start(sb, node, ns.name(), &run_id)?;
    create_pool(&api, &name, node, 2, "raid0", "Delete").await?;
    let vols = volumes_on(ec2, node, 2, &run_id, made).await?;
    apply_controller_status(&api, &name, &vols).await?;
    let p = wait_for(&api, &name, &agent, 60, "ready", ready).await?;
    let before = p
        .status
        .as_ref()
        .and_then(|s| s.size_bytes)
        .context("size")?;

    // The controller's part: ModifyVolume to 2 GiB, then the new size in status.
    for v in &vols {
        ec2.modify_volume(&ModifyVolume {
            volume_id: v.clone(),
            size_gib: Some(2),
            iops: None,
            throughput_mibps: None,
        })
        .await?;
    }
    let expands_before = agent.log().matches("expanding member").count();
    apply_controller_status_sized(&api, &name, &vols, 2).await?;
    // The agent runs `zpool online -e` on every member once it sees the larger size.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.log().matches("expanding member").count() < expands_before + vols.len() {
        ensure!(Instant::now() < deadline, "no online -e: {}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for v in &vols {
        let len = std::fs::metadata(ebs_link(node, v))?.len();
        assert_eq!(len, 2 << 30, "{v} grew");
    }
    // zfs-fuse does not re-read a file vdev's size on `online -e` (OpenZFS does); it does
    // when the pool is imported again with autoexpand=on, which the agent set at creation.
    // Done here by hand: the agent never exports a live pool to grow it.
    let n = node.dev_dir.to_string_lossy().into_owned();
    let root = node.mnt_dir.to_string_lossy().into_owned();
    retry_while_busy(|| node_exec_ok(node, &["zpool", "export", &name]))?;
    // The agent may import it first (it is importable under our name and GUID).
    let out = node_exec(node, &["zpool", "import", "-d", &n, "-R", &root, &name])?;
    ensure!(
        out.status.success() || pool_names(node)?.contains(&name),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = wait_for(&api, &name, &agent, 60, "grown", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.size_bytes)
            .is_some_and(|b| b > before + (1 << 30))
    })
    .await?;
    assert!(ready(&p));

    delete_and_release(&api, &name, &agent).await?;
    remove_finalizer(&api, &name).await?;
    Ok(())
}

#[tokio::test]
async fn restored_copy_is_imported_under_its_own_name() -> anyhow::Result<()> {
    let sb = Sandbox::get();
    // Both nodes, in index order (other tests take one lock each).
    let _b = NODE_LOCKS[1].lock().await;
    let _a = NODE_LOCKS[2].lock().await;
    let (a, b) = (&sb.nodes[2], &sb.nodes[1]);
    in_namespace("agent-restore", async |ec2, ns, made| {
        restore_flow(sb, a, b, ec2, ns, made).await
    })
    .await
}

async fn restore_flow(
    sb: &Sandbox,
    a: &NodeInfo,
    b: &NodeInfo,
    ec2: &SdkEc2,
    ns: &TestNamespace,
    made: &mut Made,
) -> anyhow::Result<()> {
    let api: Api<ZfsPool> = ns.api();
    let run_id = format!("{:08x}", rand_u32());
    let (src, dst) = (format!("o{run_id}"), format!("copy{run_id}"));
    let agent_a = Agent::start(sb, a, ns.name(), &format!("{run_id}-src"))?;
    create_pool(&api, &src, a, 3, "raidz1", "Delete").await?;
    let vols = volumes_on(ec2, a, 3, &run_id, made).await?;
    apply_controller_status(&api, &src, &vols).await?;
    let s = wait_for(&api, &src, &agent_a, 60, "source ready", ready).await?;
    let file = a.mnt_dir.join(&src).join("pgdata").join("table");
    let script = "printf %s \"$1\" | dd of=\"$0\" conv=fsync status=none";
    node_exec_ok(
        a,
        &["sh", "-c", script, &file.to_string_lossy(), "captured"],
    )?;

    // One crash-consistent set of the live (never exported) pool.
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
            description: format!("agent e2e {src}"),
            tags: BTreeMap::from([("pgml.io/test".into(), format!("agent-{run_id}"))]),
        })
        .await?;
    made.snapshots
        .extend(set.iter().map(|s| s.snapshot_id.clone()));
    let snaps: Vec<Option<String>> = vols
        .iter()
        .map(|v| {
            set.iter()
                .find(|s| s.volume_id == *v)
                .map(|s| s.snapshot_id.clone())
        })
        .collect();
    ensure!(
        snaps.iter().all(Option::is_some),
        "a snapshot per member: {set:?}"
    );

    // The copy on node B under another name: imported by GUID with -f (never exported),
    // renamed, its data sets mounted where the new object asks.
    let agent_b = Agent::start(sb, b, ns.name(), &format!("{run_id}-dst"))?;
    create_pool_with(
        &api,
        &dst,
        b,
        3,
        "raidz1",
        "Delete",
        json!({"restoreFrom": {"ebsSnapshotName": format!("snap-of-{src}")}}),
    )
    .await?;
    let copies = volumes_from(ec2, b, &snaps, &format!("{run_id}c"), made).await?;
    apply_controller_status(&api, &dst, &copies).await?;
    let d = wait_for(&api, &dst, &agent_b, 90, "copy ready", ready).await?;
    assert_eq!(
        d.status.as_ref().and_then(|s| s.pool_guid.clone()),
        s.status.as_ref().and_then(|s| s.pool_guid.clone()),
        "a restored copy keeps its source's GUID"
    );
    check_built(b, &d, &copies, true)?;
    let log = agent_b.log();
    assert!(
        log.contains("importing pool") && log.contains(" -f "),
        "{log}"
    );
    assert!(log.contains("mounting where the spec asks"), "{log}");
    let copied = b.mnt_dir.join(&dst).join("pgdata").join("table");
    assert_eq!(
        node_exec_ok(b, &["cat", &copied.to_string_lossy()])?,
        "captured"
    );

    for (n, agent) in [(&dst, &agent_b), (&src, &agent_a)] {
        delete_and_release(&api, n, agent).await?;
        remove_finalizer(&api, n).await?;
    }
    Ok(())
}
