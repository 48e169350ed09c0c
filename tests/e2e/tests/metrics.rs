//! The operator's and the agent's metrics endpoints (docs/metrics.md), with the real
//! processes: a ZfsPool made Ready and an EbsSnapshot of it Completed, then `/metrics`
//! read and checked against the objects and against EC2.
//!
//! Counting EC2 calls against the simulator: its statistics are global (every test of every
//! file that runs at the same time goes through the same proxy, with the same access key),
//! so neither resetting them nor comparing totals is sound. What is sound, and what this
//! test asserts:
//! - every call the operator counted was also counted by the proxy: for each action and
//!   outcome, the operator's count is at most the proxy's increase over the test;
//! - for the mutating calls, the operator's count equals what this test's objects needed,
//!   as EC2 holds them: CreateVolume ok == the pool's volumes in moto, AttachVolume ok ==
//!   their attachments, CreateSnapshots ok == 1 (one set);
//! - throttles are counted per attempt: a `throttle` fault scoped (`match`) to this test's
//!   namespace tag on CreateVolume, count 2, is seen by the operator as exactly 2
//!   `throttled` CreateVolume attempts (the SDK retries them), and by the proxy as at least
//!   2 more throttled CreateVolume calls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use pgml_api::common::keys;
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{SimAdmin, snapshots_tagged, volumes_tagged};
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::procs::{self, Proc, http_get, metric};
use pgml_testbed::wait::{has_condition, wait_for, wait_gone};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(240);

