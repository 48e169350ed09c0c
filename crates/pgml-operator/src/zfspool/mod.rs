//! The ZfsPool controller: the AWS side of a pool (instance, volumes, attachments,
//! modifications). A thin reconcile over dereference → validate → build → apply → status;
//! the node agent does the ZFS side (see docs/design/zfspool.md).

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod dereference;
pub mod error;
pub mod events;
pub mod repair;
pub mod restore;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client};
use pgml_api::ZfsPool;
use pgml_aws::{Ec2, InstanceTypeLimits};
use tokio::sync::Mutex;

pub use error::{Class, Error};

/// The finalizer that keeps a ZfsPool until its volumes are detached (and deleted).
pub const FINALIZER: &str = "pgml.io/volumes";
/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "pgml-operator";

/// Timing knobs (defaults suit production; tests shorten them).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace, or all.
    pub namespace: Option<String>,
    /// Look at a Ready (or blocked) pool again after this long: EC2 sends no events.
    pub ready_requeue: Duration,
    /// Look again this soon while volumes are being created, attached or modified.
    pub progress_requeue: Duration,
    /// Report an attachment still `attaching` after this long.
    pub attach_timeout: Duration,
    /// During deletion, report the agent as overdue (Degraded) after this long.
    pub release_timeout: Duration,
    /// EbsSnapshot: fail with AgentNotResponding when the node agent has not answered a
    /// hold request (status.hold) after this long.
    pub agent_timeout: Duration,
    /// EbsSnapshot: the longest a CreateSnapshots call may take when no hold bounds it.
    pub capture_timeout: Duration,
    /// EbsSnapshot: how long after its creation a snapshot waits for a source that does not
    /// exist (applied in the same batch, say) before it fails with SourceNotFound.
    pub source_timeout: Duration,
    /// PgmlCluster: the image whose `/usr/local/bin/pgml-instance` the instance Pods' init
    /// container copies in (the operator's own image).
    pub instance_image: String,
    /// PgmlCluster: how long the primary may be lost (Pod gone or down, node NotReady,
    /// PostgreSQL not running) before the operator fails over.
    pub failover_grace: Duration,
}

/// The operator's image, `ghcr.io/pgml/pgml-operator:<version>`.
pub fn default_instance_image() -> String {
    format!("ghcr.io/pgml/pgml-operator:{}", env!("CARGO_PKG_VERSION"))
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: None,
            ready_requeue: Duration::from_secs(60),
            progress_requeue: Duration::from_secs(5),
            attach_timeout: Duration::from_secs(300),
            release_timeout: Duration::from_secs(600),
            agent_timeout: Duration::from_secs(120),
            capture_timeout: Duration::from_secs(60),
            source_timeout: Duration::from_secs(300),
            instance_image: default_instance_image(),
            failover_grace: Duration::from_secs(30),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub ec2: Arc<dyn Ec2>,
    pub recorder: Recorder,
    pub settings: Settings,
    /// EBS limits per instance type (`None`: EC2 does not know the type).
    limits: Mutex<HashMap<String, Option<InstanceTypeLimits>>>,
    /// Consecutive failures per object (`Kind/namespace/name`), for the error policies'
    /// backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
    /// Since when a condition has held, per key (e.g. a cluster's primary lost): timers
    /// that need no status field (a restart starts them again, which only waits longer).
    since: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Device names asked for per instance (instance → device → (volume, when)): pools on
    /// one instance reconcile side by side from the same DescribeInstances, and without this
    /// they all ask for the same names, all but one failing "already in use".
    devices: std::sync::Mutex<build::DeviceReservations>,
    /// The gate every reconcile passes, closed at shutdown.
    pub drain: crate::drain::Drain,
}

/// How long a device name stays reserved once EC2 answered its AttachVolume: longer than a
/// view of the instance is used ([`build::INSTANCE_VIEW_MAX_AGE`]), short enough that names
/// detached since are soon free again (52 names, up to 32 attachments on a Nitro instance).
const DEVICE_RESERVATION: Duration = Duration::from_secs(20);

