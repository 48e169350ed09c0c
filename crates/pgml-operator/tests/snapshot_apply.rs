//! Whole EbsSnapshot reconciles (apply and cleanup), without the sandbox: EC2 is
//! `pgml_aws::fake::FakeEc2`, the API server a scripted one that keeps the snapshot and its
//! source ZfsPool, takes status and label applies (keeping the agent's fields, as
//! server-side apply does) and Events. The test plays the node agent by writing `hold`.
//! The sandbox tests prove the wire; these prove the logic (capture → crash → adopt, a
//! throttled CreateSnapshots, a doubled set, deletion).

mod fake_api;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use pgml_api::EbsSnapshot;
use pgml_api::common::{condition as c, keys};
use pgml_api::snapshot::{EbsSnapshotStatus, SnapshotPhase};
use pgml_aws::fake::FakeEc2;
use pgml_aws::{Attachment, AttachmentState, CreateSnapshotSet, Ec2, Volume};
use pgml_operator::runtime::Class;
use pgml_operator::runtime::{Context, Error, Settings};
use pgml_operator::snapshot::plan::reason;
use pgml_operator::snapshot::{apply, cleanup};
use serde_json::{Value, json};

const INSTANCE: &str = "i-0000000000000a001";
const ZONE: &str = "us-east-1a";
const UID: &str = "7a1e-uid";
/// The pool's two members, in member order, and a data volume of another pool on the same
/// instance (left out of the capture).
const MEMBERS: [&str; 2] = ["vol-0000000000000m000", "vol-0000000000000m001"];
const OTHER: &str = "vol-0000000000000x000";

const POOL: &str = r#"
apiVersion: pgml.io/v1alpha1
kind: ZfsPool
metadata: {name: tank, namespace: db, uid: 5f0c-uid, generation: 1}
spec:
  nodeName: node-1
  layout: raid0
  volumes: {count: 2, type: gp3, sizeGiB: 10}
status:
  instanceId: i-0000000000000a001
  availabilityZone: us-east-1a
  poolGuid: "4242"
  conditions:
  - {type: Ready, status: "True", reason: Ready, message: ready, lastTransitionTime: "2026-01-01T00:00:00Z"}
  volumes:
  - {index: 0, volumeId: vol-0000000000000m000}
  - {index: 1, volumeId: vol-0000000000000m001, sizeGiB: 12}
"#;

/// A snapshot of the pool; `extra` is added to its spec.
fn snapshot(extra: &str) -> Value {
    let yaml = format!(
        r#"
apiVersion: pgml.io/v1alpha1
kind: EbsSnapshot
metadata: {{name: nightly, namespace: db, uid: {UID}, generation: 1, resourceVersion: "1"}}
spec:
  source: {{zfsPool: {{name: tank}}}}
  tags: {{team: db}}
  {extra}
"#
    );
    let snap: EbsSnapshot = serde_yaml::from_str(&yaml).unwrap();
    serde_json::to_value(&snap).unwrap()
}

/// Status fields the node agent owns: the controller's apply never carries them, so the
/// apiserver keeps them across its applies.
const AGENT_FIELDS: [&str; 4] = ["hold", "standbySignal", "frozenMillis", "lsn"];

/// The API server, as far as an EbsSnapshot reconcile talks to it.
struct ApiServer {
    snap: Mutex<Value>,
    pool: Value,
    /// Other EbsSnapshots of the namespace (for the previous set).
    others: Mutex<Vec<Value>>,
    /// Every status apply's body, in order.
    status_writes: Mutex<Vec<Value>>,
    /// (type, reason, note) of every Event published.
    events: Mutex<Vec<(String, String, String)>>,
}

const SNAPS: &str = "/apis/pgml.io/v1alpha1/namespaces/db/ebssnapshots";

