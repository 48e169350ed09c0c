//! Scheduled EbsSnapshots and their retention, for ZfsPools and PgmlClusters.

use std::future::Future;
use std::sync::Arc;

use crate::Context;

/// Runs the snapshot scheduler until `shutdown` resolves.
pub async fn run_until(
    _ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    shutdown.await
}
