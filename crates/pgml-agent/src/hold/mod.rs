//! The node side of an EbsSnapshot: the **hold** (docs/design/ebssnapshot.md). On
//! `phase: Preparing` the agent records what it is about to do, stamps `standby.signal` in
//! the source's data directory and, for ext4 under Fsfreeze, has `pgml-freeze-guard` freeze
//! the file system; it reports `hold: Held` with a deadline. Once the capture is past (or
//! the object is deleted or gone, or the deadline passes, whoever is alive) it thaws,
//! removes the standby.signal it created and reports how the hold ended.

pub mod datadir;
pub mod decide;
pub mod guard;
pub mod mounts;
mod prepare;
pub mod record;
mod release;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use pgml_api::common::keys;
use pgml_api::snapshot::EbsSnapshot;
use pgml_runtime::Shutdown;

use self::decide::{Next, View, next};
use self::guard::Freezer;
use self::record::{End, Store, StoreError};
use self::release::end_hold;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hold cannot be made (reported as `hold: Failed`, not retried).
    #[error("{0}")]
    Hold(String),
    /// Undoing failed (thaw, removal): retried, the record is kept.
    #[error("{0}")]
    Undo(String),
    /// The deadline passed before the hold was in place.
    #[error("the deadline passed while preparing")]
    Expired,
    #[error("{0}: the API server did not answer within {API_TIMEOUT:?}")]
    Timeout(&'static str),
}

/// Every API call of the hold is bounded: an API server that does not answer must not keep
/// a hold (and the sweep, which skips a hold being worked on) waiting past its deadline.
const API_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(API_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout(what))?
        .map_err(Error::from)
}

/// What the hold watcher and the sweep share.
pub struct HoldCtx {
    pub client: Client,
    pub store: Store,
    pub freezer: Freezer,
    pub dev_dir: PathBuf,
    pub sys_block: PathBuf,
    pub mount_root: PathBuf,
    /// The mount table the sources are found in: the agent's own, or the node's
    /// (`/proc/1/mountinfo`) when it runs in a container ([`HoldCtx::through_pid1`]).
    pub mountinfo: PathBuf,
    /// How a mount point of that table is reached: `/`, or `/proc/1/root`.
    pub mount_prefix: PathBuf,
    /// How to run `zpool`/`zfs` on this node, once ZFS is detected (the pool side sets
    /// it): a ZFS source's transaction group is committed before its capture.
    pub zfs: std::sync::OnceLock<(crate::exec::Runner, pgml_zfs::Dialect)>,
    /// One step at a time per snapshot UID (the watcher and the sweep both act).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Holds this process ended: a watch event older than the end must not start another.
    finished: Mutex<HashSet<String>>,
}

impl HoldCtx {
    pub fn new(
        client: Client,
        store: Store,
        freezer: Freezer,
        dev_dir: PathBuf,
        sys_block: PathBuf,
        mount_root: PathBuf,
    ) -> HoldCtx {
        HoldCtx {
            client,
            store,
            freezer,
            dev_dir,
            sys_block,
            mount_root,
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            mount_prefix: PathBuf::from("/"),
            zfs: std::sync::OnceLock::new(),
            locks: Mutex::default(),
            finished: Mutex::default(),
        }
    }

    /// The agent in a DaemonSet container with hostPID: a PVC's mount is the kubelet's, in
    /// the node's mount namespace, which the container does not see; it is found in PID 1's
    /// mount table and reached through PID 1's root. The freeze guard joins PID 1's cgroups,
    /// so that it outlives a killed agent container.
    pub fn through_pid1(mut self) -> HoldCtx {
        self.mountinfo = PathBuf::from("/proc/1/mountinfo");
        self.mount_prefix = PathBuf::from("/proc/1/root");
        self.freezer.join_cgroups_of = Some(1);
        self
    }

    fn lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("hold locks")
            .entry(uid.to_string())
            .or_default()
            .clone()
    }

    fn is_finished(&self, uid: &str) -> bool {
        self.finished.lock().expect("finished").contains(uid)
    }

    fn api(&self, namespace: &str) -> Api<EbsSnapshot> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn view(o: &EbsSnapshot) -> View {
    let st = o.status.as_ref();
    View {
        uid: o.uid().unwrap_or_default(),
        phase: st.and_then(|s| s.phase),
        hold: st.and_then(|s| s.hold.as_ref()).map(|h| h.state),
        deleting: o.metadata.deletion_timestamp.is_some(),
    }
}

fn until(deadline_ms: i64) -> Requeue {
    let ms = (deadline_ms - now_ms()).max(0) as u64 + 100;
    Requeue::requeue(Duration::from_millis(ms))
}

