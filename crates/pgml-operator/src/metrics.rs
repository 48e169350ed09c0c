//! The operator's Prometheus metrics (docs/metrics.md lists them with examples): one
//! process-wide set, fed by the controllers' reconcile wrapper ([`timed`]), the ZfsPool and
//! EbsSnapshot reconciles ([`pool_seen`], [`snapshot_seen`]), the EC2 client's per-attempt
//! interceptor ([`ec2_request`]) and leader election ([`set_leader`]), and served by
//! [`pgml_runtime::http::serve`] from [`registry`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kube::runtime::controller::Action;
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, ZfsPool};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::runtime::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerResult {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerReason {
    controller: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ec2Request {
    action: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ec2Class {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolHealth {
    namespace: String,
    name: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolCapacity {
    namespace: String,
    name: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SnapshotSource {
    namespace: String,
    source_kind: &'static str,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Identity {
    identity: String,
}

type Histograms = Family<ControllerLabel, Histogram, fn() -> Histogram>;

/// Every metric of the operator.
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<ControllerResult, Counter>,
    errors: Family<ControllerReason, Counter>,
    durations: Histograms,
    ec2: Family<Ec2Request, Counter>,
    pool_health: Family<PoolHealth, Gauge>,
    pool_capacity: Family<PoolCapacity, Gauge>,
    /// The health each pool's series carries now (to remove it when it changes).
    pool_current: Mutex<HashMap<(String, String), String>>,
    snapshots: Arc<LastSuccess>,
    leader: Family<Identity, Gauge>,
    limit_wait: Family<Ec2Class, Counter<f64>>,
    limit_throttled: Family<Ec2Class, Counter>,
}

/// The newest completed snapshot per source (Unix seconds); the age is computed at each
/// scrape, so it grows between reconciles as it does in the world.
#[derive(Debug, Default)]
struct LastSuccess(Mutex<BTreeMap<SnapshotSource, i64>>);

impl Collector for LastSuccess {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut at = encoder.encode_descriptor(
            "pgml_snapshot_last_success_timestamp_seconds",
            "Completion time of the newest Completed EbsSnapshot of a source, in Unix seconds",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, ts) in &map {
            ConstGauge::new(*ts).encode(at.encode_family(labels)?)?;
        }
        let mut age = encoder.encode_descriptor(
            "pgml_snapshot_age_seconds",
            "Seconds since the newest Completed EbsSnapshot of a source completed",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, ts) in &map {
            ConstGauge::new((now - *ts as f64).max(0.0)).encode(age.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let reconciles = Family::<ControllerResult, Counter>::default();
        // prometheus-client adds `_total` to counters.
        r.register(
            "pgml_reconcile",
            "Reconciles per controller and result (ok, error, waiting)",
            reconciles.clone(),
        );
        let errors = Family::<ControllerReason, Counter>::default();
        r.register(
            "pgml_reconcile_errors",
            "Failed reconciles per controller and error class (Throttled, Transient, InvalidSpec, Permanent)",
            errors.clone(),
        );
        let durations: Histograms =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14)));
        r.register(
            "pgml_reconcile_duration_seconds",
            "How long one reconcile took, per controller",
            durations.clone(),
        );
        let ec2 = Family::<Ec2Request, Counter>::default();
        r.register(
            "pgml_ec2_requests",
            "EC2 (and EBS direct API) HTTP requests per action and outcome (ok, throttled, error), one per attempt including the SDK's retries",
            ec2.clone(),
        );
        let pool_health = Family::<PoolHealth, Gauge>::default();
        r.register(
            "pgml_zfspool_health",
            "1 for a ZfsPool's current health as its agent reports it (ONLINE, DEGRADED, FAULTED…)",
            pool_health.clone(),
        );
        let pool_capacity = Family::<PoolCapacity, Gauge>::default();
        r.register(
            "pgml_zfspool_capacity_bytes",
            "A ZfsPool's size, allocated and free bytes (kind)",
            pool_capacity.clone(),
        );
        let snapshots = Arc::new(LastSuccess::default());
        r.register_collector(Box::new(snapshots.clone()));
        let leader = Family::<Identity, Gauge>::default();
        r.register(
            "pgml_leader",
            "1 while this process holds the leader Lease and runs the controllers, else 0",
            leader.clone(),
        );
        let limit_wait = Family::<Ec2Class, Counter<f64>>::default();
        r.register(
            "pgml_ec2_rate_limit_wait_seconds",
            "Time EC2 calls waited for a token of the operator's own bucket of their class (resource, mutating, describe)",
            limit_wait.clone(),
        );
        let limit_throttled = Family::<Ec2Class, Counter>::default();
        r.register(
            "pgml_ec2_rate_limit_throttled",
            "EC2 calls throttled although the operator's bucket had a token (the account's bucket is shared, or its limits are lower than configured); each empties the local bucket",
            limit_throttled.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            reconciles,
            errors,
            durations,
            ec2,
            pool_health,
            pool_capacity,
            pool_current: Mutex::default(),
            snapshots,
            leader,
            limit_wait,
            limit_throttled,
        }
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The registry to serve.
pub fn registry() -> Arc<Registry> {
    global().registry.clone()
}

/// How a reconcile error is counted: its `reason` label, or `None` for a deletion that is
/// waiting (not a failure).
pub trait Reason {
    fn reason(&self) -> Option<&'static str>;
}

impl Reason for Error {
    fn reason(&self) -> Option<&'static str> {
        match self {
            Error::Waiting { .. } => None,
            e => Some(e.class().as_str()),
        }
    }
}

/// Runs one reconcile of `controller` and counts it: its result, its error class, its
/// duration. Wraps the reconcile function where the controller is built.
pub async fn timed<F, E>(controller: &'static str, reconcile: F) -> Result<Action, E>
where
    F: Future<Output = Result<Action, E>>,
    E: Reason,
{
    let started = Instant::now();
    let result = reconcile.await;
    record(
        global(),
        controller,
        started.elapsed().as_secs_f64(),
        &result,
    );
    result
}

fn record<E: Reason>(
    m: &Metrics,
    controller: &'static str,
    seconds: f64,
    result: &Result<Action, E>,
) {
    let outcome = match result.as_ref().map_err(Reason::reason) {
        Ok(_) => "ok",
        Err(None) => "waiting",
        Err(Some(reason)) => {
            m.errors
                .get_or_create(&ControllerReason { controller, reason })
                .inc();
            "error"
        }
    };
    m.reconciles
        .get_or_create(&ControllerResult {
            controller,
            result: outcome,
        })
        .inc();
    m.durations
        .get_or_create(&ControllerLabel { controller })
        .observe(seconds);
}

/// Counts one EC2 HTTP attempt (the SDK interceptor calls it).
pub fn ec2_request(action: &str, outcome: &'static str) {
    global()
        .ec2
        .get_or_create(&Ec2Request {
            action: action.to_string(),
            outcome,
        })
        .inc();
}

/// Counts a wait for, or a throttle despite, a token of the operator's EC2 rate limiter.
pub fn ec2_limit(class: pgml_aws::Class, event: pgml_aws::LimitEvent) {
    let label = Ec2Class {
        class: class.as_str(),
    };
    match event {
        pgml_aws::LimitEvent::Waited(d) => {
            global()
                .limit_wait
                .get_or_create(&label)
                .inc_by(d.as_secs_f64());
        }
        pgml_aws::LimitEvent::ThrottledAnyway => {
            global().limit_throttled.get_or_create(&label).inc();
        }
    }
}

/// Sets a pool's health and capacity from its status (what its agent last reported), or
/// removes its series once it is being deleted.
pub fn pool_seen(pool: &ZfsPool) {
    pool_update(global(), pool)
}

fn pool_update(m: &Metrics, pool: &ZfsPool) {
    let namespace = pool.metadata.namespace.clone().unwrap_or_default();
    let name = pool.metadata.name.clone().unwrap_or_default();
    let key = (namespace.clone(), name.clone());
    let mut current = m.pool_current.lock().unwrap_or_else(|e| e.into_inner());
    let health_of = |health: String| PoolHealth {
        namespace: namespace.clone(),
        name: name.clone(),
        health,
    };
    let capacity_of = |kind| PoolCapacity {
        namespace: namespace.clone(),
        name: name.clone(),
        kind,
    };
    let status = pool.status.as_ref();
    let deleted = pool.metadata.deletion_timestamp.is_some();
    let health = status.and_then(|s| s.health.clone()).filter(|_| !deleted);
    if current.get(&key) != health.as_ref()
        && let Some(old) = current.remove(&key)
    {
        m.pool_health.remove(&health_of(old));
    }
    if let Some(h) = health {
        m.pool_health.get_or_create(&health_of(h.clone())).set(1);
        current.insert(key, h);
    }
    let sizes = [
        ("size", status.and_then(|s| s.size_bytes)),
        ("allocated", status.and_then(|s| s.allocated_bytes)),
        ("free", status.and_then(|s| s.free_bytes)),
    ];
    for (kind, bytes) in sizes {
        match bytes.filter(|_| !deleted) {
            Some(b) => {
                m.pool_capacity.get_or_create(&capacity_of(kind)).set(b);
            }
            None => {
                m.pool_capacity.remove(&capacity_of(kind));
            }
        }
    }
}

/// Notes a Completed EbsSnapshot as its source's last success (the newest completion
/// wins; deleting old snapshots never moves it back).
pub fn snapshot_seen(snap: &EbsSnapshot) {
    snapshot_update(global(), snap)
}

fn snapshot_update(m: &Metrics, snap: &EbsSnapshot) {
    let Some(status) = snap.status.as_ref() else {
        return;
    };
    let (Some(SnapshotPhase::Completed), Some(done)) = (status.phase, &status.completion_time)
    else {
        return;
    };
    let src = &snap.spec.source;
    let (source_kind, source) = if let Some(c) = &src.cluster {
        ("cluster", c.name.clone())
    } else if let Some(p) = &src.zfs_pool {
        ("zfsPool", p.name.clone())
    } else if let Some(p) = &src.persistent_volume_claim {
        ("persistentVolumeClaim", p.name.clone())
    } else {
        return;
    };
    let labels = SnapshotSource {
        namespace: snap.metadata.namespace.clone().unwrap_or_default(),
        source_kind,
        source,
    };
    let at = done.0.as_second();
    let mut map = m.snapshots.0.lock().unwrap_or_else(|e| e.into_inner());
    let last = map.entry(labels).or_insert(at);
    *last = (*last).max(at);
}

/// pgml_leader{identity}: 1 while leading.
pub fn set_leader(identity: &str, leading: bool) {
    global()
        .leader
        .get_or_create(&Identity {
            identity: identity.to_string(),
        })
        .set(i64::from(leading));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_api::common::Time;
    use pgml_api::snapshot::{EbsSnapshotStatus, LocalRef};
    use pgml_api::zfspool::ZfsPoolStatus;

    fn text(m: &Metrics) -> String {
        pgml_runtime::http::render(&m.registry, false).0
    }

    fn pool(health: Option<&str>, size: Option<i64>) -> ZfsPool {
        let mut p: ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "p1", "namespace": "ns"},
            "spec": {"nodeName": "n", "volumes": {"count": 1, "sizeGiB": 10}}
        }))
        .expect("a ZfsPool");
        p.status = Some(ZfsPoolStatus {
            health: health.map(str::to_string),
            size_bytes: size,
            allocated_bytes: size.map(|s| s / 4),
            free_bytes: size.map(|s| s - s / 4),
            ..Default::default()
        });
        p
    }

    #[test]
    fn reconciles_are_counted_per_result_and_class() {
        let m = Metrics::new();
        record::<Error>(&m, "zfspool", 0.01, &Ok(Action::await_change()));
        record(&m, "zfspool", 0.02, &Err(Error::Incomplete("x")));
        let t = text(&m);
        assert!(
            t.contains(r#"pgml_reconcile_total{controller="zfspool",result="ok"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"pgml_reconcile_total{controller="zfspool",result="error"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"pgml_reconcile_errors_total{controller="zfspool",reason="Permanent"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"pgml_reconcile_duration_seconds_count{controller="zfspool"} 2"#),
            "{t}"
        );
    }

    #[test]
    fn a_pool_has_one_health_series_and_none_once_deleted() {
        let m = Metrics::new();
        pool_update(&m, &pool(Some("ONLINE"), Some(1000)));
        pool_update(&m, &pool(Some("DEGRADED"), Some(1000)));
        let t = text(&m);
        assert!(
            t.contains(r#"pgml_zfspool_health{namespace="ns",name="p1",health="DEGRADED"} 1"#),
            "{t}"
        );
        assert!(!t.contains(r#"health="ONLINE""#), "{t}");
        assert!(
            t.contains(r#"pgml_zfspool_capacity_bytes{namespace="ns",name="p1",kind="free"} 750"#),
            "{t}"
        );
        let mut gone = pool(Some("DEGRADED"), Some(1000));
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        pool_update(&m, &gone);
        let t = text(&m);
        assert!(!t.contains("pgml_zfspool_health{"), "{t}");
        assert!(!t.contains("pgml_zfspool_capacity_bytes{"), "{t}");
    }

    #[test]
    fn snapshot_age_is_computed_at_scrape_from_the_newest_success() {
        let m = Metrics::new();
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let snap = |done: i64, phase| {
            let mut s: EbsSnapshot = serde_json::from_value(serde_json::json!({
                "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
                "metadata": {"name": "s", "namespace": "ns"},
                "spec": {"source": {"zfsPool": {"name": "p1"}}}
            }))
            .expect("an EbsSnapshot");
            assert!(s.spec.source.zfs_pool == Some(LocalRef { name: "p1".into() }));
            s.status = Some(EbsSnapshotStatus {
                phase: Some(phase),
                completion_time: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(done).unwrap(),
                )),
                ..Default::default()
            });
            s
        };
        snapshot_update(&m, &snap(now - 100, SnapshotPhase::Completed));
        snapshot_update(&m, &snap(now - 500, SnapshotPhase::Completed));
        snapshot_update(&m, &snap(now - 10, SnapshotPhase::Failed));
        let t = text(&m);
        let labels = r#"{namespace="ns",source_kind="zfsPool",source="p1"}"#;
        assert!(
            t.contains(&format!(
                "pgml_snapshot_last_success_timestamp_seconds{labels} {}",
                now - 100
            )),
            "{t}"
        );
        let age: f64 = t
            .lines()
            .find_map(|l| l.strip_prefix(&format!("pgml_snapshot_age_seconds{labels} ")))
            .expect("an age line")
            .parse()
            .unwrap();
        assert!((100.0..110.0).contains(&age), "{age}");
    }
}
