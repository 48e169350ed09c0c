//! The EbsSnapshot controller (see docs/design/ebssnapshot.md).

use std::future::Future;
use std::sync::Arc;

use crate::Context;

/// Runs the EbsSnapshot controller until `shutdown` resolves.
pub async fn run_until(
    _ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    shutdown.await
}
