//! The PgmlCluster controller at the object level, with the real operator and node agents
//! on the sandbox (kube-apiserver + kube-controller-manager, kwok playing the kubelet,
//! moto behind the EBS simulator, zfs-fuse nodes). No instance manager runs: the tests
//! write each Pod's `pgml.io/instance-status` annotation as it would, to drive status
//! aggregation, switchover and failover.

mod cluster_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cluster_common::{ClusterFixture, TIMEOUT, role_of, zfs_cluster};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use pgml_api::common::keys;
use pgml_api::{PgmlCluster, ZfsPool};
use pgml_testbed::aws::volumes_tagged;
use pgml_testbed::wait::{has_condition, wait_gone};
use serde_json::{Value, json};

const CLUSTER: &str = "main";

/// The shared fixture, with what these tests add: the instance managers' reports.
struct Fixture(ClusterFixture);

impl std::ops::Deref for Fixture {
    type Target = ClusterFixture;

    fn deref(&self) -> &ClusterFixture {
        &self.0
    }
}

impl std::ops::DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut ClusterFixture {
        &mut self.0
    }
}

impl Fixture {
    async fn start(prefix: &str, env: &[(&str, &str)]) -> Fixture {
        Fixture(ClusterFixture::start(prefix, CLUSTER, &[0, 1, 2], env).await)
    }

    /// Writes a Pod's instance-status annotation, as its instance manager would.
    async fn report(&self, pod: &str, status: Value) {
        let body =
            json!({"metadata": {"annotations": {"pgml.io/instance-status": status.to_string()}}});
        self.pods()
            .patch(pod, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .unwrap_or_else(|e| panic!("annotating {pod}: {e}"));
    }

    /// Waits for the cluster's `status.currentPrimary` to be `pod`.
    async fn wait_current_primary(&self, pod: &str) {
        self.wait_cluster(&format!("currentPrimary {pod}"), |c| {
            c.status.as_ref().and_then(|s| s.current_primary.as_deref()) == Some(pod)
        })
        .await;
    }

    /// Waits for every instance's Pod to be Running.
    async fn wait_pods_running(&self) {
        for name in instance_names() {
            self.wait_pod(&name, "Running", |p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .await;
        }
    }

    /// Reports main-1 primary and main-2, main-3 replicas at these LSNs (in that order),
    /// then waits for the cluster to count three ready instances.
    async fn report_all_ready(&self, lsns: [&str; 3]) {
        self.report("main-1", primary(lsns[0])).await;
        self.report("main-2", replica(lsns[1])).await;
        self.report("main-3", replica(lsns[2])).await;
        self.wait_cluster("Healthy", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.ready_instances == Some(3))
        })
        .await;
    }

    async fn finish(self) {
        self.0.finish().await;
    }
}

