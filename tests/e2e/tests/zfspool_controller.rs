//! The ZfsPool controller, run in-process against the sandbox (real kube-apiserver, moto
//! behind the EBS simulator). No node agent runs here: pools stop at "volumes attached,
//! waiting for the agent", and the tests play the agent's part of deletion by applying
//! `PoolReleased=True` with the agent's field manager.
//!
//! Each test has its own namespace and its own controller watching only that namespace.
//! The tests of this file run one at a time (a lock), so the simulator's call counts and
//! fault rules belong to one test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_sdk_ec2::types::Volume;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use pgml_api::ZfsPool;
use pgml_api::common::keys;
use pgml_api::zfspool::ZfsPoolStatus;
use pgml_operator::{Context, Settings};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{SimAdmin, ebs_link, sdk_config, volumes_tagged};
use pgml_testbed::kube::{TestNamespace, client};
use pgml_testbed::wait::{condition, has_condition, wait_for, wait_gone};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The controller, running in a task until dropped.
struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start_controller(ns: &TestNamespace) -> Running {
    start_controller_with(ns, |_| {}).await
}

async fn start_controller_with(ns: &TestNamespace, tweak: impl FnOnce(&mut Settings)) -> Running {
    let sb = Sandbox::get();
    let ec2 = pgml_aws::SdkEc2::new(&sdk_config(sb, RetryConfig::standard()).await);
    let mut settings = Settings {
        namespace: Some(ns.name().to_string()),
        ..Settings::default()
    };
    settings.requeue.progress = Duration::from_secs(1);
    tweak(&mut settings);
    let ctx = Context::new(ns.client().clone(), Arc::new(ec2), settings);
    Running(tokio::spawn(pgml_operator::run(ctx)))
}

fn pool_yaml(name: &str, node: &str, rest: &str) -> ZfsPool {
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n{rest}"
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn create(api: &Api<ZfsPool>, pool: &ZfsPool) -> ZfsPool {
    api.create(&PostParams::default(), pool)
        .await
        .expect("creating the ZfsPool")
}

fn cond<'a>(
    s: &'a ZfsPoolStatus,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == t)
}

