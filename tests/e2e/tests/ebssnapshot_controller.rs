//! The EbsSnapshot controller end to end with the real operator and agent: a snapshot of a
//! Ready 4-volume raid0 ZfsPool with `standbySignal: Never` goes straight to the capture
//! (no hold, the agent untouched) and reaches Completed with the set in member order and
//! tagged in AWS; deletion policies Delete and Retain; a snapshot AWS fails is Failed
//! SnapshotError and leaves nothing; sources missing or not ready.

mod snapshot_common;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::PostParams;
use pgml_api::common::keys;
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, PgmlCluster};
use pgml_testbed::aws::SimAdmin;
use pgml_testbed::wait::{condition, wait_for, wait_gone};
use serde_json::json;
use snapshot_common::*;

/// A PgmlCluster the cluster controller (running in the same operator) can place nowhere: no
/// node has the label, so it writes no `status.instances` and the entries these tests write (as the
/// instances would be reported) are the only ones.
const CLUSTER_NO_NODE: &str = "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {name: main}\nspec:\n  instances: 2\n  nodeSelector: {pgml.io/e2e-no-such-node: \"true\"}\n  storage: {zfs: {template: {volumes: {count: 1, type: gp3, sizeGiB: 1}}}}\n";

/// Snapshot IDs of the status, in member order.
fn member_ids(s: &EbsSnapshot) -> Vec<(i32, String, String)> {
    s.status
        .iter()
        .flat_map(|s| s.snapshots.iter())
        .map(|m| {
            (
                m.member_index,
                m.volume_id.clone().unwrap_or_default(),
                m.snapshot_id.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn never_stamped_snapshot_of_a_raid0_pool_completes_without_the_agent() {
    let f = Fixture::start("snapctl", &[0]).await;
    let node = &f.sb.nodes[0];
    let pool_name = f.unique("snapsrc");
    let pool = f.ready_pool(&pool_name, node, "raid0", 4).await;
    let (_, _) = fake_pgdata(node, &pool_name);
    let pool_status = pool.status.clone().unwrap();
    let guid = pool_status
        .pool_guid
        .clone()
        .expect("agent reports the GUID");

    f.snapshot("never", &pool_name, "standbySignal: Never\n")
        .await;
    let s = f.wait_phase("never", SnapshotPhase::Completed).await;
    let st = s.status.clone().unwrap();

    // The set: one snapshot per member, in member order, of the pool's volumes.
    let members = member_ids(&s);
    assert_eq!(
        members.iter().map(|m| m.0).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    for (i, vol, snap) in &members {
        let want = pool_status
            .volumes
            .iter()
            .find(|v| v.index == *i)
            .and_then(|v| v.volume_id.clone())
            .unwrap();
        assert_eq!(vol, &want, "member {i} volume");
        assert!(snap.starts_with("snap-"), "member {i}: {snap}");
    }
    assert!(
        st.snapshots
            .iter()
            .all(|m| m.state.as_deref() == Some("completed"))
    );
    assert_eq!(st.volume_count, Some(4));
    assert_eq!(st.layout.as_deref(), Some("raid0"));
    assert_eq!(st.pool_guid.as_deref(), Some(guid.as_str()));
    assert_eq!(st.zfs_pool.as_deref(), Some(pool_name.as_str()));
    assert_eq!(st.node_name.as_deref(), Some(node.name.as_str()));
    assert_eq!(st.instance_id.as_deref(), Some(node.instance_id.as_str()));
    assert_eq!(st.consistency.as_deref(), Some("None"));
    assert_eq!(st.size_gib, Some(4));
    assert!(st.capture_time.is_some() && st.completion_time.is_some());
    assert!(st.hold.is_none(), "no hold asked: {:?}", st.hold);
    let ready = condition(&s, "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["observedGeneration"], json!(s.metadata.generation));
    assert_eq!(
        s.labels().get(keys::NODE).map(String::as_str),
        Some(node.name.as_str())
    );
    assert!(s.finalizers().iter().any(|x| x == "pgml.io/snapshots"));
    assert!(!has_standby_signal(node, &pool_name));

    // AWS: the set is found by its UID tag alone and each snapshot says what it is.
    let uid = s.metadata.uid.clone().unwrap();
    let tagged = snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &uid).await;
    assert_eq!(tagged.len(), 4, "{tagged:?}");
    for t in &tagged {
        let id = t.snapshot_id().unwrap();
        let (i, vol, _) = members.iter().find(|m| m.2 == id).expect("in status");
        assert_eq!(t.volume_id(), Some(vol.as_str()));
        assert_eq!(tag(t, keys::MEMBER_INDEX), Some(i.to_string().as_str()));
        assert_eq!(tag(t, keys::SNAPSHOT), Some("never"));
        assert_eq!(tag(t, keys::NAMESPACE), Some(f.name()));
        assert_eq!(tag(t, keys::POOL), Some(pool_name.as_str()));
        assert_eq!(tag(t, keys::POOL_GUID), Some(guid.as_str()));
        assert_eq!(tag(t, keys::LAYOUT), Some("raid0"));
        assert_eq!(tag(t, keys::MANAGED_BY), Some("pgml-operator"));
        assert_eq!(tag(t, keys::INSTALLATION), Some("pgml-operator"));
        assert_eq!(
            tag(t, keys::NAME),
            Some(format!("{}/never-{i}", f.name()).as_str())
        );
    }

    // A no-op reconcile writes nothing: the object stays as it is.
    let rv = s.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = f.snapshots().get("never").await.unwrap();
    assert_eq!(
        again.metadata.resource_version, rv,
        "a settled snapshot was rewritten"
    );

    assert_nothing_leaked(&f).await;
    f.finish().await;
}

#[tokio::test]
async fn delete_policy_removes_the_aws_snapshots_and_retain_keeps_them() {
    let f = Fixture::start("snappol", &[1]).await;
    let node = &f.sb.nodes[1];
    let pool_name = f.unique("policy");
    f.ready_pool(&pool_name, node, "raid0", 2).await;
    f.snapshot(
        "drop",
        &pool_name,
        "standbySignal: Never\ndeletionPolicy: Delete\n",
    )
    .await;
    f.snapshot(
        "keep",
        &pool_name,
        "standbySignal: Never\ndeletionPolicy: Retain\n",
    )
    .await;
    let drop = f.wait_phase("drop", SnapshotPhase::Completed).await;
    let keep = f.wait_phase("keep", SnapshotPhase::Completed).await;
    let drop_uid = drop.metadata.uid.clone().unwrap();
    let keep_uid = keep.metadata.uid.clone().unwrap();
    assert_eq!(
        snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &drop_uid)
            .await
            .len(),
        2
    );
    assert_eq!(
        snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &keep_uid)
            .await
            .len(),
        2
    );

    // An edit after completion (deletionPolicy and tags are read when they apply) is
    // observed: a finished set never looks out of date to Argo CD or `kubectl wait`.
    f.snapshots()
        .patch(
            "keep",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"tags": {"team": "db"}}})),
        )
        .await
        .unwrap();
    let edited = wait_for(
        &f.snapshots(),
        "keep",
        "the edit of a Completed snapshot observed",
        SNAPSHOT_TIMEOUT,
        |s: &EbsSnapshot| {
            let st = s.status.as_ref();
            st.and_then(|st| st.observed_generation) == Some(2)
                && st.is_some_and(|st| {
                    st.conditions
                        .iter()
                        .all(|c| c.observed_generation == Some(2))
                })
        },
    )
    .await;
    assert_eq!(edited.status.unwrap().phase, Some(SnapshotPhase::Completed));

    f.delete_snapshot("drop").await;
    f.delete_snapshot("keep").await;
    wait_gone(&f.snapshots(), "drop", SNAPSHOT_TIMEOUT).await;
    wait_gone(&f.snapshots(), "keep", SNAPSHOT_TIMEOUT).await;

    assert!(
        snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &drop_uid)
            .await
            .is_empty(),
        "Delete left AWS snapshots"
    );
    let kept = snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &keep_uid).await;
    assert_eq!(kept.len(), 2, "Retain must keep the set");
    for k in &kept {
        assert_eq!(tag(k, keys::SNAPSHOT), Some("keep"));
        assert_eq!(tag(k, keys::NAMESPACE), Some(f.name()));
    }
    let ids: Vec<String> = kept
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_string))
        .collect();
    delete_in_moto(f.sb, &ids).await;
    f.finish().await;
}

