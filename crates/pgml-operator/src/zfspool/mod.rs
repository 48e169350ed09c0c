//! The ZfsPool controller: the AWS side of a pool (instance, volumes, attachments,
//! modifications); the node agent does the ZFS side (see docs/design/zfspool.md).
//!
//! A reconcile reads observe → plan → apply → status:
//! - [`observe`]: the pool's Node, its EC2 instance and limits, the pool's volumes (and
//!   [`restore`]: the EbsSnapshot a restored pool is created from);
//! - [`plan`]: what to do next, a pure function of what was observed (built from the pure
//!   [`build`] and [`repair`]), returning the EC2 calls to make and the problems to
//!   report;
//! - [`apply`]: a short driver that makes those calls and records their answers;
//! - [`status`]: the controller's status and Events, computed from the facts (pure).
//!
//! Deletion ([`cleanup`]) is the same shape behind the finalizer.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod observe;
pub mod plan;
pub mod repair;
pub mod restore;
pub mod status;

#[cfg(test)]
pub(crate) mod fixtures;

use std::future::Future;
use std::sync::Arc;

use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use pgml_api::ZfsPool;

use crate::runtime::controller::{self, Reconciled};
use crate::runtime::{Context, Error};

/// The finalizer that keeps a ZfsPool until its volumes are detached (and deleted).
pub const FINALIZER: &str = "pgml.io/volumes";

impl Reconciled for ZfsPool {
    const CONTROLLER: &'static str = "zfspool";

    fn finalizer(&self) -> Option<&'static str> {
        Some(FINALIZER)
    }

    async fn apply(self: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        apply::reconcile(&self, &ctx).await
    }

    async fn cleanup(self: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        cleanup::cleanup(&self, &ctx).await
    }

    fn seen(&self) {
        crate::metrics::pool_seen(self);
    }
}

/// Runs the ZfsPool controller until `shutdown` resolves, then finishes the reconciles in
/// flight.
pub async fn run_until(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Node changes rarely matter (a node's instance does not change under it) and EC2 sends
    // no events: the periodic requeue observes both.
    let pools = Controller::new(
        controller::api::<ZfsPool>(&ctx),
        watcher::Config::default().any_semantic(),
    );
    controller::run(pools, ctx, shutdown).await;
}
