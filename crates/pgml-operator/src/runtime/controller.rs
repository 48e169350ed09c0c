//! The one controller runner. A controller names its kind's steps ([`Reconciled`]: what to
//! do while the object lives, what to clean up when it goes, which finalizer guards the
//! outside state) and its watches; everything around them is the same for all: the watch
//! scope, the drain gate and metrics, the finalizer, logging, the Warning Event of a failed
//! reconcile, and the per-object backoff by error class.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Context;
use super::error::{self, Error};
use super::events;

/// A kind one controller reconciles: its steps, named the same in every controller.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The controller's name in logs, metrics and the drain gate.
    const CONTROLLER: &'static str;

    /// The finalizer that keeps the object while outside state of it exists (volumes,
    /// snapshots, cluster-scoped objects); `None`: nothing outlives it but what the garbage
    /// collector removes, and a deleted object is left alone.
    fn finalizer(&self) -> Option<&'static str>;

    /// Observe, plan, apply and report, for an object that lives.
    fn apply(
        self: Arc<Self>,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

    /// Remove or release the outside state of a deleted object; idempotent.
    fn cleanup(
        self: Arc<Self>,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

    /// Called once per reconcile before anything else (metrics of what exists).
    fn seen(&self) {}
}

/// The backoff key of an object: `Kind/namespace/name`.
pub fn object_key<K: Resource>(obj: &K) -> String
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

/// The objects of kind `K` the operator watches: one namespace, or all.
pub fn api<K>(ctx: &Context) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// Runs `controller` (built with its watches) over `K`'s steps until `shutdown` resolves,
/// then lets the reconciles in flight finish.
pub async fn run<K>(
    controller: Controller<K>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) where
    K: Reconciled,
    K::DynamicType: Eq + Hash + Clone,
{
    drive(
        controller,
        ctx,
        shutdown,
        K::CONTROLLER,
        reconcile::<K>,
        error_policy::<K>,
    )
    .await
}

/// The wiring under [`run`], for a controller with its own reconcile and error policy
/// (the schedules): graceful shutdown, the drain gate and metrics, debug logs.
pub async fn drive<K, R, F>(
    controller: Controller<K>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    name: &'static str,
    reconcile: R,
    error_policy: fn(Arc<K>, &Error, Arc<Context>) -> Action,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let mut reconcile = reconcile;
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            move |o, c| crate::drain::gated(name, c.clone(), reconcile(o, c)),
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(controller = name, object = %obj, "reconciled"),
                Err(e) => tracing::debug!(controller = name, error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// One reconcile: the steps inside the finalizer (when the object has one), then the
/// outcome reported in one place: a success forgets the failures, a failure is logged and
/// becomes a Warning Event (waiting during deletion is neither).
pub async fn reconcile<K: Reconciled>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    obj.seen();
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::Incomplete("namespace"))?;
    let result = match obj.finalizer() {
        Some(name) => {
            let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
            finalizer(&api, name, obj.clone(), |event| async {
                match event {
                    Finalizer::Apply(o) => o.apply(ctx.clone()).await,
                    Finalizer::Cleanup(o) => o.cleanup(ctx.clone()).await,
                }
            })
            .await
            .map_err(Error::from_finalizer)
        }
        None if obj.meta().deletion_timestamp.is_some() => Ok(Action::await_change()),
        None => obj.clone().apply(ctx.clone()).await,
    };
    let key = object_key(&*obj);
    match &result {
        Ok(_) => ctx.succeeded(&key),
        Err(e @ Error::Waiting { .. }) => {
            tracing::debug!(object = %key, what = %e, "deletion waiting");
        }
        Err(e) => {
            tracing::info!(object = %key, class = e.class().as_str(), error = %e, "reconcile did not finish");
            events::report_error(&ctx, &*obj, e).await;
        }
    }
    result
}

/// Per-object backoff with jitter, by error class; never a hot loop. Waiting is not a
/// failure: it looks again when it said it would.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    e: &Error,
    ctx: Arc<Context>,
) -> Action {
    if let Error::Waiting { retry, .. } = e {
        return Action::requeue(*retry);
    }
    let attempt = ctx.failed(&object_key(&*obj));
    let delay = error::backoff(e.class(), attempt);
    Action::requeue(error::jitter(delay, rand::random::<f64>()))
}