fn manifest(instances: i32, extra: Value) -> Value {
    let volumes = json!({"count": 2, "sizeGiB": 1});
    let mut m = zfs_cluster(
        CLUSTER,
        instances,
        volumes,
        json!({
            "replicas": {"seedFrom": "PgBasebackup"},
            "postgresql": {"parameters": {"shared_buffers": "256MB"}},
        }),
    );
    if let (Some(spec), Some(extra)) = (m["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    m
}

/// The system identifier the primaries of these tests report.
const SYSTEM_ID: &str = "7318791534227411232";

fn primary(lsn: &str) -> Value {
    json!({"role": "primary", "running": true, "ready": true, "lsn": lsn, "timeline": 1, "systemIdentifier": SYSTEM_ID})
}

fn replica(replay: &str) -> Value {
    json!({"role": "replica", "running": true, "ready": true, "lsn": replay, "receiveLsn": replay, "replayLsn": replay, "streaming": true, "timeline": 1})
}

fn instance_names() -> Vec<String> {
    (1..=3).map(|n| format!("{CLUSTER}-{n}")).collect()
}

/// The resourceVersion of every object of the cluster, by kind/name (for pools: their
/// generation and when `pgml-operator` last applied them).
async fn versions(f: &Fixture) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels(&format!("{}={CLUSTER}", keys::CLUSTER));
    let mut out = BTreeMap::new();
    let mut put = |kind: &str, name: String, rv: Option<String>| {
        out.insert(format!("{kind}/{name}"), rv.unwrap_or_default());
    };
    let c = f.clusters().get(CLUSTER).await.unwrap();
    put("PgmlCluster", c.name_any(), c.resource_version());
    macro_rules! each {
        ($kind:ty, $api:expr) => {
            for o in $api.list(&lp).await.unwrap().items {
                put(stringify!($kind), o.name_any(), o.resource_version());
            }
        };
    }
    // A pool's status is the ZfsPool controller's and its agent's, who write it when
    // their facts change (allocated bytes, say): what is ours is its spec and metadata.
    for p in f.ns.api::<ZfsPool>().list(&lp).await.unwrap().items {
        let ours: Vec<String> = p
            .managed_fields()
            .iter()
            .filter(|m| m.manager.as_deref() == Some("pgml-operator") && m.subresource.is_none())
            .map(|m| format!("{:?}", m.time))
            .collect();
        let sig = format!("generation {:?}, applied {ours:?}", p.metadata.generation);
        put("ZfsPool", p.name_any(), Some(sig));
    }
    each!(Pod, f.pods());
    each!(PersistentVolumeClaim, f.ns.api::<PersistentVolumeClaim>());
    each!(Service, f.ns.api::<Service>());
    each!(Secret, f.ns.api::<Secret>());
    each!(ConfigMap, f.ns.api::<ConfigMap>());
    each!(NetworkPolicy, f.ns.api::<NetworkPolicy>());
    each!(PodDisruptionBudget, f.ns.api::<PodDisruptionBudget>());
    let pvs: Api<PersistentVolume> = Api::all(f.ns.client().clone());
    let lp_pv = ListParams::default().labels(&format!("{}={}", keys::NAMESPACE, f.ns.name()));
    for o in pvs.list(&lp_pv).await.unwrap().items {
        put("PersistentVolume", o.name_any(), o.resource_version());
    }
    out
}

/// The versions once they stop moving (two reads 3 s apart agree).
async fn settled_versions(f: &Fixture) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = versions(f).await;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = versions(f).await;
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Three instances: three pools in three zones with their volumes, PVs on the pools'
/// pgdata mounts, claims, Pods, Services, Secrets and ConfigMap; the status from the
/// reports; a second apply writes nothing; no secret in any log; deletion cleans up.
#[tokio::test]
async fn three_instances_make_their_objects_and_a_second_apply_changes_nothing() {
    let started = Instant::now();
    let f = Fixture::start("clobj", &[("PGML_NETWORK_POLICIES", "true")]).await;
    let m = manifest(3, json!({}));
    f.apply(&m).await;

    let pools: Api<ZfsPool> = f.ns.api();
    for name in instance_names() {
        f.wait_obj(&pools, &name, "Ready", |p: &ZfsPool| {
            has_condition(p, "Ready", "True")
        })
        .await;
    }
    f.wait_pods_running().await;
    let c = f
        .wait_cluster("3 instances placed", |c| {
            c.status.as_ref().is_some_and(|s| s.instances.len() == 3)
        })
        .await;
    let st = c.status.clone().unwrap();
    assert_eq!(st.current_primary.as_deref(), Some("main-1"));
    assert_eq!(st.target_primary.as_deref(), Some("main-1"));

    // Pools: one per instance, three zones, on the placed node, with their volumes in EC2.
    let list = pools.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 3, "exactly three pools");
    let zones: BTreeSet<String> = st
        .instances
        .iter()
        .filter_map(|i| i.availability_zone.clone())
        .collect();
    assert_eq!(zones.len(), 3, "three zones: {:?}", st.instances);
    let pvs: Api<PersistentVolume> = Api::all(f.ns.client().clone());
    for i in &st.instances {
        let pool = list
            .iter()
            .find(|p| p.name_any() == i.name)
            .expect("pool of instance");
        assert_eq!(Some(&pool.spec.node_name), i.node.as_ref());
        assert!(
            pool.spec
                .pool_name
                .as_deref()
                .unwrap()
                .starts_with(&format!("{}-", i.name))
        );
        assert_eq!(pool.owner_references()[0].kind, "PgmlCluster");
        let uid = pool.uid().unwrap();
        let vols = volumes_tagged(f.sb, keys::POOL_UID, &uid).await;
        assert_eq!(vols.len(), 2, "{}: {vols:?}", i.name);
        let zone = i.availability_zone.clone().unwrap();
        assert!(
            vols.iter()
                .all(|v| v.availability_zone() == Some(zone.as_str()))
        );

        // The PV is the pool's pgdata mount, on its node, pre-bound to the claim.
        let mount = pool
            .status
            .as_ref()
            .unwrap()
            .datasets
            .iter()
            .find(|d| d.name == "pgdata")
            .unwrap()
            .mount_path
            .clone()
            .unwrap();
        let pv = pvs
            .list(&ListParams::default().labels(&format!("{}={}", keys::INSTANCE, i.name)))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.labels().get(keys::NAMESPACE).map(String::as_str) == Some(f.ns.name()))
            .find(|p| !p.name_any().ends_with("-wal"))
            .expect("PV of the instance");
        let spec = pv.spec.clone().unwrap();
        assert_eq!(spec.local.unwrap().path, mount);
        assert_eq!(
            spec.claim_ref.unwrap().name.as_deref(),
            Some(i.name.as_str())
        );
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );

        let pvc =
            f.ns.api::<PersistentVolumeClaim>()
                .get(&i.name)
                .await
                .unwrap();
        assert_eq!(pvc.spec.unwrap().volume_name, Some(pv.name_any()));
        // The WAL's volume: the pool's pgwal mount, pre-bound to the `-wal` claim.
        let wal_mount = pool
            .status
            .as_ref()
            .unwrap()
            .datasets
            .iter()
            .find(|d| d.name == "pgwal")
            .and_then(|d| d.mount_path.clone())
            .expect("the pgwal dataset mounted");
        let wal_pv = pvs.get(&format!("{}-wal", pv.name_any())).await.unwrap();
        let wal_spec = wal_pv.spec.clone().unwrap();
        assert_eq!(wal_spec.local.unwrap().path, wal_mount);
        let wal_claim = format!("{}-wal", i.name);
        assert_eq!(
            wal_spec.claim_ref.unwrap().name.as_deref(),
            Some(wal_claim.as_str())
        );
        let wal_pvc =
            f.ns.api::<PersistentVolumeClaim>()
                .get(&wal_claim)
                .await
                .unwrap();
        assert_eq!(wal_pvc.spec.unwrap().volume_name, Some(wal_pv.name_any()));

        let pod = f.pods().get(&i.name).await.unwrap();
        let ps = pod.spec.clone().unwrap();
        assert_eq!(ps.node_name, i.node);
        assert_eq!(
            ps.containers[0].command.as_ref().unwrap()[0],
            "/controller/pgml-instance"
        );
        // The primary-to-be has no role label (no -rw endpoint) until its database's
        // system identifier is recorded in status (issue 17): nothing has reported yet.
        let want_role = if i.name == "main-1" {
            None
        } else {
            Some("replica")
        };
        assert_eq!(role_of(&pod).as_deref(), want_role, "{}", i.name);
    }
    assert_eq!(st.system_identifier, None);
    let services: BTreeSet<String> =
        f.ns.api::<Service>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| s.name_any())
            .collect();
    assert_eq!(
        services,
        ["main-r", "main-ro", "main-rw"].map(String::from).into()
    );
    // The disruption budgets: the primary held, of the two replicas one at a time.
    for (name, role, min) in [
        ("main-primary", "primary", 1),
        ("main-replicas", "replica", 1),
    ] {
        let pdb = f.ns.api::<PodDisruptionBudget>().get(name).await.unwrap();
        assert_eq!(
            pdb.metadata.owner_references.as_ref().unwrap()[0].kind,
            "PgmlCluster"
        );
        let spec = serde_json::to_value(&pdb.spec).unwrap();
        assert_eq!(spec["minAvailable"], min, "{name}");
        assert_eq!(
            spec["selector"]["matchLabels"],
            json!({"pgml.io/cluster": "main", "pgml.io/role": role}),
            "{name}"
        );
    }
    // PGML_NETWORK_POLICIES: PostgreSQL reachable from the cluster's Pods and its labelled
    // clients only, the policy owned by the cluster.
    let np =
        f.ns.api::<NetworkPolicy>()
            .get("main-postgres")
            .await
            .unwrap();
    assert_eq!(
        np.metadata.owner_references.as_ref().unwrap()[0].kind,
        "PgmlCluster"
    );
    let np = serde_json::to_value(&np.spec).unwrap();
    assert_eq!(
        np["podSelector"]["matchLabels"],
        json!({"pgml.io/cluster": "main"})
    );
    assert_eq!(
        np["ingress"][0]["from"][1]["podSelector"]["matchLabels"],
        json!({"pgml.io/client-main": "true"})
    );
    assert_eq!(np["ingress"].as_array().unwrap().len(), 1);
    let secrets =
        f.ns.api::<Secret>()
            .list(&ListParams::default().labels("pgml.io/cluster=main"))
            .await
            .unwrap()
            .items;
    let names: BTreeSet<String> = secrets.iter().map(|s| s.name_any()).collect();
    assert_eq!(
        names,
        ["main-app", "main-replication", "main-superuser"]
            .map(String::from)
            .into()
    );
    let cm = f.ns.api::<ConfigMap>().get("main-config").await.unwrap();
    let conf = cm.data.as_ref().unwrap()["postgresql.conf"].clone();
    assert!(conf.contains("shared_preload_libraries = 'pgml'"), "{conf}");
    assert!(conf.contains("full_page_writes = 'off'"), "{conf}");
    assert!(conf.contains("shared_buffers = '256MB'"), "{conf}");

    // Status from the instance managers' reports.
    f.report("main-1", primary("0/5000000")).await;
    f.report("main-2", replica("0/4000000")).await;
    f.report("main-3", replica("0/4FFFF00")).await;
    let c = f
        .wait_cluster("Healthy with 3 ready", |c| {
            c.status.as_ref().is_some_and(|s| {
                s.ready_instances == Some(3) && format!("{:?}", s.phase) == "Some(Healthy)"
            })
        })
        .await;
    let st = c.status.clone().unwrap();
    let lag: BTreeMap<&str, Option<i64>> = st
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i.lag_bytes))
        .collect();
    assert_eq!(lag["main-1"], None);
    assert_eq!(lag["main-2"], Some(0x1000000));
    assert_eq!(lag["main-3"], Some(0x100));
    assert!(has_condition(&c, "Ready", "True"));
    let ready = pgml_testbed::wait::condition(&c, "Ready").unwrap();
    assert_eq!(ready["observedGeneration"], json!(c.metadata.generation));
    // The primary's identifier recorded, then (a later reconcile) its Pod labelled primary.
    assert_eq!(st.system_identifier.as_deref(), Some(SYSTEM_ID));
    f.wait_roles(&[
        ("main-1", "primary"),
        ("main-2", "replica"),
        ("main-3", "replica"),
    ])
    .await;

    // A second apply of the same YAML, then an operator restart (which reconciles
    // everything again): not one object is written.
    // (First let the others settle: kube-controller-manager's PV binder binds the
    // pre-bound claims on its next pass, up to 15 s later, and kwok writes the Pods'
    // status.)
    let claims: Api<PersistentVolumeClaim> = f.ns.api();
    for name in instance_names()
        .into_iter()
        .flat_map(|n| [format!("{n}-wal"), n])
    {
        f.wait_obj(&claims, &name, "Bound", |c: &PersistentVolumeClaim| {
            c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        })
        .await;
    }
    let before = settled_versions(&f).await;
    f.apply(&m).await;
    let mut f = f;
    f.operator.stop(Duration::from_secs(10));
    f.operator.start();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = versions(&f).await;
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        changed.is_empty() && before.len() == after.len(),
        "objects were rewritten by a no-op reconcile: {changed:?}\n{}",
        f.logs()
    );

    // No secret in any log, nor in an Event.
    let mut passwords = vec![];
    for s in &secrets {
        let pw = s.data.as_ref().unwrap()["password"].0.clone();
        passwords.push(String::from_utf8(pw).unwrap());
    }
    let mut logs = f.operator.log();
    for a in &f.agents {
        logs += &a.log();
    }
    let events =
        f.ns.api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap();
    let notes: String = events
        .items
        .iter()
        .filter_map(|e| e.note.clone())
        .collect::<Vec<_>>()
        .join("\n");
    for pw in &passwords {
        assert_eq!(pw.len(), 43);
        assert!(!logs.contains(pw.as_str()), "a password is in a log");
        assert!(!notes.contains(pw.as_str()), "a password is in an Event");
    }
    assert!(notes.contains("main-1 is the primary"), "{notes}");
    assert!(
        notes.contains(&format!(
            "recorded the database's system identifier {SYSTEM_ID}"
        )),
        "{notes}"
    );
    assert!(
        !events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("RollingUpdate")),
        "an unchanged Pod was rolled"
    );

    // Deletion: the pools go (their volumes deleted, reclaimPolicy Delete), the PVs too.
    let uids: Vec<String> = pools
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.uid().unwrap())
        .collect();
    f.delete_cluster(&DeleteParams::background()).await;
    f.wait_pools_gone(&instance_names()).await;
    for uid in &uids {
        let vols = volumes_tagged(f.sb, keys::POOL_UID, uid).await;
        assert!(vols.is_empty(), "volumes left: {vols:?}");
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = pvs
            .list(&ListParams::default().labels(&format!("{}={}", keys::NAMESPACE, f.ns.name())))
            .await
            .unwrap()
            .items;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PVs left: {:?}",
            left.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("three instances: {:?}", started.elapsed());
    f.finish().await;
}

