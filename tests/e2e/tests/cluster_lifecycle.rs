//! A PgmlCluster's life at the data level with every real part together: the operator
//! (cluster controller included), the node agents on nodes 0, 1 and 2, kwok marking Pods
//! Running, and the instance managers run from the operator's Pods as the kubelet would run
//! them (`pgml_testbed::kubelet`: the claim's PersistentVolume on the node's pool, the
//! ConfigMap and Secrets as files, the Pod's environment, the Pod's ServiceAccount), with
//! real PostgreSQL 15 and the operator's pg_hba (clients use the superuser Secret's password).
//!
//! One run, in order: (a) one instance: initdb, primary, Healthy, the `-rw` Service on it,
//! rows inserted; (b) scaled to 3: two seed EbsSnapshots, pools restored from them in two
//! other zones, both replicas streaming as `streaming_replica` with the rows, seeds deleted;
//! (c) a switchover to instance 2 (`spec.primary`); (d) the primary killed (manager and
//! postmaster SIGKILLed, its container reported terminated): after the grace the most
//! advanced replica is promoted, the old primary fenced, the survivor follows. Through (c)
//! and (d) every server is asked every 200 ms whether it accepts writes: never two at once.
//! Timings are printed (`--nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use pgml_api::cluster::{ClusterPhase, InstanceRole};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::kubelet::{Instance, Kubelet};
use pgml_testbed::pg::Postgres;
use pgml_testbed::primaries::{Sample, Sampler, assert_one_primary};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::wait::{try_wait_for, wait_gone};
use serde_json::{Value, json};

const CLUSTER: &str = "life";
const TIMEOUT: Duration = Duration::from_secs(240);
const GRACE_SECONDS: &str = "5";
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

fn manifest(instances: i32, primary: Option<&str>) -> Value {
    let mut m = json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "PgmlCluster",
        "metadata": {"name": CLUSTER},
        "spec": {
            "instances": instances,
            "storage": {"zfs": {"template": {
                "volumes": {"count": 2, "type": "gp3", "sizeGiB": 1},
                "layout": "raid0",
                "reclaimPolicy": "Delete",
            }}},
        },
    });
    if let Some(p) = primary {
        m["spec"]["primary"] = json!(p);
    }
    m
}

fn name(n: u32) -> String {
    format!("{CLUSTER}-{n}")
}

struct Parts {
    ns: TestNamespace,
    operator: Proc,
    agents: Vec<Proc>,
    kubelet: Kubelet,
}

impl Parts {
    fn clusters(&self) -> Api<PgmlCluster> {
        self.ns.api()
    }

    fn pods(&self) -> Api<Pod> {
        self.ns.api()
    }

    /// The processes' logs (paths, and the managers' last lines), for failure messages.
    fn logs(&self) -> String {
        let mut s = format!("--- operator log: {}\n", self.operator.log_path().display());
        for a in &self.agents {
            s += &format!("--- agent log: {}\n", a.log_path().display());
        }
        s + &self.kubelet.logs(25)
    }

    /// Applies the cluster as `kubectl apply --server-side` would.
    async fn apply(&self, manifest: &Value) {
        self.clusters()
            .patch(
                CLUSTER,
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(manifest),
            )
            .await
            .expect("applying the PgmlCluster");
    }

