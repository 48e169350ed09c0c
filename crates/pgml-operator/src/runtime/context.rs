//! What every reconcile of every controller shares: the clients, the settings, the
//! per-object failure counts behind the backoff, timers, and the EC2 instance state the
//! process keeps (type limits, device names in flight).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;
use pgml_aws::{Ec2, InstanceTypeLimits};
use tokio::sync::Mutex;

use super::devices::DeviceReservations;
use super::error::Error;

/// Timing knobs (defaults suit production; tests shorten them): the ones every controller
/// reads, then each controller's own.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace, or all.
    pub namespace: Option<String>,
    /// This installation's name, tagged `pgml.io/installation` on every volume and snapshot
    /// (the IAM policy matches it against the role's tag).
    pub installation: String,
    /// How often to look again at objects whose outside state sends no events.
    pub requeue: Requeue,
    /// The ZfsPool controller's.
    pub pool: PoolSettings,
    /// The EbsSnapshot controller's.
    pub snapshot: SnapshotSettings,
    /// The PgmlCluster controller's.
    pub cluster: ClusterSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: None,
            installation: DEFAULT_INSTALLATION.to_string(),
            requeue: Requeue::default(),
            pool: PoolSettings::default(),
            snapshot: SnapshotSettings::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

/// The installation name when none is given (the chart gives its release's name).
pub const DEFAULT_INSTALLATION: &str = "pgml-operator";

/// When to look again: EC2 sends no events, so settled and moving objects are polled.
#[derive(Clone, Debug)]
pub struct Requeue {
    /// Look at a Ready (or blocked) object again after this long.
    pub ready: Duration,
    /// Look again this soon while volumes or snapshots are being created, attached or
    /// modified.
    pub progress: Duration,
}

impl Default for Requeue {
    fn default() -> Self {
        Requeue {
            ready: Duration::from_secs(60),
            progress: Duration::from_secs(5),
        }
    }
}

/// ZfsPool timing.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Report an attachment still `attaching` after this long.
    pub attach_timeout: Duration,
    /// During deletion, report the agent as overdue (Degraded) after this long.
    pub release_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            attach_timeout: Duration::from_secs(300),
            release_timeout: Duration::from_secs(600),
        }
    }
}

/// EbsSnapshot timing.
#[derive(Clone, Debug)]
pub struct SnapshotSettings {
    /// Fail with AgentNotResponding when the node agent has not answered a hold request
    /// (status.hold) after this long.
    pub agent_timeout: Duration,
    /// The longest a CreateSnapshots call may take when no hold bounds it.
    pub capture_timeout: Duration,
    /// How long after its creation a snapshot waits for a source that does not exist
    /// (applied in the same batch, say) before it fails with SourceNotFound.
    pub source_timeout: Duration,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            agent_timeout: Duration::from_secs(120),
            capture_timeout: Duration::from_secs(60),
            source_timeout: Duration::from_secs(300),
        }
    }
}

/// PgmlCluster settings.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The image whose `/usr/local/bin/pgml-instance` the instance Pods' init container
    /// copies in (the operator's own image).
    pub instance_image: String,
    /// How long the primary may be lost (Pod gone or down, node NotReady, PostgreSQL not
    /// running) before the operator fails over.
    pub failover_grace: Duration,
    /// Each cluster gets a NetworkPolicy `<cluster>-postgres` (`--network-policies`).
    pub network_policies: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            instance_image: default_instance_image(),
            failover_grace: Duration::from_secs(30),
            network_policies: false,
        }
    }
}

/// The operator's image, `ghcr.io/pgml/pgml-operator:<version>`.
pub fn default_instance_image() -> String {
    format!("ghcr.io/pgml/pgml-operator:{}", env!("CARGO_PKG_VERSION"))
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
    devices: std::sync::Mutex<DeviceReservations>,
    /// The gate every reconcile passes, closed at shutdown.
    pub drain: crate::drain::Drain,
}

/// How long a device name stays reserved once EC2 answered its AttachVolume: longer than a
/// view of the instance is used ([`super::devices::INSTANCE_VIEW_MAX_AGE`]), short enough that names
/// detached since are soon free again (52 names, up to 32 attachments on a Nitro instance).
const DEVICE_RESERVATION: Duration = Duration::from_secs(20);

impl Context {
    pub fn new(client: Client, ec2: Arc<dyn Ec2>, settings: Settings) -> Arc<Context> {
        Arc::new(Context {
            recorder: pgml_runtime::events::recorder(
                client.clone(),
                "pgml-operator",
                std::env::var("POD_NAME").ok(),
            ),
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

    /// [`DeviceReservations::reserve`], now.
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

    /// [`DeviceReservations::taken`].
    pub fn device_taken(&self, instance: &str, device: &str) {
        self.devices()
            .taken(std::time::Instant::now(), instance, device);
    }

    /// [`DeviceReservations::answered`].
    pub fn device_answered(&self, instance: &str, device: &str) {
        self.devices()
            .answered(std::time::Instant::now(), instance, device);
    }

    /// [`DeviceReservations::release`].
    pub fn release_device(&self, instance: &str, device: &str) {
        self.devices().release(instance, device);
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, DeviceReservations> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An instance type's EBS limits (`None`: EC2 does not know the type). They never
    /// change: EC2 is asked once per type per process.
    pub async fn instance_type_limits(
        &self,
        instance_type: &str,
    ) -> Result<Option<InstanceTypeLimits>, Error> {
        if let Some(l) = self.limits.lock().await.get(instance_type) {
            return Ok(l.clone());
        }
        let l = match self.ec2.instance_type_limits(instance_type).await {
            Ok(l) => Some(l),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        self.limits
            .lock()
            .await
            .insert(instance_type.to_string(), l.clone());
        Ok(l)
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
