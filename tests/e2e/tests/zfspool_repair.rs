//! Repair end to end with the real binaries: the operator on the host, the agent inside the
//! node's mount namespace. A RAIDZ1 member's volume fails (its image disappears, EC2 shows
//! `error`): the pool turns Degraded, the operator creates and attaches a replacement, the
//! agent runs `zpool replace` and resilvers, the pool is Ready/ONLINE again, reads never
//! stopped, the data is intact, and the failed volume is deleted — nothing leaked. A RAID0
//! member lost is FAULTED with a clear condition, and nothing is deleted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use pgml_api::ZfsPool;
use pgml_api::common::keys;
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{FaultGuard, SimAdmin, volume_ids, volumes_tagged};
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::nodes::{
    node_dialect, node_exec_ok, node_write_random, node_zfs, retry_while_busy,
};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{condition, has_condition, wait_for, wait_gone};
use pgml_zfs::{Health, PoolName};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn manifest(name: &str, node: &NodeInfo, layout: &str, count: usize) -> ZfsPool {
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n  layout: {layout}\n  reclaimPolicy: Delete\n  volumes: {{count: {count}, type: gp3, sizeGiB: 1}}\n",
        node.name
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A pool name no other test (or an earlier run's leftovers) uses on the node.
fn unique(prefix: &str, ns: &str) -> String {
    format!("{prefix}-{}", ns.rsplit('-').next().unwrap_or("x"))
}

fn logs(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("--- log: {}\n", p.log_path().display()))
        .collect()
}

fn member_ids(p: &ZfsPool) -> Vec<String> {
    let mut v: Vec<(i32, String)> = p
        .status
        .iter()
        .flat_map(|s| s.volumes.iter())
        .filter_map(|v| Some((v.index, v.volume_id.clone()?)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, id)| id).collect()
}

/// Writes `mib` MiB of random data (fsync'ed) to `pgdata/table` on the pool `name`;
/// returns the file and its checksum.
fn write_table(node: &NodeInfo, name: &str, mib: u32) -> (String, String) {
    let file = node
        .mnt_dir
        .join(name)
        .join("pgdata")
        .join("table")
        .to_string_lossy()
        .into_owned();
    node_write_random(node, &file, mib).unwrap();
    let sum = sha256(node, &file).unwrap();
    (file, sum)
}

fn sha256(node: &NodeInfo, file: &str) -> anyhow::Result<String> {
    let out = node_exec_ok(node, &["sha256sum", file])?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Reads `file` in a loop on its own thread until stopped; returns each read's checksum
/// (or error).
struct Reader {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Result<String, String>>>,
}

impl Reader {
    fn start(node: &NodeInfo, file: &str) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, node, file) = (stop.clone(), node.clone(), file.to_string());
        let handle = std::thread::spawn(move || {
            let mut reads = Vec::new();
            while !s.load(Ordering::Relaxed) {
                reads.push(sha256(&node, &file).map_err(|e| format!("{e:#}")));
                std::thread::sleep(Duration::from_millis(200));
            }
            reads
        });
        Reader { stop, handle }
    }

    fn finish(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("reader thread")
    }
}