#[tokio::test]
async fn a_snapshot_aws_fails_is_failed_snapshot_error_and_leaves_nothing() {
    let f = Fixture::start("snaperr", &[2]).await;
    let node = &f.sb.nodes[2];
    let pool_name = f.unique("errsrc");
    let pool = f.ready_pool(&pool_name, node, "raid0", 2).await;
    let member1 = pool.status.unwrap().volumes[1].volume_id.clone().unwrap();
    // The next snapshot of member 1's volume ends in `error`.
    let _fault = SimAdmin::from_sandbox(f.sb)
        .fault(json!({"kind": "snapshot_error", "count": 1, "volume_id": member1}))
        .unwrap();
    f.snapshot("broken", &pool_name, "standbySignal: Never\n")
        .await;
    let s = f.wait_phase("broken", SnapshotPhase::Failed).await;
    assert_eq!(ready_reason(&s), "SnapshotError", "{:?}", s.status);
    let msg = condition(&s, "Ready").unwrap()["message"].to_string();
    assert!(msg.contains("error"), "{msg}");
    let uid = s.metadata.uid.clone().unwrap();
    // The whole set is deleted, the healthy member's snapshot too.
    let left = set_left_after(f.sb, &uid, Duration::from_secs(10)).await;
    assert!(left.is_empty(), "a failed set left {left:?}");
    let events = warning_reasons(&f, "broken").await;
    assert!(events.contains(&"SnapshotError".to_string()), "{events:?}");
    f.finish().await;
}