    async fn wait_cluster(&self, what: &str, ok: impl Fn(&PgmlCluster) -> bool) -> PgmlCluster {
        try_wait_for(
            &self.clusters(),
            CLUSTER,
            what,
            TIMEOUT,
            Duration::from_millis(250),
            || self.logs(),
            ok,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn wait_pod(&self, pod: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
        try_wait_for(
            &self.pods(),
            pod,
            what,
            TIMEOUT,
            Duration::from_millis(250),
            || self.logs(),
            ok,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until the Pods' role labels are exactly `roles`.
    async fn wait_roles(&self, roles: &[(&str, &str)]) {
        for (pod, role) in roles {
            self.wait_pod(pod, &format!("role label {role}"), |p| {
                p.labels().get("pgml.io/role").map(String::as_str) == Some(*role)
            })
            .await;
        }
    }

    /// Waits until `-rw`'s EndpointSlice has exactly `pod`'s IP as a ready endpoint.
    async fn wait_rw_is(&self, pod: &str) {
        let svc: Service = self.ns.api().get(&format!("{CLUSTER}-rw")).await.unwrap();
        let selector = svc.spec.unwrap().selector.unwrap_or_default();
        assert_eq!(
            selector,
            BTreeMap::from([
                ("pgml.io/cluster".to_string(), CLUSTER.to_string()),
                ("pgml.io/role".to_string(), "primary".to_string()),
            ])
        );
        let p = self.pods().get(pod).await.unwrap();
        let ip = p.status.and_then(|s| s.pod_ip).expect("a pod IP (kwok)");
        let slices: Api<EndpointSlice> = self.ns.api();
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={CLUSTER}-rw"));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got: Vec<String> = slices
                .list(&lp)
                .await
                .unwrap()
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                .flat_map(|e| e.addresses.clone())
                .collect();
            if got == [ip.clone()] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{CLUSTER}-rw endpoints {got:?}, want [{ip}] ({pod})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for an Event of the cluster with this reason; its note.
    async fn wait_event(&self, reason: &str) -> String {
        let events: Api<Event> = self.ns.api();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(e) = events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
            {
                return e.note.unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "no {reason} Event\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The instance's server, once the kubelet runs its manager.
    async fn instance(&self, pod: &str) -> Instance {
        self.kubelet.wait_instance(pod, TIMEOUT).await
    }
}

fn status_of(c: &PgmlCluster) -> pgml_api::cluster::PgmlClusterStatus {
    c.status.clone().unwrap_or_default()
}

fn healthy_with(c: &PgmlCluster, primary: &str, ready: i32) -> bool {
    let s = status_of(c);
    s.phase == Some(ClusterPhase::Healthy)
        && s.current_primary.as_deref() == Some(primary)
        && s.target_primary.as_deref() == Some(primary)
        && s.ready_instances == Some(ready)
}

/// `application_name|usename|state` of every standby streaming from `pg`, sorted.
fn replication(pg: &Postgres) -> String {
    pg.sql("SELECT application_name, usename, state FROM pg_stat_replication ORDER BY 1")
        .unwrap_or_else(|e| format!("({e:#})"))
}

fn streams(pg: &Postgres, replicas: &[&str]) -> bool {
    let want: Vec<String> = replicas
        .iter()
        .map(|r| format!("{r}|streaming_replica|streaming"))
        .collect();
    replication(pg) == want.join("\n")
}

/// Waits until every replica streams from `primary` as `streaming_replica`.
async fn wait_streaming(parts: &Parts, primary: &Postgres, replicas: &[&str]) {
    let deadline = Instant::now() + TIMEOUT;
    while !streams(primary, replicas) {
        assert!(
            Instant::now() < deadline,
            "pg_stat_replication on port {}: {:?}, want {replicas:?} streaming\n{}",
            primary.port,
            replication(primary),
            parts.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Inserts a row on `primary` and waits until every replica has it.
fn insert_everywhere(primary: &Postgres, replicas: &[&Postgres], note: &str) {
    let id = primary
        .sql(&format!(
            "INSERT INTO items (note) VALUES ('{note}') RETURNING id"
        ))
        .unwrap_or_else(|e| panic!("insert {note}: {e:#}"));
    for r in replicas {
        r.wait_sql(
            &format!("SELECT count(*) FROM items WHERE id = {id}"),
            Duration::from_secs(60),
            |n| n == "1",
        )
        .unwrap_or_else(|e| panic!("row {note} on port {}: {e:#}", r.port));
    }
}

/// The first sample (ms) from which the server of target `i` is writable for good.
fn writable_from(samples: &[Sample], i: usize) -> Option<u128> {
    let last_not = samples
        .iter()
        .rposition(|s| s.writable[i] != Some(true))
        .map_or(0, |p| p + 1);
    samples.get(last_not).map(|s| s.at_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_scale_to_three_switchover_failover() {
    let started = Instant::now();
    let sb = Sandbox::get();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "pgml-life").await;
    let mut operator = procs::operator(sb, ns.name());
    operator.stop(Duration::from_secs(10));
    operator.set_env("PGML_FAILOVER_GRACE_SECONDS", GRACE_SECONDS);
    operator.start();
    let agents = procs::agents(sb, &[0, 1, 2], ns.name());
    let kubelet = Kubelet::start(sb, client.clone(), ns.name(), &[]);
    let parts = Parts {
        ns,
        operator,
        agents,
        kubelet,
    };
    let (n1, n2, n3) = (name(1), name(2), name(3));

    // (a) One instance: initdb, primary, Healthy, the -rw Service on it; rows.
    parts.apply(&manifest(1, None)).await;
    let c = parts
        .wait_cluster("Healthy with one primary", |c| healthy_with(c, &n1, 1))
        .await;
    eprintln!("(a) one instance Healthy at {:?}", started.elapsed());
    let s = status_of(&c);
    assert_eq!(s.instances.len(), 1, "{s:?}");
    assert_eq!(s.instances[0].role, Some(InstanceRole::Primary));
    parts.wait_roles(&[(&n1, "primary")]).await;
    parts.wait_rw_is(&n1).await;
    let i1 = parts.instance(&n1).await;
    let pg1 = i1.postgres();
    assert!(!pg1.in_recovery().unwrap());
    assert_eq!(
        pg1.sql("SHOW shared_preload_libraries").unwrap(),
        "",
        "the ConfigMap's postgresql.conf is used (pgml dropped for the test bed)"
    );
    assert_eq!(pg1.sql("SHOW full_page_writes").unwrap(), "off");
    pg1.sql("CREATE TABLE items (id bigserial PRIMARY KEY, note text NOT NULL)")
        .unwrap();
    pg1.sql("INSERT INTO items (note) SELECT 'row ' || g FROM generate_series(1, 1000) g")
        .unwrap();

    // (b) Scale to 3: seeds, restored pools in two other zones, two streaming replicas.
    let t_scale = Instant::now();
    parts.apply(&manifest(3, None)).await;
    let snaps: Api<EbsSnapshot> = parts.ns.api();
    let mut seeds_seen = BTreeSet::new();
    let mut streaming_at: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while streaming_at.len() < 2 {
        for s in snaps.list(&ListParams::default()).await.unwrap().items {
            seeds_seen.insert(s.name_any());
        }
        let rows = replication(&pg1);
        for n in [&n2, &n3] {
            if rows
                .lines()
                .any(|l| l == format!("{n}|streaming_replica|streaming"))
            {
                streaming_at
                    .entry(n.clone())
                    .or_insert_with(|| t_scale.elapsed());
            }
        }
        assert!(
            Instant::now() < deadline,
            "replicas streaming: {streaming_at:?}; pg_stat_replication: {rows:?}; seeds seen: {seeds_seen:?}; status: {:?}\n{}",
            parts
                .clusters()
                .get(CLUSTER)
                .await
                .ok()
                .map(|c| status_of(&c)),
            parts.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for n in [&n2, &n3] {
        eprintln!(
            "(b) {n} seeded and streaming {:?} after the scale",
            streaming_at[n]
        );
    }
    for seed in [format!("{n2}-seed"), format!("{n3}-seed")] {
        assert!(
            seeds_seen.contains(&seed),
            "{seed} never seen: {seeds_seen:?}"
        );
    }
    let c = parts
        .wait_cluster("Healthy with three instances", |c| healthy_with(c, &n1, 3))
        .await;
    eprintln!(
        "(b) three instances Healthy {:?} after the scale",
        t_scale.elapsed()
    );
    let s = status_of(&c);
    let zones: BTreeSet<String> = s
        .instances
        .iter()
        .filter_map(|i| i.availability_zone.clone())
        .collect();
    assert_eq!(zones.len(), 3, "three distinct zones: {s:?}");
    for n in [&n2, &n3] {
        let st = s.instances.iter().find(|i| &i.name == n).unwrap();
        assert_eq!(
            st.seeded_from.as_deref(),
            Some(&*format!("{n}-seed")),
            "{st:?}"
        );
        assert_eq!(st.role, Some(InstanceRole::Replica), "{st:?}");
        let pool: ZfsPool = parts.ns.api().get(n).await.unwrap();
        assert_eq!(
            pool.spec
                .restore_from
                .as_ref()
                .map(|r| r.ebs_snapshot_name.clone()),
            Some(format!("{n}-seed"))
        );
    }
    for n in [&n2, &n3] {
        wait_gone(&snaps, &format!("{n}-seed"), TIMEOUT).await;
    }
    parts
        .wait_roles(&[(&n1, "primary"), (&n2, "replica"), (&n3, "replica")])
        .await;
    let (i2, i3) = (parts.instance(&n2).await, parts.instance(&n3).await);
    let (pg2, pg3) = (i2.postgres(), i3.postgres());
    for pg in [&pg2, &pg3] {
        assert!(pg.in_recovery().unwrap());
        assert_eq!(pg.sql("SELECT count(*) FROM items").unwrap(), "1000");
    }
    assert!(streams(&pg1, &[&n2, &n3]), "{}", replication(&pg1));
    insert_everywhere(&pg1, &[&pg2, &pg3], "after the scale");

    // (c) Switchover to instance 2, sampled.
    let targets = vec![i1.target(), i2.target(), i3.target()];
    let sampler = Sampler::start(parts.pods(), targets.clone(), SAMPLE_EVERY);
    tokio::time::sleep(SAMPLE_EVERY * 3).await;
    let t_switch = Instant::now();
    parts.apply(&manifest(3, Some(&n2))).await;
    parts
        .wait_cluster("switched over to instance 2", |c| healthy_with(c, &n2, 3))
        .await;
    let switch_done = t_switch.elapsed();
    parts
        .wait_roles(&[(&n2, "primary"), (&n1, "replica"), (&n3, "replica")])
        .await;
    parts.wait_rw_is(&n2).await;
    wait_streaming(&parts, &pg2, &[&n1, &n3]).await;
    let samples = sampler.finish().await;
    assert_one_primary(&samples, "switchover");
    assert!(!pg2.in_recovery().unwrap() && pg1.in_recovery().unwrap());
    insert_everywhere(&pg2, &[&pg1, &pg3], "after the switchover");
    let start_ms = samples
        .iter()
        .find(|s| s.at_ms >= (SAMPLE_EVERY * 3).as_millis())
        .map_or(0, |s| s.at_ms);
    eprintln!(
        "(c) switchover: Healthy on {n2} {switch_done:?} after the request; {n2} writable from {:?} ms, {} samples",
        writable_from(&samples, 1).map(|t| t.saturating_sub(start_ms)),
        samples.len()
    );

    // (d) Failover: the primary (instance 2) killed; after the grace the most advanced
    // replica is promoted and instance 2 fenced.
    let sampler = Sampler::start(parts.pods(), targets, SAMPLE_EVERY);
    tokio::time::sleep(SAMPLE_EVERY * 3).await;
    let t_fail = Instant::now();
    parts.kubelet.kill(&n2).await;
    let c = parts
        .wait_cluster("a new primary after the failover", |c| {
            let s = status_of(c);
            let cur = s.current_primary.as_deref();
            cur.is_some_and(|p| p != n2)
                && s.target_primary.as_deref() == cur
                && s.instances
                    .iter()
                    .any(|i| Some(i.name.as_str()) == cur && i.ready)
        })
        .await;
    let fail_done = t_fail.elapsed();
    let s = status_of(&c);
    let new = s.current_primary.clone().unwrap();
    let survivor = if new == n1 { n3.clone() } else { n1.clone() };
    let (pg_new, pg_survivor) = if new == n1 {
        (&pg1, &pg3)
    } else {
        (&pg3, &pg1)
    };
    parts
        .wait_pod(&n2, "fenced", |p| {
            p.annotations().get("pgml.io/fenced").map(String::as_str) == Some("true")
        })
        .await;
    let c = parts
        .wait_cluster("instance 2 fenced in status", |c| {
            status_of(c)
                .instances
                .iter()
                .any(|i| i.name == n2 && i.fenced && i.role.is_none())
        })
        .await;
    assert_eq!(
        status_of(&c).phase,
        Some(ClusterPhase::Degraded),
        "a fenced instance keeps the cluster Degraded"
    );
    let note = parts.wait_event("FailingOver").await;
    assert!(note.contains(&n2) && note.contains(&new), "{note}");
    parts.wait_event("Fenced").await;
    parts
        .wait_roles(&[(&new, "primary"), (&survivor, "replica")])
        .await;
    parts.wait_rw_is(&new).await;
    wait_streaming(&parts, pg_new, &[&survivor]).await;
    let samples = sampler.finish().await;
    assert_one_primary(&samples, "failover");
    assert!(!pg_new.in_recovery().unwrap());
    assert!(pg2.sql("SELECT 1").is_err(), "the killed server is gone");
    insert_everywhere(pg_new, &[pg_survivor], "after the failover");
    assert_eq!(pg_new.sql("SELECT count(*) FROM items").unwrap(), "1003");
    let idx = if new == n1 { 0 } else { 2 };
    eprintln!(
        "(d) failover (grace {GRACE_SECONDS}s): {new} primary in status {fail_done:?} after the kill; writable from {:?} ms, {} samples",
        writable_from(&samples, idx).map(|t| t.saturating_sub((SAMPLE_EVERY * 3).as_millis())),
        samples.len()
    );

    // Clean up: managers stopped, the cluster deleted (its pools and volumes with it).
    let Parts {
        ns,
        mut operator,
        mut agents,
        mut kubelet,
    } = parts;
    kubelet.shutdown();
    let clusters: Api<PgmlCluster> = ns.api();
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&clusters, CLUSTER, TIMEOUT).await;
    let pools: Api<ZfsPool> = ns.api();
    for n in [&n1, &n2, &n3] {
        wait_gone(&pools, n, TIMEOUT).await;
    }
    operator.stop(Duration::from_secs(10));
    for a in &mut agents {
        a.stop(Duration::from_secs(10));
    }
    ns.cleanup().await;
    eprintln!("done in {:?}", started.elapsed());
}