async fn wait_rw_is(f: &Fixture, pod: &str) {
    let ip = f
        .wait_pod(pod, "an IP", |p| {
            p.status.as_ref().and_then(|s| s.pod_ip.clone()).is_some()
        })
        .await;
    let ip = ip.status.unwrap().pod_ip.unwrap();
    f.wait_rw_address(pod, &ip).await;
}

/// Switchover on request, then failover when the primary's Pod is deleted: the old primary
/// fenced, the most advanced ready replica targeted, roles and the -rw Service following
/// once it reports itself primary.
#[tokio::test]
async fn switchover_then_failover_at_the_object_level() {
    let started = Instant::now();
    let f = Fixture::start("clrole", &[("PGML_FAILOVER_GRACE_SECONDS", "5")]).await;
    // One volume per pool: each node's attachment slots are shared by every test.
    let mut m = manifest(3, json!({}));
    m["spec"]["storage"]["zfs"]["template"]["volumes"]["count"] = json!(1);
    f.apply(&m).await;
    f.wait_pods_running().await;
    f.report_all_ready(["0/3000000", "0/3000000", "0/2000000"])
        .await;
    wait_rw_is(&f, "main-1").await;

    // Switchover to main-2.
    m["spec"]["primary"] = json!("main-2");
    f.apply(&m).await;
    let c = f
        .wait_cluster("targetPrimary main-2", |c| {
            c.status.as_ref().and_then(|s| s.target_primary.as_deref()) == Some("main-2")
        })
        .await;
    let st = c.status.unwrap();
    assert_eq!(
        st.current_primary.as_deref(),
        Some("main-1"),
        "not before main-2 reports primary"
    );
    assert_eq!(format!("{:?}", st.phase), "Some(Switchover)");
    assert!(
        !st.instances.iter().any(|i| i.fenced),
        "a switchover fences nobody"
    );
    // The old primary demotes, the target promotes (as the instance managers would).
    f.report("main-1", json!({"role": "replica", "running": false, "ready": false, "demoted": true, "lsn": "0/3000100"})).await;
    f.report("main-2", primary("0/3000100")).await;
    f.wait_current_primary("main-2").await;
    f.wait_role("main-2", "primary").await;
    f.wait_role("main-1", "replica").await;
    wait_rw_is(&f, "main-2").await;
    f.report("main-1", replica("0/3000100")).await;
    f.report("main-3", replica("0/3000000")).await;
    f.wait_cluster("Healthy after the switchover", |c| {
        c.status.as_ref().is_some_and(|s| {
            s.ready_instances == Some(3) && format!("{:?}", s.phase) == "Some(Healthy)"
        })
    })
    .await;

    // Failover: the primary's Pod is deleted; main-3 is the most advanced replica.
    f.report("main-1", replica("0/3000200")).await;
    f.report("main-3", replica("0/3000300")).await;
    let lost_at = Instant::now();
    f.pods()
        .delete("main-2", &DeleteParams::default())
        .await
        .unwrap();
    let c = f
        .wait_cluster("failing over to main-3", |c| {
            c.status.as_ref().and_then(|s| s.target_primary.as_deref()) == Some("main-3")
        })
        .await;
    assert!(
        lost_at.elapsed() >= Duration::from_secs(5),
        "failed over before the grace: {:?}",
        lost_at.elapsed()
    );
    let st = c.status.unwrap();
    assert_eq!(format!("{:?}", st.phase), "Some(Failover)");
    assert!(
        st.instances.iter().any(|i| i.name == "main-2" && i.fenced),
        "{:?}",
        st.instances
    );
    // The old primary comes back fenced.
    f.wait_fenced("main-2").await;
    let events =
        f.ns.api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap();
    let failing = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailingOver"))
        .expect("a FailingOver event");
    assert_eq!(failing.type_.as_deref(), Some("Warning"));
    let note = failing.note.clone().unwrap_or_default();
    assert!(note.contains("main-2") && note.contains("main-3"), "{note}");

    // main-3 reports itself primary: it becomes the current primary, the labels and the
    // -rw Service follow.
    f.report("main-3", primary("0/3000400")).await;
    f.wait_current_primary("main-3").await;
    f.wait_role("main-3", "primary").await;
    wait_rw_is(&f, "main-3").await;
    let c = f.clusters().get(CLUSTER).await.unwrap();
    assert!(
        has_condition(&c, "Degraded", "True"),
        "a fenced instance degrades the cluster"
    );
    eprintln!("switchover and failover: {:?}", started.elapsed());
    f.finish().await;
}

