//! The phase driver: resolve the source (Pending), wait for the agent's hold (Preparing),
//! make the one CreateSnapshots call (Capturing), follow AWS until the set is completed
//! (Finalizing). Each step records what it did in status before the next one starts, so a
//! process killed anywhere picks up from the status and AWS (see docs/design/ebssnapshot.md).
//! What to do is the plan's (pure) to say; here it is only done, in order.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use pgml_api::EbsSnapshot;
use pgml_api::common::Time;
use pgml_api::snapshot::{EbsSnapshotStatus, MemberSnapshot, SnapshotPhase as P};
use pgml_runtime::failpoint;

use super::observe::{self, snap_ref};
use super::plan::{
    self, Answer, Captured, Enter, Failure, Follow, HoldStep, Resume, SnapRef, Unready,
};
use super::status::{self, commit, label_node, owned_view, secs, set_phase};
use crate::runtime::conditions::{Stamp, now};
use crate::runtime::{Context, Error, events};

/// One reconcile's view: the object, what it observed, what it has written so far.
struct Run<'a> {
    ctx: &'a Context,
    snap: &'a EbsSnapshot,
    id: SnapRef,
    observed: EbsSnapshotStatus,
    written: EbsSnapshotStatus,
    now: Time,
}

impl Run<'_> {
    fn stamp(&self) -> Stamp<'_> {
        Stamp {
            generation: self.snap.metadata.generation,
            now: &self.now,
        }
    }

    /// The status entering `e`, built on what was written so far.
    fn enter(&self, e: &Enter) -> EbsSnapshotStatus {
        let mut s = owned_view(&self.written);
        set_phase(
            &mut s,
            &self.observed,
            e.phase,
            e.why,
            &e.message,
            self.stamp(),
        );
        s
    }

    async fn commit(&mut self, new: EbsSnapshotStatus) -> Result<(), Error> {
        commit(self.ctx, self.snap, &self.written, &new).await?;
        self.written = new;
        Ok(())
    }

    /// Records the failure, then (when it says so) deletes every snapshot the object made.
    async fn fail(&mut self, f: Failure) -> Result<Action, Error> {
        let s = self.enter(&Enter::new(P::Failed, f.why, f.message.clone()));
        tracing::warn!(snapshot = %self.id.name, reason = f.why, message = %f.message, "snapshot failed");
        self.commit(s).await?;
        if f.delete {
            let mut s = owned_view(&self.written);
            let deleted = delete_ours(self.ctx, self.snap, &self.id, &s.snapshots).await?;
            plan::mark_deleted(&mut s.snapshots, &deleted.ids);
            self.commit(s).await?;
        }
        Ok(Action::requeue(self.ctx.settings.requeue.ready))
    }

    /// The snapshots tagged with the object's UID.
    async fn find(&self) -> Result<Vec<pgml_aws::Snapshot>, Error> {
        let filter = plan::uid_filter(&self.id.uid);
        Ok(self.ctx.ec2.find_snapshots(&filter).await?)
    }

    /// Those of `found` whose tags say they are ours; a Warning for each left alone.
    async fn ours(&self, found: Vec<pgml_aws::Snapshot>) -> Vec<pgml_aws::Snapshot> {
        let owned = plan::sort_owned(found, &self.id);
        report_left_alone(self.ctx, self.snap, &owned.left_alone).await;
        owned.ours
    }

    async fn delete(&self, ids: &[String]) -> Result<(), Error> {
        for s in ids {
            self.ctx.ec2.delete_snapshot(s).await?;
        }
        Ok(())
    }
}

