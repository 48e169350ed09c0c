//! The EbsSnapshot controller (see docs/design/ebssnapshot.md): the AWS side of a snapshot
//! set — resolving the source, the one CreateSnapshots call, tags, progress, retention and
//! deletion. The node agent holds the source (standby.signal, fsfreeze) around the capture.
//! A thin reconcile over dereference (`source`) → decide (`plan`, pure) → apply → status.

pub mod apply;
pub mod cleanup;
pub mod plan;
pub mod source;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use pgml_api::EbsSnapshot;

use crate::zfspool::{Context, Error, error, events, object_key};

/// The finalizer that keeps an EbsSnapshot until its AWS snapshots are deleted (or
/// retained).
pub const FINALIZER: &str = "pgml.io/snapshots";

/// Runs the EbsSnapshot controller until `shutdown` resolves.
pub async fn run_until(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let snaps: Api<EbsSnapshot> = match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // The agent's status writes (the hold) are what moves Preparing on: every change of the
    // object triggers a reconcile. AWS sends no events: the requeues poll it.
    Controller::new(snaps, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(
            |s, c| crate::drain::gated("ebssnapshot", c.clone(), reconcile(s, c)),
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(snapshot = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(snap: Arc<EbsSnapshot>, ctx: Arc<Context>) -> Result<Action, Error> {
    crate::metrics::snapshot_seen(&snap);
    let ns = snap
        .metadata
        .namespace
        .clone()
        .ok_or(Error::Incomplete("namespace"))?;
    let api: Api<EbsSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, snap.clone(), |event| async {
        match event {
            Finalizer::Apply(s) => apply::reconcile(&s, &ctx).await,
            Finalizer::Cleanup(s) => cleanup::cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer);
    let key = object_key(&*snap);
    match &result {
        Ok(_) => ctx.succeeded(&key),
        Err(e) => {
            tracing::info!(snapshot = %key, class = e.class().as_str(), error = %e, "reconcile did not finish");
            events::report_error(&ctx, &*snap, e).await;
        }
    }
    result
}

/// Per-object backoff with jitter; never a hot loop.
fn error_policy(snap: Arc<EbsSnapshot>, e: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Waiting { retry, .. } = e {
        return Action::requeue(*retry);
    }
    let attempt = ctx.failed(&object_key(&*snap));
    let delay = error::backoff(e.class(), attempt);
    Action::requeue(error::jitter(delay, rand::random::<f64>()))
}