/// Reasons of the Warning Events about an object.
async fn warning_reasons(f: &Fixture, name: &str) -> Vec<String> {
    let api: kube::Api<k8s_openapi::api::events::v1::Event> = f.ns.api();
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn missing_sources_are_awaited_then_fail_and_unready_ones_wait() {
    let mut f = Fixture::start("snapsrc", &[0]).await;
    // A short wait for missing sources, so the test sees both ends of it.
    f.operator.stop(Duration::from_secs(10));
    f.operator.set_env("PGML_SOURCE_TIMEOUT_SECONDS", "15");
    f.operator.start();
    let node = &f.sb.nodes[0];

    // Applied before its pool (as `kubectl apply -f dir/` does, alphabetically): it waits
    // Pending with SourceNotFound, then proceeds once the pool is Ready.
    let late = f.unique("latepool");
    f.snapshot("early", &late, "standbySignal: Never\n").await;
    f.snapshot("nothing", "no-such-pool", "").await;
    let s = wait_for(
        &f.snapshots(),
        "early",
        "Pending SourceNotFound",
        SNAPSHOT_TIMEOUT,
        |s: &EbsSnapshot| ready_reason(s) == "SourceNotFound",
    )
    .await;
    assert_eq!(phase_of(&s), Some(SnapshotPhase::Pending));
    f.ready_pool(&late, node, "raid0", 1).await;
    f.wait_phase("early", SnapshotPhase::Completed).await;

    // A pool that never comes: Failed SourceNotFound once the wait is over.
    let s = f.wait_phase("nothing", SnapshotPhase::Failed).await;
    assert_eq!(ready_reason(&s), "SourceNotFound");
    assert!(
        warning_reasons(&f, "nothing")
            .await
            .contains(&"SourceNotFound".to_string())
    );

    // A cluster that reports no instances yet: Pending, SourceNotReady, until it does.
    let cluster: PgmlCluster = serde_yaml::from_str(CLUSTER_NO_NODE).unwrap();
    let api: kube::Api<PgmlCluster> = f.ns.api();
    api.create(&PostParams::default(), &cluster).await.unwrap();
    let obj: EbsSnapshot = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {name: of-cluster}\nspec: {source: {cluster: {name: main}}}\n",
    )
    .unwrap();
    f.snapshots()
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    let s = wait_for(
        &f.snapshots(),
        "of-cluster",
        "SourceNotReady",
        SNAPSHOT_TIMEOUT,
        |s: &EbsSnapshot| ready_reason(s) == "SourceNotReady",
    )
    .await;
    assert_eq!(phase_of(&s), Some(SnapshotPhase::Pending));
    let prog = condition(&s, "Progressing").unwrap();
    assert_eq!(prog["status"], "False");
    assert!(
        prog["message"].as_str().unwrap().contains("no instances"),
        "{prog}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = f.snapshots().get("of-cluster").await.unwrap();
    assert_eq!(phase_of(&still), Some(SnapshotPhase::Pending));
    f.finish().await;
}

/// A PVC bound to an EBS CSI volume attached to a node: the source resolves through the PV
/// and EC2 to the node (label), one member; with standbySignal Never and consistency None
/// there is nothing to hold, and the set completes.
#[tokio::test]
async fn a_pvc_on_an_ebs_csi_volume_is_captured() {
    use aws_config::retry::RetryConfig;
    use k8s_openapi::api::core::v1::PersistentVolume;
    use pgml_aws::Ec2;

    let f = Fixture::start("snappvc", &[]).await;
    let node = &f.sb.nodes[1];
    let ec2 =
        pgml_aws::SdkEc2::new(&pgml_testbed::aws::sdk_config(f.sb, RetryConfig::standard()).await);
    let mut made = pgml_testbed::aws::Made::default();
    let vol = ec2
        .create_volume(&pgml_aws::CreateVolume {
            availability_zone: node.az.clone(),
            volume_type: pgml_aws::VolumeType::Gp3,
            size_gib: 1,
            iops: None,
            throughput_mibps: None,
            encrypted: false,
            kms_key_id: None,
            snapshot_id: None,
            volume_initialization_rate_mibps: None,
            tags: [("test".to_string(), f.name().to_string())].into(),
            client_token: pgml_aws::client_token(&[f.name(), "pvc"]),
        })
        .await
        .unwrap();
    made.volumes.push(vol.volume_id.clone());
    ec2.attach_volume(&vol.volume_id, &node.instance_id, "/dev/xvdzz")
        .await
        .unwrap();
    made.attached
        .push((vol.volume_id.clone(), node.instance_id.clone()));

    let pv_name = format!("pv-{}", f.name());
    pgml_testbed::kube::csi_volume_and_claim(
        f.ns.client(),
        f.name(),
        &pv_name,
        "data",
        &vol.volume_id,
    )
    .await;
    let pvs: kube::Api<PersistentVolume> = kube::Api::all(f.ns.client().clone());

    let obj: EbsSnapshot = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {name: of-pvc}\nspec:\n  source: {persistentVolumeClaim: {name: data}}\n  standbySignal: Never\n  consistency: None\n",
    )
    .unwrap();
    f.snapshots()
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    let s = f.wait_phase("of-pvc", SnapshotPhase::Completed).await;
    let st = s.status.clone().unwrap();
    assert_eq!(st.source.as_deref(), Some("PersistentVolumeClaim/data"));
    assert_eq!(st.node_name.as_deref(), Some(node.name.as_str()));
    assert_eq!(st.instance_id.as_deref(), Some(node.instance_id.as_str()));
    assert_eq!(st.consistency.as_deref(), Some("None"));
    assert!(st.zfs_pool.is_none() && st.layout.is_none());
    assert_eq!(member_ids(&s).len(), 1);
    assert_eq!(member_ids(&s)[0].1, vol.volume_id);
    assert_eq!(
        s.labels().get(keys::NODE).map(String::as_str),
        Some(node.name.as_str())
    );
    assert_nothing_leaked(&f).await;

    f.delete_snapshot("of-pvc").await;
    wait_gone(&f.snapshots(), "of-pvc", SNAPSHOT_TIMEOUT).await;
    made.clean(&ec2).await;
    let _ = pvs.delete(&pv_name, &Default::default()).await;
    f.finish().await;
}