fn describe(sb: &Sandbox, ns: &str, name: &str) -> String {
    let out = std::process::Command::new(sb.kubectl())
        .args([
            "--kubeconfig",
            &sb.kube.kubeconfig.display().to_string(),
            "-n",
            ns,
        ])
        .args(["describe", "zfspool", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn degraded_reason(p: &ZfsPool) -> Option<String> {
    condition(p, "Degraded")
        .filter(|c| c["status"] == "True")
        .and_then(|c| c["reason"].as_str().map(str::to_string))
}

/// Waits until the pool is `Ready=True`.
async fn wait_ready(api: &Api<ZfsPool>, name: &str) -> ZfsPool {
    wait_for(api, name, "Ready", READY_TIMEOUT, |o: &ZfsPool| {
        has_condition(o, "Ready", "True")
    })
    .await
}

/// Fails `volume_id` in the simulator (its image is gone, EC2 says `error`) until the guard
/// drops.
fn fail_volume(sb: &Sandbox, volume_id: &str) -> FaultGuard {
    SimAdmin::from_sandbox(sb)
        .fault(json!({"kind": "volume_fail", "volume_id": volume_id}))
        .unwrap()
}

/// Ready and ONLINE, no replacement pending, and `lost` is no longer a member.
fn repaired_without(o: &ZfsPool, lost: &str) -> bool {
    let s = o.status.clone().unwrap_or_default();
    has_condition(o, "Ready", "True")
        && s.health.as_deref() == Some("ONLINE")
        && s.volumes
            .iter()
            .all(|v| v.replaced_volume_id.is_none() && v.volume_id.as_deref() != Some(lost))
}

/// Deletes the pool, waits until it is gone, and checks no volume is left in `ns`.
async fn delete_leaves_nothing(sb: &Sandbox, api: &Api<ZfsPool>, name: &str, ns: &str) {
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(api, name, READY_TIMEOUT).await;
    assert!(
        volumes_tagged(sb, keys::NAMESPACE, ns).await.is_empty(),
        "Delete left volumes"
    );
}

/// Waits until `Degraded=True` with `reason`; returns the pool and the condition's message.
async fn wait_degraded(api: &Api<ZfsPool>, name: &str, reason: &str) -> (ZfsPool, String) {
    let what = format!("Degraded {reason}");
    let p = wait_for(api, name, &what, READY_TIMEOUT, |o: &ZfsPool| {
        degraded_reason(o).as_deref() == Some(reason)
    })
    .await;
    let d = condition(&p, "Degraded").unwrap();
    let msg = d["message"].as_str().unwrap_or_default().to_string();
    (p, msg)
}

#[tokio::test]
async fn lost_raidz1_member_is_replaced_while_reads_go_on() {
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "repair").await;
    let node = &sb.nodes[0];
    let operator = procs::operator(sb, ns.name());
    let agent = procs::agent(sb, node, ns.name());
    let api: Api<ZfsPool> = ns.api();
    let name = &unique("parity", ns.name());
    api.create(&PostParams::default(), &manifest(name, node, "raidz1", 5))
        .await
        .unwrap();
    let p = wait_ready(&api, name).await;
    let uid = p.metadata.uid.clone().unwrap();
    let before = member_ids(&p);
    assert_eq!(before.len(), 5);

    // Data written (fsync'ed) before the failure, and its checksum.
    let (file, sum) = write_table(node, name, 16);

    // Member 2's volume fails: its image is gone, EC2 says `error`.
    let lost = before[2].clone();
    let _fault = fail_volume(sb, &lost);
    // Nothing nudges zfs-fuse (no write, no scrub): the operator sees EC2's `error`, and
    // the agent's next pass over the changed member list finds the device gone.
    let reader = Reader::start(node, &file);

    // Degraded, replaced, resilvered, Ready again; the reasons on the way are recorded.
    let start = Instant::now();
    let mut reasons: Vec<String> = Vec::new();
    let mut phases: Vec<String> = Vec::new();
    let done = loop {
        let p = api.get(name).await.unwrap();
        if let Some(r) = degraded_reason(&p)
            && reasons.last() != Some(&r)
        {
            reasons.push(r);
        }
        if let Some(ph) = p.status.as_ref().and_then(|s| s.phase)
            && phases.last() != Some(&format!("{ph:?}"))
        {
            phases.push(format!("{ph:?}"));
        }
        let s = p.status.clone().unwrap_or_default();
        let m2 = s.volumes.iter().find(|v| v.index == 2).cloned();
        let finished = has_condition(&p, "Ready", "True")
            && has_condition(&p, "Degraded", "False")
            && s.health.as_deref() == Some("ONLINE")
            && m2.as_ref().is_some_and(|v| {
                v.generation == 1
                    && v.replaced_volume_id.is_none()
                    && v.volume_id.as_deref() != Some(lost.as_str())
                    && v.member_state.as_deref() == Some("ONLINE")
            });
        if finished {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not repaired in 300s; Degraded reasons so far {reasons:?}; status: {:#}\n{}",
            serde_json::to_value(&s).unwrap(),
            logs(&[&operator, &agent])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let repair_secs = start.elapsed().as_secs();
    let reads = reader.finish();
    eprintln!(
        "repair took {repair_secs}s; Degraded reasons {reasons:?}; phases {phases:?}; {} reads during it",
        reads.len()
    );
    assert!(
        reasons.iter().any(|r| r == "MemberReplacing"),
        "Degraded went through MemberReplacing: {reasons:?}"
    );
    assert!(!reads.is_empty(), "the file was read during the repair");
    for (i, r) in reads.iter().enumerate() {
        assert_eq!(r.as_deref(), Ok(sum.as_str()), "read {i} during the repair");
    }
    assert_eq!(
        sha256(node, &file).unwrap(),
        sum,
        "checksum after the repair"
    );

    // The pool on the node is ONLINE on exactly the volumes in status.
    let after = member_ids(&done);
    assert_eq!(after.len(), 5);
    assert_eq!(after[..2], before[..2]);
    assert_eq!(after[3..], before[3..]);
    assert_ne!(after[2], lost);
    let d = node_dialect(node).unwrap();
    let pn = PoolName::new(name).unwrap();
    let out = node_zfs(node, &pgml_zfs::command::status(d, Some(&pn))).unwrap();
    let st = &pgml_zfs::parse_status(&out).unwrap()[0];
    assert_eq!(st.state, Health::Online, "{out}");
    let on_node: BTreeSet<String> = st
        .members()
        .iter()
        .filter_map(|m| m.ebs_volume_id())
        .collect();
    assert_eq!(on_node, after.iter().cloned().collect(), "{out}");

    // moto holds exactly the pool's 5 volumes: the failed one was deleted; the replacement
    // carries member 2's tags.
    let in_moto = volumes_tagged(sb, keys::POOL_UID, &uid).await;
    let ids: BTreeSet<String> = volume_ids(&in_moto);
    assert_eq!(ids, after.iter().cloned().collect(), "volumes in moto");
    let in_ns = volumes_tagged(sb, keys::NAMESPACE, ns.name()).await;
    assert_eq!(in_ns.len(), 5, "nothing leaked in the namespace");
    let new = in_moto
        .iter()
        .find(|v| v.volume_id() == Some(after[2].as_str()))
        .unwrap();
    let tag = |k: &str| {
        new.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag(keys::MEMBER_INDEX).as_deref(), Some("2"));
    assert_eq!(
        tag(keys::MANAGED_BY).as_deref(),
        Some(keys::MANAGED_BY_VALUE)
    );
    assert_eq!(tag(keys::NAME), Some(format!("{}/{name}-2", ns.name())));

    // kubectl describe tells the story.
    let text = describe(sb, ns.name(), name);
    for needle in ["MemberLost", "MemberReplaced", "VolumeCreated"] {
        assert!(
            text.contains(needle),
            "kubectl describe lacks {needle}:\n{text}"
        );
    }

    // Delete: zero volumes.
    delete_leaves_nothing(sb, &api, name, ns.name()).await;
    drop((operator, agent));
    ns.cleanup().await;
}

/// Prompt notice and a node that restarts during a replacement. With the operator stopped
/// (so nothing but the agent's own look wakes it) and a resync of 60 s, a member whose
/// volume fails shows in the agent's status within 5 s (DevicesFound False, the member's
/// state beside its volume ID). Then the agent is stopped, the operator records and
/// attaches the replacement, and the pool is exported (what a node restart leaves: nothing
/// imported, the old member gone, the new volume blank). The restarted agent imports the
/// pool although its members on disk differ from status at the member being replaced,
/// runs `zpool replace`, and the pool is repaired with its data; Events tell the story.
#[tokio::test]
async fn a_lost_member_is_noticed_promptly_and_a_node_restarted_mid_replacement_resumes_it() {
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "resume").await;
    let node = &sb.nodes[0];
    let mut operator = procs::operator(sb, ns.name());
    let slow_resync = [("PGML_RESYNC_SECONDS", "60")];
    let mut agent = procs::agent_with_env(sb, node, ns.name(), &slow_resync);
    let api: Api<ZfsPool> = ns.api();
    let name = &unique("resume", ns.name());
    api.create(&PostParams::default(), &manifest(name, node, "raidz1", 3))
        .await
        .unwrap();
    let p = wait_ready(&api, name).await;
    let before = member_ids(&p);
    assert_eq!(before.len(), 3);
    // Each member's state is reported beside its volume ID.
    let s = p.status.clone().unwrap_or_default();
    for v in &s.volumes {
        assert_eq!(v.member_volume_id, v.volume_id, "{v:?}");
        assert_eq!(v.member_state.as_deref(), Some("ONLINE"), "{v:?}");
    }
    let (file, sum) = write_table(node, name, 8);

    // Only the agent watches: its look notices the lost device, not a resync.
    assert!(operator.stop(Duration::from_secs(20)), "operator stopped");
    let lost = before[2].clone();
    let _fault = fail_volume(sb, &lost);
    let start = Instant::now();
    let p = wait_for(
        &api,
        name,
        "DevicesFound False",
        READY_TIMEOUT,
        |o: &ZfsPool| has_condition(o, "DevicesFound", "False"),
    )
    .await;
    let noticed = start.elapsed();
    eprintln!("lost device noticed in {noticed:?}");
    assert!(
        noticed <= Duration::from_secs(5),
        "noticed after {noticed:?} (resync 60 s)\n{}",
        logs(&[&agent])
    );
    let msg = condition(&p, "DevicesFound").unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains(&lost), "{msg}");

    // The node "restarts" before the agent runs `zpool replace`: the agent is stopped, the
    // operator records the replacement and attaches the new volume, the pool is exported.
    assert!(agent.stop(Duration::from_secs(20)), "agent stopped");
    let operator = procs::operator(sb, ns.name());
    let p = wait_for(
        &api,
        name,
        "replacement attached",
        READY_TIMEOUT,
        |o: &ZfsPool| {
            o.status.iter().flat_map(|s| &s.volumes).any(|v| {
                v.index == 2
                    && v.replaced_volume_id.as_deref() == Some(lost.as_str())
                    && v.volume_id.is_some()
                    && v.is_attached()
            })
        },
    )
    .await;
    let new = member_ids(&p)[2].clone();
    assert_ne!(new, lost);
    let pn = PoolName::new(name).unwrap();
    retry_while_busy(|| node_zfs(node, &pgml_zfs::command::export_pool(&pn, false))).unwrap();

    // The restarted agent imports the pool and resumes the replacement.
    let agent = procs::agent_with_env(sb, node, ns.name(), &slow_resync);
    let start = Instant::now();
    let done = loop {
        let p = api.get(name).await.unwrap();
        if repaired_without(&p, &lost) {
            break p;
        }
        let imported = condition(&p, "PoolImported");
        assert!(
            imported
                .as_ref()
                .is_none_or(|c| c["reason"] != "DeviceInUse"),
            "the restarted agent refused its own pool: {imported:?}\n{}",
            logs(&[&operator, &agent])
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not repaired in 300s: {:#}\n{}",
            serde_json::to_value(&p.status).unwrap(),
            logs(&[&operator, &agent])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(member_ids(&done)[2], new);
    let s = done.status.clone().unwrap_or_default();
    let m2 = s.volumes.iter().find(|v| v.index == 2).unwrap();
    assert_eq!(
        (m2.member_volume_id.as_deref(), m2.member_state.as_deref()),
        (Some(new.as_str()), Some("ONLINE"))
    );
    assert_eq!(
        sha256(node, &file).unwrap(),
        sum,
        "checksum after the repair"
    );
    let text = describe(sb, ns.name(), name);
    assert!(
        text.contains("MemberReplaceStarted"),
        "kubectl describe lacks the agent's MemberReplaceStarted:\n{text}"
    );

    delete_leaves_nothing(sb, &api, name, ns.name()).await;
    drop((operator, agent));
    ns.cleanup().await;
}

#[tokio::test]
async fn lost_raid0_member_is_faulted_and_nothing_is_deleted() {
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "repair0").await;
    // A raid0 pool that lost a member can hang its node's zfs-fuse: the node kept for that.
    let node = sb.sacrificial_node();
    let operator = procs::operator(sb, ns.name());
    let agent = procs::agent(sb, node, ns.name());
    let api: Api<ZfsPool> = ns.api();
    let name = &unique("stripe", ns.name());
    api.create(&PostParams::default(), &manifest(name, node, "raid0", 3))
        .await
        .unwrap();
    let p = wait_ready(&api, name).await;
    let uid = p.metadata.uid.clone().unwrap();
    let before = member_ids(&p);
    let lost = before[1].clone();
    let _fault = fail_volume(sb, &lost);

    let (p, msg) = wait_degraded(&api, name, "PoolFaulted").await;
    assert!(msg.contains("member 1"), "{msg}");
    assert!(msg.contains(&lost), "{msg}");
    assert!(msg.contains("snapshot"), "{msg}");
    assert!(msg.contains("nothing was deleted"), "{msg}");
    assert!(!has_condition(&p, "Ready", "True"));
    // A while later, still nothing replaced or deleted.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let p = api.get(name).await.unwrap();
    assert_eq!(member_ids(&p), before, "members unchanged");
    let ids: Vec<String> = volume_ids(&volumes_tagged(sb, keys::POOL_UID, &uid).await);
    let mut want = before.clone();
    want.sort();
    assert_eq!(
        ids,
        want,
        "every volume still in moto{}",
        logs(&[&operator, &agent])
    );
    let text = describe(sb, ns.name(), name);
    assert!(text.contains("PoolFaulted"), "{text}");

    // Delete: the agent destroys what is left of the pool, the operator deletes every
    // volume (the failed one too).
    delete_leaves_nothing(sb, &api, name, ns.name()).await;
    drop((operator, agent));
    ns.cleanup().await;
}

#[tokio::test]
async fn operator_killed_during_the_repair_leaks_nothing() {
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "repairkill").await;
    let node = &sb.nodes[1];
    let mut operator = procs::operator(sb, ns.name());
    let agent = procs::agent(sb, node, ns.name());
    let api: Api<ZfsPool> = ns.api();
    let name = &unique("crash", ns.name());
    api.create(&PostParams::default(), &manifest(name, node, "raidz1", 3))
        .await
        .unwrap();
    let p = wait_ready(&api, name).await;
    let uid = p.metadata.uid.clone().unwrap();
    let before = member_ids(&p);
    let lost = before[0].clone();
    let _fault = fail_volume(sb, &lost);
    // Each start reconciles at once (and sees EC2's `error`): SIGKILL at 20 random moments
    // lands inside the record → create → attach → detach → delete sequence.
    for _ in 0..20 {
        let ms = rand::random_range(100..900);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        operator.kill();
        operator.start();
    }
    let p = wait_for(
        &api,
        name,
        "repaired after the kills",
        Duration::from_secs(300),
        |o: &ZfsPool| repaired_without(o, &lost),
    )
    .await;
    let m0 = p
        .status
        .as_ref()
        .and_then(|s| s.volumes.iter().find(|v| v.index == 0).cloned())
        .unwrap();
    assert_eq!(m0.generation, 1, "one replacement, whatever the crashes");
    let after = member_ids(&p);
    let in_moto: BTreeSet<String> =
        volume_ids(&volumes_tagged(sb, keys::NAMESPACE, ns.name()).await);
    assert_eq!(
        in_moto,
        after.iter().cloned().collect(),
        "moto holds exactly the members in status{}",
        logs(&[&operator, &agent])
    );
    assert_eq!(volumes_tagged(sb, keys::POOL_UID, &uid).await.len(), 3);

    delete_leaves_nothing(sb, &api, name, ns.name()).await;
    drop((operator, agent));
    ns.cleanup().await;
}

#[tokio::test]
async fn manual_replacement_waits_until_the_user_switches_to_automatic() {
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "repairman").await;
    let node = &sb.nodes[0];
    let operator = procs::operator(sb, ns.name());
    let agent = procs::agent(sb, node, ns.name());
    let api: Api<ZfsPool> = ns.api();
    let name = &unique("manual", ns.name());
    let mut pool = manifest(name, node, "raidz1", 3);
    pool.spec.template.member_replacement = pgml_api::zfspool::MemberReplacement::Manual;
    api.create(&PostParams::default(), &pool).await.unwrap();
    let p = wait_ready(&api, name).await;
    let uid = p.metadata.uid.clone().unwrap();
    let before = member_ids(&p);
    let lost = before[1].clone();
    let _fault = fail_volume(sb, &lost);
    let (_, msg) = wait_degraded(&api, name, "MemberLost").await;
    assert!(msg.contains(&format!("member 1 ({lost})")), "{msg}");
    assert!(msg.contains("memberReplacement to Automatic"), "{msg}");
    // Nothing is done while the policy is Manual.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = api.get(name).await.unwrap();
    assert_eq!(member_ids(&p), before, "members unchanged while Manual");
    assert_eq!(
        volumes_tagged(sb, keys::POOL_UID, &uid).await.len(),
        3,
        "no volume created while Manual"
    );

    // The user switches to Automatic, as the condition says: the member is replaced.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"memberReplacement": "Automatic"}})),
    )
    .await
    .unwrap();
    let p = wait_for(
        &api,
        name,
        "repaired",
        Duration::from_secs(300),
        |o: &ZfsPool| repaired_without(o, &lost),
    )
    .await;
    let after = member_ids(&p);
    let in_moto: BTreeSet<String> = volume_ids(&volumes_tagged(sb, keys::POOL_UID, &uid).await);
    assert_eq!(
        in_moto,
        after.iter().cloned().collect(),
        "{}",
        logs(&[&operator, &agent])
    );

    delete_leaves_nothing(sb, &api, name, ns.name()).await;
    drop((operator, agent));
    ns.cleanup().await;
}
