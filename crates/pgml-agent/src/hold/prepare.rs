//! Making the hold: record, find the source and its data directory, stamp, freeze, report
//! Held — each step recorded first and safe to repeat, so a restarted agent carries on
//! where a dead one stopped, with the same deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use pgml_api::snapshot::{EbsSnapshot, StandbySignal};
use pgml_api::zfspool::ZfsPool;
use pgml_runtime::failpoint;

use super::guard::find_guard;
use super::record::{End, Freeze, Record, Stamp};
use super::release::{end_hold, finish, undo};
use super::{Error, HoldCtx, bounded, datadir, mounts, now_ms, status};
use crate::report::FIELD_MANAGER;

/// The source's mounts on this node.
struct Source {
    /// Where to look for the data directory (dataset mount points, or the ext4 mount).
    mounts: Vec<PathBuf>,
    /// The ext4 (non-ZFS) mount, which fsfreeze can freeze.
    freezable: Option<PathBuf>,
    /// The ZFS pool (its name on the node), whose transaction group is committed before
    /// the capture.
    zpool: Option<String>,
}

/// Starts (or, after a dead agent, carries on) the hold; returns its deadline while it is
/// in place.
pub(super) async fn prepare(
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
    if rec.mount_path.is_none() {
        rec.mount_path = source.mounts.first().map(|m| m.display().to_string());
    }
    stamp(ctx, rec, &source, obj.spec.standby_signal)?;
    failpoint("hold.after-stamp");
    if let Some(pool) = &source.zpool {
        sync_pool(ctx, rec, pool).await;
    }
    if st.consistency.as_deref() == Some("Fsfreeze") {
        freeze(ctx, rec, &source).await?;
        failpoint("hold.after-freeze");
    }
    if rec.expired(now_ms()) {
        return Err(Error::Expired);
    }
    let api = ctx.api(&rec.namespace);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let body = Patch::Apply(status::held(rec));
    bounded(
        "applying hold Held",
        api.patch_status(&rec.name, &apply, &body),
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
        let pools = Api::<ZfsPool>::namespaced(ctx.client.clone(), &ns);
        let Some(p) = bounded("reading the ZfsPool", pools.get_opt(pool)).await? else {
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
            zpool: Some(p.pool_name()),
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
    let at = ctx.mount_prefix.join(m.mount_point.trim_start_matches('/'));
    Ok(Source {
        mounts: vec![at.clone()],
        freezable: Some(at),
        zpool: None,
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

/// Commits the pool's open transaction group (`pgml_zfs::command::sync_pool`): the
/// capture then holds standby.signal and everything written before it in the pool's
/// on-disk state, with no intent log to replay on the copy. Not a freeze: writes go on.
/// A failure is logged and the hold goes on (on OpenZFS the intent log still makes the
/// capture crash-consistent); so is ZFS not detected yet.
async fn sync_pool(ctx: &HoldCtx, rec: &Record, pool: &str) {
    let Some((runner, dialect)) = ctx.zfs.get() else {
        tracing::warn!(snapshot = %rec.name, pool, "ZFS not detected yet: the pool's transaction group is not committed before the capture");
        return;
    };
    let started = std::time::Instant::now();
    let cmd = pgml_zfs::PoolName::new(pool)
        .and_then(|p| pgml_zfs::command::sync_pool(*dialect, &p, &rec.uid));
    let result = match cmd {
        Ok(c) => runner.ok(&c).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            tracing::info!(snapshot = %rec.name, pool, millis = started.elapsed().as_millis() as u64, "pool transaction group committed before the capture")
        }
        Err(e) => {
            tracing::warn!(snapshot = %rec.name, pool, error = %e, "committing the pool's transaction group failed; the capture relies on the intent log")
        }
    }
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
