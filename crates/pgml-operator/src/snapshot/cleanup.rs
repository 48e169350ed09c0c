//! Deletion (finalizer `pgml.io/snapshots`): `Delete` deletes every AWS snapshot tagged
//! with the object's UID and every ID in status; `Retain` keeps them (tagged with the
//! namespace and name). The agent releases an active hold by itself when it sees the
//! deletion or finds the object gone.

use kube::runtime::controller::Action;
use pgml_api::EbsSnapshot;
use pgml_api::snapshot::DeletionPolicy;
use pgml_runtime::failpoint;

use super::observe::snap_ref;
use super::plan;
use crate::runtime::{Context, Error};

pub async fn cleanup(snap: &EbsSnapshot, ctx: &Context) -> Result<Action, Error> {
    failpoint("snapshot.before-delete");
    let id = snap_ref(snap)?;
    if snap.spec.deletion_policy == DeletionPolicy::Retain {
        tracing::info!(snapshot = %id.name, "deletion policy Retain: the AWS snapshots stay");
        return Ok(Action::await_change());
    }
    let found = ctx.ec2.find_snapshots(&plan::uid_filter(&id.uid)).await?;
    let mut ids: Vec<String> = found.into_iter().map(|s| s.snapshot_id).collect();
    ids.extend(
        snap.status
            .iter()
            .flat_map(|s| s.snapshots.iter())
            .filter_map(|m| m.snapshot_id.clone()),
    );
    ids.sort();
    ids.dedup();
    for s in &ids {
        ctx.ec2.delete_snapshot(s).await?;
    }
    tracing::info!(snapshot = %id.name, count = ids.len(), "deleted the AWS snapshots");
    Ok(Action::await_change())
}