/// Two sets of one pool with 6 MiB written between them: the second says how much changed
/// since the first (ListChangedBlocks per member), the first has nothing to compare with.
#[tokio::test]
async fn consecutive_sets_report_what_changed_between_them() {
    let f = Fixture::start("snapdiff", &[2]).await;
    let node = &f.sb.nodes[2];
    let pool = f.unique("diffsrc");
    f.ready_pool(&pool, node, "raid0", 2).await;
    fake_pgdata(node, &pool);
    f.snapshot("first", &pool, "standbySignal: Never\n").await;
    let first = f.wait_phase("first", SnapshotPhase::Completed).await;
    assert!(first.status.as_ref().unwrap().changed_bytes.is_none());
    assert!(first.status.as_ref().unwrap().previous_snapshot.is_none());

    let more = format!("{}/base/16385", pgdata(node, &pool));
    pgml_testbed::nodes::node_write_random(node, &more, 6).unwrap();
    pgml_testbed::nodes::node_exec_ok(node, &["sync"]).unwrap();
    // The capture times are whole seconds: the second set must start in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.snapshot("second", &pool, "standbySignal: Never\n").await;
    let second = f.wait_phase("second", SnapshotPhase::Completed).await;
    let st = second.status.clone().unwrap();
    assert_eq!(st.previous_snapshot.as_deref(), Some("first"));
    let changed = st.changed_bytes.expect("changedBytes");
    assert!(
        (6 << 20..1 << 30).contains(&changed),
        "6 MiB written between the sets, {changed} bytes reported changed"
    );
    f.finish().await;
}