impl ApiServer {
    fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let nightly = format!("{SNAPS}/nightly");
        match method {
            "GET" if path == "/apis/pgml.io/v1alpha1/namespaces/db/zfspools/tank" => {
                (200, self.pool.clone())
            }
            "GET" if path == SNAPS => {
                let mut items = self.others.lock().unwrap().clone();
                items.push(self.snap.lock().unwrap().clone());
                let list = json!({"apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshotList",
                    "metadata": {"resourceVersion": "1"}, "items": items});
                (200, list)
            }
            "PATCH" if path == format!("{nightly}/status") => {
                self.status_writes.lock().unwrap().push(body.clone());
                let mut snap = self.snap.lock().unwrap();
                let mut status = body["status"].clone();
                for f in AGENT_FIELDS {
                    if let Some(v) = snap["status"].get(f) {
                        status[f] = v.clone();
                    }
                }
                snap["status"] = status;
                fake_api::bump(&mut snap);
                (200, snap.clone())
            }
            "PATCH" if path == nightly => {
                let mut snap = self.snap.lock().unwrap();
                let labels = body["metadata"]["labels"].as_object().unwrap().clone();
                for (k, v) in labels {
                    snap["metadata"]["labels"][k] = v;
                }
                fake_api::bump(&mut snap);
                (200, snap.clone())
            }
            "POST" | "PATCH" if path.ends_with("/events") || path.contains("/events/") => {
                let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
                self.events
                    .lock()
                    .unwrap()
                    .push((text("type"), text("reason"), text("note")));
                (201, body)
            }
            _ => fake_api::not_found(method, path),
        }
    }
}

struct Harness {
    fake: Arc<FakeEc2>,
    api: Arc<ApiServer>,
    client: kube::Client,
}

impl Harness {
    /// The pool's members and another pool's volume attached to the instance; a snapshot
    /// with `extra` in its spec, not reconciled yet.
    fn new(extra: &str) -> Harness {
        let fake = Arc::new(FakeEc2::new());
        fake.add_instance(INSTANCE, ZONE, "m6i.large");
        for (i, id) in MEMBERS.iter().chain([&OTHER]).enumerate() {
            fake.insert_volume(volume(id, &format!("/dev/xvd{}", (b'f' + i as u8) as char)));
        }
        let pool: pgml_api::ZfsPool = serde_yaml::from_str(POOL).unwrap();
        let api = Arc::new(ApiServer {
            snap: Mutex::new(snapshot(extra)),
            pool: serde_json::to_value(&pool).unwrap(),
            others: Mutex::default(),
            status_writes: Mutex::default(),
            events: Mutex::default(),
        });
        let server = api.clone();
        let client = fake_api::client(move |method, path, body| server.answer(method, path, body));
        Harness { fake, api, client }
    }

    /// A Context as a freshly started operator has it.
    fn ctx(&self) -> Arc<Context> {
        Context::new(self.client.clone(), self.fake.clone(), Settings::default())
    }

    /// The snapshot as the API server has it now.
    fn snap(&self) -> EbsSnapshot {
        serde_json::from_value(self.api.snap.lock().unwrap().clone()).unwrap()
    }

    fn status(&self) -> EbsSnapshotStatus {
        self.snap().status.unwrap_or_default()
    }

    fn phase(&self) -> Option<SnapshotPhase> {
        self.status().phase
    }

    /// The Ready condition's (status, reason).
    fn ready(&self) -> (String, String) {
        let s = self.status();
        let r = s.conditions.iter().find(|x| x.type_ == c::READY).unwrap();
        (r.status.clone(), r.reason.clone())
    }

    async fn reconcile(&self, ctx: &Context) -> Result<(), Error> {
        apply::reconcile(&self.snap(), ctx).await.map(|_| ())
    }

    /// The agent's answer: `hold` in `state`, its deadline `secs` from now.
    fn hold(&self, state: &str, secs: i64) {
        let deadline = Timestamp::from_second(Timestamp::now().as_second() + secs).unwrap();
        let mut snap = self.api.snap.lock().unwrap();
        snap["status"]["hold"] = json!({"state": state, "heldAt": Timestamp::now().to_string(),
            "deadline": deadline.to_string(), "frozen": false});
    }

