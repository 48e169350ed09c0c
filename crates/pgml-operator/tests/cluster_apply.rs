//! Whole PgmlCluster apply reconciles, without the sandbox: the API server is an in-memory
//! one that keeps every object by its path (GET, LIST by label, POST, server-side apply
//! PATCH, DELETE), takes Events, and fails a chosen write or loses its answer; EC2 is
//! `pgml_aws::fake::FakeEc2`, which this controller never calls. The node agent, the kubelet
//! and the instance managers are played by the tests between reconciles. The sandbox tests
//! prove the wire; these prove the logic (bootstrap, a crash between two writes, a
//! throttled write, the primary routed only once the database's identity is recorded).

mod fake_api;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use pgml_api::PgmlCluster;
use pgml_api::cluster::ClusterPhase;
use pgml_aws::fake::FakeEc2;
use pgml_operator::cluster::apply;
use pgml_operator::runtime::{Class, Context, Error, Settings};
use serde_json::{Value, json};

const SYSTEM_ID: &str = "7318791534227411232";

/// Two instances on ZFS, replicas seeded from an EBS snapshot (the default).
const CLUSTER: &str = r#"
apiVersion: pgml.io/v1alpha1
kind: PgmlCluster
metadata: {name: main, namespace: db, uid: c-uid-1, generation: 1, resourceVersion: "1"}
spec:
  instances: 2
  storage: {zfs: {template: {volumes: {count: 2, sizeGiB: 10}}}}
"#;

const CLUSTER_PATH: &str = "/apis/pgml.io/v1alpha1/namespaces/db/pgmlclusters/main";
const PODS: &str = "/api/v1/namespaces/db/pods";
const POOLS: &str = "/apis/pgml.io/v1alpha1/namespaces/db/zfspools";
const PVCS: &str = "/api/v1/namespaces/db/persistentvolumeclaims";
const PVS: &str = "/api/v1/persistentvolumes";
const SNAPSHOTS: &str = "/apis/pgml.io/v1alpha1/namespaces/db/ebssnapshots";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/db/events";

/// What the API server does to one write (POST, PATCH, DELETE; Events aside).
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answers this HTTP status with a Status body, and does not write.
    Status(u16),
    /// Writes, then never answers: the operator stopped after the write took effect.
    AnswerLost,
}

#[derive(Default)]
struct State {
    /// Every object by its path (`/api/v1/namespaces/db/pods/main-1`).
    objects: BTreeMap<String, Value>,
    /// Every request but the Events': (method, path).
    requests: Vec<(String, String)>,
    /// (type, reason, note) of every Event.
    events: Vec<(String, String, String)>,
    /// Writes answered or failed so far.
    writes: usize,
    /// The write of this number (from 0) meets the fault.
    fault: Option<(usize, Fault)>,
    version: u64,
}

/// `(collection, name, subresource)` of a request path.
fn split(path: &str) -> (String, Option<String>, Option<String>) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut n = if segs[0] == "api" { 2 } else { 3 };
    if segs.get(n) == Some(&"namespaces") && segs.len() > n + 2 {
        n += 2;
    }
    n += 1;
    let at = |i: usize| segs.get(i).map(|s| s.to_string());
    (format!("/{}", segs[..n].join("/")), at(n), at(n + 1))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Whether `obj` matches an equality-based label selector (`k=v,k2`), as the reconcile
/// writes them.
fn selects(selector: &str, obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k].as_str() == Some(v.trim_start_matches('=')),
            None => !labels[term].is_null(),
        })
}

/// Server-side apply, as far as these tests need it: the applied fields are merged into
/// the stored object (a field an apply leaves out is kept).
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "code": code, "message": message});
    (code, body)
}

