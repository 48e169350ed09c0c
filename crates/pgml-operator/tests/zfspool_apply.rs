//! Whole ZfsPool apply reconciles, without the sandbox: EC2 is `pgml_aws::fake::FakeEc2`,
//! the API server a scripted one that keeps the pool, serves its Node, takes status
//! applies and Events. The sandbox tests prove the wire; these prove the logic (create →
//! crash → resume, a crash between create and attach, throttled creates, attaches and
//! modifications, a lost member) and deletion (whose volumes it touches, how it detaches
//! them when the node is gone).

mod fake_api;

use pgml_aws::Ec2;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use pgml_api::ZfsPool;
use pgml_api::common::keys;
use pgml_api::zfspool::VolumeStatus;
use pgml_aws::fake::{FakeEc2, Outcome, ROOT_DEVICE};
use pgml_operator::runtime::Class;
use pgml_operator::runtime::{Context, Error, Settings};
use pgml_operator::zfspool::status::reason;
use pgml_operator::zfspool::{apply, cleanup};
use serde_json::{Value, json};

const NODE: &str = "node-1";
const INSTANCE: &str = "i-0000000000000a001";
const ZONE: &str = "us-east-1a";

/// A raidz1 pool of four gp3 members that replaces a lost one by itself.
const POOL: &str = r#"
apiVersion: pgml.io/v1alpha1
kind: ZfsPool
metadata: {name: tank, namespace: db, uid: 5f0c-uid, generation: 1, resourceVersion: "1"}
spec:
  nodeName: node-1
  layout: raidz1
  memberReplacement: Automatic
  volumes: {count: 4, type: gp3, sizeGiB: 10}
"#;

/// The API server, as far as an apply reconcile talks to it.
struct ApiServer {
    pool: Mutex<Value>,
    node: Value,
    /// The Node object was deleted.
    node_gone: AtomicBool,
    /// (reason, note) of every Event published.
    events: Mutex<Vec<(String, String)>>,
}

impl ApiServer {
    fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match method {
            "GET" if path == format!("/api/v1/nodes/{NODE}") => {
                if self.node_gone.load(Ordering::SeqCst) {
                    fake_api::not_found(method, path)
                } else {
                    (200, self.node.clone())
                }
            }
            "PATCH" if path == "/apis/pgml.io/v1alpha1/namespaces/db/zfspools/tank/status" => {
                // Only the controller's field manager writes status here: its apply is the
                // whole status.
                let mut pool = self.pool.lock().unwrap();
                pool["status"] = body["status"].clone();
                fake_api::bump(&mut pool);
                (200, pool.clone())
            }
            "POST" | "PATCH" if path.ends_with("/events") || path.contains("/events/") => {
                self.events.lock().unwrap().push((
                    body["reason"].as_str().unwrap_or_default().to_string(),
                    body["note"].as_str().unwrap_or_default().to_string(),
                ));
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
    fn new() -> Harness {
        let fake = Arc::new(FakeEc2::new());
        fake.add_instance(INSTANCE, ZONE, "m6i.large");
        let pool: ZfsPool = serde_yaml::from_str(POOL).unwrap();
        let node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some(NODE.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                provider_id: Some(format!("aws:///{ZONE}/{INSTANCE}")),
                ..Default::default()
            }),
            status: None,
        };
        let api = Arc::new(ApiServer {
            pool: Mutex::new(serde_json::to_value(&pool).unwrap()),
            node: serde_json::to_value(&node).unwrap(),
            node_gone: AtomicBool::new(false),
            events: Mutex::default(),
        });
        let server = api.clone();
        let client = fake_api::client(move |method, path, body| server.answer(method, path, body));
        Harness { fake, api, client }
    }

    /// A Context as a freshly started operator has it (no device reservations, no limits
    /// cached).
    fn ctx(&self) -> Arc<Context> {
        Context::new(self.client.clone(), self.fake.clone(), Settings::default())
    }

