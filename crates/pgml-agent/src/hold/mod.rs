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
pub mod record;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use pgml_api::common::keys;
use pgml_api::snapshot::{EbsSnapshot, StandbySignal};
use pgml_api::zfspool::ZfsPool;
use pgml_runtime::{Shutdown, failpoint};

use self::decide::{Next, View, next};
use self::guard::{Freezer, find_guard};
use self::record::{End, Freeze, Record, Stamp, Store, StoreError, Undone};
use crate::report::FIELD_MANAGER;

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
}

/// What the hold watcher and the sweep share.
pub struct HoldCtx {
    pub client: Client,
    pub store: Store,
    pub freezer: Freezer,
    pub dev_dir: PathBuf,
    pub sys_block: PathBuf,
    pub mount_root: PathBuf,
    pub mountinfo: PathBuf,
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
            locks: Mutex::default(),
            finished: Mutex::default(),
        }
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

/// Runs the hold side until shutdown: first every record left by an earlier agent, then the
/// watcher of this node's EbsSnapshots beside a sweep every second. At shutdown, holds in
/// place are seen through to their end (at most their deadline) before returning.
pub async fn run(ctx: Arc<HoldCtx>, node: String, namespace: Option<String>, shutdown: Shutdown) {
    sweep(&ctx).await;
    let sweeper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                sweep(&ctx).await;
            }
        })
    };
    let api: Api<EbsSnapshot> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let selector = format!("{}={node}", keys::NODE);
    tracing::info!(selector, ?namespace, state_dir = ?ctx.store, "watching EbsSnapshots");
    let stop = shutdown.clone();
    Controller::new(api, watcher::Config::default().labels(&selector))
        .graceful_shutdown_on(async move { stop.requested().await })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "hold controller event");
            }
        })
        .await;
    drain(&ctx).await;
    sweeper.abort();
}