fn tags(v: &Volume) -> BTreeMap<String, String> {
    v.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Plays the agent: applies `status` (its fields only) with the agent's field manager.
async fn agent_reports(api: &Api<ZfsPool>, name: &str, status: serde_json::Value) {
    let body = json!({"apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool", "status": status});
    api.patch_status(
        name,
        &PatchParams::apply("pgml-agent").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("applying the agent's status as pgml-agent");
}

fn agent_condition(type_: &str, status: &str, reason: &str) -> serde_json::Value {
    json!({
        "type": type_, "status": status, "reason": reason,
        "message": "played by the test", "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// Plays the agent's part of deletion: `PoolReleased=True`.
async fn release(api: &Api<ZfsPool>, name: &str) {
    agent_reports(
        api,
        name,
        json!({"conditions": [agent_condition("PoolReleased", "True", "Exported")]}),
    )
    .await;
}

/// Waits up to `secs` for `VolumesAttached=True`.
async fn wait_attached(api: &Api<ZfsPool>, name: &str, secs: u64) -> ZfsPool {
    wait_for(
        api,
        name,
        "VolumesAttached=True",
        Duration::from_secs(secs),
        |p| has_condition(p, "VolumesAttached", "True"),
    )
    .await
}

/// Deletes the pool, plays the agent's release, waits (60s) until it is gone and checks
/// that moto holds no volume of it.
async fn delete_leaves_nothing(api: &Api<ZfsPool>, name: &str, uid: &str) {
    api.delete(name, &DeleteParams::default()).await.unwrap();
    release(api, name).await;
    wait_gone(api, name, Duration::from_secs(60)).await;
    assert_eq!(
        volumes_tagged(Sandbox::get(), keys::POOL_UID, uid)
            .await
            .len(),
        0,
        "Delete leaves no volume"
    );
}

async fn wait_event(ns: &TestNamespace, object: &str, type_: &str, reason: &str) -> String {
    let events: Api<Event> = ns.api();
    let start = Instant::now();
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .expect("listing events")
            .items
            .into_iter()
            .find(|e| {
                e.type_.as_deref() == Some(type_)
                    && e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
            });
        if let Some(e) = found {
            return e.note.unwrap_or_default();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no {type_} event {reason} for {object}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The pool's volumes are what the spec says, in the node's zone, tagged and attached.
async fn check_volumes(
    p: &ZfsPool,
    node: &pgml_testbed::sandbox::NodeInfo,
    count: usize,
    vtype: &str,
    size: i32,
    iops: i32,
    throughput: Option<i32>,
) -> Vec<Volume> {
    let uid = p.metadata.uid.as_deref().unwrap();
    let name = p.metadata.name.as_deref().unwrap();
    let ns = p.metadata.namespace.as_deref().unwrap();
    let vols = volumes_tagged(Sandbox::get(), keys::POOL_UID, uid).await;
    assert_eq!(vols.len(), count, "volumes of {name} in moto");
    let status = p.status.clone().unwrap();
    let mut indexes = vec![];
    for v in &vols {
        let id = v.volume_id().unwrap();
        assert_eq!(v.volume_type().unwrap().as_str(), vtype, "{id}");
        assert_eq!(v.size(), Some(size), "{id}");
        assert_eq!(v.iops(), Some(iops), "{id}");
        if let Some(t) = throughput {
            assert_eq!(v.throughput(), Some(t), "{id}");
        }
        assert_eq!(v.availability_zone(), Some(node.az.as_str()), "{id}");
        let t = tags(v);
        assert_eq!(t["pgml.io/managed-by"], "pgml-operator");
        assert_eq!(t["pgml.io/installation"], "pgml-operator");
        assert_eq!(t["pgml.io/namespace"], ns);
        assert_eq!(t["pgml.io/pool"], name);
        assert_eq!(t["pgml.io/pool-uid"], uid);
        let index = t["pgml.io/member-index"].clone();
        assert_eq!(t["Name"], format!("{ns}/{name}-{index}"));
        indexes.push(index.parse::<i32>().unwrap());
        let att = v.attachments();
        assert_eq!(att.len(), 1, "{id} attachments");
        assert_eq!(att[0].instance_id(), Some(node.instance_id.as_str()));
        assert_eq!(att[0].state().map(|s| s.as_str()), Some("attached"));
        assert!(
            ebs_link(node, id).exists(),
            "by-id link of {id} on {}",
            node.name
        );
        let vs = status
            .volumes
            .iter()
            .find(|s| s.volume_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} is not in status.volumes"));
        assert_eq!(vs.index.to_string(), index);
        assert_eq!(vs.attachment_state.as_deref(), Some("attached"));
    }
    indexes.sort();
    assert_eq!(indexes, (0..count as i32).collect::<Vec<_>>());
    assert_eq!(status.volumes.len(), count);
    vols
}

async fn warning_events(ns: &TestNamespace, object: &str) -> Vec<(String, String)> {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// A 4×gp3 raid0 pool: four volumes with the spec's IOPS/throughput and the contract's
/// tags, attached to node 1; status lists them; Ready waits for the agent; a reconcile with
/// nothing to do writes nothing; the volumes buy more throughput than m7i.xlarge can use;
/// Retain leaves them detached and tagged.
#[tokio::test]
async fn gp3_raid0_pool_is_provisioned_then_retained() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::get();
    let node = &sb.nodes[0];
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpctl-raid0").await;
    let _ctl = start_controller(&ns).await;
    let api: Api<ZfsPool> = ns.api();
    let p = create(
        &api,
        &pool_yaml(
            "stripe",
            &node.name,
            "  layout: raid0\n  reclaimPolicy: Retain\n  volumes: {count: 4, type: gp3, sizeGiB: 20, iops: 4000, throughputMiBps: 400, tags: {team: data}}\n",
        ),
    )
    .await;
    let uid = p.metadata.uid.clone().unwrap();

    let p = wait_attached(&api, "stripe", 90).await;
    let vols = check_volumes(&p, node, 4, "gp3", 20, 4000, Some(400)).await;
    for v in &vols {
        assert_eq!(tags(v)["team"], "data");
    }
    let s = p.status.clone().unwrap();
    let ready = cond(&s, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaitingForAgent")
    );
    assert!(ready.message.contains(&node.name), "{}", ready.message);
    assert_eq!(s.instance_id.as_deref(), Some(node.instance_id.as_str()));
    assert_eq!(s.availability_zone.as_deref(), Some(node.az.as_str()));
    assert_eq!(s.pool_name.as_deref(), Some("stripe"));
    assert_eq!(s.phase, Some(pgml_api::zfspool::PoolPhase::Importing));
    assert!(
        p.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == "pgml.io/volumes"))
    );
    // 4 × 400 MiB/s > m7i.xlarge's 1250 MB/s.
    let perf = s.performance.clone().expect("status.performance");
    assert_eq!(
        (perf.volume_iops, perf.volume_throughput_mibps),
        (16000, 1600)
    );
    assert_eq!(perf.limited_by, "Instance");
    assert_eq!(cond(&s, "PerformanceLimited").unwrap().status, "True");
    for c in &s.conditions {
        assert_eq!(c.observed_generation, p.metadata.generation, "{}", c.type_);
    }

    // The controller reconciles every second while it waits for the agent: none writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rv = api.get("stripe").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = api.get("stripe").await.unwrap();
    assert_eq!(
        later.metadata.resource_version, rv,
        "a reconcile with nothing to do wrote: {:?}",
        later.status
    );

    for reason in ["VolumeCreated", "VolumeAttached"] {
        wait_event(&ns, "stripe", "Normal", reason).await;
    }

    // The agent reports the pool imported and healthy: Ready, Online, a PoolReady event.
    agent_reports(
        &api,
        "stripe",
        json!({"health": "ONLINE", "conditions": [
            agent_condition("PoolImported", "True", "Created"),
            agent_condition("PoolHealthy", "True", "Online"),
        ]}),
    )
    .await;
    let p = wait_for(&api, "stripe", "Ready=True", Duration::from_secs(20), |p| {
        has_condition(p, "Ready", "True")
    })
    .await;
    assert_eq!(
        p.status.as_ref().unwrap().phase,
        Some(pgml_api::zfspool::PoolPhase::Online)
    );
    wait_event(&ns, "stripe", "Normal", "PoolReady").await;

    // A raid0 member lost: Degraded names it and says the data must come from a snapshot.
    agent_reports(
        &api,
        "stripe",
        json!({"health": "FAULTED", "volumes": [{"index": 2, "memberState": "UNAVAIL"}],
        "conditions": [
            agent_condition("PoolImported", "True", "Created"),
            agent_condition("PoolHealthy", "False", "Faulted"),
        ]}),
    )
    .await;
    let p = wait_for(
        &api,
        "stripe",
        "Degraded=True",
        Duration::from_secs(20),
        |p| has_condition(p, "Degraded", "True"),
    )
    .await;
    let s = p.status.clone().unwrap();
    let d = cond(&s, "Degraded").unwrap();
    assert_eq!(d.reason, "PoolFaulted");
    assert!(d.message.contains("member 2 (vol-"), "{}", d.message);
    assert!(d.message.contains("snapshot"), "{}", d.message);
    assert_eq!(s.phase, Some(pgml_api::zfspool::PoolPhase::Failed));
    assert_eq!(cond(&s, "Ready").unwrap().status, "False");
    let note = wait_event(&ns, "stripe", "Warning", "PoolFaulted").await;
    assert!(note.contains("snapshot"), "{note}");

    // Deletion waits for the agent, then detaches and keeps the volumes.
    api.delete("stripe", &DeleteParams::default())
        .await
        .unwrap();
    let p = wait_for(
        &api,
        "stripe",
        "Deleting, waiting for the agent",
        Duration::from_secs(30),
        |p| condition(p, "Progressing").is_some_and(|c| c["reason"] == "WaitingForAgentRelease"),
    )
    .await;
    assert_eq!(
        p.status.unwrap().phase,
        Some(pgml_api::zfspool::PoolPhase::Deleting)
    );
    assert!(
        volumes_tagged(Sandbox::get(), keys::POOL_UID, &uid)
            .await
            .iter()
            .all(|v| !v.attachments().is_empty()),
        "nothing detached before the agent released the pool"
    );
    release(&api, "stripe").await;
    wait_gone(&api, "stripe", Duration::from_secs(60)).await;
    let left = volumes_tagged(Sandbox::get(), keys::POOL_UID, &uid).await;
    assert_eq!(left.len(), 4, "Retain keeps every volume");
    for v in &left {
        assert_eq!(
            v.state().map(|s| s.as_str()),
            Some("available"),
            "{:?}",
            v.volume_id()
        );
        assert!(v.attachments().is_empty());
        assert_eq!(tags(v)["pgml.io/pool-uid"], uid);
        assert!(!ebs_link(node, v.volume_id().unwrap()).exists());
    }
    // Retained volumes are the test's to remove.
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    for v in &left {
        ec2.delete_volume()
            .volume_id(v.volume_id().unwrap())
            .send()
            .await
            .unwrap();
    }
    ns.cleanup().await;
}

/// An io2 raidz1 pool on node 2: three io2 volumes; growth of size and IOPS becomes
/// ModifyVolume on each member, counted in recentModifications; Delete leaves nothing.
#[tokio::test]
async fn io2_raidz1_pool_grows_then_is_deleted() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::get();
    let node = &sb.nodes[1];
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpctl-raidz1").await;
    let _ctl = start_controller(&ns).await;
    let api: Api<ZfsPool> = ns.api();
    let p = create(
        &api,
        &pool_yaml(
            "parity",
            &node.name,
            "  layout: raidz1\n  reclaimPolicy: Delete\n  volumes: {count: 3, type: io2, sizeGiB: 10, iops: 1000}\n",
        ),
    )
    .await;
    let uid = p.metadata.uid.clone().unwrap();
    let p = wait_attached(&api, "parity", 90).await;
    check_volumes(&p, node, 3, "io2", 10, 1000, None).await;
    assert_eq!(
        cond(p.status.as_ref().unwrap(), "Ready").unwrap().reason,
        "WaitingForAgent"
    );

    // Growth: a bigger size and more IOPS reach EC2.
    api.patch(
        "parity",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"volumes": {"sizeGiB": 12, "iops": 1200}}})),
    )
    .await
    .expect("growing the spec");
    let p = wait_for(
        &api,
        "parity",
        "volumes grown in status",
        Duration::from_secs(60),
        |p| {
            let s = p.status.clone().unwrap_or_default();
            s.observed_generation == p.metadata.generation
                && s.volumes.len() == 3
                && s.volumes
                    .iter()
                    .all(|v| v.size_gib == Some(12) && v.iops == Some(1200))
        },
    )
    .await;
    let s = p.status.clone().unwrap();
    assert_eq!(s.recent_modifications.len(), 1, "one modification round");
    for v in &s.volumes {
        let m = v.modification.as_ref().expect("modification recorded");
        assert_eq!((m.target_size_gib, m.target_iops), (Some(12), Some(1200)));
    }
    check_volumes(&p, node, 3, "io2", 12, 1200, None).await;

    delete_leaves_nothing(&api, "parity", &uid).await;
    ns.cleanup().await;
}

