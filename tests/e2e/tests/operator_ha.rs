//! Two operator replicas for one namespace, as the chart runs them (real processes, the
//! production lease timings: 15 s duration, 10 s renew deadline, 2 s retry): only the
//! holder of the `pgml-operator` Lease reconciles; killing it (SIGKILL, mid-provisioning)
//! hands over within the lease duration with no duplicate volume or attachment; SIGTERM
//! releases the Lease so the other takes over at its next look; a leader that sees another
//! holder exits non-zero at once.
//!
//! The simulator's call statistics are global (tests of other files run at the same time),
//! so "no duplicate EC2 calls" is asserted on what EC2 holds: exactly the pools' volumes,
//! each attached once to its pool's node. (A CreateVolume retried by the new leader carries
//! the same ClientToken and returns the same volume; the proxy counts that call, moto
//! holds one volume.)

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use pgml_api::ZfsPool;
use pgml_api::common::keys;
use pgml_testbed::Sandbox;
use pgml_testbed::aws::volumes_tagged;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::procs::{self, Proc, http_get, metric};
use pgml_testbed::wait::{has_condition, wait_for, wait_gone};
use serde_json::json;

const LEASE: &str = "pgml-operator";
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);
const POOL_TIMEOUT: Duration = Duration::from_secs(240);

fn replica(sb: &Sandbox, ns: &str, name: &str) -> Proc {
    procs::operator_with_env(sb, ns, &[("POD_NAME", name)])
}