/// Where a pool's pgdata dataset is mounted on its node (the agent's report).
fn pgdata_mount(pool: &ZfsPool) -> Option<String> {
    pool.status
        .as_ref()?
        .datasets
        .iter()
        .find(|d| d.name == "pgdata")?
        .mount_path
        .clone()
}

/// Scaling 1 → 2 seeds the new replica from a fresh EbsSnapshot of the primary (with
/// standby.signal in the copy), restores its pool on a node of another zone, then makes
/// its volume, claim and Pod; the seed goes once the replica streams. Scaling back to 1
/// removes the replica's objects, never the primary's.
#[tokio::test]
async fn scaling_up_seeds_from_a_snapshot_and_scaling_down_removes_the_replica() {
    use pgml_testbed::nodes::{node_exec_ok, node_path_exists};
    let started = Instant::now();
    let f = Fixture::start("clseed", &[]).await;
    let mut m = manifest(1, json!({}));
    m["spec"]["replicas"]["seedFrom"] = json!("Snapshot");
    m["spec"]["storage"]["zfs"]["template"]["volumes"]["count"] = json!(1);
    f.apply(&m).await;
    let pools: Api<ZfsPool> = f.ns.api();
    let p1 = f
        .wait_obj(&pools, "main-1", "pgdata mounted", |p: &ZfsPool| {
            pgdata_mount(p).is_some()
        })
        .await;
    f.wait_pod("main-1", "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    // What initdb would have left in PGDATA (<mount>/pgdata), on the primary's node.
    let node1 =
        f.sb.nodes
            .iter()
            .find(|n| n.name == p1.spec.node_name)
            .unwrap();
    let pgdata = format!("{}/pgdata", pgdata_mount(&p1).unwrap());
    node_exec_ok(node1, &["mkdir", "-p", &format!("{pgdata}/global")]).unwrap();
    node_exec_ok(node1, &["touch", &format!("{pgdata}/PG_VERSION")]).unwrap();
    node_exec_ok(
        node1,
        &[
            "truncate",
            "-s",
            "8192",
            &format!("{pgdata}/global/pg_control"),
        ],
    )
    .unwrap();
    node_exec_ok(node1, &["sync"]).unwrap();
    f.report("main-1", primary("0/3000000")).await;
    f.wait_cluster("Healthy", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| format!("{:?}", s.phase) == "Some(Healthy)")
    })
    .await;

    // 1 → 2.
    m["spec"]["instances"] = json!(2);
    f.apply(&m).await;
    let c = f
        .wait_cluster("main-2 placed", |c| {
            c.status.as_ref().is_some_and(|s| s.instances.len() == 2)
        })
        .await;
    let i2 = c.status.unwrap().instances[1].clone();
    assert_eq!(i2.seeded_from.as_deref(), Some("main-2-seed"));
    assert_ne!(i2.node.as_deref(), Some(p1.spec.node_name.as_str()));
    let snaps: Api<pgml_api::EbsSnapshot> = f.ns.api();
    let seed = f
        .wait_obj(&snaps, "main-2-seed", "the seed snapshot", |_| true)
        .await;
    let src = seed.spec.source.cluster.clone().expect("a cluster source");
    assert_eq!(
        (src.name.as_str(), src.instance.as_deref()),
        ("main", Some("main-1"))
    );
    let p2 = f
        .wait_obj(&pools, "main-2", "restored and mounted", |p: &ZfsPool| {
            pgdata_mount(p).is_some() && has_condition(p, "Ready", "True")
        })
        .await;
    assert_eq!(
        p2.spec
            .restore_from
            .as_ref()
            .map(|r| r.ebs_snapshot_name.as_str()),
        Some("main-2-seed")
    );
    let node2 =
        f.sb.nodes
            .iter()
            .find(|n| n.name == p2.spec.node_name)
            .unwrap();
    let copy = format!("{}/pgdata", pgdata_mount(&p2).unwrap());
    assert!(
        node_path_exists(node2, &format!("{copy}/standby.signal")).unwrap(),
        "the restored copy starts as a standby"
    );
    assert!(
        !node_path_exists(node1, &format!("{pgdata}/standby.signal")).unwrap(),
        "the primary keeps no standby.signal"
    );
    f.wait_pod("main-2", "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    assert!(
        f.ns.api::<PersistentVolumeClaim>()
            .get_opt("main-2")
            .await
            .unwrap()
            .is_some()
    );

    // The replica streams: the seed is deleted, seededFrom stays.
    f.report("main-2", replica("0/3000000")).await;
    wait_gone(&snaps, "main-2-seed", TIMEOUT).await;
    let c = f
        .wait_cluster("Healthy with 2", |c| {
            c.status.as_ref().is_some_and(|s| {
                s.ready_instances == Some(2) && format!("{:?}", s.phase) == "Some(Healthy)"
            })
        })
        .await;
    assert_eq!(
        c.status.unwrap().instances[1].seeded_from.as_deref(),
        Some("main-2-seed")
    );

    // Backups: a user's EbsSnapshot of the cluster (the ready replica is captured) makes
    // status.lastSnapshot and LastSnapshotSucceeded True; one that AWS fails turns the
    // condition False with a Warning, and lastSnapshot keeps the restorable one.
    backup_of_the_cluster(&f, &p2).await;

    // 2 → 1: the replica goes, the primary stays.
    m["spec"]["instances"] = json!(1);
    f.apply(&m).await;
    f.wait_cluster("one instance", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.instances.len() == 1 && s.instances[0].name == "main-1")
    })
    .await;
    wait_gone(&f.pods(), "main-2", TIMEOUT).await;
    wait_gone(&pools, "main-2", TIMEOUT).await;
    wait_gone(&f.ns.api::<PersistentVolumeClaim>(), "main-2", TIMEOUT).await;
    assert!(f.pods().get_opt("main-1").await.unwrap().is_some());
    eprintln!("seed and scale: {:?}", started.elapsed());
    f.finish().await;
}

