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

mod cluster_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cluster_common::{ClusterFixture, TIMEOUT, zfs_cluster};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use pgml_api::cluster::{ClusterPhase, InstanceRole};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::pg::Postgres;
use pgml_testbed::primaries::{Sample, Sampler, assert_one_primary};
use pgml_testbed::wait::wait_gone;
use serde_json::{Value, json};

const CLUSTER: &str = "life";
const GRACE_SECONDS: &str = "5";
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

fn manifest(instances: i32, primary: Option<&str>) -> Value {
    let volumes = json!({"count": 2, "type": "gp3", "sizeGiB": 1});
    let extra = primary.map_or_else(|| json!({}), |p| json!({"primary": p}));
    zfs_cluster(CLUSTER, instances, volumes, extra)
}

fn name(n: u32) -> String {
    format!("{CLUSTER}-{n}")
}

/// Waits until `-rw` selects the primary and its EndpointSlice has exactly `pod`'s IP as
/// a ready endpoint.
async fn wait_rw_is(f: &ClusterFixture, pod: &str) {
    let svc: Service = f.ns.api().get(&format!("{CLUSTER}-rw")).await.unwrap();
    let selector = svc.spec.unwrap().selector.unwrap_or_default();
    assert_eq!(
        selector,
        BTreeMap::from([
            ("pgml.io/cluster".to_string(), CLUSTER.to_string()),
            ("pgml.io/role".to_string(), "primary".to_string()),
        ])
    );
    let p = f.pods().get(pod).await.unwrap();
    let ip = p.status.and_then(|s| s.pod_ip).expect("a pod IP (kwok)");
    f.wait_rw_address(pod, &ip).await;
}

/// Waits for an Event of the cluster with this reason; its note.
async fn wait_event(f: &ClusterFixture, reason: &str) -> String {
    f.wait_event(reason, |e| e.reason.as_deref() == Some(reason))
        .await
        .note
        .unwrap_or_default()
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
async fn wait_streaming(parts: &ClusterFixture, primary: &Postgres, replicas: &[&str]) {
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
    let mut parts = ClusterFixture::start(
        "pgml-life",
        CLUSTER,
        &[0, 1, 2],
        &[("PGML_FAILOVER_GRACE_SECONDS", GRACE_SECONDS)],
    )
    .await
    .with_kubelet(&[], 25)
    .polling(Duration::from_millis(250));
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
    wait_rw_is(&parts, &n1).await;
    let i1 = parts.instance(&n1).await;
    let pg1 = i1.postgres();
    assert!(!pg1.in_recovery().unwrap());
    assert_eq!(
        pg1.sql("SHOW shared_preload_libraries").unwrap(),
        "",
        "the ConfigMap's postgresql.conf is used (pgml dropped for the test bed)"
    );
    assert_eq!(pg1.sql("SHOW full_page_writes").unwrap(), "off");
    // initdb --waldir: WAL on the pool's pgwal dataset from the start.
    parts.assert_wal_on_pgwal(&n1).await;
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
    // The replication password is in no file of a replica's PGDATA (it would travel with
    // every snapshot and backup): primary_conninfo names a passfile outside it.
    let secrets: Api<Secret> = parts.ns.api();
    let replication_secret = secrets
        .get(&format!("{CLUSTER}-replication"))
        .await
        .unwrap();
    let password =
        String::from_utf8(replication_secret.data.unwrap()["password"].0.clone()).unwrap();
    let pg2 = parts.instance(&n2).await.postgres();
    let conninfo = pg2.sql("SHOW primary_conninfo").unwrap();
    assert!(conninfo.contains("passfile="), "{conninfo}");
    assert!(!conninfo.contains(&password), "{conninfo}");
    for file in [
        "pgml-instance.conf",
        "postgresql.auto.conf",
        "postgresql.conf",
    ] {
        let text = pg2
            .sql(&format!("SELECT pg_read_file('{file}', 0, 1000000, true)"))
            .unwrap();
        assert!(
            !text.contains(&password),
            "the replication password in {file}"
        );
    }
    // Seeded from a snapshot of another pool: the copy's pg_wal linked to the donor's
    // path, made a link to this instance's own pgwal dataset before its first start.
    let t2 = parts.assert_wal_on_pgwal(&n2).await;
    let t3 = parts.assert_wal_on_pgwal(&n3).await;
    assert_ne!(t2, t3, "each replica's WAL on its own pool");
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
    wait_rw_is(&parts, &n2).await;
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
    parts.kubelet.as_ref().expect("the kubelet").kill(&n2).await;
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
    parts.wait_fenced(&n2).await;
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
    let note = wait_event(&parts, "FailingOver").await;
    assert!(note.contains(&n2) && note.contains(&new), "{note}");
    wait_event(&parts, "Fenced").await;
    parts
        .wait_roles(&[(&new, "primary"), (&survivor, "replica")])
        .await;
    wait_rw_is(&parts, &new).await;
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
    parts.shutdown_kubelet();
    parts.delete_cluster(&DeleteParams::default()).await;
    parts.wait_pools_gone(&[&n1, &n2, &n3]).await;
    parts.finish().await;
    eprintln!("done in {:?}", started.elapsed());
}