/// Waits (sweeping) until no hold is left, or every deadline has passed and been acted on.
async fn drain(ctx: &HoldCtx) {
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
    let rec = ctx.store.read(&uid)?;
    if rec.is_none() && ctx.is_finished(&uid) {
        return Ok(Requeue::await_change());
    }
    match (next(Some(&view(&obj)), rec.as_ref(), now_ms()), rec) {
        (Next::Prepare, rec) => {
            let deadline = prepare(&obj, rec, &ctx).await?;
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
    match ctx.api(&rec.namespace).get_opt(&rec.name).await {
        Ok(obj) => match next(obj.as_ref().map(view).as_ref(), Some(&rec), now) {
            Next::Release(end) => end_hold(ctx, rec, end).await,
            _ => Ok(()),
        },
        Err(e) if rec.expired(now) && rec.undone.is_none() => {
            tracing::warn!(uid, error = %e, "API server unreachable; the hold's deadline passed: undoing it");
            end_hold(ctx, rec, End::Expired).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The source's mounts on this node.
struct Source {
    /// Where to look for the data directory (dataset mount points, or the ext4 mount).
    mounts: Vec<PathBuf>,
    /// The ext4 (non-ZFS) mount, which fsfreeze can freeze.
    freezable: Option<PathBuf>,
}

/// Starts (or, after a dead agent, carries on) the hold; returns its deadline while it is
/// in place.
async fn prepare(
    obj: &EbsSnapshot,
    rec: Option<Record>,
    ctx: &HoldCtx,
) -> Result<Option<i64>, Error> {
    let mut rec = match rec {
        Some(r) => r,
        None => {
            let r = Record::new(
                &obj.uid().unwrap_or_default(),
                &obj.namespace().unwrap_or_default(),
                &obj.name_any(),
                now_ms(),
                obj.spec.freeze_timeout_seconds,
            );
            ctx.store.write(&r)?;
            tracing::info!(snapshot = %r.name, namespace = %r.namespace, uid = %r.uid, deadline_ms = r.deadline_ms, "hold: recorded");
            r
        }
    };
    failpoint("hold.after-record");
    match hold_steps(obj, &mut rec, ctx).await {
        Ok(()) => Ok(Some(rec.deadline_ms)),
        Err(Error::Expired) => {
            end_hold(ctx, rec, End::Expired).await?;
            Ok(None)
        }
        Err(Error::Hold(msg)) => {
            tracing::warn!(snapshot = %rec.name, uid = %rec.uid, message = %msg, "hold failed");
            undo(ctx, &mut rec, End::Failed, Some(msg)).await?;
            finish(ctx, rec).await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Stamp, freeze, report Held ([`Error::Expired`] when the deadline passes meanwhile).
async fn hold_steps(obj: &EbsSnapshot, rec: &mut Record, ctx: &HoldCtx) -> Result<(), Error> {
    if rec.expired(now_ms()) {
        return Err(Error::Expired);
    }
    let st = obj.status.clone().unwrap_or_default();
    let source = locate(obj, ctx).await?;
    rec.mount_path = source.mounts.first().map(|m| m.display().to_string());
    stamp(ctx, rec, &source, obj.spec.standby_signal)?;
    failpoint("hold.after-stamp");
    if st.consistency.as_deref() == Some("Fsfreeze") {
        freeze(ctx, rec, &source).await?;
        failpoint("hold.after-freeze");
    }
    if rec.expired(now_ms()) {
        return Err(Error::Expired);
    }
    ctx.api(&rec.namespace)
        .patch_status(
            &rec.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(status::held(rec)),
        )
        .await?;
    if !rec.held {
        rec.held = true;
        ctx.store.write(rec)?;
    }
    failpoint("hold.after-held");
    tracing::info!(snapshot = %rec.name, uid = %rec.uid, mount = ?rec.mount_path, stamp = ?rec.stamp, frozen = rec.freeze.is_some(), "hold: Held");
    Ok(())
}

/// The source's mounts: a ZfsPool's dataset mount points, or the mount of the ext4 volume.
async fn locate(obj: &EbsSnapshot, ctx: &HoldCtx) -> Result<Source, Error> {
    let st = obj.status.clone().unwrap_or_default();
    if let Some(pool) = &st.zfs_pool {
        let ns = obj.namespace().unwrap_or_default();
        let Some(p) = Api::<ZfsPool>::namespaced(ctx.client.clone(), &ns)
            .get_opt(pool)
            .await?
        else {
            return Err(Error::Hold(format!("ZfsPool {pool} not found")));
        };
        let mounts: Vec<PathBuf> = p
            .spec
            .template
            .datasets
            .iter()
            .map(|d| {
                ctx.mount_root
                    .join(p.mount_point(d).trim_start_matches('/'))
            })
            .filter(|m| m.is_dir())
            .collect();
        if mounts.is_empty() {
            return Err(Error::Hold(format!(
                "no dataset of ZfsPool {pool} is mounted under {}",
                ctx.mount_root.display()
            )));
        }
        return Ok(Source {
            mounts,
            freezable: None,
        });
    }
    let Some(vol) = st.snapshots.first().and_then(|s| s.volume_id.clone()) else {
        return Err(Error::Hold(
            "status names neither a zfsPool nor a volume to hold".into(),
        ));
    };
    let link = crate::devices::link_path(&ctx.dev_dir, &vol);
    let dev = mounts::resolve_link(&link, &ctx.sys_block).map_err(Error::Hold)?;
    let info = std::fs::read_to_string(&ctx.mountinfo)
        .map_err(|e| Error::Hold(format!("{}: {e}", ctx.mountinfo.display())))?;
    let entries = mounts::parse_mountinfo(&info);
    let Some(m) = mounts::mount_of(&entries, dev.dev()) else {
        return Err(Error::Hold(format!(
            "volume {vol} ({dev:?}) is not mounted on this node"
        )));
    };
    let at = PathBuf::from(&m.mount_point);
    Ok(Source {
        mounts: vec![at.clone()],
        freezable: Some(at),
    })
}

/// standby.signal as `policy` asks: created (recorded first, so a dead agent's file is
/// known as ours), or found there already (a standby's: never removed).
fn stamp(
    ctx: &HoldCtx,
    rec: &mut Record,
    source: &Source,
    policy: StandbySignal,
) -> Result<(), Error> {
    let io = |p: &Path, e: std::io::Error| Error::Hold(format!("{}: {e}", p.display()));
    match &rec.stamp {
        Stamp::AlreadyPresent { .. } => return Ok(()),
        Stamp::Ours { path } => {
            // Carrying on: the file may not have been written before the agent died. Only
            // looked at when it is there: the file system may be frozen by now, and any
            // write (even an open for writing) would block until the thaw.
            if std::fs::symlink_metadata(path).is_err() {
                let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
                datadir::create_signal(dir).map_err(|e| io(dir, e))?;
            }
            return Ok(());
        }
        Stamp::None if policy == StandbySignal::Never => return Ok(()),
        Stamp::None => {}
    }
    let found = source
        .mounts
        .iter()
        .find_map(|m| datadir::find_data_dir(m).map(|d| (m, d)));
    let Some((mount, dir)) = found else {
        if policy == StandbySignal::Always {
            return Err(Error::Hold(format!(
                "standbySignal is Always but no PostgreSQL data directory (PG_VERSION and global/pg_control) is at or two levels below {:?}",
                source.mounts
            )));
        }
        return Ok(());
    };
    rec.mount_path = Some(mount.display().to_string());
    let path = dir.join(datadir::STANDBY_SIGNAL);
    let path_s = path.display().to_string();
    if std::fs::symlink_metadata(&path).is_ok() {
        rec.stamp = Stamp::AlreadyPresent { path: path_s };
        ctx.store.write(rec)?;
        return Ok(());
    }
    rec.stamp = Stamp::Ours { path: path_s };
    ctx.store.write(rec)?;
    datadir::create_signal(&dir).map_err(|e| io(&path, e))?;
    tracing::info!(snapshot = %rec.name, path = %path.display(), "standby.signal created");
    Ok(())
}

/// The freeze, held by a guard process that thaws at the deadline by itself.
async fn freeze(ctx: &HoldCtx, rec: &mut Record, source: &Source) -> Result<(), Error> {
    let Some(mount) = &source.freezable else {
        return Err(Error::Hold(
            "consistency Fsfreeze needs an ext4 source; ZFS has no fsfreeze".into(),
        ));
    };
    let mount = mount.display().to_string();
    let output = ctx.store.guard_output(&rec.uid)?;
    let left = Duration::from_millis((rec.deadline_ms - now_ms()).max(0) as u64);
    if let Some(f) = rec.freeze.clone() {
        if let Some(pid) = find_guard(&ctx.freezer.proc_dir, f.guard_pid, &rec.uid) {
            // A dead agent's guard, still holding the freeze.
            ctx.freezer
                .wait_frozen(&rec.uid, pid, &output, left)
                .await
                .map_err(Error::Hold)?;
            return mark_frozen(ctx, rec, Some(pid));
        }
        // Its guard is gone: make sure nothing stays frozen, then freeze again.
        ctx.freezer
            .thaw(&rec.uid, None, &f.mount, &output)
            .await
            .map_err(Error::Undo)?;
    }
    if rec.expired(now_ms()) {
        return Err(Error::Expired);
    }
    rec.freeze = Some(Freeze {
        mount: mount.clone(),
        guard_pid: None,
        frozen_at_ms: None,
    });
    ctx.store.write(rec)?;
    let pid = ctx
        .freezer
        .spawn(&rec.uid, &mount, rec.deadline_ms, &output)
        .map_err(|e| Error::Hold(format!("starting {}: {e}", ctx.freezer.guard.display())))?;
    if let Some(f) = rec.freeze.as_mut() {
        f.guard_pid = Some(pid);
    }
    ctx.store.write(rec)?;
    ctx.freezer
        .wait_frozen(&rec.uid, pid, &output, left)
        .await
        .map_err(Error::Hold)?;
    tracing::info!(snapshot = %rec.name, mount, pid, "file system frozen");
    mark_frozen(ctx, rec, Some(pid))
}

fn mark_frozen(ctx: &HoldCtx, rec: &mut Record, pid: Option<u32>) -> Result<(), Error> {
    if let Some(f) = rec.freeze.as_mut()
        && f.frozen_at_ms.is_none()
    {
        f.frozen_at_ms = Some(now_ms());
        f.guard_pid = pid.or(f.guard_pid);
        ctx.store.write(rec)?;
    }
    Ok(())
}

/// Releases a hold: undo on the node, then report and forget.
async fn end_hold(ctx: &HoldCtx, mut rec: Record, end: End) -> Result<(), Error> {
    let message = match end {
        End::Expired => Some(
            "the deadline passed before the capture was over: standby.signal removed, file system thawed"
                .to_string(),
        ),
        _ => None,
    };
    undo(ctx, &mut rec, end, message).await?;
    finish(ctx, rec).await
}

/// Thaws and removes the standby.signal we created, then records that it is done. A record
/// already undone is left as it is.
async fn undo(
    ctx: &HoldCtx,
    rec: &mut Record,
    end: End,
    message: Option<String>,
) -> Result<(), Error> {
    if rec.undone.is_some() {
        return Ok(());
    }
    failpoint("hold.before-release");
    let mut frozen_millis = None;
    if let Some(f) = &rec.freeze {
        let output = ctx.store.guard_output(&rec.uid)?;
        let reported = ctx
            .freezer
            .thaw(&rec.uid, f.guard_pid, &f.mount, &output)
            .await
            .map_err(Error::Undo)?;
        frozen_millis = reported.or_else(|| f.frozen_at_ms.map(|t| (now_ms() - t).max(0)));
    }
    failpoint("hold.after-thaw");
    let signal_removed = match &rec.stamp {
        Stamp::Ours { path } => {
            datadir::remove_signal(Path::new(path))
                .map_err(|e| Error::Undo(format!("removing {path}: {e}")))?;
            true
        }
        _ => false,
    };
    rec.undone = Some(Undone {
        end,
        at_ms: now_ms(),
        signal_removed,
        frozen_millis,
        message,
    });
    ctx.store.write(rec)?;
    tracing::info!(snapshot = %rec.name, uid = %rec.uid, ?end, signal_removed, ?frozen_millis, "hold undone");
    Ok(())
}

/// Reports how the hold ended (to the same object only) and deletes the record.
async fn finish(ctx: &HoldCtx, rec: Record) -> Result<(), Error> {
    let api = ctx.api(&rec.namespace);
    let same = api
        .get_opt(&rec.name)
        .await?
        .is_some_and(|o| o.uid().as_deref() == Some(rec.uid.as_str()));
    if same {
        api.patch_status(
            &rec.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(status::ended(&rec)),
        )
        .await?;
    }
    ctx.store.remove(&rec.uid)?;
    ctx.finished
        .lock()
        .expect("finished")
        .insert(rec.uid.clone());
    tracing::info!(snapshot = %rec.name, uid = %rec.uid, end = ?rec.undone.as_ref().map(|u| u.end), reported = same, "hold ended");
    Ok(())
}