async fn backup_of_the_cluster(f: &Fixture, replica_pool: &ZfsPool) {
    use pgml_api::EbsSnapshot;
    use pgml_testbed::aws::SimAdmin;
    let snaps: Api<EbsSnapshot> = f.ns.api();
    let backup = |name: &str| -> EbsSnapshot {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
            "metadata": {"name": name},
            "spec": {"source": {"cluster": {"name": CLUSTER}}, "standbySignal": "Never"}
        }))
        .unwrap()
    };
    let last_snapshot = |c: &PgmlCluster| {
        let s = c.status.clone().unwrap_or_default();
        let cond = s
            .conditions
            .iter()
            .find(|x| x.type_ == "LastSnapshotSucceeded")
            .map(|x| (x.status.clone(), x.reason.clone(), x.message.clone()));
        (s.last_snapshot.map(|r| r.name), cond)
    };
    snaps
        .create(&Default::default(), &backup("backup-1"))
        .await
        .unwrap();
    let c = f
        .wait_cluster("lastSnapshot backup-1", |c| {
            matches!(last_snapshot(c), (Some(n), Some((s, _, _))) if n == "backup-1" && s == "True")
        })
        .await;
    let done = f
        .wait_obj(&snaps, "backup-1", "Completed", |s: &EbsSnapshot| {
            s.status.as_ref().and_then(|st| st.phase)
                == Some(pgml_api::snapshot::SnapshotPhase::Completed)
        })
        .await;
    assert_eq!(
        done.status.and_then(|s| s.zfs_pool),
        replica_pool.metadata.name.clone(),
        "the replica is captured, not the primary"
    );
    assert_eq!(last_snapshot(&c).1.unwrap().1, "SnapshotCompleted");

    let member = replica_pool.status.clone().unwrap().volumes[0]
        .volume_id
        .clone()
        .unwrap();
    let _fault = SimAdmin::from_sandbox(f.sb)
        .fault(json!({"kind": "snapshot_error", "count": 1, "volume_id": member}))
        .unwrap();
    snaps
        .create(&Default::default(), &backup("backup-2"))
        .await
        .unwrap();
    let c = f
        .wait_cluster(
            "LastSnapshotSucceeded False",
            |c| matches!(last_snapshot(c), (_, Some((s, _, _))) if s == "False"),
        )
        .await;
    let (kept, cond) = last_snapshot(&c);
    assert_eq!(
        kept.as_deref(),
        Some("backup-1"),
        "the restorable one stays"
    );
    let (_, reason, message) = cond.unwrap();
    assert_eq!(reason, "SnapshotFailed");
    assert!(
        message.contains("backup-2") && message.contains("backup-1"),
        "{message}"
    );
    f.wait_event("a SnapshotFailed Warning", |e| {
        e.reason.as_deref() == Some("SnapshotFailed") && e.type_.as_deref() == Some("Warning")
    })
    .await;
    snaps
        .delete("backup-1", &DeleteParams::default())
        .await
        .unwrap();
    snaps
        .delete("backup-2", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&snaps, "backup-1", TIMEOUT).await;
    wait_gone(&snaps, "backup-2", TIMEOUT).await;
}