/// A Warning Event for each snapshot the ownership check left alone.
async fn report_left_alone(
    ctx: &Context,
    snap: &EbsSnapshot,
    left_alone: &[(&'static str, String)],
) {
    for (why, note) in left_alone {
        tracing::warn!(snapshot = ?snap.metadata.name, %note, "snapshot left alone");
        events::publish(ctx, snap, true, why, note.clone()).await;
    }
}

/// What [`delete_ours`] did.
pub(super) struct Deleted {
    pub ids: Vec<String>,
    /// The object's snapshots without an installation tag, left alone until adopted.
    pub unadopted: Vec<String>,
}

/// Deletes every snapshot of the object: those tagged with its UID and those status names
/// (looked up by ID), each only when its own tags say it is ours.
pub(super) async fn delete_ours(
    ctx: &Context,
    snap: &EbsSnapshot,
    id: &SnapRef,
    members: &[MemberSnapshot],
) -> Result<Deleted, Error> {
    let mut found = ctx.ec2.find_snapshots(&plan::uid_filter(&id.uid)).await?;
    let unlisted = plan::unlisted(&found, members);
    if !unlisted.is_empty() {
        found.extend(ctx.ec2.describe_snapshots(&unlisted).await?);
    }
    let owned = plan::sort_owned(found, id);
    report_left_alone(ctx, snap, &owned.left_alone).await;
    let ids = plan::to_delete(&owned.ours);
    for s in &ids {
        ctx.ec2.delete_snapshot(s).await?;
        tracing::info!(snapshot = %id.name, aws = %s, "deleted EBS snapshot");
    }
    Ok(Deleted {
        ids,
        unadopted: owned.unadopted,
    })
}

pub async fn reconcile(snap: &EbsSnapshot, ctx: &Context) -> Result<Action, Error> {
    let observed = snap.status.clone().unwrap_or_default();
    let mut run = Run {
        ctx,
        snap,
        id: snap_ref(snap, &ctx.settings.installation)?,
        written: observed.clone(),
        observed,
        now: now(),
    };
    match run.observed.phase.unwrap_or(P::Pending) {
        P::Pending => pending(&mut run).await,
        P::Preparing => preparing(&mut run).await,
        P::Capturing => recapture(&mut run).await,
        P::Finalizing => finalizing(&mut run).await,
        P::Completed => settled(&mut run).await,
        P::Failed => failed(&mut run).await,
    }
}

/// Resolves the source, labels the object with its node and records the plan.
async fn pending(run: &mut Run<'_>) -> Result<Action, Error> {
    failpoint("snapshot.after-finalizer");
    let src = match observe::resolve(run.ctx, run.snap).await? {
        Ok(src) => src,
        Err(u) => {
            let created = run.snap.metadata.creation_timestamp.as_ref().map(secs);
            let timeout = run.ctx.settings.snapshot.source_timeout.as_secs() as i64;
            return match plan::unready(&u, created, secs(&run.now), timeout) {
                Unready::Fail(f) => run.fail(f).await,
                Unready::Wait(e) => {
                    let mut s = run.enter(&e);
                    plan::pending_source(&mut s, &run.snap.spec);
                    run.commit(s).await?;
                    Ok(Action::requeue(run.ctx.settings.requeue.progress * 2))
                }
            };
        }
    };
    label_node(run.ctx, run.snap, &src.node_name).await?;
    let start = plan::start(&run.snap.spec, &src);
    let mut s = run.enter(&start.enter);
    plan::record_source(&mut s, &run.snap.spec, &src);
    run.commit(s).await?;
    failpoint("snapshot.after-preparing");
    if start.hold {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    capture(run, None).await
}

/// Waits for the agent's hold; captures once it is Held with time left.
async fn preparing(run: &mut Run<'_>) -> Result<Action, Error> {
    let now = secs(&run.now);
    let since = status::progressing_since(&run.observed).unwrap_or(now);
    let step = plan::hold_step(
        run.observed.hold.as_ref(),
        plan::hold_deadline(&run.observed),
        now,
        since,
        run.ctx.settings.snapshot.agent_timeout.as_secs() as i64,
    );
    match step {
        HoldStep::Wait(s) => Ok(Action::requeue(Duration::from_secs(s as u64))),
        HoldStep::Fail(why, message) => run.fail(Failure::nothing_taken(why, message)).await,
        HoldStep::Capture { deadline } => {
            let e = Enter::new(
                P::Capturing,
                plan::reason::CAPTURING,
                plan::held_message(deadline),
            );
            run.commit(run.enter(&e)).await?;
            capture(run, Some(deadline)).await
        }
    }
}

/// Restarted in Capturing: deletes what the plan says must go, then adopts the set found,
/// calls again, or fails.
async fn recapture(run: &mut Run<'_>) -> Result<Action, Error> {
    let found = run.find().await?;
    let found = run.ours(found).await;
    let r = plan::restart(
        &found,
        &run.observed.snapshots,
        plan::hold_planned(&run.snap.spec, &run.observed),
        plan::hold_deadline(&run.observed),
        secs(&run.now),
    );
    match &r.next {
        Resume::Adopt { .. } => {
            tracing::info!(snapshot = %run.id.name, "adopting the set a previous process captured");
        }
        _ if !r.delete.is_empty() => {
            tracing::warn!(snapshot = %run.id.name, ids = ?r.delete, "deleting a partial or late set");
        }
        _ => {}
    }
    run.delete(&r.delete).await?;
    match r.next {
        Resume::Adopt { members, at } => captured(run, members, at.and_then(status::time)).await,
        Resume::Capture { deadline } => capture(run, deadline).await,
        Resume::Fail(f) => run.fail(f).await,
    }
}

/// The one CreateSnapshots call, bounded by the hold's deadline.
async fn capture(run: &mut Run<'_>, deadline: Option<i64>) -> Result<Action, Error> {
    failpoint("snapshot.before-capture");
    let ec2 = &run.ctx.ec2;
    let instance_id = run.written.instance_id.clone().unwrap_or_default();
    let attached = ec2.attached_volumes(&instance_id).await?;
    let root = ec2.describe_instance(&instance_id).await?;
    let root = root.and_then(|i| i.root_device_name);
    let request = plan::capture_request(
        &run.id,
        &run.written,
        &run.snap.spec.tags,
        &attached,
        root.as_deref(),
    );
    let req = match request {
        Ok(req) => req,
        Err(f) => return run.fail(f).await,
    };
    let started = now();
    let started_ms = Timestamp::now().as_millisecond();
    let capture_timeout = run.ctx.settings.snapshot.capture_timeout;
    let bound = plan::capture_bound(deadline, started_ms, capture_timeout);
    let answer = tokio::time::timeout(bound, ec2.create_snapshot_set(&req)).await;
    failpoint("snapshot.after-capture");
    let timing = plan::Timing {
        deadline,
        bound,
        started_ms,
        returned_ms: Timestamp::now().as_millisecond(),
    };
    let answer = match answer {
        Err(_) => Answer::TimedOut,
        Ok(Err(e)) => Answer::Failed(e),
        Ok(Ok(snaps)) => {
            tracing::info!(snapshot = %run.id.name, count = snaps.len(), late = timing.late(), "CreateSnapshots answered");
            Answer::Snapshots(snaps)
        }
    };
    match plan::judge_capture(answer, &timing, &run.written.snapshots) {
        Captured::Retry(e) => Err(e.into()),
        Captured::Fail(f) => run.fail(f).await,
        Captured::Set { members, extra } => {
            run.delete(&extra).await?;
            captured(run, members, Some(started)).await
        }
    }
}

/// Tags each member's snapshot and records the set: Finalizing.
async fn captured(
    run: &mut Run<'_>,
    set: Vec<MemberSnapshot>,
    at: Option<Time>,
) -> Result<Action, Error> {
    for m in &set {
        if let Some(id) = &m.snapshot_id {
            let tags = plan::member_tags(&run.id, m.member_index);
            run.ctx
                .ec2
                .create_tags(std::slice::from_ref(id), &tags)
                .await?;
        }
    }
    let e = Enter::new(
        P::Finalizing,
        plan::reason::FINALIZING,
        plan::captured_message(&set),
    );
    let mut s = run.enter(&e);
    s.snapshots = set;
    s.capture_time = at.or(s.capture_time);
    run.commit(s).await?;
    failpoint("snapshot.after-captured");
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Follows the set in AWS until every snapshot is completed (or one fails).
async fn finalizing(run: &mut Run<'_>) -> Result<Action, Error> {
    let ids = plan::snapshot_ids(&run.observed.snapshots);
    let described = run.ctx.ec2.describe_snapshots(&ids).await?;
    let mut members = owned_view(&run.written).snapshots;
    match plan::follow(&mut members, &described, run.written.source.as_deref()) {
        Follow::Fail(f) => {
            run.written.snapshots = members;
            run.fail(f).await
        }
        Follow::Wait(message) => {
            let mut s = run.enter(&Enter::new(
                P::Finalizing,
                plan::reason::FINALIZING,
                message,
            ));
            s.snapshots = members;
            run.commit(s).await?;
            Ok(Action::requeue(run.ctx.settings.requeue.progress))
        }
        Follow::Complete { message, size_gib } => {
            let mut s = run.enter(&Enter::new(P::Completed, plan::reason::COMPLETED, message));
            if let Some((prev, bytes)) = changed_since_previous(run, &members).await? {
                s.previous_snapshot = Some(prev);
                s.changed_bytes = Some(bytes);
            }
            s.snapshots = members;
            s.size_gib = Some(size_gib);
            s.completion_time = Some(run.now.clone());
            run.commit(s).await?;
            sweep(run).await?;
            Ok(Action::requeue(run.ctx.settings.requeue.ready))
        }
    }
}

/// The bytes changed since the previous Completed set of the same source (EBS direct API
/// ListChangedBlocks per member), where the API answers; `None` otherwise. Best effort: a
/// refusal never holds the set back.
async fn changed_since_previous(
    run: &Run<'_>,
    members: &[MemberSnapshot],
) -> Result<Option<(String, i64)>, Error> {
    let api: kube::Api<EbsSnapshot> =
        kube::Api::namespaced(run.ctx.client.clone(), &run.id.namespace);
    let others = api.list(&Default::default()).await?.items;
    let Some((prev, pairs)) = plan::previous_set(
        &others,
        &run.id.name,
        run.written.source.as_deref(),
        run.written.capture_time.as_ref().map(secs),
        members,
    ) else {
        return Ok(None);
    };
    let mut total = 0;
    for (first, second) in &pairs {
        match run.ctx.ec2.changed_bytes(first, second).await {
            Ok(b) => total += b,
            Err(e) => {
                tracing::info!(snapshot = %run.id.name, error = %e, "ListChangedBlocks does not answer; changedBytes left unset");
                return Ok(None);
            }
        }
    }
    Ok(Some((prev, total)))
}

/// Deletes the snapshots tagged with the UID that status does not name (and whose tags
/// say they are ours).
async fn sweep(run: &Run<'_>) -> Result<(), Error> {
    let found = run.find().await?;
    let strays = plan::strays(&found, &run.written.snapshots);
    let strays = found
        .into_iter()
        .filter(|s| strays.contains(&s.snapshot_id))
        .collect();
    for s in run.ours(strays).await {
        tracing::warn!(snapshot = %run.id.name, aws = %s.snapshot_id, "deleting a stray snapshot of this object");
        run.ctx.ec2.delete_snapshot(&s.snapshot_id).await?;
    }
    Ok(())
}

/// Strays appear only from calls a dead process left in flight (seconds), so a settled
/// object is swept rarely: a tag-filtered DescribeSnapshots per object is not free.
fn settled_requeue(run: &Run<'_>) -> Action {
    Action::requeue(run.ctx.settings.requeue.ready * 10)
}

/// Completed: keep the set alone, delete strays now and then.
async fn settled(run: &mut Run<'_>) -> Result<Action, Error> {
    observe_generation(run).await?;
    sweep(run).await?;
    Ok(settled_requeue(run))
}

/// A finished set still acknowledges later edits of its spec (tags and deletionPolicy are
/// read when they apply: at creation, at deletion), so whatever compares generations
/// (Argo CD, `kubectl wait --for=jsonpath`) sees the edit observed instead of pending forever.
async fn observe_generation(run: &mut Run<'_>) -> Result<(), Error> {
    match status::acknowledged(&run.written, run.snap.metadata.generation) {
        Some(s) => run.commit(s).await,
        None => Ok(()),
    }
}

/// Failed: a failed set has no snapshot worth keeping; late answers are deleted too (each
/// whose tags say it is ours).
async fn failed(run: &mut Run<'_>) -> Result<Action, Error> {
    observe_generation(run).await?;
    let found = run.find().await?;
    let leftovers = plan::leftovers(&found);
    let leftovers = found
        .into_iter()
        .filter(|s| leftovers.contains(&s.snapshot_id))
        .collect();
    for s in run.ours(leftovers).await {
        tracing::warn!(snapshot = %run.id.name, aws = %s.snapshot_id, "deleting a snapshot of a failed set");
        run.ctx.ec2.delete_snapshot(&s.snapshot_id).await?;
    }
    Ok(settled_requeue(run))
}