    /// Reconciles to Preparing, then holds the source for a minute.
    async fn held(&self, ctx: &Context) {
        self.reconcile(ctx).await.unwrap();
        assert_eq!(self.phase(), Some(SnapshotPhase::Preparing));
        self.hold("Held", 60);
    }

    /// The snapshot IDs status records, in member order.
    fn recorded(&self) -> Vec<String> {
        self.status()
            .snapshots
            .iter()
            .filter_map(|m| m.snapshot_id.clone())
            .collect()
    }

    /// The IDs of the snapshots EC2 has, in ID order.
    fn in_ec2(&self) -> Vec<String> {
        self.fake
            .snapshots()
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect()
    }

    fn deleted(&self) -> Vec<String> {
        self.fake
            .calls_of("DeleteSnapshot")
            .iter()
            .map(|c| c.arg("SnapshotId").unwrap().to_string())
            .collect()
    }

    fn reasons(&self) -> Vec<String> {
        let events = self.api.events.lock().unwrap();
        events.iter().map(|(_, r, _)| r.clone()).collect()
    }

    fn status_writes(&self) -> usize {
        self.api.status_writes.lock().unwrap().len()
    }

    /// A set of snapshots of the members that another call of this operator made, tagged
    /// as `uid`'s.
    async fn set_of(&self, uid: &str) -> Vec<String> {
        self.set_tagged(uid, Some(Settings::default().installation.as_str()))
            .await
    }

    /// A set of snapshots of the members tagged as `uid`'s by pgml-operator of
    /// `installation` (`None`: made before the operator tagged its installation).
    async fn set_tagged(&self, uid: &str, installation: Option<&str>) -> Vec<String> {
        let mut tags = BTreeMap::from([
            (keys::SNAPSHOT_UID.to_string(), uid.to_string()),
            (
                keys::MANAGED_BY.to_string(),
                keys::MANAGED_BY_VALUE.to_string(),
            ),
        ]);
        if let Some(i) = installation {
            tags.insert(keys::INSTALLATION.to_string(), i.to_string());
        }
        let req = CreateSnapshotSet {
            instance_id: INSTANCE.into(),
            exclude_volume_ids: vec![OTHER.into()],
            description: "made elsewhere".into(),
            tags,
        };
        let made = self.fake.create_snapshot_set(&req).await.unwrap();
        self.fake.forget_calls();
        made.into_iter().map(|s| s.snapshot_id).collect()
    }

    /// The notes of the Events of `reason`.
    fn notes(&self, reason: &str) -> Vec<String> {
        let events = self.api.events.lock().unwrap();
        events
            .iter()
            .filter(|(_, r, _)| r == reason)
            .map(|(_, _, n)| n.clone())
            .collect()
    }

    /// Adds `id` to the snapshots status records, as a member of its own.
    fn record(&self, id: &str) {
        let mut snap = self.api.snap.lock().unwrap();
        let members = snap["status"]["snapshots"].as_array_mut().unwrap();
        let index = members.len();
        members.push(json!({"memberIndex": index, "volumeId": OTHER, "snapshotId": id}));
    }
}

fn volume(id: &str, device: &str) -> Volume {
    Volume {
        volume_id: id.into(),
        availability_zone: ZONE.into(),
        state: "in-use".into(),
        volume_type: "gp3".into(),
        size_gib: 10,
        iops: None,
        throughput_mibps: None,
        encrypted: true,
        snapshot_id: None,
        attachments: vec![Attachment {
            instance_id: INSTANCE.into(),
            device: device.into(),
            state: AttachmentState::Attached,
        }],
        tags: BTreeMap::new(),
    }
}

