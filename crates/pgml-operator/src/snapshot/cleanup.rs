//! Deletion (finalizer `pgml.io/snapshots`): `Delete` deletes every AWS snapshot tagged
//! with the object's UID and every ID in status; `Retain` keeps them (tagged with the
//! namespace and name). The agent releases an active hold by itself when it sees the
//! deletion or finds the object gone.

use kube::runtime::controller::Action;
use pgml_api::EbsSnapshot;
use pgml_api::snapshot::DeletionPolicy;
use pgml_runtime::failpoint;

use super::apply::delete_tagged;
use super::observe::snap_ref;
use crate::runtime::{Context, Error};

pub async fn cleanup(snap: &EbsSnapshot, ctx: &Context) -> Result<Action, Error> {
    failpoint("snapshot.before-delete");
    let id = snap_ref(snap, &ctx.settings.installation)?;
    if snap.spec.deletion_policy == DeletionPolicy::Retain {
        tracing::info!(snapshot = %id.name, "deletion policy Retain: the AWS snapshots stay");
        return Ok(Action::await_change());
    }
    let members = snap.status.as_ref().map_or(&[][..], |s| &s.snapshots[..]);
    let ids = delete_tagged(ctx, &id, members).await?;
    tracing::info!(snapshot = %id.name, count = ids.len(), "deleted the AWS snapshots");
    Ok(Action::await_change())
}