fn scrape(p: &Proc) -> String {
    let addr = p
        .metrics_addr(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no metrics_addr in the log:\n{}", p.log()));
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// A namespace of its own for a test (the CRDs installed), and its Leases.
async fn namespace(prefix: &str) -> (TestNamespace, Api<Lease>) {
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, prefix).await;
    let leases = ns.api();
    (ns, leases)
}

async fn lease(api: &Api<Lease>) -> Option<Lease> {
    api.get_opt(LEASE).await.expect("reading the Lease")
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    lease(api)
        .await
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

fn transitions(l: &Lease) -> i32 {
    l.spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

/// Waits until one of `names` holds the Lease; returns it.
async fn wait_leader(api: &Api<Lease>, names: &[&str], timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(h) = holder(api).await {
            assert!(names.contains(&h.as_str()), "unexpected holder {h}");
            return h;
        }
        assert!(start.elapsed() < timeout, "nobody took the Lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `who` holds the Lease; returns how long it took from `since`.
async fn wait_holder(api: &Api<Lease>, who: &str, since: Instant, timeout: Duration) -> Duration {
    loop {
        if holder(api).await.as_deref() == Some(who) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < timeout,
            "{who} did not take the Lease within {timeout:?} (holder {:?})",
            holder(api).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A follower did nothing: no reconcile, no EC2 call, pgml_leader 0.
fn assert_idle(p: &Proc, identity: &str) {
    let m = scrape(p);
    assert_eq!(
        metric(&m, "pgml_leader", &[("identity", identity)]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "pgml_ec2_requests_total", &[]), None, "{m}");
    assert_eq!(metric(&m, "pgml_reconcile_total", &[]), None, "{m}");
}

/// Events the replica `identity` reported (the Recorder's reportingInstance is POD_NAME).
async fn events_by(ns: &TestNamespace, identity: &str) -> usize {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reporting_instance.as_deref() == Some(identity))
        .count()
}

#[tokio::test]
async fn killing_the_leader_mid_provisioning_hands_over_without_duplicates() {
    let sb = Sandbox::get();
    let (ns, leases) = namespace("ha-kill").await;
    let suffix = ns.name().rsplit('-').next().unwrap_or_default().to_string();
    let _agents = procs::agents(sb, &[0, 1], ns.name());
    let mut a = replica(sb, ns.name(), "op-a");
    let mut b = replica(sb, ns.name(), "op-b");

    let first = wait_leader(&leases, &["op-a", "op-b"], Duration::from_secs(60)).await;
    let (leader, follower, fname) = if first == "op-a" {
        (&mut a, &mut b, "op-b")
    } else {
        (&mut b, &mut a, "op-a")
    };
    let before = lease(&leases).await.unwrap();
    // Both serve metrics; only the holder says it leads.
    assert_eq!(
        metric(&scrape(leader), "pgml_leader", &[("identity", &first)]),
        Some(1.0)
    );
    assert_idle(follower, fname);

    // Two pools of two volumes on two nodes.
    let pools: Api<ZfsPool> = ns.api();
    let names: Vec<String> = (0..2).map(|i| format!("ha{i}-{suffix}")).collect();
    for (i, name) in names.iter().enumerate() {
        let obj: ZfsPool = serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": name},
            "spec": {"nodeName": sb.nodes[i].name, "layout": "raid0", "reclaimPolicy": "Delete",
                     "volumes": {"count": 2, "type": "gp3", "sizeGiB": 1}},
        }))
        .unwrap();
        pools.create(&PostParams::default(), &obj).await.unwrap();
    }

    // Kill the leader as soon as it has created a volume (provisioning under way).
    let start = Instant::now();
    loop {
        let m = scrape(leader);
        if metric(
            &m,
            "pgml_ec2_requests_total",
            &[("action", "CreateVolume"), ("outcome", "ok")],
        )
        .unwrap_or(0.0)
            >= 1.0
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the leader made no volume:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Up to now the follower made no EC2 call, no reconcile, no Event.
    assert_idle(follower, fname);
    assert_eq!(events_by(&ns, fname).await, 0);
    let killed = Instant::now();
    leader.kill();
    let handover = wait_holder(
        &leases,
        fname,
        killed,
        LEASE_DURATION + RETRY + Duration::from_secs(5),
    )
    .await;
    println!(
        "SIGKILL handover: {:.2} s (lease duration {:?}, retry {:?})",
        handover.as_secs_f64(),
        LEASE_DURATION,
        RETRY
    );
    // The Lease expires at most LEASE_DURATION after the kill and the follower looks every
    // RETRY; the rest is for the API server and this test's own polling on a busy machine.
    assert!(
        handover <= LEASE_DURATION + RETRY + Duration::from_millis(2500),
        "handover took {handover:?}"
    );
    let after = lease(&leases).await.unwrap();
    assert_eq!(transitions(&after), transitions(&before) + 1);

    for name in &names {
        wait_for(&pools, name, "Ready", POOL_TIMEOUT, |p: &ZfsPool| {
            has_condition(p, "Ready", "True")
        })
        .await;
    }
    println!(
        "pools Ready {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    // No duplicates: exactly the pools' volumes exist, each attached once, to its node.
    for (i, name) in names.iter().enumerate() {
        let p = pools.get(name).await.unwrap();
        let uid = p.metadata.uid.as_deref().unwrap();
        let vols = volumes_tagged(sb, keys::POOL_UID, uid).await;
        assert_eq!(vols.len(), 2, "volumes of {name} in EC2: {vols:?}");
        for v in &vols {
            let att = v.attachments();
            assert_eq!(att.len(), 1, "{v:?}");
            assert_eq!(att[0].instance_id(), Some(sb.nodes[i].instance_id.as_str()));
        }
    }
    let m = scrape(follower);
    assert_eq!(metric(&m, "pgml_leader", &[("identity", fname)]), Some(1.0));
    assert!(
        metric(&m, "pgml_reconcile_total", &[("controller", "zfspool")]).unwrap_or(0.0) > 0.0,
        "{m}"
    );

    for name in &names {
        let _ = pools.delete(name, &DeleteParams::default()).await;
    }
    for name in &names {
        wait_gone(&pools, name, POOL_TIMEOUT).await;
    }
    follower.stop(Duration::from_secs(20));
    ns.cleanup().await;
}

#[tokio::test]
async fn sigterm_releases_the_lease_and_the_follower_takes_over_at_once() {
    let sb = Sandbox::get();
    let (ns, leases) = namespace("ha-term").await;
    let mut a = replica(sb, ns.name(), "op-a");
    let mut b = replica(sb, ns.name(), "op-b");
    let first = wait_leader(&leases, &["op-a", "op-b"], Duration::from_secs(60)).await;
    let (leader, follower, fname) = if first == "op-a" {
        (&mut a, &mut b, "op-b")
    } else {
        (&mut b, &mut a, "op-a")
    };
    // Wait until the leader's controllers run (its start-up is over).
    let start = Instant::now();
    while !leader.log().contains("custom resources are served") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            leader.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_idle(follower, fname);
    let before = lease(&leases).await.unwrap();
    let asked = Instant::now();
    assert!(leader.stop(Duration::from_secs(20)), "the leader exits 0");
    let stopped = asked.elapsed();
    assert!(
        leader.log().contains("released the Lease"),
        "{}",
        leader.log()
    );
    let handover = wait_holder(&leases, fname, asked, Duration::from_secs(10)).await;
    println!(
        "SIGTERM handover: {:.2} s (the leader exited after {:.2} s)",
        handover.as_secs_f64(),
        stopped.as_secs_f64()
    );
    assert!(
        handover < Duration::from_secs(3),
        "handover took {handover:?}"
    );
    let after = lease(&leases).await.unwrap();
    assert_eq!(transitions(&after), transitions(&before) + 1);
    follower.stop(Duration::from_secs(20));
    ns.cleanup().await;
}

#[tokio::test]
async fn a_leader_that_sees_another_holder_exits_non_zero() {
    let sb = Sandbox::get();
    let (ns, leases) = namespace("ha-lost").await;
    let mut op = replica(sb, ns.name(), "op-a");
    wait_leader(&leases, &["op-a"], Duration::from_secs(60)).await;
    // Another process takes the Lease (as one would after a network partition).
    let mut l = lease(&leases).await.unwrap();
    let spec = l.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(60);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    leases
        .replace(LEASE, &PostParams::default(), &l)
        .await
        .unwrap();
    let taken = Instant::now();
    assert!(
        op.wait_exit(RETRY + Duration::from_secs(5)),
        "the old leader still runs:\n{}",
        op.log()
    );
    println!(
        "the old leader exited {:.2} s after the Lease was taken",
        taken.elapsed().as_secs_f64()
    );
    let status = op.exit_status().expect("an exit status");
    assert!(!status.success(), "exit status {status}");
    assert!(op.log().contains("lost the leader Lease"), "{}", op.log());
    // Started again (same identity, as a restarted container), it follows the intruder.
    op.start();
    std::thread::sleep(RETRY * 2);
    assert!(op.running(), "{}", op.log());
    assert_idle(&op, "op-a");
    assert_eq!(holder(&leases).await.as_deref(), Some("intruder"));
    op.stop(Duration::from_secs(20));
    ns.cleanup().await;
}