/// The sweep, every second from now on, over every record (those an earlier agent left
/// first): it needs nothing but the state directory and the clock to end a hold at its
/// deadline, so it starts before the API server has answered at all.
pub fn spawn_sweeper(ctx: Arc<HoldCtx>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            sweep(&ctx).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Runs the watcher of this node's EbsSnapshots until shutdown; then the holds in place are
/// seen through to their end (at most their deadline) before returning.
pub async fn run(ctx: Arc<HoldCtx>, node: String, namespace: Option<String>, shutdown: Shutdown) {
    let api: Api<EbsSnapshot> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let selector = format!("{}={node}", keys::NODE);
    tracing::info!(selector, ?namespace, state_dir = ?ctx.store, "watching EbsSnapshots");
    let controller = Controller::new(api, watcher::Config::default().labels(&selector));
    let stop = crate::stop::trigger(shutdown.clone(), controller.store());
    let running = controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "hold controller event");
            }
        });
    crate::stop::run_until_stopped(running, shutdown, "EbsSnapshot holds").await;
    drain(&ctx).await;
}

/// Waits (sweeping) until no hold is left, or every deadline has passed and been acted on.
pub async fn drain(ctx: &HoldCtx) {
    let latest = |ctx: &HoldCtx| {
        ctx.store
            .uids()
            .unwrap_or_default()
            .iter()
            .filter_map(|u| ctx.store.read(u).ok().flatten())
            .map(|r| r.deadline_ms)
            .max()
    };
    while let Some(d) = latest(ctx) {
        if now_ms() > d + 3_000 {
            tracing::warn!("stopping with hold records left; the next agent finishes them");
            return;
        }
        tracing::info!("stopping: waiting for the holds in place to end");
        sweep(ctx).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn reconcile(obj: Arc<EbsSnapshot>, ctx: Arc<HoldCtx>) -> Result<Requeue, Error> {
    let uid = obj.uid().unwrap_or_default();
    let lock = ctx.lock(&uid);
    let _one = lock.lock().await;
    let rec = match ctx.store.read(&uid)? {
        Some(r) => Some(r),
        // Ended by this process: a watch event from before the end must not start again.
        None if ctx.is_finished(&uid) => return Ok(Requeue::await_change()),
        // Held, but the record is lost (state directory wiped): rebuilt from the status,
        // so that what the hold did is still undone in time.
        None => match record::Record::from_status(&obj) {
            Some(r) => {
                tracing::warn!(snapshot = %r.name, uid = %r.uid, "hold record missing; rebuilt from status.hold");
                ctx.store.write(&r)?;
                Some(r)
            }
            None => None,
        },
    };
    match (next(Some(&view(&obj)), rec.as_ref(), now_ms()), rec) {
        (Next::Prepare, rec) => {
            let deadline = prepare::prepare(&obj, rec, &ctx).await?;
            Ok(deadline.map_or_else(Requeue::await_change, until))
        }
        (Next::Release(end), Some(rec)) => {
            end_hold(&ctx, rec, end).await?;
            Ok(Requeue::await_change())
        }
        (Next::Wait, Some(rec)) => Ok(until(rec.deadline_ms)),
        _ => Ok(Requeue::await_change()),
    }
}

fn error_policy(obj: Arc<EbsSnapshot>, e: &Error, _ctx: Arc<HoldCtx>) -> Requeue {
    tracing::warn!(snapshot = %obj.name_any(), namespace = ?obj.namespace(), error = %e, "hold step failed");
    Requeue::requeue(Duration::from_secs(1))
}

/// Every record: released when its object is past the capture, deleted or gone, or its
/// deadline passed — the latter even when the API server does not answer.
async fn sweep(ctx: &HoldCtx) {
    let uids = match ctx.store.uids() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the state directory");
            return;
        }
    };
    for uid in uids {
        if let Err(e) = sweep_one(ctx, &uid).await {
            tracing::warn!(uid, error = %e, "hold sweep");
        }
    }
}

async fn sweep_one(ctx: &HoldCtx, uid: &str) -> Result<(), Error> {
    let lock = ctx.lock(uid);
    // Busy: the watcher is preparing or releasing it right now.
    let Ok(_one) = lock.try_lock() else {
        return Ok(());
    };
    let Some(rec) = ctx.store.read(uid)? else {
        return Ok(());
    };
    let now = now_ms();
    let api = ctx.api(&rec.namespace);
    match bounded("reading the EbsSnapshot", api.get_opt(&rec.name)).await {
        Ok(obj) => match next(obj.as_ref().map(view).as_ref(), Some(&rec), now) {
            Next::Release(end) => end_hold(ctx, rec, end).await,
            _ => Ok(()),
        },
        Err(e) if rec.expired(now) && rec.undone.is_none() => {
            tracing::warn!(uid, error = %e, "API server unreachable; the hold's deadline passed: undoing it");
            end_hold(ctx, rec, End::Expired).await
        }
        Err(e) => Err(e),
    }
}
