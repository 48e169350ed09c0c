//! Stopping without waiting on kube-runtime: after SIGTERM no new reconcile starts, and the
//! process waits only for the ones in flight before it releases its Lease.
//!
//! A controller's stream ends only once its queue sees the shutdown trigger, and kube-runtime
//! polls that queue late (not at all while a watch's first list is still running), so waiting
//! for the streams to end could take the whole grace period with nothing to do. The gate here
//! is what the handover waits for instead.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kube::runtime::controller::Action;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Drain {
    stopping: AtomicBool,
    running: AtomicUsize,
    idle: Notify,
}

/// Counts one reconcile in flight until dropped (finished, failed or cancelled).
struct Running<'a>(&'a Drain);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Runs `reconcile` unless stopping began; a reconcile turned away does nothing and
    /// returns "wait for a change" (the process is about to exit anyway).
    pub async fn run<F, E>(&self, reconcile: F) -> Result<Action, E>
    where
        F: Future<Output = Result<Action, E>>,
    {
        // Counted before the flag is read: either this reconcile sees `stopping`, or
        // [`Drain::idle`] sees it running. Never neither.
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(self);
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(Action::await_change());
        }
        reconcile.await
    }

    /// No reconcile starts after this.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Reconciles in flight now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Resolves when no reconcile is in flight. Meant for after [`Drain::stop`]: before it,
    /// a new one may start at any time.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a last reconcile ending in between
            // still wakes this.
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One reconcile of `controller`, through the context's gate, counted in the metrics. Wraps
/// the reconcile function where each controller is built.
pub async fn gated<F, E>(
    controller: &'static str,
    ctx: std::sync::Arc<crate::Context>,
    reconcile: F,
) -> Result<Action, E>
where
    F: Future<Output = Result<Action, E>>,
    E: crate::metrics::Reason,
{
    ctx.drain
        .run(crate::metrics::timed(controller, reconcile))
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_reconcile_in_flight_and_none_starts_after_stop() {
        let drain = Arc::new(Drain::default());
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let d = drain.clone();
        let first = tokio::spawn(async move {
            d.run(async move {
                hold.await.unwrap();
                Ok::<_, ()>(Action::requeue(Duration::from_secs(7)))
            })
            .await
        });
        while drain.running() == 0 {
            tokio::task::yield_now().await;
        }
        drain.stop();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let turned_away = drain
            .run(async move {
                r.store(true, Ordering::SeqCst);
                Ok::<_, ()>(Action::requeue(Duration::from_secs(1)))
            })
            .await;
        assert_eq!(turned_away, Ok(Action::await_change()));
        assert!(!ran.load(Ordering::SeqCst), "a reconcile ran after stop");
        // Still one in flight: idle must not resolve yet.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), drain.idle())
                .await
                .is_err()
        );
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), drain.idle())
            .await
            .expect("idle once the last reconcile ended");
        assert_eq!(
            first.await.unwrap(),
            Ok(Action::requeue(Duration::from_secs(7)))
        );
        assert_eq!(drain.running(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_reconcile_is_no_longer_counted() {
        let drain = Drain::default();
        let never = drain.run(std::future::pending::<Result<Action, ()>>());
        assert!(
            tokio::time::timeout(Duration::from_millis(10), never)
                .await
                .is_err()
        );
        drain.stop();
        tokio::time::timeout(Duration::from_secs(1), drain.idle())
            .await
            .expect("idle");
    }
}
