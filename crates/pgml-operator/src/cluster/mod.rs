//! The PgmlCluster controller (docs/design/pgmlcluster.md): every Kubernetes object of a
//! cluster — per instance a ZfsPool, local PersistentVolume and claim (or an ext4 claim)
//! and a Pod; the Services, Secrets, ConfigMap and RBAC — and who is primary. A thin
//! reconcile: observe (`observe`) → plan (`plan`, pure, with `placement` and `roles`,
//! the objects from `build`) → apply (`apply`, a short driver writing only what differs)
//! → status (`status`).
//!
//! The instance manager in each Pod runs PostgreSQL and reports in the Pod's
//! `pgml.io/instance-status` annotation; the node agent builds the pools.

pub mod app;
pub mod apply;
pub mod archiving;
pub mod build;
pub mod compare;
pub mod config;
pub mod identity;
pub mod members;
pub mod names;
pub mod observe;
pub mod placement;
pub mod plan;
pub mod reported;
pub mod roles;
pub mod rollout;
pub mod secrets;
pub mod snapshots;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{self as kube_controller, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};

use crate::runtime::controller::{self, Reconciled, api, object_key};
use crate::runtime::{Context, Error, events};

/// How many clusters reconcile at once. Unbounded (kube-runtime's default), 1000 clusters
/// appearing together (or the first list after a restart) put a thousand reconciles' reads
/// in flight at once; the apiserver queues the operator's requests in one flow, the Lease
/// renewal behind them, and the leader lost its Lease within a minute (bench steady_state).
pub const CONCURRENCY: u16 = 16;

/// The finalizer that keeps a ZFS-backed PgmlCluster until its PersistentVolumes (which
/// the garbage collector cannot reach: they are cluster-scoped) are deleted.
pub const FINALIZER: &str = "pgml.io/persistent-volumes";

impl Reconciled for PgmlCluster {
    const CONTROLLER: &'static str = "pgmlcluster";

    /// Only a ZFS-backed cluster has outside state the garbage collector cannot reach.
    fn finalizer(&self) -> Option<&'static str> {
        self.spec.storage.zfs.is_some().then_some(FINALIZER)
    }

    async fn apply(self: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        apply::reconcile(&self, &ctx).await
    }

    async fn cleanup(self: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        cleanup(&self, &ctx).await
    }
}

/// Runs the PgmlCluster controller until `shutdown` resolves.
pub async fn run_until(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let owned = || {
        watcher::Config::default()
            .labels(pgml_api::common::keys::CLUSTER)
            .any_semantic()
    };
    let clusters = Controller::new(
        api::<PgmlCluster>(&ctx),
        watcher::Config::default().any_semantic(),
    )
    .with_config(kube_controller::Config::default().concurrency(CONCURRENCY));
    let store = clusters.store();
    let bootstrapped = clusters.store();
    // A node going NotReady may start a failover, one cordoned or tainted for disruption a
    // switchover: wake the clusters with an instance there.
    let on_node = move |node: Node| {
        let name = node.name_any();
        store
            .state()
            .iter()
            .filter(|c| {
                c.status.as_ref().is_some_and(|s| {
                    s.instances
                        .iter()
                        .any(|i| i.node.as_deref() == Some(name.as_str()))
                })
            })
            .map(|c| ObjectRef::from_obj(&**c))
            .collect::<Vec<_>>()
    };
    let clusters = clusters
        .owns(api::<Pod>(&ctx), owned())
        .owns(api::<ZfsPool>(&ctx), owned())
        .owns(api::<PersistentVolumeClaim>(&ctx), owned())
        .owns(api::<Service>(&ctx), owned())
        .owns(api::<ConfigMap>(&ctx), owned())
        .owns(api::<PodDisruptionBudget>(&ctx), owned())
        // A deleted Secret is reported at once (never made again once the cluster exists).
        .owns(api::<Secret>(&ctx), owned())
        // Seeds and backups alike: every EbsSnapshot wakes the cluster it names as source
        // (status.lastSnapshot, LastSnapshotSucceeded, seeding), and the clusters of its
        // namespace restored from it (`bootstrap.snapshot`).
        .watches(
            api::<EbsSnapshot>(&ctx),
            watcher::Config::default().any_semantic(),
            move |s: EbsSnapshot| {
                let Some(ns) = s.namespace() else {
                    return Vec::new();
                };
                let name = s.name_any();
                let source = s.spec.source.cluster.as_ref();
                let source = source.map(|c| ObjectRef::<PgmlCluster>::new(&c.name).within(&ns));
                let restored = bootstrapped.state().into_iter().filter(|c| {
                    c.namespace().as_deref() == Some(ns.as_str())
                        && c.spec.bootstrap_snapshot() == Some(name.as_str())
                });
                source
                    .into_iter()
                    .chain(restored.map(|c| ObjectRef::from_obj(&*c)))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Node>::all(ctx.client.clone()),
            watcher::Config::default(),
            on_node,
        );
    controller::run(clusters, ctx, shutdown).await;
}

/// Deletion: the namespaced objects go with the garbage collector (owner references);
/// the PersistentVolumes are deleted here.
async fn cleanup(cluster: &PgmlCluster, ctx: &Context) -> Result<Action, Error> {
    let n = apply::delete_volumes(ctx, cluster).await?;
    if n > 0 {
        events::publish(
            ctx,
            cluster,
            false,
            status::reason::VOLUMES_DELETED,
            format!("deleted {n} PersistentVolumes of the cluster"),
        )
        .await;
    }
    tracing::info!(cluster = %object_key(cluster), volumes = n, "cluster deleted; its PersistentVolumes are deleted");
    Ok(Action::await_change())
}