/// No agent answers on the pool's node: Failed AgentNotResponding after the (shortened)
/// agent timeout, nothing taken. An agent that cannot stamp under `Always` (no data
/// directory) fails the hold: Failed HoldFailed.
#[tokio::test]
async fn holds_that_do_not_come_fail_the_snapshot() {
    let mut f = Fixture::start("snapnohold", &[1]).await;
    f.operator.stop(Duration::from_secs(10));
    f.operator.set_env("PGML_AGENT_TIMEOUT_SECONDS", "6");
    f.operator.start();
    let node = &f.sb.nodes[1];
    let pool = f.unique("nohold");
    f.ready_pool(&pool, node, "raid0", 1).await;

    // Always, and the pool holds no data directory: the agent refuses the hold.
    f.snapshot("always", &pool, "standbySignal: Always\n").await;
    let s = f.wait_phase("always", SnapshotPhase::Failed).await;
    assert_eq!(ready_reason(&s), "HoldFailed", "{:?}", s.status);
    assert!(
        condition(&s, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("data directory"),
        "{:?}",
        condition(&s, "Ready")
    );

    // The agent is gone: nobody answers.
    for a in &mut f.agents {
        a.stop(Duration::from_secs(30));
    }
    f.snapshot("orphan", &pool, "").await;
    let s = f.wait_phase("orphan", SnapshotPhase::Failed).await;
    assert_eq!(ready_reason(&s), "AgentNotResponding", "{:?}", s.status);
    assert!(
        s.status
            .as_ref()
            .unwrap()
            .snapshots
            .iter()
            .all(|m| m.snapshot_id.is_none())
    );
    for name in ["always", "orphan"] {
        let uid = f.snapshots().get(name).await.unwrap().metadata.uid.unwrap();
        assert!(
            snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &uid)
                .await
                .is_empty()
        );
    }
    for a in &mut f.agents {
        a.start();
    }
    f.finish().await;
}