impl Context {
    pub fn new(client: Client, ec2: Arc<dyn Ec2>, settings: Settings) -> Arc<Context> {
        let reporter = Reporter {
            controller: "pgml-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            ec2,
            settings,
            limits: Mutex::default(),
            failures: std::sync::Mutex::default(),
            since: std::sync::Mutex::default(),
            devices: std::sync::Mutex::default(),
            drain: crate::drain::Drain::default(),
        })
    }

    /// [`build::DeviceReservations::reserve`], now.
    pub fn reserve_device(
        &self,
        instance: &str,
        volume: &str,
        index: usize,
        used: &std::collections::BTreeSet<String>,
    ) -> Option<String> {
        self.devices().reserve(
            std::time::Instant::now(),
            DEVICE_RESERVATION,
            instance,
            volume,
            index,
            used,
        )
    }

    /// [`build::DeviceReservations::taken`].
    pub fn device_taken(&self, instance: &str, device: &str) {
        self.devices()
            .taken(std::time::Instant::now(), instance, device);
    }

    /// [`build::DeviceReservations::answered`].
    pub fn device_answered(&self, instance: &str, device: &str) {
        self.devices()
            .answered(std::time::Instant::now(), instance, device);
    }

    /// [`build::DeviceReservations::release`].
    pub fn release_device(&self, instance: &str, device: &str) {
        self.devices().release(instance, device);
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, build::DeviceReservations> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the failures of `key` (a reconcile succeeded).
    pub fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }

    /// How long `key` has held: starts its timer when `holds` and none runs, stops it when
    /// not (`None`).
    pub fn held_for(&self, key: &str, holds: bool) -> Option<Duration> {
        let mut m = self.since.lock().unwrap_or_else(|e| e.into_inner());
        if !holds {
            m.remove(key);
            return None;
        }
        Some(
            m.entry(key.to_string())
                .or_insert_with(std::time::Instant::now)
                .elapsed(),
        )
    }

    /// Counts one more failure of `key`; returns how many came before it.
    pub fn failed(&self, key: &str) -> u32 {
        let mut f = self.failures();
        let n = f.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n - 1
    }
}

/// The backoff key of an object: `Kind/namespace/name`.
pub fn object_key<K: kube::Resource>(obj: &K) -> String
where
    K::DynamicType: Default,
{
    let dt = K::DynamicType::default();
    format!(
        "{}/{}/{}",
        K::kind(&dt),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Runs the ZfsPool controller until `shutdown` resolves, then finishes the reconciles in
/// flight.
pub async fn run_until(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let pools: Api<ZfsPool> = match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // Node changes rarely matter (a node's instance does not change under it) and EC2 sends
    // no events: the periodic requeue observes both.
    Controller::new(pools, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(
            |p, c| crate::drain::gated("zfspool", c.clone(), reconcile(p, c)),
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(pool = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(pool: Arc<ZfsPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    crate::metrics::pool_seen(&pool);
    let ns = pool
        .metadata
        .namespace
        .clone()
        .ok_or(Error::Incomplete("namespace"))?;
    let api: Api<ZfsPool> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, pool.clone(), |event| async {
        match event {
            Finalizer::Apply(p) => apply::reconcile(&p, &ctx).await,
            Finalizer::Cleanup(p) => cleanup::cleanup(&p, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer);
    match &result {
        Ok(_) => ctx.succeeded(&object_key(&*pool)),
        Err(e @ Error::Waiting { .. }) => {
            tracing::debug!(pool = %ObjectRef::from_obj(&*pool), what = %e, "deletion waiting");
        }
        Err(e) => {
            tracing::info!(pool = %ObjectRef::from_obj(&*pool), class = e.class().as_str(), error = %e, "reconcile did not finish");
            events::report_error(&ctx, &*pool, e).await;
        }
    }
    result
}

/// Per-object backoff with jitter; never a hot loop.
fn error_policy(pool: Arc<ZfsPool>, e: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Waiting { retry, .. } = e {
        return Action::requeue(*retry);
    }
    let attempt = ctx.failed(&object_key(&*pool));
    let delay = error::backoff(e.class(), attempt);
    Action::requeue(error::jitter(delay, rand::random::<f64>()))
}