impl State {
    /// The answer to one request; `None`: no answer, ever.
    fn answer(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Option<(u16, Value)> {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if path.starts_with(EVENTS) {
            self.events.push((
                body["type"].as_str().unwrap_or_default().into(),
                body["reason"].as_str().unwrap_or_default().into(),
                body["note"].as_str().unwrap_or_default().into(),
            ));
            return Some((201, body));
        }
        self.requests.push((method.into(), path.into()));
        let mut fault = None;
        if method != "GET" {
            if self.fault.is_some_and(|(at, _)| at == self.writes) {
                fault = self.fault.map(|(_, f)| f);
            }
            self.writes += 1;
        }
        match fault {
            Some(Fault::Status(code)) => Some(status(code, "Injected", format!("{method} {path}"))),
            Some(Fault::AnswerLost) => {
                self.serve(method, path, query, body);
                None
            }
            None => Some(self.serve(method, path, query, body)),
        }
    }

    fn serve(&mut self, method: &str, path: &str, query: &str, body: Value) -> (u16, Value) {
        let (collection, name, sub) = split(path);
        let key = |name: &str| format!("{collection}/{name}");
        let not_found = || status(404, "NotFound", format!("{method} {path}"));
        match (method, name, sub) {
            ("GET", None, _) => self.list(&collection, query),
            ("GET", Some(name), _) => match self.objects.get(&key(&name)) {
                Some(o) => (200, o.clone()),
                None => not_found(),
            },
            ("POST", None, _) => {
                let name = body["metadata"]["name"].as_str().unwrap().to_string();
                if self.objects.contains_key(&key(&name)) {
                    return status(409, "AlreadyExists", format!("{path}/{name}"));
                }
                (201, self.store(&key(&name), |o| merge(o, &body)))
            }
            ("PATCH", Some(name), Some(sub)) if sub == "status" => {
                if !self.objects.contains_key(&key(&name)) {
                    return not_found();
                }
                // Only the controller writes this status: its apply is the whole of it.
                (
                    200,
                    self.store(&key(&name), |o| o["status"] = body["status"].clone()),
                )
            }
            ("PATCH", Some(name), None) => (200, self.store(&key(&name), |o| merge(o, &body))),
            ("DELETE", Some(name), None) => match self.objects.remove(&key(&name)) {
                Some(o) => (200, o),
                None => not_found(),
            },
            _ => panic!("the fake API server does not serve {method} {path}"),
        }
    }

    /// The objects of a collection its `labelSelector` selects.
    fn list(&self, collection: &str, query: &str) -> (u16, Value) {
        let selector = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("labelSelector="))
            .map(percent_decode)
            .unwrap_or_default();
        let prefix = format!("{collection}/");
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.strip_prefix(&prefix).is_some_and(|n| !n.contains('/')))
            .map(|(_, o)| o.clone())
            .filter(|o| selects(&selector, o))
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": self.version.to_string()}, "items": items});
        (200, list)
    }

    /// Creates or changes the object at `key`, as the API server would stamp it.
    fn store(&mut self, key: &str, change: impl FnOnce(&mut Value)) -> Value {
        self.version += 1;
        let version = self.version;
        let o = self.objects.entry(key.to_string()).or_insert_with(|| {
            json!({"metadata": {"uid": format!("uid-{version}"),
                "creationTimestamp": "2026-01-01T00:00:00Z"}})
        });
        change(o);
        o["metadata"]["resourceVersion"] = json!(version.to_string());
        o.clone()
    }
}

struct Harness {
    fake: Arc<FakeEc2>,
    state: Arc<Mutex<State>>,
    client: kube::Client,
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone,
            "kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

impl Harness {
    /// A cluster just created, two Ready nodes in two zones.
    fn new() -> Harness {
        let mut state = State::default();
        let cluster: PgmlCluster = serde_yaml::from_str(CLUSTER).unwrap();
        state
            .objects
            .insert(CLUSTER_PATH.into(), serde_json::to_value(&cluster).unwrap());
        for (name, zone) in [("node-a", "us-east-1a"), ("node-b", "us-east-1b")] {
            state
                .objects
                .insert(format!("/api/v1/nodes/{name}"), node(name, zone));
        }
        let state = Arc::new(Mutex::new(state));
        let server = state.clone();
        let client = fake_api::client_with(move |method, path, query, body| {
            server.lock().unwrap().answer(method, path, query, body)
        });
        Harness {
            fake: Arc::new(FakeEc2::new()),
            state,
            client,
        }
    }

    /// A Context as a freshly started operator has it (no timers).
    fn ctx(&self) -> Arc<Context> {
        Context::new(self.client.clone(), self.fake.clone(), Settings::default())
    }

