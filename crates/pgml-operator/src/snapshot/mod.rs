//! The EbsSnapshot controller (see docs/design/ebssnapshot.md): the AWS side of a snapshot
//! set — resolving the source, the one CreateSnapshots call, tags, progress, retention and
//! deletion. The node agent holds the source (standby.signal, fsfreeze) around the capture.
//! A thin reconcile over `observe` (the object and its source) → `plan` (pure decisions) →
//! `apply` (a short driver per phase) → `status`; `cleanup` on deletion.

pub mod apply;
pub mod cleanup;
pub mod observe;
pub mod plan;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use pgml_api::EbsSnapshot;

use crate::runtime::controller::{self, Reconciled};
use crate::runtime::{Context, Error};

/// The finalizer that keeps an EbsSnapshot until its AWS snapshots are deleted (or
/// retained).
pub const FINALIZER: &str = "pgml.io/snapshots";

impl Reconciled for EbsSnapshot {
    const CONTROLLER: &'static str = "ebssnapshot";

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
        crate::metrics::snapshot_seen(self);
    }
}

/// Runs the EbsSnapshot controller until `shutdown` resolves.
pub async fn run_until(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // The agent's status writes (the hold) are what moves Preparing on: every change of the
    // object triggers a reconcile. AWS sends no events: the requeues poll it.
    let snaps = Controller::new(
        controller::api::<EbsSnapshot>(&ctx),
        watcher::Config::default().any_semantic(),
    );
    controller::run(snaps, ctx, shutdown).await;
}