/// A node without providerID: a condition and one Warning Event, no volumes; a pool that
/// never had volumes is deleted without waiting for an agent. A pool asking for a restore
/// (not implemented yet) gets no empty volumes in its place.
#[tokio::test]
async fn node_without_provider_id_is_a_condition_and_a_warning() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpctl-noprov").await;
    let node_name = format!("{}-node", ns.name());
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name, "labels": {"pgml.io/test": "zpctl-noprov"}},
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("creating a Node");
    let _ctl = start_controller(&ns).await;
    let api: Api<ZfsPool> = ns.api();
    let p = create(
        &api,
        &pool_yaml("orphan", &node_name, "  volumes: {count: 2, sizeGiB: 10}\n"),
    )
    .await;
    let uid = p.metadata.uid.clone().unwrap();
    let p = wait_for(
        &api,
        "orphan",
        "Ready=False NodeWithoutProviderID",
        Duration::from_secs(30),
        |p| condition(p, "Ready").is_some_and(|c| c["reason"] == "NodeWithoutProviderID"),
    )
    .await;
    let ready = cond(p.status.as_ref().unwrap(), "Ready").unwrap();
    assert!(ready.message.contains(&node_name), "{}", ready.message);
    let start = Instant::now();
    let warnings = loop {
        let w = warning_events(&ns, "orphan").await;
        if !w.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        warnings
            .iter()
            .filter(|(r, _)| r == "NodeWithoutProviderID")
            .count(),
        1,
        "{warnings:?}"
    );
    assert!(
        volumes_tagged(Sandbox::get(), keys::POOL_UID, &uid)
            .await
            .is_empty()
    );

    // Never provisioned: deletion has nothing to wait for, even with the node still there.
    api.delete("orphan", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&api, "orphan", Duration::from_secs(30)).await;
    nodes
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();

    // restoreFrom names a snapshot that does not exist: no empty volumes are made in its
    // place.
    let p = create(
        &api,
        &pool_yaml(
            "restored",
            &Sandbox::get().nodes[0].name,
            "  volumes: {count: 2, sizeGiB: 10}\n  restoreFrom: {ebsSnapshotName: nightly}\n",
        ),
    )
    .await;
    wait_for(
        &api,
        "restored",
        "Ready=False SnapshotNotFound",
        Duration::from_secs(30),
        |p| condition(p, "Ready").is_some_and(|c| c["reason"] == "SnapshotNotFound"),
    )
    .await;
    wait_event(&ns, "restored", "Warning", "SnapshotNotFound").await;
    assert!(
        volumes_tagged(
            Sandbox::get(),
            keys::POOL_UID,
            p.metadata.uid.as_deref().unwrap()
        )
        .await
        .is_empty()
    );
    api.delete("restored", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&api, "restored", Duration::from_secs(30)).await;
    ns.cleanup().await;
}