    fn cluster(&self) -> PgmlCluster {
        serde_json::from_value(self.get(CLUSTER_PATH).unwrap()).unwrap()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Action, Error> {
        apply::reconcile(&self.cluster(), ctx).await
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut state = self.state.lock().unwrap();
        state.store(path, change);
    }

    /// The names of the objects of a collection.
    fn names(&self, collection: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let prefix = format!("{collection}/");
        state
            .objects
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }

    fn status(&self) -> pgml_api::cluster::PgmlClusterStatus {
        self.cluster().status.unwrap_or_default()
    }

    /// The writes made since `from`: (method, path).
    fn writes_since(&self, from: usize) -> Vec<(String, String)> {
        let state = self.state.lock().unwrap();
        state.requests[from..]
            .iter()
            .filter(|(m, _)| m != "GET")
            .cloned()
            .collect()
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    fn reasons(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.events.iter().map(|(_, r, _)| r.clone()).collect()
    }

    /// The write numbered `n` from now (0: the next one) meets `fault`.
    fn fault(&self, n: usize, fault: Fault) {
        let mut state = self.state.lock().unwrap();
        state.fault = Some((state.writes + n, fault));
    }

    /// The node agent: the pool's datasets are mounted.
    fn mount(&self, pool: &str) {
        self.edit(&format!("{POOLS}/{pool}"), |p| {
            let pool_name = p["spec"]["poolName"].as_str().unwrap().to_string();
            p["status"] = json!({"health": "ONLINE", "datasets": [
                {"name": "pgdata", "mountPath": format!("/var/lib/pgml/{pool_name}/pgdata"), "mounted": true},
                {"name": "pgwal", "mountPath": format!("/var/lib/pgml/{pool_name}/pgwal"), "mounted": true}
            ]});
        });
    }

    /// The kubelet and the instance manager: the Pod runs and reports `report`.
    fn run(&self, pod: &str, report: Value) {
        self.edit(&format!("{PODS}/{pod}"), |p| {
            p["status"] = json!({"phase": "Running", "containerStatuses": [{"name": "postgres",
                "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {}}}]});
            p["metadata"]["annotations"]["pgml.io/instance-status"] = json!(report.to_string());
        });
    }

    /// The EbsSnapshot controller: the snapshot is complete.
    fn complete(&self, snapshot: &str) {
        self.edit(&format!("{SNAPSHOTS}/{snapshot}"), |s| {
            s["status"] = json!({"phase": "Completed"});
        });
    }

    /// The EC2 calls the reconciles made: none, this controller talks to the API server
    /// only.
    fn assert_no_ec2_call(&self) {
        assert!(self.fake.calls().is_empty(), "{:?}", self.fake.actions());
    }
}

fn primary_report() -> Value {
    json!({"role": "primary", "running": true, "ready": true, "lsn": "0/3000060",
        "systemIdentifier": SYSTEM_ID})
}

fn replica_report() -> Value {
    json!({"role": "replica", "running": true, "ready": true, "streaming": true,
        "replayLsn": "0/3000060", "systemIdentifier": SYSTEM_ID})
}

fn role_label(pod: &Value) -> Option<&str> {
    pod["metadata"]["labels"]["pgml.io/role"].as_str()
}

/// What the others do once the objects they act on exist: the node agent mounts a new
/// pool, the kubelet starts a new Pod whose instance manager reports (the first instance as
/// primary, the others as streaming replicas), the EbsSnapshot controller completes a new
/// snapshot. Returns whether anything moved.
fn others_act(h: &Harness) -> bool {
    let mut moved = false;
    for pool in h.names(POOLS) {
        if h.get(&format!("{POOLS}/{pool}")).unwrap()["status"].is_null() {
            h.mount(&pool);
            moved = true;
        }
    }
    for pod in h.names(PODS) {
        if h.get(&format!("{PODS}/{pod}")).unwrap()["status"].is_null() {
            let report = if pod == "main-1" {
                primary_report()
            } else {
                replica_report()
            };
            h.run(&pod, report);
            moved = true;
        }
    }
    for snapshot in h.names(SNAPSHOTS) {
        if h.get(&format!("{SNAPSHOTS}/{snapshot}")).unwrap()["status"].is_null() {
            h.complete(&snapshot);
            moved = true;
        }
    }
    moved
}

/// How long a reconcile may take before it counts as hung (and is dropped).
const HUNG: Duration = Duration::from_secs(30);

/// Reconciles, letting the others act in between, until a reconcile succeeds with nothing
/// to write and nothing moves. A failed or hung reconcile is followed by a restart (a fresh
/// Context). Returns the reconciles that failed, and the last Action.
async fn converge(h: &Harness) -> (usize, Action) {
    let mut ctx = h.ctx();
    let mut failed = 0;
    for _ in 0..40 {
        let moved = others_act(h);
        let from = h.requests();
        match tokio::time::timeout(HUNG, h.reconcile(&ctx)).await {
            Ok(Ok(action)) if !moved && h.writes_since(from).is_empty() => {
                return (failed, action);
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                failed += 1;
                ctx = h.ctx();
            }
        }
    }
    panic!("the cluster did not settle in 40 reconciles");
}

/// Every object, without what the API server stamps (uid, resourceVersion), the random
/// passwords and the times of the conditions.
fn settled_objects(h: &Harness) -> BTreeMap<String, Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for k in [
                    "uid",
                    "resourceVersion",
                    "lastTransitionTime",
                    "password",
                    "uri",
                ] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut objects = h.state.lock().unwrap().objects.clone();
    objects.values_mut().for_each(strip);
    objects
}

#[tokio::test(start_paused = true)]
async fn a_fresh_two_instance_zfs_cluster_gets_its_objects() {
    let h = Harness::new();
    let ctx = h.ctx();

    // The first reconcile: the cluster-wide objects, both instances placed (one per zone),
    // the first one's pool; the second waits for a ready instance to snapshot.
    let action = h.reconcile(&ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)), "progress");
    let writes: Vec<String> = h
        .writes_since(0)
        .into_iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        writes,
        [
            "POST /api/v1/namespaces/db/secrets",
            "POST /api/v1/namespaces/db/secrets",
            "POST /api/v1/namespaces/db/secrets",
            "PATCH /api/v1/namespaces/db/configmaps/main-config",
            "PATCH /api/v1/namespaces/db/services/main-rw",
            "PATCH /api/v1/namespaces/db/services/main-ro",
            "PATCH /api/v1/namespaces/db/services/main-r",
            "PATCH /apis/policy/v1/namespaces/db/poddisruptionbudgets/main-primary",
            "PATCH /apis/policy/v1/namespaces/db/poddisruptionbudgets/main-replicas",
            "PATCH /api/v1/namespaces/db/serviceaccounts/main-instance",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/db/roles/main-instance",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/db/rolebindings/main-instance",
            "PATCH /apis/pgml.io/v1alpha1/namespaces/db/zfspools/main-1",
            "PATCH /apis/pgml.io/v1alpha1/namespaces/db/pgmlclusters/main/status",
        ]
    );
    assert_eq!(
        h.names("/api/v1/namespaces/db/secrets"),
        ["main-app", "main-replication", "main-superuser"]
    );
    let superuser = h
        .get("/api/v1/namespaces/db/secrets/main-superuser")
        .unwrap();
    assert_eq!(superuser["type"], "kubernetes.io/basic-auth");
    assert_eq!(superuser["stringData"]["username"], "postgres");
    assert_eq!(
        superuser["stringData"]["password"].as_str().unwrap().len(),
        43
    );
    let rw = h.get("/api/v1/namespaces/db/services/main-rw").unwrap();
    assert_eq!(
        rw["spec"]["selector"],
        json!({"pgml.io/cluster": "main", "pgml.io/role": "primary"})
    );
    assert_eq!(h.names(POOLS), ["main-1"]);
    let pool = h.get(&format!("{POOLS}/main-1")).unwrap();
    assert_eq!(pool["spec"]["nodeName"], "node-a");
    assert!(
        pool["spec"]["restoreFrom"].is_null(),
        "the first instance starts empty"
    );
    assert_eq!(pool["metadata"]["ownerReferences"][0]["uid"], "c-uid-1");
    assert!(h.names(PODS).is_empty() && h.names(PVCS).is_empty() && h.names(PVS).is_empty());
    let s = h.status();
    let placed: Vec<String> = s
        .instances
        .iter()
        .map(|i| {
            format!(
                "{} {:?} {:?} {:?}",
                i.name, i.node, i.availability_zone, i.seeded_from
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            r#"main-1 Some("node-a") Some("us-east-1a") None"#,
            r#"main-2 Some("node-b") Some("us-east-1b") Some("main-2-seed")"#,
        ]
    );
    assert_eq!(s.current_primary.as_deref(), Some("main-1"));
    assert_eq!(s.target_primary.as_deref(), Some("main-1"));
    assert_eq!(s.phase, Some(ClusterPhase::Creating));
    for reason in [
        "SecretCreated",
        "PoolCreated",
        "InstancePlaced",
        "PrimaryChanged",
    ] {
        assert!(
            h.reasons().iter().any(|r| r == reason),
            "{reason}: {:?}",
            h.reasons()
        );
    }

    // The agent mounts the pool: its volume, claim and Pod follow.
    h.mount("main-1");
    h.reconcile(&ctx).await.unwrap();
    let pvs = h.names(PVS);
    let [pv_name, wal_pv_name] = &pvs[..] else {
        panic!("{pvs:?}")
    };
    let pv_name = pv_name.clone();
    assert!(
        pv_name.starts_with("pgml-") && pv_name.ends_with("-main-1"),
        "{pv_name}"
    );
    assert_eq!(wal_pv_name, &format!("{pv_name}-wal"));
    let pv = h.get(&format!("{PVS}/{pv_name}")).unwrap();
    let pool_name = pool["spec"]["poolName"].as_str().unwrap();
    assert_eq!(
        pv["spec"]["local"]["path"],
        format!("/var/lib/pgml/{pool_name}/pgdata")
    );
    assert_eq!(pv["spec"]["claimRef"]["name"], "main-1");
    let pvc = h.get(&format!("{PVCS}/main-1")).unwrap();
    assert_eq!(pvc["spec"]["volumeName"], pv_name.as_str());
    let pod = h.get(&format!("{PODS}/main-1")).unwrap();
    assert_eq!(pod["spec"]["nodeName"], "node-a");
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "main-1"
    );
    // WAL on its own volume, the pool's pgwal dataset.
    let wal_pv = h.get(&format!("{PVS}/{wal_pv_name}")).unwrap();
    assert_eq!(
        wal_pv["spec"]["local"]["path"],
        format!("/var/lib/pgml/{pool_name}/pgwal")
    );
    assert_eq!(wal_pv["spec"]["claimRef"]["name"], "main-1-wal");
    let wal_pvc = h.get(&format!("{PVCS}/main-1-wal")).unwrap();
    assert_eq!(wal_pvc["spec"]["volumeName"], wal_pv_name.as_str());
    assert_eq!(
        pod["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"],
        "main-1-wal"
    );

    // Everything else as the others act: the second instance's seed, pool, volume, Pod.
    let (failed, action) = converge(&h).await;
    assert_eq!(failed, 0);
    assert_eq!(action, Action::requeue(Duration::from_secs(60)), "settled");
    assert_eq!(h.names(POOLS), ["main-1", "main-2"]);
    let pool2 = h.get(&format!("{POOLS}/main-2")).unwrap();
    assert_eq!(pool2["spec"]["nodeName"], "node-b");
    assert_eq!(
        pool2["spec"]["restoreFrom"]["ebsSnapshotName"],
        "main-2-seed"
    );
    assert_eq!(
        h.names(PVCS),
        ["main-1", "main-1-wal", "main-2", "main-2-wal"]
    );
    assert_eq!(h.names(PVS).len(), 4);
    assert!(
        h.names(SNAPSHOTS).is_empty(),
        "the seed goes once main-2 streams"
    );
    let seed_taken = h.reasons().iter().any(|r| r == "Seeding");
    assert!(seed_taken && h.reasons().iter().any(|r| r == "SeedDeleted"));
    let pod1 = h.get(&format!("{PODS}/main-1")).unwrap();
    let pod2 = h.get(&format!("{PODS}/main-2")).unwrap();
    assert_eq!(
        (role_label(&pod1), role_label(&pod2)),
        (Some("primary"), Some("replica"))
    );
    assert_eq!(pod2["spec"]["nodeName"], "node-b");
    let s = h.status();
    assert_eq!(s.phase, Some(ClusterPhase::Healthy));
    assert_eq!(s.ready_instances, Some(2));
    assert_eq!(s.system_identifier.as_deref(), Some(SYSTEM_ID));
    h.assert_no_ec2_call();
}

#[tokio::test(start_paused = true)]
async fn the_primary_is_labelled_only_once_the_system_identifier_is_recorded() {
    let h = Harness::new();
    let ctx = h.ctx();
    h.reconcile(&ctx).await.unwrap();
    h.mount("main-1");
    h.reconcile(&ctx).await.unwrap();
    let pod = h.get(&format!("{PODS}/main-1")).unwrap();
    assert_eq!(role_label(&pod), None, "no identifier recorded: not routed");
    assert_eq!(
        pod["metadata"]["labels"]["pgml.io/cluster"], "main",
        "still behind -r"
    );

    // The instance manager ran initdb and reports the identifier: this reconcile records
    // it, and labels nothing yet (it judges from the status it read).
    h.run("main-1", primary_report());
    let from = h.requests();
    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.status().system_identifier.as_deref(), Some(SYSTEM_ID));
    assert!(h.reasons().iter().any(|r| r == "SystemIdentifierRecorded"));
    let pod_writes: Vec<_> = h
        .writes_since(from)
        .into_iter()
        .filter(|(_, p)| p.contains("/pods/"))
        .collect();
    assert!(pod_writes.is_empty(), "{pod_writes:?}");
    assert_eq!(role_label(&h.get(&format!("{PODS}/main-1")).unwrap()), None);

    // The next reconcile reads it stored: the Pod is labelled primary, by the marks'
    // field manager.
    let from = h.requests();
    h.reconcile(&ctx).await.unwrap();
    let pod_writes: Vec<_> = h
        .writes_since(from)
        .into_iter()
        .filter(|(_, p)| p.contains("/pods/"))
        .collect();
    assert_eq!(
        pod_writes,
        [("PATCH".to_string(), format!("{PODS}/main-1"))]
    );
    assert_eq!(
        role_label(&h.get(&format!("{PODS}/main-1")).unwrap()),
        Some("primary")
    );
    h.assert_no_ec2_call();
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_any_two_writes_resumes_to_the_same_objects() {
    let reference = Harness::new();
    converge(&reference).await;
    let expected = settled_objects(&reference);
    let writes = reference.writes_since(0).len();
    assert!(writes > 20, "{writes}");
    for n in 0..writes {
        for fault in [Fault::Status(500), Fault::AnswerLost] {
            let h = Harness::new();
            h.fault(n, fault);
            let (failed, _) = converge(&h).await;
            assert_eq!(failed, 1, "write {n} {fault:?}");
            let got = settled_objects(&h);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "write {n} {fault:?}: no object more, none missing"
            );
            for (path, object) in &expected {
                assert_eq!(&got[path], object, "write {n} {fault:?}: {path}");
            }
            assert_eq!(h.status().instances.len(), 2, "write {n} {fault:?}");
            h.assert_no_ec2_call();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_write_fails_the_reconcile_transiently_and_the_next_one_completes() {
    let h = Harness::new();
    let ctx = h.ctx();
    // The eleventh write of a fresh cluster is its first pool.
    h.fault(10, Fault::Status(429));
    let e = h.reconcile(&ctx).await.unwrap_err();
    assert_eq!(e.class(), Class::Transient, "{e}");
    assert!(
        matches!(&e, Error::Kube(kube::Error::Api(s)) if s.code == 429),
        "{e}"
    );
    assert!(h.names(POOLS).is_empty(), "throttled");
    assert!(
        h.cluster().status.is_none(),
        "no status written after the failed write"
    );
    assert_eq!(
        h.names("/api/v1/namespaces/db/secrets").len(),
        3,
        "the writes before it stay"
    );

    h.reconcile(&ctx).await.unwrap();
    assert_eq!(h.names(POOLS), ["main-1"]);
    assert_eq!(h.status().instances.len(), 2);
    assert_eq!(
        h.names("/api/v1/namespaces/db/secrets").len(),
        3,
        "none made twice"
    );
    h.assert_no_ec2_call();
}

/// The controller's view of Secrets is their metadata only: every list and watch of
/// Secrets it makes asks for `PartialObjectMetadata` (kube's metadata watcher), so no
/// password is ever in the operator's memory or cache. A full watcher of Secrets (their
/// data) fails this test.
#[tokio::test]
async fn secrets_are_watched_as_metadata_only() {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = seen.clone();
    let client = fake_api::client_seeing(move |parts, _| {
        let uri = parts.uri.to_string();
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        log.lock().unwrap().push((uri.clone(), accept));
        if parts.uri.query().is_some_and(|q| q.contains("watch=true")) {
            return None;
        }
        // Every list is empty; nothing else is asked before the first object.
        Some((
            200,
            json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}),
        ))
    });
    let ctx = Context::new(client, Arc::new(FakeEc2::new()), Settings::default());
    let stop = tokio::time::sleep(Duration::from_secs(30));
    let run = tokio::spawn(pgml_operator::cluster::run_until(ctx, stop));
    let secret_calls = || -> Vec<(String, String)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(uri, _)| uri.contains("/secrets"))
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !secret_calls().iter().any(|(u, _)| u.contains("watch=true")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no watch of Secrets in 20 s: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.abort();
    let calls = secret_calls();
    assert!(
        calls.iter().any(|(u, _)| !u.contains("watch=true")),
        "a list of Secrets before the watch: {calls:?}"
    );
    for (uri, accept) in &calls {
        assert!(
            accept.contains("as=PartialObjectMetadata"),
            "{uri} asked for whole Secrets (Accept: {accept:?})"
        );
    }
}