/// EC2 throttles the member tagging past the SDK's retries: the controller backs off this
/// object (a Warning Throttled), then adopts the set it already made — still one set.
#[tokio::test]
async fn throttled_tagging_backs_off_and_adopts_the_set() {
    let f = Fixture::start("snapthr", &[2]).await;
    let node = &f.sb.nodes[2];
    let pool = f.unique("thrsrc");
    f.ready_pool(&pool, node, "raid0", 2).await;
    // Every CreateTags naming member 0 of this snapshot, 13 times: more than the SDK (3
    // attempts) and the operator's rate limiter (4 tries, each after a fresh token) retry.
    let _throttle = SimAdmin::from_sandbox(f.sb)
        .fault(json!({
            "kind": "throttle", "action": "CreateTags",
            "match": format!("{}/thr-0", f.name()), "count": 13,
        }))
        .unwrap();
    f.snapshot("thr", &pool, "standbySignal: Never\n").await;
    let s = f.wait_phase("thr", SnapshotPhase::Completed).await;
    let uid = s.metadata.uid.clone().unwrap();
    let tagged = snapshots_tagged(f.sb, keys::SNAPSHOT_UID, &uid).await;
    assert_eq!(tagged.len(), 2, "one set: {tagged:?}");
    assert!(tagged.iter().all(|t| tag(t, keys::MEMBER_INDEX).is_some()));
    let warnings = warning_reasons(&f, "thr").await;
    assert!(warnings.contains(&"Throttled".to_string()), "{warnings:?}");
    assert!(
        f.operator.log().contains("adopting the set"),
        "{}",
        f.logs()
    );
    f.finish().await;
}

/// A cluster source goes through `status.instances[].pool` (written here as the cluster
/// controller of issue 5 will): unset instance → the ready replica's pool.
#[tokio::test]
async fn a_cluster_source_snapshots_its_ready_replica_s_pool() {
    use kube::api::{Patch, PatchParams};

    let f = Fixture::start("snapcl", &[1]).await;
    let node = &f.sb.nodes[1];
    let pool = f.unique("replica");
    f.ready_pool(&pool, node, "raid0", 1).await;
    let api: kube::Api<PgmlCluster> = f.ns.api();
    let cluster: PgmlCluster = serde_yaml::from_str(CLUSTER_NO_NODE).unwrap();
    api.create(&PostParams::default(), &cluster).await.unwrap();
    let status = json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
        "status": {"instances": [
            {"name": "main-1", "pool": "not-this-one", "role": "Primary", "ready": true},
            {"name": "main-2", "pool": pool, "role": "Replica", "ready": true},
        ]},
    });
    api.patch_status(
        "main",
        &PatchParams::apply("e2e-cluster-status").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
    let obj: EbsSnapshot = serde_yaml::from_str(
        "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {name: of-cluster}\nspec: {source: {cluster: {name: main}}, standbySignal: Never}\n",
    )
    .unwrap();
    f.snapshots()
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    let s = f.wait_phase("of-cluster", SnapshotPhase::Completed).await;
    let st = s.status.clone().unwrap();
    assert_eq!(st.source.as_deref(), Some("PgmlCluster/main (main-2)"));
    assert_eq!(st.zfs_pool.as_deref(), Some(pool.as_str()));
    assert_eq!(st.node_name.as_deref(), Some(node.name.as_str()));
    assert_eq!(st.snapshots.len(), 1);
    f.finish().await;
}
