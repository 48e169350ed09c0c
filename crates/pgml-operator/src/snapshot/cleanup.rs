//! Deletion (finalizer `pgml.io/snapshots`): `Delete` deletes every AWS snapshot tagged
//! with the object's UID and every ID in status, each only when its own tags say it is the
//! object's and this installation's; one without an installation tag holds the finalizer
//! until an administrator adopts it. `Retain` keeps them (tagged with the namespace and
//! name). The agent releases an active hold by itself when it sees the
//! deletion or finds the object gone.

use kube::runtime::controller::Action;
use pgml_api::EbsSnapshot;
use pgml_api::snapshot::DeletionPolicy;
use pgml_runtime::failpoint;

use super::apply::delete_ours;
use super::observe::snap_ref;
use super::plan;
use crate::runtime::{Context, Error};

pub async fn cleanup(snap: &EbsSnapshot, ctx: &Context) -> Result<Action, Error> {
    failpoint("snapshot.before-delete");
    let id = snap_ref(snap, &ctx.settings.installation)?;
    if snap.spec.deletion_policy == DeletionPolicy::Retain {
        tracing::info!(snapshot = %id.name, "deletion policy Retain: the AWS snapshots stay");
        return Ok(Action::await_change());
    }
    let members = snap.status.as_ref().map_or(&[][..], |s| &s.snapshots[..]);
    let deleted = delete_ours(ctx, snap, &id, members).await?;
    tracing::info!(snapshot = %id.name, count = deleted.ids.len(), "deleted the AWS snapshots");
    if !deleted.unadopted.is_empty() {
        let why = plan::waiting_for_adoption(&deleted.unadopted, &id.installation);
        return Err(Error::waiting(why, ctx.settings.requeue.ready));
    }
    Ok(Action::await_change())
}