/// 20% of CreateVolume and AttachVolume throttled (and 5% of creates failing after EC2 made
/// the volume): the pool still gets exactly its volumes, with a bounded number of calls.
#[tokio::test]
async fn throttling_still_converges_with_bounded_calls() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::get();
    let node = &sb.nodes[2];
    let sim = SimAdmin::from_sandbox(sb);
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpctl-throttle").await;
    let api: Api<ZfsPool> = ns.api();
    let p = create(
        &api,
        &pool_yaml(
            "busy",
            &node.name,
            "  reclaimPolicy: Delete\n  volumes: {count: 5, sizeGiB: 10}\n",
        ),
    )
    .await;
    let uid = p.metadata.uid.clone().unwrap();
    let _faults = [
        sim.fault(json!({"kind": "throttle", "action": "CreateVolume", "match": uid, "probability": 0.2, "seed": 7})).unwrap(),
        sim.fault(json!({"kind": "error", "action": "CreateVolume", "match": uid, "status": 500, "when": "after", "probability": 0.05, "seed": 11})).unwrap(),
        sim.fault(json!({"kind": "throttle", "action": "AttachVolume", "match": node.instance_id, "probability": 0.2, "seed": 13})).unwrap(),
    ];
    let before = sim.stats().unwrap();
    let _ctl = start_controller(&ns).await;
    let p = wait_attached(&api, "busy", 120).await;
    // moto reports no throughput for a gp3 volume created at the baseline.
    check_volumes(&p, node, 5, "gp3", 10, 3000, None).await;
    let after = sim.stats().unwrap();
    let delta = |action: &str, outcome: &str| {
        after["actions"][action][outcome].as_u64().unwrap_or(0)
            - before["actions"][action][outcome].as_u64().unwrap_or(0)
    };
    let report: Vec<String> = [
        "CreateVolume",
        "AttachVolume",
        "DescribeVolumes",
        "DescribeInstances",
        "DescribeInstanceTypes",
    ]
    .iter()
    .map(|a| {
        format!(
            "{a}: {} calls ({} throttled)",
            delta(a, "total"),
            delta(a, "throttled")
        )
    })
    .collect();
    println!(
        "EC2 calls for a 5-volume pool under 20% throttling: {}",
        report.join("; ")
    );
    assert!(delta("CreateVolume", "total") <= 15, "{report:?}");
    assert!(delta("AttachVolume", "total") <= 15, "{report:?}");
    assert!(delta("DescribeVolumes", "total") <= 60, "{report:?}");
    drop(_faults);

    delete_leaves_nothing(&api, "busy", &uid).await;
    ns.cleanup().await;
}