/// Status names one snapshot per member, of the member's volume, and EC2 has exactly those.
fn assert_one_set(h: &Harness) {
    let s = h.status();
    let volumes: Vec<_> = s.snapshots.iter().map(|m| m.volume_id.clone()).collect();
    assert_eq!(volumes, MEMBERS.map(|v| Some(v.to_string())));
    let mut recorded = h.recorded();
    assert_eq!(recorded.len(), 2, "{:?}", s.snapshots);
    for (m, id) in s.snapshots.iter().zip(&recorded) {
        let ec2 = h.fake.snapshot(id).unwrap();
        assert_eq!(Some(ec2.volume_id), m.volume_id);
        assert_eq!(
            ec2.tags.get(keys::MEMBER_INDEX),
            Some(&m.member_index.to_string())
        );
    }
    recorded.sort();
    assert_eq!(
        h.in_ec2(),
        recorded,
        "nothing in EC2 that status does not name"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_pool_is_captured_then_completed() {
    let h = Harness::new("");
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    let s = h.status();
    assert_eq!(s.phase, Some(SnapshotPhase::Preparing));
    assert_eq!(s.instance_id.as_deref(), Some(INSTANCE));
    assert_eq!(s.zfs_pool.as_deref(), Some("tank"));
    assert_eq!(s.pool_guid.as_deref(), Some("4242"));
    assert_eq!(s.volume_count, Some(2));
    assert_eq!(s.consistency.as_deref(), Some("None"));
    let labels = h.snap().metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(keys::NODE).map(String::as_str), Some("node-1"));
    assert!(h.fake.calls().is_empty(), "no EC2 call before the hold");

    // No hold yet: still waiting, nothing written.
    let writes = h.status_writes();
    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.status_writes(), writes);
    assert!(h.fake.calls().is_empty());

    h.hold("Held", 60);
    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    let calls = h.fake.calls_of("CreateSnapshots");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.arg("InstanceId"), Some(INSTANCE));
    assert_eq!(call.args_named("ExcludeDataVolumeId"), [OTHER]);
    assert_eq!(call.arg(&format!("tag:{}", keys::SNAPSHOT_UID)), Some(UID));
    assert_eq!(call.arg(&format!("tag:{}", keys::POOL_GUID)), Some("4242"));
    assert_eq!(call.arg("tag:team"), Some("db"));
    assert_eq!(
        call.arg("Description"),
        Some("pgml-operator: EbsSnapshot db/nightly of ZfsPool/tank")
    );
    assert_eq!(h.fake.count("CreateTags"), 2, "one per member");
    assert!(h.status().capture_time.is_some());
    assert_one_set(&h);

    h.reconcile(&ctx).await.unwrap();
    let s = h.status();
    assert_eq!(s.phase, Some(SnapshotPhase::Completed));
    assert_eq!(h.ready(), ("True".into(), reason::COMPLETED.into()));
    assert_eq!(s.size_gib, Some(22));
    assert!(s.completion_time.is_some());
    assert!(
        s.snapshots
            .iter()
            .all(|m| m.state.as_deref() == Some("completed"))
    );
    assert_one_set(&h);
    assert_eq!(h.reasons(), ["Preparing", "Captured", "Completed"]);
    assert!(s.hold.is_some(), "the agent's hold survives the applies");

    // Settled: a reconcile looks for strays and writes nothing.
    h.fake.forget_calls();
    let writes = h.status_writes();
    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.status_writes(), writes);
    assert_eq!(h.fake.actions(), ["DescribeSnapshots"]);
}