    /// The pool as the API server has it now.
    fn pool(&self) -> ZfsPool {
        serde_json::from_value(self.api.pool.lock().unwrap().clone()).unwrap()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<(), Error> {
        apply::reconcile(&self.pool(), ctx).await.map(|_| ())
    }

    fn members(&self) -> Vec<VolumeStatus> {
        let mut v = self.pool().status.unwrap_or_default().volumes;
        v.sort_by_key(|m| m.index);
        v
    }

    /// The data volumes attached to the instance.
    fn attached(&self) -> BTreeSet<String> {
        let i = self.fake.instance(INSTANCE).unwrap();
        i.block_devices
            .into_iter()
            .filter(|(device, _)| device != ROOT_DEVICE)
            .map(|(_, v)| v)
            .collect()
    }

    fn reasons(&self) -> Vec<String> {
        let events = self.api.events.lock().unwrap();
        events.iter().map(|(r, _)| r.clone()).collect()
    }

    /// The notes of the Events of `reason`.
    fn notes(&self, reason: &str) -> Vec<String> {
        let events = self.api.events.lock().unwrap();
        events
            .iter()
            .filter(|(r, _)| r == reason)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The pool deleted (`kubectl delete`) with `reclaimPolicy: policy`.
    fn delete_pool(&self, policy: &str) {
        let mut pool = self.api.pool.lock().unwrap();
        pool["metadata"]["deletionTimestamp"] = json!("2026-12-07T00:00:00Z");
        pool["spec"]["reclaimPolicy"] = json!(policy);
    }

    /// The agent has released the pool: its `PoolReleased` condition (this API server's
    /// status apply is the controller's whole status, so the agent's part is put back
    /// before each look).
    fn agent_released(&self) {
        let mut pool = self.api.pool.lock().unwrap();
        let released = json!({"type": "PoolReleased", "status": "True", "reason": "Destroyed",
            "message": "", "lastTransitionTime": "2026-12-07T00:00:00Z"});
        let conds = pool["status"]["conditions"].as_array_mut().unwrap();
        conds.retain(|c| c["type"] != "PoolReleased");
        conds.push(released);
    }

    /// Runs deletion up to `passes` times, 5 s apart (the agent's release put back before
    /// each when `released`), until it lets the finalizer go. Returns whether it did and
    /// what it waited for.
    async fn delete_until_done(
        &self,
        ctx: &Context,
        released: bool,
        passes: usize,
    ) -> (bool, Vec<String>) {
        let mut waits = vec![];
        for _ in 0..passes {
            if released {
                self.agent_released();
            }
            match cleanup::cleanup(&self.pool(), ctx).await {
                Ok(_) => return (true, waits),
                Err(Error::Waiting { what, .. }) => {
                    waits.push(what);
                    tokio::time::advance(Duration::from_secs(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        (false, waits)
    }

    /// A volume made by the operator for this pool (its UID and managed-by tags), tagged
    /// with `installation` (`None`: made before the operator tagged its installation),
    /// attached to the instance when `attach`.
    async fn volume_of_installation(&self, installation: Option<&str>, attach: bool) -> String {
        use pgml_aws::{CreateVolume, Ec2, VolumeType};
        let pool = self.pool();
        let mut tags = std::collections::BTreeMap::from([
            (
                keys::MANAGED_BY.to_string(),
                keys::MANAGED_BY_VALUE.to_string(),
            ),
            (
                keys::POOL_UID.to_string(),
                pool.metadata.uid.clone().unwrap(),
            ),
        ]);
        if let Some(i) = installation {
            tags.insert(keys::INSTALLATION.to_string(), i.to_string());
        }
        let id = self
            .fake
            .create_volume(&CreateVolume {
                availability_zone: ZONE.into(),
                volume_type: VolumeType::Gp3,
                size_gib: 10,
                iops: None,
                throughput_mibps: None,
                encrypted: true,
                kms_key_id: None,
                snapshot_id: None,
                volume_initialization_rate_mibps: None,
                tags,
                client_token: format!("{installation:?}"),
            })
            .await
            .unwrap()
            .volume_id;
        self.fake.settle();
        if attach {
            self.fake
                .attach_volume(&id, INSTANCE, "/dev/xvdzz")
                .await
                .unwrap();
            self.fake.settle();
        }
        id
    }

    /// Member `index` of this pool as an operator of `installation` makes it (`None`: one
    /// from before the operator tagged its installation), with the ClientToken that operator
    /// gives it (the installation's, when it has one: the same scheme as ours), available.
    async fn member_of_installation(&self, installation: Option<&str>, index: usize) -> String {
        use pgml_operator::zfspool::build::{self, PoolRef};
        let pool = self.pool();
        let theirs = installation.unwrap_or("before-installation-tags");
        let pref = PoolRef::of(&pool, theirs).unwrap();
        let mut req = build::create_request(&pref, index, 0, ZONE);
        if installation.is_none() {
            req.tags.remove(keys::INSTALLATION);
        }
        let id = self.fake.create_volume(&req).await.unwrap().volume_id;
        self.fake.settle();
        id
    }

    /// Whether any call of `action` names `volume`.
    fn touched(&self, action: &str, volume: &str) -> bool {
        self.fake
            .calls_of(action)
            .iter()
            .any(|c| c.arg("VolumeId") == Some(volume))
    }

    /// The `Force` argument of every DetachVolume of `volume`.
    fn detach_forces(&self, volume: &str) -> Vec<String> {
        self.fake
            .calls_of("DetachVolume")
            .iter()
            .filter(|c| c.arg("VolumeId") == Some(volume))
            .map(|c| c.arg("Force").unwrap_or_default().to_string())
            .collect()
    }
}

/// Every member recorded, attached, and its volume one of the instance's.
/// A Warning names the unadopted volume `id` and says how to adopt it (`adopt`).
fn assert_adoption_warned(h: &Harness, adopt: &str, id: &str) {
    let notes = h.notes("InstallationTagMissing");
    assert!(
        notes.iter().any(|n| n.contains(id) && n.contains(adopt)),
        "a Warning names it and says how to adopt it: {notes:?}"
    );
}

/// What an administrator does to adopt volume `id`: tag it with this installation.
async fn adopt_volume(h: &Harness, installation: &str, id: &str) {
    let tag = [(keys::INSTALLATION.to_string(), installation.to_string())].into();
    h.fake.create_tags(&[id.to_string()], &tag).await.unwrap();
}

fn assert_all_attached(h: &Harness) {
    let members = h.members();
    assert_eq!(members.len(), 4);
    let ids: BTreeSet<String> = members
        .iter()
        .map(|m| m.volume_id.clone().expect("recorded"))
        .collect();
    assert_eq!(ids.len(), 4, "one volume per member");
    for m in &members {
        assert_eq!(
            m.attachment_state.as_deref(),
            Some("attached"),
            "member {}",
            m.index
        );
    }
    assert_eq!(h.attached(), ids);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_pool_is_created_and_attached_in_one_reconcile() {
    let h = Harness::new();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.fake.count("CreateVolume"), 4);
    assert_eq!(h.fake.count("AttachVolume"), 4);
    assert_eq!(h.fake.count("DescribeInstanceTypes"), 1);
    assert_all_attached(&h);
    for v in h.fake.calls_of("CreateVolume") {
        assert_eq!(v.arg("AvailabilityZone"), Some(ZONE));
        assert_eq!(v.arg("Size"), Some("10"));
    }
    let reasons = h.reasons();
    assert!(
        reasons.contains(&"VolumeCreated".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"VolumeAttached".to_string()),
        "{reasons:?}"
    );

    // Nothing left to do: a second reconcile only looks.
    h.fake.forget_calls();
    h.reconcile(&h.ctx()).await.unwrap();
    let mutating: Vec<&str> = h
        .fake
        .actions()
        .into_iter()
        .filter(|a| !a.starts_with("Describe"))
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
}

#[tokio::test(start_paused = true)]
async fn a_node_of_an_instance_type_ec2_does_not_describe_still_gets_its_pool() {
    let h = Harness::new();
    // Real EC2 answers InvalidInstanceType (HTTP 400) for a type it does not describe.
    h.fake.forget_instance_type("m6i.large");
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.fake.count("DescribeInstanceTypes"), 1);
    assert_eq!(h.fake.count("CreateVolume"), 4);
    assert_all_attached(&h);
}

#[tokio::test(start_paused = true)]
async fn a_create_that_took_effect_but_failed_is_found_again_after_a_restart() {
    let h = Harness::new();
    // The third CreateVolume makes its volume, then EC2 answers 500.
    let rule = h
        .fake
        .on("CreateVolume")
        .skip(2)
        .after_effect()
        .fail("InternalError");
    let e = h.reconcile(&h.ctx()).await.unwrap_err();
    assert_eq!(e.class(), Class::Transient, "{e}");
    assert_eq!(h.fake.fired(rule), 1);
    let recorded = h.members().iter().filter(|m| m.volume_id.is_some()).count();
    assert_eq!(
        recorded, 3,
        "the IDs answered are recorded before anything else"
    );
    assert_eq!(
        h.fake.count("AttachVolume"),
        0,
        "nothing attached after a failed create"
    );
    let made = h.fake.volumes().len() - 1;
    assert_eq!(
        made, 4,
        "the failed call made its volume (root volume aside)"
    );

    // The operator restarts: a fresh Context, the pool as the API server has it.
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(
        h.fake.count("CreateVolume"),
        4,
        "the unanswered volume is adopted, not made again"
    );
    assert_eq!(h.fake.volumes().len() - 1, 4);
    assert_eq!(h.fake.count("AttachVolume"), 4);
    assert_all_attached(&h);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_attach_backs_off_and_the_next_reconcile_finishes() {
    let h = Harness::new();
    h.fake.on("AttachVolume").times(2).throttle();
    let ctx = h.ctx();
    let e = h.reconcile(&ctx).await.unwrap_err();
    assert_eq!(e.class(), Class::Throttled, "{e}");
    assert_eq!(
        (
            h.fake.count("AttachVolume"),
            h.fake.count_ok("AttachVolume")
        ),
        (4, 2)
    );
    // The attaches EC2 took are in the status as it answered them (the reconcile returns
    // on the throttle before it polls them to `attached`).
    let states: Vec<Option<String>> = h
        .members()
        .into_iter()
        .map(|m| m.attachment_state)
        .collect();
    let attaching = states
        .iter()
        .filter(|s| s.as_deref() == Some("attaching"))
        .count();
    assert_eq!(attaching, 2, "{states:?}");

    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.fake.count("CreateVolume"), 4);
    assert_eq!(
        (
            h.fake.count("AttachVolume"),
            h.fake.count_ok("AttachVolume")
        ),
        (6, 4)
    );
    assert_all_attached(&h);
}

#[tokio::test(start_paused = true)]
async fn a_lost_member_is_replaced_with_the_next_generation_and_its_volume_detached() {
    let h = Harness::new();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    let before = h.members();
    let old = before[1].volume_id.clone().unwrap();
    let member_tag = format!("tag:{}", keys::MEMBER_INDEX);
    let old_token = h
        .fake
        .calls_of("CreateVolume")
        .into_iter()
        .find(|c| c.arg(&member_tag) == Some("1"))
        .and_then(|c| c.arg("ClientToken").map(str::to_string))
        .unwrap();
    h.fake.fail_volume(&old);
    h.fake.forget_calls();

    h.reconcile(&ctx).await.unwrap();
    let creates = h.fake.calls_of("CreateVolume");
    assert_eq!(creates.len(), 1, "one replacement");
    assert_eq!(creates[0].arg(&member_tag), Some("1"));
    assert_ne!(
        creates[0].arg("ClientToken"),
        Some(old_token.as_str()),
        "a new generation, a new token"
    );
    let m = &h.members()[1];
    assert_eq!(m.generation, 1);
    assert_eq!(m.replaced_volume_id.as_deref(), Some(old.as_str()));
    let new = m.volume_id.clone().unwrap();
    assert_ne!(new, old);
    assert_eq!(m.attachment_state.as_deref(), Some("attached"));
    let detaches = h.fake.calls_of("DetachVolume");
    assert_eq!(detaches.len(), 1);
    assert_eq!(detaches[0].arg("VolumeId"), Some(old.as_str()));
    assert_eq!(
        h.fake.count("DeleteVolume"),
        0,
        "kept until the new member is ONLINE"
    );
    assert!(h.fake.volume(&old).is_some());
    assert!(h.attached().contains(&new) && !h.attached().contains(&old));
    assert!(h.reasons().contains(&reason::MEMBER_LOST.to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_create_and_attach_resumes_without_a_second_volume() {
    let h = Harness::new();
    // The look at the new volumes (DescribeVolumes by ID, after CreateVolume answered and
    // before any AttachVolume) never comes back: the operator dies there.
    let stall = h
        .fake
        .on("DescribeVolumes")
        .when(|c| c.method == "describe_volumes")
        .always()
        .delay(Duration::from_secs(3600));
    let ctx = h.ctx();
    let cut = tokio::time::timeout(Duration::from_secs(60), h.reconcile(&ctx)).await;
    assert!(cut.is_err(), "the reconcile is cut short mid-way");
    drop(ctx);
    assert_eq!(h.fake.fired(stall), 1);
    assert_eq!(h.fake.count_ok("CreateVolume"), 4);
    assert_eq!(h.fake.count("AttachVolume"), 0, "died before any attach");
    let recorded: BTreeSet<String> = h
        .members()
        .into_iter()
        .filter_map(|m| m.volume_id)
        .collect();
    assert_eq!(recorded.len(), 4, "every ID recorded before anything else");

    // A fresh operator: no device reservations, the pool as the API server has it.
    h.fake.remove_rule(stall);
    h.fake.forget_calls();
    h.reconcile(&h.ctx()).await.unwrap();
    assert_eq!(h.fake.count("CreateVolume"), 0, "nothing is created again");
    assert_eq!(
        h.fake.volumes().len() - 1,
        4,
        "no second volume (root volume aside)"
    );
    assert_eq!(h.fake.count("AttachVolume"), 4);
    assert_all_attached(&h);
    let ids: BTreeSet<String> = h
        .members()
        .into_iter()
        .filter_map(|m| m.volume_id)
        .collect();
    assert_eq!(
        ids, recorded,
        "the members kept the volumes made before the crash"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_create_records_the_others_and_the_next_reconcile_makes_only_the_rest() {
    let h = Harness::new();
    let rule = h.fake.on("CreateVolume").skip(1).throttle();
    let ctx = h.ctx();
    let e = h.reconcile(&ctx).await.unwrap_err();
    assert_eq!(e.class(), Class::Throttled, "{e}");
    assert_eq!(h.fake.fired(rule), 1);
    assert_eq!(
        (
            h.fake.count("CreateVolume"),
            h.fake.count_ok("CreateVolume")
        ),
        (4, 3)
    );
    assert_eq!(
        h.fake.count("AttachVolume"),
        0,
        "nothing attached after a failed create"
    );
    let recorded = h.members().iter().filter(|m| m.volume_id.is_some()).count();
    assert_eq!(recorded, 3);
    assert_eq!(
        h.fake.volumes().len() - 1,
        3,
        "the throttled call made nothing"
    );

    h.reconcile(&ctx).await.unwrap();
    assert_eq!(
        (
            h.fake.count("CreateVolume"),
            h.fake.count_ok("CreateVolume")
        ),
        (5, 4),
        "only the missing member is created"
    );
    assert_eq!(h.fake.volumes().len() - 1, 4);
    assert_all_attached(&h);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_modify_keeps_what_started_and_the_next_reconcile_grows_the_rest() {
    let h = Harness::new();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    {
        let mut pool = h.api.pool.lock().unwrap();
        pool["spec"]["volumes"]["sizeGiB"] = json!(20);
        pool["metadata"]["generation"] = json!(2);
    }
    let rule = h.fake.on("ModifyVolume").skip(1).throttle();
    let e = h.reconcile(&ctx).await.unwrap_err();
    assert_eq!(e.class(), Class::Throttled, "{e}");
    assert_eq!(h.fake.fired(rule), 1);
    assert_eq!(
        (
            h.fake.count("ModifyVolume"),
            h.fake.count_ok("ModifyVolume")
        ),
        (2, 1),
        "the round stops at the throttled call"
    );
    let status = h.pool().status.unwrap();
    let started: Vec<i32> = status
        .volumes
        .iter()
        .filter(|v| v.modification.is_some())
        .map(|v| v.index)
        .collect();
    assert_eq!(started, vec![0], "the modification EC2 took is recorded");
    assert_eq!(status.recent_modifications.len(), 1);
    assert!(h.reasons().contains(&"VolumesModifying".to_string()));

    h.reconcile(&ctx).await.unwrap();
    let grown: BTreeSet<String> = h
        .fake
        .calls_of("ModifyVolume")
        .iter()
        .filter(|c| c.outcome == Outcome::Ok)
        .filter_map(|c| c.arg("VolumeId").map(str::to_string))
        .collect();
    assert_eq!(grown.len(), 4, "every member grown once: {grown:?}");
    assert_eq!(h.fake.count_ok("ModifyVolume"), 4);
    for v in h.fake.volumes() {
        if v.size_gib != 8 {
            assert_eq!(v.size_gib, 20, "{}", v.volume_id);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_volume_of_another_installation_is_never_adopted_and_ours_are_made() {
    let h = Harness::new();
    // Another installation with a ZfsPool of the same UID (a cluster restored from this
    // one's backup) made members 0 and 1, available in this zone.
    let theirs = [
        h.member_of_installation(Some("other-cluster"), 0).await,
        h.member_of_installation(Some("other-cluster"), 1).await,
    ];
    h.fake.forget_calls();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    assert_eq!(
        h.fake.count_ok("CreateVolume"),
        4,
        "every member made here, none taken from the other installation"
    );
    assert_all_attached(&h);
    for v in &theirs {
        assert!(
            h.members()
                .iter()
                .all(|m| m.volume_id.as_deref() != Some(v)),
            "{v} is no member: {:?}",
            h.members()
        );
        assert!(!h.attached().contains(v), "{v} is not attached");
        for action in [
            "AttachVolume",
            "ModifyVolume",
            "DetachVolume",
            "DeleteVolume",
        ] {
            assert!(!h.touched(action, v), "{action} of {v}");
        }
    }
    for m in h.members() {
        let v = h.fake.volume(m.volume_id.as_deref().unwrap()).unwrap();
        assert_eq!(v.tags[keys::INSTALLATION], ctx.settings.installation);
    }
    let notes = h.notes("NotOurs");
    assert!(
        notes.iter().any(|n| theirs.iter().all(|v| n.contains(v))
            && n.contains("pgml.io/installation=other-cluster")),
        "a Warning names them: {notes:?}"
    );

    // Settled: the next look leaves them alone as well and changes nothing.
    h.fake.forget_calls();
    h.reconcile(&ctx).await.unwrap();
    let mutating: Vec<&str> = h
        .fake
        .actions()
        .into_iter()
        .filter(|a| !a.starts_with("Describe"))
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
}

#[tokio::test(start_paused = true)]
async fn a_member_volume_without_the_installation_tag_is_awaited_not_duplicated_until_adopted() {
    let h = Harness::new();
    // Member 2, made for this pool by an operator that did not tag its installation yet.
    let old = h.member_of_installation(None, 2).await;
    h.fake.forget_calls();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    for action in ["CreateVolume", "AttachVolume", "ModifyVolume"] {
        assert_eq!(h.fake.count(action), 0, "{action}: the pool waits");
    }
    assert!(h.attached().is_empty());
    assert!(
        h.members().iter().all(|m| m.volume_id.is_none()),
        "no member counted: {:?}",
        h.members()
    );
    let adopt = format!(
        "aws ec2 create-tags --resources {old} --tags Key=pgml.io/installation,Value={}",
        ctx.settings.installation
    );
    let status = h.pool().status.unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InstallationTagMissing")
    );
    assert!(ready.message.contains(&adopt), "{}", ready.message);
    assert_adoption_warned(&h, &adopt, &old);

    // An administrator adopts it: it is member 2, and only the other three are made.
    adopt_volume(&h, &ctx.settings.installation, &old).await;
    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.fake.count_ok("CreateVolume"), 3);
    assert_all_attached(&h);
    assert_eq!(h.members()[2].volume_id.as_deref(), Some(old.as_str()));
}

#[tokio::test(start_paused = true)]
async fn deletion_never_touches_a_volume_that_status_names_but_its_tags_do_not() {
    use pgml_aws::{CreateVolume, Ec2, VolumeType};
    let h = Harness::new();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    let ours: BTreeSet<String> = h
        .members()
        .iter()
        .filter_map(|m| m.volume_id.clone())
        .collect();
    // Another pool's volume, named in this pool's status (the agent writes status too).
    let foreign = h
        .fake
        .create_volume(&CreateVolume {
            availability_zone: ZONE.into(),
            volume_type: VolumeType::Gp3,
            size_gib: 10,
            iops: None,
            throughput_mibps: None,
            encrypted: true,
            kms_key_id: None,
            snapshot_id: None,
            volume_initialization_rate_mibps: None,
            tags: [
                (
                    keys::MANAGED_BY.to_string(),
                    keys::MANAGED_BY_VALUE.to_string(),
                ),
                (keys::POOL_UID.to_string(), "another-pool".to_string()),
            ]
            .into(),
            client_token: "other".into(),
        })
        .await
        .unwrap()
        .volume_id;
    h.delete_pool("Delete");
    h.api.pool.lock().unwrap()["status"]["volumes"][0]["replacedVolumeId"] = json!(foreign);
    let (done, waits) = h.delete_until_done(&ctx, true, 20).await;
    assert!(done, "deletion finished: {waits:?}");
    for v in &ours {
        assert!(h.fake.volume(v).is_none(), "{v} deleted");
    }
    assert!(
        h.fake.volume(&foreign).is_some(),
        "the other pool's volume is kept"
    );
    for action in ["DetachVolume", "DeleteVolume"] {
        assert!(
            h.fake
                .calls_of(action)
                .iter()
                .all(|c| c.arg("VolumeId") != Some(foreign.as_str())),
            "{action} of {foreign}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn deletion_never_touches_a_volume_of_this_pool_uid_tagged_for_another_installation() {
    let h = Harness::new();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    // A second installation in the account that somehow tagged a volume with this pool's
    // UID: found by the pool's tag search, attached to the pool's instance.
    let theirs = h.volume_of_installation(Some("other-cluster"), true).await;
    h.delete_pool("Delete");
    let (done, waits) = h.delete_until_done(&ctx, true, 20).await;
    assert!(done, "deletion finished: {waits:?}");
    assert!(h.fake.volume(&theirs).is_some(), "their volume is kept");
    assert!(h.attached().contains(&theirs), "and left attached");
    for action in ["DetachVolume", "DeleteVolume"] {
        assert!(
            h.fake
                .calls_of(action)
                .iter()
                .all(|c| c.arg("VolumeId") != Some(theirs.as_str())),
            "{action} of {theirs}"
        );
    }
    let notes = h.notes("NotOurs");
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&theirs) && n.contains("pgml.io/installation=other-cluster")),
        "a Warning names it: {notes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn deletion_waits_for_a_volume_without_the_installation_tag_until_it_is_adopted() {
    let h = Harness::new();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    let ours: BTreeSet<String> = h
        .members()
        .iter()
        .filter_map(|m| m.volume_id.clone())
        .collect();
    // Made for this pool by an operator that did not tag its installation yet.
    let old = h.volume_of_installation(None, false).await;
    h.delete_pool("Delete");
    let (done, waits) = h.delete_until_done(&ctx, true, 10).await;
    assert!(
        !done,
        "the finalizer stays while a volume waits for adoption: {waits:?}"
    );
    for v in &ours {
        assert!(h.fake.volume(v).is_none(), "{v} deleted");
    }
    assert!(h.fake.volume(&old).is_some(), "the untagged volume is kept");
    assert!(
        h.fake
            .calls_of("DeleteVolume")
            .iter()
            .all(|c| c.arg("VolumeId") != Some(old.as_str())),
        "never deleted on its UID tag alone"
    );
    assert!(
        waits.last().is_some_and(|w| w.contains(&old)),
        "waits for it: {waits:?}"
    );
    let adopt = format!(
        "Key=pgml.io/installation,Value={}",
        ctx.settings.installation
    );
    assert_adoption_warned(&h, &adopt, &old);

    // An administrator adopts it: the next look deletes it and lets the pool go.
    adopt_volume(&h, &ctx.settings.installation, &old).await;
    let (done, waits) = h.delete_until_done(&ctx, true, 10).await;
    assert!(done, "deletion finished: {waits:?}");
    assert!(
        h.fake.volume(&old).is_none(),
        "the adopted volume is deleted"
    );
}

/// The pool deleted, then its Node object, with the instance in `state` (`None`: EC2 no
/// longer knows the instance): the Force of the detaches of the pool's members.
async fn detach_after_the_node_is_gone(state: Option<&str>) -> (Harness, Vec<String>) {
    let h = Harness::new();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    let members: Vec<String> = h
        .members()
        .into_iter()
        .filter_map(|m| m.volume_id)
        .collect();
    assert_eq!(members.len(), 4);
    match state {
        Some(s) => h.fake.set_instance_state(INSTANCE, s),
        None => {
            h.fake
                .on("DescribeInstances")
                .always()
                .fail("InvalidInstanceID.NotFound");
        }
    }
    h.delete_pool("Retain");
    h.api.node_gone.store(true, Ordering::SeqCst);
    let (done, waits) = h.delete_until_done(&ctx, false, 10).await;
    assert!(done, "deletion finished: {waits:?}");
    let forces = members.iter().flat_map(|v| h.detach_forces(v)).collect();
    (h, forces)
}

#[tokio::test(start_paused = true)]
async fn a_deleted_node_whose_instance_still_runs_gets_a_plain_detach_and_a_warning() {
    for state in ["running", "pending", "stopping", "shutting-down"] {
        let (h, forces) = detach_after_the_node_is_gone(Some(state)).await;
        assert_eq!(forces, vec!["false"; 4], "instance {state}");
        let notes = h.notes(reason::INSTANCE_STILL_RUNNING);
        assert!(
            notes
                .iter()
                .any(|n| n.contains(INSTANCE) && n.contains(state) && n.contains(NODE)),
            "instance {state}: a Warning says why there is no force detach: {notes:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_deleted_node_whose_instance_is_stopped_terminated_or_unknown_gets_a_force_detach() {
    for state in [Some("stopped"), Some("terminated"), None] {
        let (h, forces) = detach_after_the_node_is_gone(state).await;
        assert_eq!(forces, vec!["true"; 4], "instance {state:?}");
        assert!(h.notes(reason::INSTANCE_STILL_RUNNING).is_empty());
    }
}