fn endpoint(p: &Proc) -> std::net::SocketAddr {
    p.metrics_addr(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no metrics_addr in the log:\n{}", p.log()))
}

fn get(p: &Proc, path: &str) -> (u16, String) {
    http_get(endpoint(p), path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The operator's `pgml_ec2_requests_total` as (action, outcome) → count.
fn ec2_counts(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("pgml_ec2_requests_total{"))
    {
        let label = |k: &str| {
            let start = line.find(&format!("{k}=\""))? + k.len() + 2;
            let end = start + line[start..].find('"')?;
            Some(line[start..end].to_string())
        };
        let value: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        out.insert((label("action").unwrap(), label("outcome").unwrap()), value);
    }
    out
}

/// The proxy's count of `action` (EBS direct APIs are `ebs:<Action>` there).
fn proxy_count(stats: &Value, action: &str, outcome: &str) -> f64 {
    let a = &stats["actions"];
    let entry = if a[action].is_object() {
        &a[action]
    } else {
        &a[format!("ebs:{action}")]
    };
    entry[outcome].as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_reconciles_pools_snapshots_and_the_ec2_calls_the_proxy_saw() {
    let sb = Sandbox::get();
    let admin = SimAdmin::from_sandbox(sb);
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "metrics").await;
    let suffix = ns.name().rsplit('-').next().unwrap_or_default().to_string();
    let node = &sb.nodes[sb.nodes.len() - 1];
    let stats_before = admin.stats().unwrap();
    // The next 2 CreateVolume calls carrying this namespace (its pgml.io/namespace tag).
    let _throttle = admin
        .fault(
            json!({"kind": "throttle", "action": "CreateVolume", "match": ns.name(), "count": 2}),
        )
        .unwrap();
    let mut operator = procs::operator(sb, ns.name());
    let mut agent = procs::agent(sb, node, ns.name());

    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&operator, path).0, 200, "operator {path}");
    }
    assert_eq!(get(&agent, "/healthz").0, 200, "agent /healthz");

    let pools: Api<ZfsPool> = ns.api();
    let pool = format!("m-{suffix}");
    let obj: ZfsPool = serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
        "metadata": {"name": pool},
        "spec": {"nodeName": node.name, "layout": "raid0", "reclaimPolicy": "Delete",
                 "volumes": {"count": 2, "type": "gp3", "sizeGiB": 1}},
    }))
    .unwrap();
    pools.create(&PostParams::default(), &obj).await.unwrap();
    let ready = wait_for(&pools, &pool, "Ready", TIMEOUT, |p: &ZfsPool| {
        has_condition(p, "Ready", "True")
            && p.status.as_ref().is_some_and(|s| s.size_bytes.is_some())
    })
    .await;
    // A PgmlCluster on PVCs (no EC2 call) whose Pods never schedule: reconciled all the same.
    let clusters: Api<PgmlCluster> = ns.api();
    let cluster: PgmlCluster = serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
        "metadata": {"name": "c1"},
        "spec": {"instances": 1, "nodeSelector": {"pgml.io/e2e-no-such-node": "true"},
                 "storage": {"persistentVolumeClaim": {"size": "1Gi"}}},
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    let snaps: Api<EbsSnapshot> = ns.api();
    let snap: EbsSnapshot = serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
        "metadata": {"name": "s1"},
        "spec": {"source": {"zfsPool": {"name": pool}}},
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let done = wait_for(&snaps, "s1", "Completed", TIMEOUT, |s: &EbsSnapshot| {
        s.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(SnapshotPhase::Completed))
    })
    .await;

    // The controllers reconciled (the pool's status changes and the snapshot's own), and
    // the gauges follow the objects.
    let start = Instant::now();
    let m = loop {
        let (status, m) = get(&operator, "/metrics");
        assert_eq!(status, 200);
        // The snapshot's Completed status reaches the metric at its next reconcile.
        if metric(&m, "pgml_snapshot_last_success_timestamp_seconds", &[]).is_some()
            || start.elapsed() > Duration::from_secs(30)
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("{m}");
    assert!(
        metric(&m, "pgml_reconcile_total", &[("controller", "pgmlcluster")]).unwrap_or(0.0) >= 1.0,
        "pgmlcluster: {m}"
    );
    for controller in ["zfspool", "ebssnapshot", "schedules"] {
        assert!(
            metric(
                &m,
                "pgml_reconcile_total",
                &[("controller", controller), ("result", "ok")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{controller}: {m}"
        );
        assert!(
            metric(
                &m,
                "pgml_reconcile_duration_seconds_count",
                &[("controller", controller)]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{controller}: {m}"
        );
    }
    let ns_name = ns.name();
    let health = ready.status.as_ref().unwrap().health.clone().unwrap();
    assert_eq!(
        metric(
            &m,
            "pgml_zfspool_health",
            &[("namespace", ns_name), ("name", &pool), ("health", &health)]
        ),
        Some(1.0),
        "{m}"
    );
    let size = metric(
        &m,
        "pgml_zfspool_capacity_bytes",
        &[("namespace", ns_name), ("name", &pool), ("kind", "size")],
    )
    .expect("the pool's size");
    assert!(size > 1.0e9, "two 1 GiB volumes in raid0: {size}");
    for kind in ["allocated", "free"] {
        assert!(
            metric(
                &m,
                "pgml_zfspool_capacity_bytes",
                &[("namespace", ns_name), ("name", &pool), ("kind", kind)]
            )
            .is_some(),
            "{kind}: {m}"
        );
    }
    let source = [
        ("namespace", ns_name),
        ("source_kind", "zfsPool"),
        ("source", pool.as_str()),
    ];
    let completed = done
        .status
        .as_ref()
        .unwrap()
        .completion_time
        .as_ref()
        .unwrap()
        .0
        .as_second() as f64;
    assert_eq!(
        metric(&m, "pgml_snapshot_last_success_timestamp_seconds", &source),
        Some(completed),
        "{m}"
    );
    let age = metric(&m, "pgml_snapshot_age_seconds", &source).expect("the age");
    assert!((0.0..120.0).contains(&age), "{age}");
    assert!(
        metric(
            &m,
            "pgml_leader",
            &[("identity", &format!("pgml-operator-{ns_name}"))]
        ) == Some(1.0),
        "{m}"
    );

    // EC2: what the operator counted, against EC2's state and the proxy's counts.
    let stats_after = admin.stats().unwrap();
    let ours = ec2_counts(&m);
    for ((action, outcome), n) in &ours {
        let proxy = proxy_count(&stats_after, action, outcome)
            - proxy_count(&stats_before, action, outcome);
        println!("{action} {outcome}: operator {n}, proxy +{proxy}");
        assert!(
            *n <= proxy,
            "{action} {outcome}: the operator counted {n}, the proxy only {proxy} more"
        );
    }
    let uid = ready.metadata.uid.as_deref().unwrap();
    let vols = volumes_tagged(sb, keys::POOL_UID, uid).await;
    assert_eq!(vols.len(), 2);
    let attachments: usize = vols.iter().map(|v| v.attachments().len()).sum();
    let count = |a: &str, o: &str| {
        ours.get(&(a.to_string(), o.to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(count("CreateVolume", "ok"), vols.len() as f64, "{ours:?}");
    assert_eq!(count("CreateVolume", "throttled"), 2.0, "{ours:?}");
    assert!(
        proxy_count(&stats_after, "CreateVolume", "throttled")
            - proxy_count(&stats_before, "CreateVolume", "throttled")
            >= 2.0
    );
    assert_eq!(count("AttachVolume", "ok"), attachments as f64, "{ours:?}");
    assert_eq!(count("CreateSnapshots", "ok"), 1.0, "{ours:?}");
    let snap_uid = done.metadata.uid.as_deref().unwrap();
    assert_eq!(
        snapshots_tagged(sb, keys::SNAPSHOT_UID, snap_uid)
            .await
            .len(),
        2,
        "one snapshot per volume"
    );

    // The agent's endpoint.
    let (status, am) = get(&agent, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&am, "pgml_agent_up", &[]), Some(1.0), "{am}");
    assert!(
        metric(
            &am,
            "pgml_agent_commands_total",
            &[("program", "zpool"), ("outcome", "ok")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{am}"
    );

    // Deleted, the pool's series go.
    snaps.delete("s1", &DeleteParams::default()).await.unwrap();
    wait_gone(&snaps, "s1", TIMEOUT).await;
    pools.delete(&pool, &DeleteParams::default()).await.unwrap();
    wait_gone(&pools, &pool, TIMEOUT).await;
    let (_, m) = get(&operator, "/metrics");
    assert_eq!(
        metric(&m, "pgml_zfspool_health", &[("name", &pool)]),
        None,
        "{m}"
    );
    assert_eq!(
        metric(&m, "pgml_zfspool_capacity_bytes", &[("name", &pool)]),
        None,
        "{m}"
    );
    operator.stop(Duration::from_secs(20));
    agent.stop(Duration::from_secs(20));
    ns.cleanup().await;
}