#[tokio::test(start_paused = true)]
async fn without_a_hold_the_first_reconcile_captures() {
    let h = Harness::new("standbySignal: Never");
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    assert_eq!(h.fake.count("CreateSnapshots"), 1);
    assert_one_set(&h);
    assert_eq!(h.reasons(), ["Captured"]);
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_dropped_between_create_snapshots_and_its_record_is_adopted_after_a_restart() {
    let h = Harness::new("");
    h.held(&h.ctx()).await;
    // CreateSnapshots answers; the first CreateTags never does, and the process dies
    // waiting: the set exists in EC2, status names none of it.
    h.fake.on("CreateTags").delay(Duration::from_secs(3600));
    let ctx = h.ctx();
    let cut = tokio::time::timeout(Duration::from_secs(30), h.reconcile(&ctx)).await;
    assert!(cut.is_err(), "the reconcile was cut short");
    drop(ctx);
    assert_eq!(h.fake.count_ok("CreateSnapshots"), 1);
    assert_eq!(h.phase(), Some(SnapshotPhase::Capturing));
    assert!(h.recorded().is_empty(), "nothing recorded");
    let made = h.in_ec2();
    assert_eq!(made.len(), 2);

    // The operator restarts: the set is found by its UID tag and adopted, not taken again.
    h.fake.forget_calls();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.fake.count("CreateSnapshots"), 0, "no second set");
    assert_eq!(h.fake.count("DeleteSnapshot"), 0);
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    let mut recorded = h.recorded();
    recorded.sort();
    assert_eq!(recorded, made);
    assert_one_set(&h);

    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Completed));
    assert_one_set(&h);
}

#[tokio::test(start_paused = true)]
async fn a_create_that_took_effect_but_failed_is_adopted_not_taken_twice() {
    let h = Harness::new("standbySignal: Never");
    // The set is made, then EC2 answers 500.
    h.fake
        .on("CreateSnapshots")
        .after_effect()
        .fail("InternalError");
    let e = h.reconcile(&h.ctx()).await.unwrap_err();
    assert_eq!(e.class(), Class::Transient, "{e}");
    assert_eq!(h.phase(), Some(SnapshotPhase::Capturing));
    assert!(h.recorded().is_empty());
    let made = h.in_ec2();
    assert_eq!(made.len(), 2);

    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(
        h.fake.count("CreateSnapshots"),
        1,
        "adopted, not taken again"
    );
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    assert_eq!(h.in_ec2(), made);
    assert_one_set(&h);
}

#[tokio::test(start_paused = true)]
async fn a_set_doubled_by_a_retried_call_is_deleted_and_taken_once_more() {
    let h = Harness::new("");
    h.held(&h.ctx()).await;
    h.fake
        .on("CreateSnapshots")
        .after_effect()
        .fail("InternalError");
    h.reconcile(&h.ctx()).await.unwrap_err();
    let first = h.in_ec2();
    // A call of a process that died answers late: a second set with our UID.
    let second = h.set_of(UID).await;
    assert_eq!(h.in_ec2().len(), 4);

    h.reconcile(&h.ctx()).await.unwrap();
    let mut deleted = h.deleted();
    deleted.sort();
    let mut both: Vec<String> = first.iter().chain(&second).cloned().collect();
    both.sort();
    assert_eq!(deleted, both, "a doubled set is deleted whole");
    assert_eq!(
        h.fake.count("CreateSnapshots"),
        1,
        "then taken again while the hold lasts"
    );
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    assert_one_set(&h);
    assert!(h.recorded().iter().all(|id| !both.contains(id)));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_create_snapshots_backs_off_and_records_nothing_twice() {
    let h = Harness::new("");
    h.held(&h.ctx()).await;
    h.fake.on("CreateSnapshots").throttle();
    let ctx = h.ctx();
    let e = h.reconcile(&ctx).await.unwrap_err();
    assert_eq!(e.class(), Class::Throttled, "{e}");
    assert_eq!(h.phase(), Some(SnapshotPhase::Capturing));
    assert!(h.recorded().is_empty());
    assert!(h.in_ec2().is_empty(), "a throttled call makes nothing");

    h.reconcile(&ctx).await.unwrap();
    assert_eq!(
        (
            h.fake.count("CreateSnapshots"),
            h.fake.count_ok("CreateSnapshots")
        ),
        (2, 1)
    );
    assert_eq!(h.fake.count("DeleteSnapshot"), 0);
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    assert_one_set(&h);
    assert_eq!(h.reasons(), ["Preparing", "Captured"]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_create_snapshots_fails_the_snapshot() {
    let h = Harness::new("");
    h.held(&h.ctx()).await;
    h.fake.on("CreateSnapshots").fail("SnapshotLimitExceeded");
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Failed));
    assert_eq!(h.ready(), ("False".into(), reason::CAPTURE_FAILED.into()));
    assert_eq!(h.fake.count("CreateSnapshots"), 1, "not retried");
    assert!(h.in_ec2().is_empty());
    let events = h.api.events.lock().unwrap().clone();
    let (kind, why, note) = events.last().unwrap();
    assert_eq!((kind.as_str(), why.as_str()), ("Warning", "CaptureFailed"));
    assert!(note.contains("SnapshotLimitExceeded"), "{note}");
}

#[tokio::test(start_paused = true)]
async fn a_create_snapshots_that_outlasts_the_hold_fails_the_snapshot() {
    let h = Harness::new("");
    h.reconcile(&h.ctx()).await.unwrap();
    h.hold("Held", 20);
    h.fake
        .on("CreateSnapshots")
        .delay(Duration::from_secs(3600));
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Failed));
    assert_eq!(
        h.ready(),
        ("False".into(), reason::HOLD_DEADLINE_EXCEEDED.into())
    );
    // The unanswered call made nothing; what it might have made is looked for and deleted.
    assert_eq!(h.fake.count_ok("CreateSnapshots"), 0);
    assert!(h.in_ec2().is_empty());
    let finds = h
        .fake
        .calls_of("DescribeSnapshots")
        .into_iter()
        .filter(|c| c.arg(&format!("tag:{}", keys::SNAPSHOT_UID)) == Some(UID))
        .count();
    assert_eq!(finds, 1);
}