/// A member found attached to another instance is reported (condition and Warning Event)
/// and left there: the controller never takes a volume from another instance.
#[tokio::test]
async fn a_member_attached_elsewhere_is_reported_not_stolen() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::get();
    let (node, other) = (&sb.nodes[0], &sb.nodes[1]);
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpctl-elsewhere").await;
    let api: Api<ZfsPool> = ns.api();
    let ctl = start_controller(&ns).await;
    let p = create(
        &api,
        &pool_yaml(
            "pair",
            &node.name,
            "  reclaimPolicy: Delete\n  volumes: {count: 2, sizeGiB: 5}\n",
        ),
    )
    .await;
    let uid = p.metadata.uid.clone().unwrap();
    wait_attached(&api, "pair", 60).await;

    // With the controller stopped, someone moves member 1 to another instance.
    drop(ctl);
    let ec2 = pgml_testbed::aws::ec2_client(sb).await;
    let moved = volumes_tagged(Sandbox::get(), keys::POOL_UID, &uid)
        .await
        .into_iter()
        .find(|v| tags(v)["pgml.io/member-index"] == "1")
        .unwrap();
    let moved_id = moved.volume_id().unwrap().to_string();
    ec2.detach_volume()
        .volume_id(&moved_id)
        .instance_id(&node.instance_id)
        .send()
        .await
        .unwrap();
    ec2.attach_volume()
        .volume_id(&moved_id)
        .instance_id(&other.instance_id)
        .device("/dev/xvdzz")
        .send()
        .await
        .unwrap();

    let _ctl = start_controller(&ns).await;
    let p = wait_for(
        &api,
        "pair",
        "VolumesAttached=False AttachedToAnotherInstance",
        Duration::from_secs(30),
        |p| {
            condition(p, "VolumesAttached")
                .is_some_and(|c| c["reason"] == "AttachedToAnotherInstance")
        },
    )
    .await;
    let c = cond(p.status.as_ref().unwrap(), "VolumesAttached").unwrap();
    assert!(
        c.message.contains(&moved_id) && c.message.contains(&other.instance_id),
        "{}",
        c.message
    );
    wait_event(&ns, "pair", "Warning", "AttachedToAnotherInstance").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = volumes_tagged(Sandbox::get(), keys::POOL_UID, &uid)
        .await
        .into_iter()
        .find(|v| v.volume_id() == Some(moved_id.as_str()))
        .unwrap();
    assert_eq!(v.attachments().len(), 1);
    assert_eq!(
        v.attachments()[0].instance_id(),
        Some(other.instance_id.as_str()),
        "not stolen"
    );

    // Cleanup: deletion detaches whatever instance holds the pool's volumes, then deletes.
    delete_leaves_nothing(&api, "pair", &uid).await;
    ns.cleanup().await;
}