/// The ext4 path: a claim of the given class per instance (node preselected), no pool, no
/// PersistentVolume and so no finalizer; replicas get empty storage (pg_basebackup).
#[tokio::test]
async fn ext4_storage_uses_claims_of_the_class_and_no_pools() {
    let started = Instant::now();
    let f = Fixture::start("clext4", &[]).await;
    let mut m = manifest(2, json!({}));
    m["spec"]["storage"] =
        json!({"persistentVolumeClaim": {"storageClassName": "gp3-ext4", "size": "2Gi"}});
    m["spec"]["replicas"] = json!({});
    f.apply(&m).await;
    let c = f
        .wait_cluster("2 instances with Pods", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.instances.len() == 2 && s.phase.is_some())
        })
        .await;
    let st = c.status.clone().unwrap();
    assert_eq!(
        st.instances[1].seeded_from.as_deref(),
        Some("pg_basebackup")
    );
    let policies =
        f.ns.api::<NetworkPolicy>()
            .list(&ListParams::default())
            .await
            .unwrap();
    assert!(
        policies.items.is_empty(),
        "no NetworkPolicy unless the operator is told to make them"
    );
    assert!(
        c.finalizers().is_empty(),
        "no PV, no finalizer: {:?}",
        c.finalizers()
    );
    let claims: Api<PersistentVolumeClaim> = f.ns.api();
    for i in &st.instances {
        let pvc = f.wait_obj(&claims, &i.name, "the claim", |_| true).await;
        let spec = pvc.spec.clone().unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("gp3-ext4"));
        assert_eq!(spec.volume_name, None);
        assert_eq!(
            pvc.annotations().get("volume.kubernetes.io/selected-node"),
            i.node.as_ref()
        );
        let pod = f.wait_pod(&i.name, "created", |_| true).await;
        assert_eq!(pod.spec.unwrap().node_name, i.node);
    }
    assert_ne!(st.instances[0].node, st.instances[1].node);
    let pools =
        f.ns.api::<ZfsPool>()
            .list(&ListParams::default())
            .await
            .unwrap();
    assert!(pools.items.is_empty(), "no pool on the ext4 path");

    // A Secret deleted once the cluster exists is reported, never made again with a new
    // password (PostgreSQL holds the old one).
    let secrets: Api<Secret> = f.ns.api();
    secrets
        .delete("main-app", &DeleteParams::default())
        .await
        .unwrap();
    f.wait_event("SecretMissing", |e| {
        e.reason.as_deref() == Some("SecretMissing") && e.type_.as_deref() == Some("Warning")
    })
    .await;
    assert!(
        secrets.get_opt("main-app").await.unwrap().is_none(),
        "a new password was made"
    );

    // A new image is rolled out only to instances that are back and ready, one at a time:
    // nothing reports here, so once the operator has seen the change no Pod is deleted.
    let uids: Vec<Option<String>> = [f.pods().get("main-1").await, f.pods().get("main-2").await]
        .into_iter()
        .map(|p| p.unwrap().metadata.uid)
        .collect();
    m["spec"]["image"] = json!("ghcr.io/postgresml/postgresml:2.10.1");
    f.apply(&m).await;
    f.wait_cluster("the new image observed", |c| {
        let st = c.status.as_ref();
        st.and_then(|s| s.observed_generation) == c.metadata.generation
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, uid) in ["main-1", "main-2"].iter().zip(&uids) {
        assert_eq!(
            &f.pods().get(name).await.unwrap().metadata.uid,
            uid,
            "{name}"
        );
    }
    f.delete_cluster(&DeleteParams::background()).await;
    for i in &st.instances {
        wait_gone(&claims, &i.name, TIMEOUT).await;
    }
    eprintln!("ext4: {:?}", started.elapsed());
    f.finish().await;
}