#[tokio::test(start_paused = true)]
async fn a_member_not_attached_fails_the_capture_before_the_call() {
    let h = Harness::new("standbySignal: Never");
    h.fake
        .detach_volume(MEMBERS[1], INSTANCE, false)
        .await
        .unwrap();
    h.fake.settle();
    h.fake.forget_calls();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Failed));
    assert_eq!(h.ready(), ("False".into(), reason::CAPTURE_FAILED.into()));
    assert_eq!(h.fake.count("CreateSnapshots"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_in_error_fails_the_set_and_deletes_it() {
    let h = Harness::new("standbySignal: Never");
    h.fake
        .fail_next_snapshots(1, Some(MEMBERS[1]), "the volume broke");
    h.reconcile(&h.ctx()).await.unwrap();
    let made = h.recorded();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Failed));
    assert_eq!(h.ready(), ("False".into(), reason::SNAPSHOT_ERROR.into()));
    let mut deleted = h.deleted();
    deleted.sort();
    let mut made_sorted = made.clone();
    made_sorted.sort();
    assert_eq!(deleted, made_sorted);
    assert!(h.in_ec2().is_empty());
    assert!(
        h.status()
            .snapshots
            .iter()
            .all(|m| m.state.as_deref() == Some("deleted"))
    );
    assert_eq!(h.recorded(), made, "the IDs stay on record");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_describe_while_finalizing_changes_nothing() {
    let h = Harness::new("standbySignal: Never");
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    let writes = h.status_writes();
    h.fake.on("DescribeSnapshots").throttle();
    let e = h.reconcile(&ctx).await.unwrap_err();
    assert_eq!(e.class(), Class::Throttled, "{e}");
    assert_eq!(h.status_writes(), writes);
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Completed));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_create_tags_leaves_the_set_to_the_next_reconcile() {
    let h = Harness::new("standbySignal: Never");
    h.fake.on("CreateTags").throttle();
    let e = h.reconcile(&h.ctx()).await.unwrap_err();
    assert_eq!(e.class(), Class::Throttled, "{e}");
    assert_eq!(h.phase(), Some(SnapshotPhase::Capturing));
    assert!(h.recorded().is_empty());
    let made = h.in_ec2();

    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.fake.count("CreateSnapshots"), 1);
    assert_eq!(h.in_ec2(), made);
    assert_eq!(h.phase(), Some(SnapshotPhase::Finalizing));
    assert_one_set(&h);
}