/// An attachment that stays `attaching` (the simulator holds it) is reported once it lasts
/// longer than the configured timeout; when EC2 finishes it, the pool moves on.
#[tokio::test]
async fn an_attachment_that_lasts_is_reported() {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::get();
    let node = &sb.nodes[2];
    let sim = SimAdmin::from_sandbox(sb);
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpctl-stuck").await;
    let api: Api<ZfsPool> = ns.api();
    let ctl = start_controller(&ns).await;
    let p = create(
        &api,
        &pool_yaml(
            "slow",
            &node.name,
            "  reclaimPolicy: Delete\n  volumes: {count: 2, sizeGiB: 5}\n",
        ),
    )
    .await;
    let uid = p.metadata.uid.clone().unwrap();
    wait_attached(&api, "slow", 60).await;

    // Member 0 is detached behind the controller's back; its next attach hangs in EC2.
    drop(ctl);
    let member0 = volumes_tagged(Sandbox::get(), keys::POOL_UID, &uid)
        .await
        .into_iter()
        .find(|v| tags(v)["pgml.io/member-index"] == "0")
        .unwrap();
    let id = member0.volume_id().unwrap().to_string();
    let stuck = sim
        .fault(json!({"kind": "attach_stuck", "volume_id": id}))
        .unwrap();
    pgml_testbed::aws::ec2_client(sb)
        .await
        .detach_volume()
        .volume_id(&id)
        .instance_id(&node.instance_id)
        .send()
        .await
        .unwrap();
    let _ctl = start_controller_with(&ns, |s| s.pool.attach_timeout = Duration::from_secs(2)).await;
    let p = wait_for(
        &api,
        "slow",
        "VolumesAttached=False AttachmentStuck",
        Duration::from_secs(30),
        |p| condition(p, "VolumesAttached").is_some_and(|c| c["reason"] == "AttachmentStuck"),
    )
    .await;
    let s = p.status.clone().unwrap();
    assert!(cond(&s, "VolumesAttached").unwrap().message.contains(&id));
    let v0 = s.volumes.iter().find(|v| v.index == 0).unwrap();
    assert_eq!(v0.attachment_state.as_deref(), Some("attaching"));

    // EC2 finishes the attachment: the pool is whole again.
    stuck.clear();
    wait_for(
        &api,
        "slow",
        "VolumesAttached=True again",
        Duration::from_secs(30),
        |p| has_condition(p, "VolumesAttached", "True"),
    )
    .await;
    assert!(ebs_link(node, &id).exists());

    delete_leaves_nothing(&api, "slow", &uid).await;
    ns.cleanup().await;
}