/// No node fits (a node selector nothing matches): Pending with the reason, no instance
/// and no primary named; once the selector matches, the first instance bootstraps there.
#[tokio::test]
async fn a_cluster_no_node_fits_waits_pending_then_bootstraps() {
    let f = Fixture::start("clpend", &[]).await;
    let mut m = manifest(
        1,
        json!({"nodeSelector": {"topology.kubernetes.io/zone": "us-east-1z"}}),
    );
    m["spec"]["storage"] = json!({"persistentVolumeClaim": {"size": "1Gi"}});
    f.apply(&m).await;
    let c = f
        .wait_cluster("Pending", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| format!("{:?}", s.phase) == "Some(Pending)")
        })
        .await;
    let st = c.status.clone().unwrap();
    assert!(st.instances.is_empty());
    assert_eq!(st.current_primary, None);
    let ready = pgml_testbed::wait::condition(&c, "Ready").unwrap();
    assert_eq!(ready["reason"], "NoNodeAvailable");
    assert!(
        ready["message"].as_str().unwrap().contains("nodeSelector"),
        "{ready}"
    );
    assert!(
        f.pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    m["spec"]["nodeSelector"] = json!({"topology.kubernetes.io/zone": "us-east-1b"});
    f.apply(&m).await;
    let c = f
        .wait_cluster("main-1 primary", |c| {
            c.status.as_ref().and_then(|s| s.current_primary.as_deref()) == Some("main-1")
        })
        .await;
    let st = c.status.unwrap();
    assert_eq!(
        st.instances[0].availability_zone.as_deref(),
        Some("us-east-1b")
    );
    assert_eq!(
        st.instances[0].seeded_from, None,
        "the bootstrap instance starts empty"
    );
    f.wait_pod("main-1", "created", |_| true).await;
    f.finish().await;
}

