//! Undoing the hold: thaw, remove the standby.signal we created, record that it is done,
//! then report how the hold ended and forget it.

use std::path::Path;

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use pgml_runtime::failpoint;

use super::record::{End, Record, Stamp, Undone};
use super::{Error, HoldCtx, bounded, datadir, now_ms, status};
use crate::report::FIELD_MANAGER;

/// Releases a hold: undo on the node, then report and forget.
pub(super) async fn end_hold(ctx: &HoldCtx, mut rec: Record, end: End) -> Result<(), Error> {
    let message = match end {
        End::Expired => {
            Some("the deadline passed before the capture was over: the hold was undone".into())
        }
        _ => None,
    };
    undo(ctx, &mut rec, end, message).await?;
    finish(ctx, rec).await
}

/// Thaws and removes the standby.signal we created, then records that it is done. A record
/// already undone is left as it is.
pub(super) async fn undo(
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
pub(super) async fn finish(ctx: &HoldCtx, rec: Record) -> Result<(), Error> {
    let api = ctx.api(&rec.namespace);
    let same = bounded("reading the EbsSnapshot", api.get_opt(&rec.name))
        .await?
        .is_some_and(|o| o.uid().as_deref() == Some(rec.uid.as_str()));
    if same {
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let body = Patch::Apply(status::ended(&rec));
        bounded(
            "applying the hold's end",
            api.patch_status(&rec.name, &apply, &body),
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