#[tokio::test(start_paused = true)]
async fn a_stray_found_after_completion_is_deleted() {
    let h = Harness::new("standbySignal: Never");
    h.reconcile(&h.ctx()).await.unwrap();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Completed));
    let strays = h.set_of(UID).await;
    let theirs = h.set_of("someone-else").await;
    h.reconcile(&h.ctx()).await.unwrap();
    let mut deleted = h.deleted();
    deleted.sort();
    let mut strays = strays;
    strays.sort();
    assert_eq!(deleted, strays);
    assert!(theirs.iter().all(|s| h.fake.snapshot(s).is_some()));
    assert_eq!(h.phase(), Some(SnapshotPhase::Completed));
}

#[tokio::test(start_paused = true)]
async fn the_changed_bytes_are_counted_against_the_previous_set() {
    let h = Harness::new("standbySignal: Never");
    let before = h.set_of("yesterday-uid").await;
    let members: Vec<Value> = MEMBERS
        .iter()
        .zip(&before)
        .enumerate()
        .map(|(i, (v, s))| json!({"memberIndex": i, "volumeId": v, "snapshotId": s}))
        .collect();
    h.api.others.lock().unwrap().push(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
        "metadata": {"name": "yesterday", "namespace": "db", "uid": "yesterday-uid"},
        "spec": {"source": {"zfsPool": {"name": "tank"}}},
        "status": {"phase": "Completed", "source": "ZfsPool/tank",
            "captureTime": "2026-01-01T00:00:00Z", "snapshots": members},
    }));
    h.reconcile(&h.ctx()).await.unwrap();
    let ours = h.recorded();
    h.fake.set_changed_bytes(&before[0], &ours[0], 4096);
    h.fake.set_changed_bytes(&before[1], &ours[1], 512);
    h.reconcile(&h.ctx()).await.unwrap();
    let s = h.status();
    assert_eq!(s.phase, Some(SnapshotPhase::Completed));
    assert_eq!(s.previous_snapshot.as_deref(), Some("yesterday"));
    assert_eq!(s.changed_bytes, Some(4608));
    assert_eq!(h.fake.count("ListChangedBlocks"), 2);
}

#[tokio::test(start_paused = true)]
async fn deletion_with_the_delete_policy_deletes_only_our_tagged_snapshots() {
    let h = Harness::new("standbySignal: Never");
    h.reconcile(&h.ctx()).await.unwrap();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Completed));
    let ours = h.recorded();
    // A stray of ours not in status yet, and another object's set.
    let stray = h.set_of(UID).await;
    let theirs = h.set_of("someone-else").await;

    cleanup::cleanup(&h.snap(), &h.ctx()).await.unwrap();
    let mut deleted = h.deleted();
    deleted.sort();
    let mut expected: Vec<String> = ours.iter().chain(&stray).cloned().collect();
    expected.sort();
    assert_eq!(deleted, expected);
    let mut left = h.in_ec2();
    left.sort();
    let mut theirs_sorted = theirs.clone();
    theirs_sorted.sort();
    assert_eq!(left, theirs_sorted, "another object's snapshots stay");
    assert_eq!(h.fake.count("CreateSnapshots"), 0);

    // Cleanup again (the finalizer removal failed, say): the IDs in status are looked up
    // (never deleted on the word of status alone), found gone, and that is done.
    h.fake.forget_calls();
    cleanup::cleanup(&h.snap(), &h.ctx()).await.unwrap();
    assert!(h.deleted().is_empty(), "{:?}", h.deleted());
    let looked_up: Vec<String> = h
        .fake
        .calls_of("DescribeSnapshots")
        .iter()
        .flat_map(|c| c.args_named("SnapshotId"))
        .map(str::to_string)
        .collect();
    let mut ours = ours;
    ours.sort();
    assert_eq!(looked_up, ours);
    assert_eq!(h.in_ec2(), theirs_sorted);
}