/// The primary's instance manager reports PostgreSQL not running (the Pod stays): after
/// the grace, the primary is fenced on its live Pod and the more advanced of two ready
/// replicas is targeted; a primary that comes back within the grace is left alone.
#[tokio::test]
async fn a_primary_reported_down_is_failed_over_after_the_grace() {
    let f = Fixture::start("cldown", &[("PGML_FAILOVER_GRACE_SECONDS", "6")]).await;
    let mut m = manifest(3, json!({}));
    m["spec"]["storage"] = json!({"persistentVolumeClaim": {"size": "1Gi"}});
    f.apply(&m).await;
    f.wait_pods_running().await;
    f.report_all_ready(["0/9000000", "0/8000000", "0/7000000"])
        .await;

    // Down for less than the grace: nothing happens.
    let down = json!({"role": "primary", "running": false, "ready": false, "lsn": "0/9000000"});
    f.report("main-1", down.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.report("main-1", primary("0/9000000")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c = f.clusters().get(CLUSTER).await.unwrap();
    let st = c.status.unwrap();
    assert_eq!(
        st.target_primary.as_deref(),
        Some("main-1"),
        "came back within the grace"
    );
    assert!(!st.instances.iter().any(|i| i.fenced));

    // Down for good.
    let lost_at = Instant::now();
    f.report("main-1", down).await;
    let c = f
        .wait_cluster("failing over", |c| {
            c.status.as_ref().and_then(|s| s.target_primary.as_deref()) != Some("main-1")
        })
        .await;
    assert!(
        lost_at.elapsed() >= Duration::from_secs(6),
        "{:?}",
        lost_at.elapsed()
    );
    let st = c.status.unwrap();
    assert_eq!(
        st.target_primary.as_deref(),
        Some("main-2"),
        "the most advanced replica"
    );
    f.wait_fenced("main-1").await;
    f.report("main-2", primary("0/8000100")).await;
    f.wait_role("main-2", "primary").await;
    f.wait_role("main-1", "replica").await;
    wait_rw_is(&f, "main-2").await;
    f.finish().await;
}
