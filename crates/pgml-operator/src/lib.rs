//! pgml-operator's controllers, as a library so tests can run them in-process against the
//! sandbox with their own kube Client and [`pgml_aws::Ec2`].

pub mod cluster;
pub mod drain;
pub mod leader;
pub mod metrics;
pub mod permissions;
pub mod pgbackrest;
pub mod runtime;
pub mod schedule;
pub mod snapshot;
pub mod zfspool;

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;

pub use runtime::{Context, Settings};

/// Runs every controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    run_until(ctx, std::future::pending()).await
}

/// Runs the PgmlCluster, ZfsPool, EbsSnapshot and schedule controllers until `shutdown` resolves, then
/// lets each finish the reconciles in flight.
pub async fn run_until(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let stop = shutdown.boxed().shared();
    tokio::join!(
        zfspool::run_until(ctx.clone(), stop.clone()),
        snapshot::run_until(ctx.clone(), stop.clone()),
        schedule::run_until(ctx.clone(), stop.clone()),
        cluster::run_until(ctx, stop),
    );
}