#[tokio::test(start_paused = true)]
async fn deletion_with_the_retain_policy_keeps_the_set() {
    let h = Harness::new("standbySignal: Never\n  deletionPolicy: Retain");
    h.reconcile(&h.ctx()).await.unwrap();
    let made = h.in_ec2();
    h.fake.forget_calls();
    cleanup::cleanup(&h.snap(), &h.ctx()).await.unwrap();
    assert!(h.fake.calls().is_empty(), "{:?}", h.fake.actions());
    assert_eq!(h.in_ec2(), made);
}

#[tokio::test(start_paused = true)]
async fn deletion_never_deletes_a_snapshot_of_another_installation_or_named_only_by_status() {
    let h = Harness::new("standbySignal: Never");
    h.reconcile(&h.ctx()).await.unwrap();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Completed));
    let mut ours = h.recorded();
    // Another installation's set tagged with this object's UID, and another object's
    // snapshot that status names (the agent writes this status too).
    let theirs = h.set_tagged(UID, Some("other-cluster")).await;
    let named = h.set_of("someone-else").await;
    h.record(&named[0]);

    cleanup::cleanup(&h.snap(), &h.ctx()).await.unwrap();
    let mut deleted = h.deleted();
    deleted.sort();
    ours.sort();
    assert_eq!(deleted, ours, "only ours are deleted");
    for s in theirs.iter().chain(&named) {
        assert!(h.fake.snapshot(s).is_some(), "{s} kept");
    }
    let notes = h.notes("NotOurs");
    for s in theirs.iter().chain(&named[..1]) {
        assert!(
            notes.iter().any(|n| n.contains(s.as_str())),
            "a Warning names {s}: {notes:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn deletion_waits_for_a_snapshot_without_the_installation_tag_until_it_is_adopted() {
    let h = Harness::new("standbySignal: Never");
    h.reconcile(&h.ctx()).await.unwrap();
    h.reconcile(&h.ctx()).await.unwrap();
    let ours = h.recorded();
    let old = h.set_tagged(UID, None).await;

    let waiting = cleanup::cleanup(&h.snap(), &h.ctx()).await;
    let Err(Error::Waiting { what, .. }) = waiting else {
        panic!("the finalizer stays while a snapshot waits for adoption: {waiting:?}")
    };
    assert!(old.iter().all(|s| what.contains(s.as_str())), "{what}");
    for s in &ours {
        assert!(h.fake.snapshot(s).is_none(), "{s} deleted");
    }
    for s in &old {
        assert!(h.fake.snapshot(s).is_some(), "{s} kept");
    }
    let adopt = format!(
        "Key=pgml.io/installation,Value={}",
        Settings::default().installation
    );
    let notes = h.notes("InstallationTagMissing");
    for s in &old {
        assert!(
            notes
                .iter()
                .any(|n| n.contains(s.as_str()) && n.contains(&adopt)),
            "a Warning names {s} and says how to adopt it: {notes:?}"
        );
    }

    // An administrator adopts them: the next deletion deletes them and lets the object go.
    let tag = BTreeMap::from([(
        keys::INSTALLATION.to_string(),
        Settings::default().installation,
    )]);
    h.fake.create_tags(&old, &tag).await.unwrap();
    cleanup::cleanup(&h.snap(), &h.ctx()).await.unwrap();
    for s in &old {
        assert!(h.fake.snapshot(s).is_none(), "{s} deleted once adopted");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stray_of_another_installation_or_without_one_is_not_swept() {
    let h = Harness::new("standbySignal: Never");
    h.reconcile(&h.ctx()).await.unwrap();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.phase(), Some(SnapshotPhase::Completed));
    let theirs = h.set_tagged(UID, Some("other-cluster")).await;
    let old = h.set_tagged(UID, None).await;
    h.reconcile(&h.ctx()).await.unwrap();
    assert!(h.deleted().is_empty(), "{:?}", h.deleted());
    for s in theirs.iter().chain(&old) {
        assert!(h.fake.snapshot(s).is_some(), "{s} kept");
    }
    assert!(!h.notes("NotOurs").is_empty());
    assert!(!h.notes("InstallationTagMissing").is_empty());
}
