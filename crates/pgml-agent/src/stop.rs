//! Stopping a kube `Controller` on SIGTERM without hanging.
//!
//! kube-runtime's applier starts reconciling only once its store has been filled by the
//! first list; a graceful-shutdown trigger that fires before that leaves it waiting for
//! ever (seen: a SIGTERM right after start-up never ended the agent). So the trigger waits
//! for the store first (briefly: an API server that does not answer must not hold the stop
//! back), and a controller that still has not ended well after the stop is dropped.

use std::hash::Hash;
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::Store;
use pgml_runtime::Shutdown;

/// How long the trigger waits for the store once a stop is asked for.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// Longest a controller may take to wind down after the stop (in-flight reconciles; a hold
/// being prepared is bounded by its deadline, at most 60 s).
const WIND_DOWN: Duration = Duration::from_secs(75);

/// The graceful-shutdown trigger for a controller whose store is `store`.
pub async fn trigger<K>(shutdown: Shutdown, store: Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    shutdown.requested().await;
    let _ = tokio::time::timeout(STORE_WAIT, store.wait_until_ready()).await;
}

/// Runs a controller's future until it ends, or until [`WIND_DOWN`] after the stop.
pub async fn run_until_stopped(
    controller: impl Future<Output = ()>,
    shutdown: Shutdown,
    what: &str,
) {
    tokio::select! {
        () = controller => {}
        () = async {
            shutdown.requested().await;
            tokio::time::sleep(WIND_DOWN).await;
        } => {
            tracing::warn!(controller = what, "did not stop within {WIND_DOWN:?}; leaving it");
        }
    }
}
