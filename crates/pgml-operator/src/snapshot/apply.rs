//! The phase driver: resolve the source (Pending), wait for the agent's hold (Preparing),
//! make the one CreateSnapshots call (Capturing), follow AWS until the set is completed
//! (Finalizing). Each step records what it did in status before the next one starts, so a
//! process killed anywhere picks up from the status and AWS (see docs/design/ebssnapshot.md).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use pgml_api::EbsSnapshot;
use pgml_api::common::Time;
use pgml_api::snapshot::{EbsSnapshotStatus, MemberSnapshot, SnapshotPhase as P};
use pgml_aws::{CreateSnapshotSet, ErrorKind};
use pgml_runtime::failpoint;

use super::observe::{self, Source, snap_ref};
use super::plan::{self, Adoption, HoldStep, Progress, SnapRef, reason};
use super::status::{self, commit, label_node, owned_view, secs, set_phase};
use crate::runtime::conditions::{Stamp, now};
use crate::runtime::{Context, Error};

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

    /// The status with `phase` set, built on what was written so far.
    fn with_phase(&self, phase: P, why: &str, message: &str) -> EbsSnapshotStatus {
        let mut s = owned_view(&self.written);
        set_phase(&mut s, &self.observed, phase, why, message, self.stamp());
        s
    }

    async fn commit(&mut self, new: EbsSnapshotStatus) -> Result<(), Error> {
        commit(self.ctx, self.snap, &self.written, &new).await?;
        self.written = new;
        Ok(())
    }

    /// Fails the snapshot with `why`; `delete` first deletes every snapshot the object
    /// made (a set that must not be used).
    /// The failure is recorded first: a set found later (this deletion cut short, a call
    /// that answers after all) is deleted by the Failed phase's sweep, never adopted.
    async fn fail(&mut self, why: &str, message: String, delete: bool) -> Result<Action, Error> {
        let s = self.with_phase(P::Failed, why, &message);
        tracing::warn!(snapshot = %self.id.name, reason = why, %message, "snapshot failed");
        self.commit(s).await?;
        if delete {
            let mut s = owned_view(&self.written);
            delete_all(self.ctx, &self.id, &mut s.snapshots).await?;
            self.commit(s).await?;
        }
        Ok(Action::requeue(self.ctx.settings.requeue.ready))
    }
}

/// Deletes every snapshot tagged with the UID and every ID in `members` (marking them
/// deleted).
async fn delete_all(
    ctx: &Context,
    id: &SnapRef,
    members: &mut [MemberSnapshot],
) -> Result<(), Error> {
    let found = ctx.ec2.find_snapshots(&plan::uid_filter(&id.uid)).await?;
    let mut ids: Vec<String> = found.into_iter().map(|s| s.snapshot_id).collect();
    ids.extend(members.iter().filter_map(|m| m.snapshot_id.clone()));
    ids.sort();
    ids.dedup();
    for s in &ids {
        ctx.ec2.delete_snapshot(s).await?;
        tracing::info!(snapshot = %id.name, aws = %s, "deleted EBS snapshot");
    }
    for m in members.iter_mut().filter(|m| m.snapshot_id.is_some()) {
        m.state = Some("deleted".into());
        m.progress = None;
    }
    Ok(())
}

pub async fn reconcile(snap: &EbsSnapshot, ctx: &Context) -> Result<Action, Error> {
    let observed = snap.status.clone().unwrap_or_default();
    let mut run = Run {
        ctx,
        snap,
        id: snap_ref(snap)?,
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
        Ok(s) => s,
        Err(u)
            if u.reason == reason::SOURCE_NOT_FOUND
                && plan::gave_up_on_source(
                    run.snap.metadata.creation_timestamp.as_ref().map(secs),
                    secs(&run.now),
                    run.ctx.settings.snapshot.source_timeout.as_secs() as i64,
                ) =>
        {
            let message = format!(
                "{} (waited {}s after the snapshot's creation); no snapshot was taken",
                u.message,
                run.ctx.settings.snapshot.source_timeout.as_secs()
            );
            return run.fail(u.reason, message, false).await;
        }
        Err(u) => {
            let s = run.with_phase(P::Pending, u.reason, &u.message);
            run.commit(s).await?;
            return Ok(Action::requeue(run.ctx.settings.requeue.progress * 2));
        }
    };
    label_node(run.ctx, run.snap, &src.node_name).await?;
    let hold = plan::needs_hold(&run.snap.spec, src.filesystem);
    let mut s = if hold {
        run.with_phase(
            P::Preparing,
            reason::WAITING_FOR_AGENT,
            &format!(
                "waiting for the node agent on {} to hold {} (standby.signal, freeze) before the capture",
                src.node_name, src.description
            ),
        )
    } else {
        run.with_phase(
            P::Capturing,
            reason::CAPTURING,
            &format!(
                "capturing {} (no hold needed: standbySignal Never, nothing to freeze)",
                src.description
            ),
        )
    };
    record_plan(&mut s, run, &src);
    run.commit(s).await?;
    failpoint("snapshot.after-preparing");
    if hold {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    capture(run, None).await
}

fn record_plan(s: &mut EbsSnapshotStatus, run: &Run<'_>, src: &Source) {
    s.source = Some(src.description.clone());
    s.node_name = Some(src.node_name.clone());
    s.instance_id = Some(src.instance_id.clone());
    s.availability_zone = Some(src.availability_zone.clone());
    s.zfs_pool = src.zfs_pool.clone();
    s.layout = src.layout.clone();
    s.pool_guid = src.pool_guid.clone();
    s.volume_count = Some(src.members.len() as i32);
    s.snapshots = src.members.clone();
    s.consistency = Some(plan::consistency(&run.snap.spec, src.filesystem).to_string());
}

/// Whether the object asked for a hold (the plan recorded in status).
fn hold_planned(run: &Run<'_>) -> bool {
    let fs = if run.observed.zfs_pool.is_some() {
        plan::Filesystem::Zfs
    } else {
        plan::Filesystem::Ext4
    };
    plan::needs_hold(&run.snap.spec, fs)
}

fn hold_deadline(s: &EbsSnapshotStatus) -> Option<i64> {
    s.hold.as_ref()?.deadline.as_ref().map(secs)
}

/// Waits for the agent's hold; captures once it is Held with time left.
async fn preparing(run: &mut Run<'_>) -> Result<Action, Error> {
    let now = secs(&run.now);
    let since = status::progressing_since(&run.observed).unwrap_or(now);
    let step = plan::hold_step(
        run.observed.hold.as_ref(),
        hold_deadline(&run.observed),
        now,
        since,
        run.ctx.settings.snapshot.agent_timeout.as_secs() as i64,
    );
    match step {
        HoldStep::Wait(s) => Ok(Action::requeue(Duration::from_secs(s as u64))),
        HoldStep::Fail(why, message) => run.fail(why, message, false).await,
        HoldStep::Capture { deadline } => {
            let message = format!(
                "the node agent holds the source until {}; capturing",
                status::time(deadline).map_or("?".into(), |t| t.0.to_string())
            );
            let s = run.with_phase(P::Capturing, reason::CAPTURING, &message);
            run.commit(s).await?;
            capture(run, Some(deadline)).await
        }
    }
}

/// Restarted in Capturing: adopt a full set made before the deadline, delete a partial or
/// late one; with none, call again while the hold lasts.
async fn recapture(run: &mut Run<'_>) -> Result<Action, Error> {
    let hold = hold_planned(run);
    let deadline = hold.then(|| hold_deadline(&run.observed)).flatten();
    let found = run
        .ctx
        .ec2
        .find_snapshots(&plan::uid_filter(&run.id.uid))
        .await?;
    match plan::adopt(&found, &run.observed.snapshots, deadline) {
        Adoption::Set { members, extra } => {
            tracing::info!(snapshot = %run.id.name, "adopting the set a previous process captured");
            for s in &extra {
                run.ctx.ec2.delete_snapshot(s).await?;
            }
            let at = found.iter().filter_map(|s| s.start_time).min();
            return captured(run, members, at.and_then(status::time)).await;
        }
        Adoption::Discard(ids) => {
            tracing::warn!(snapshot = %run.id.name, ?ids, "deleting a partial or late set");
            for s in &ids {
                run.ctx.ec2.delete_snapshot(s).await?;
            }
        }
        Adoption::Nothing => {}
    }
    let now = secs(&run.now);
    match (hold, deadline) {
        (false, _) => capture(run, None).await,
        (true, Some(d)) if now < d - plan::MARGIN => capture(run, Some(d)).await,
        (true, _) => {
            run.fail(
                reason::HOLD_EXPIRED,
                "the operator restarted during the capture and the hold is over; no snapshot was kept".into(),
                true,
            )
            .await
        }
    }
}

/// The one CreateSnapshots call, bounded by the hold's deadline.
async fn capture(run: &mut Run<'_>, deadline: Option<i64>) -> Result<Action, Error> {
    failpoint("snapshot.before-capture");
    let ctx = run.ctx;
    let members = run.written.snapshots.clone();
    let instance_id = run.written.instance_id.clone().unwrap_or_default();
    let attached = ctx.ec2.attached_volumes(&instance_id).await?;
    let root = ctx
        .ec2
        .describe_instance(&instance_id)
        .await?
        .and_then(|i| i.root_device_name);
    for m in &members {
        let on = attached.iter().any(|v| {
            Some(v.volume_id.as_str()) == m.volume_id.as_deref()
                && v.attachments.iter().any(|a| a.instance_id == instance_id)
        });
        if !on {
            let msg = format!(
                "member {} ({}) is not attached to instance {instance_id}",
                m.member_index,
                m.volume_id.as_deref().unwrap_or("?")
            );
            return run.fail(reason::CAPTURE_FAILED, msg, true).await;
        }
    }
    let exclude: Vec<String> = attached
        .iter()
        .filter(|v| {
            !members
                .iter()
                .any(|m| m.volume_id.as_deref() == Some(&v.volume_id))
        })
        .filter(|v| {
            !v.attachments
                .iter()
                .any(|a| a.instance_id == instance_id && Some(&a.device) == root.as_ref())
        })
        .map(|v| v.volume_id.clone())
        .collect();
    let req = CreateSnapshotSet {
        instance_id: instance_id.clone(),
        exclude_volume_ids: exclude,
        description: format!(
            "pgml-operator: EbsSnapshot {}/{} of {}",
            run.id.namespace,
            run.id.name,
            run.written.source.as_deref().unwrap_or("?")
        ),
        tags: plan::set_tags(
            &run.id,
            run.written.zfs_pool.as_deref(),
            run.written.pool_guid.as_deref(),
            run.written.layout.as_deref(),
            &run.snap.spec.tags,
        ),
    };
    let started = now();
    // The bound and the lateness are measured to the millisecond: the deadline is a whole
    // second (as stored), and a second's slack could let a capture postdate the release.
    let started_ms = Timestamp::now().as_millisecond();
    let bound = match deadline {
        Some(d) => Duration::from_millis((d * 1000 - started_ms).max(0) as u64),
        None => ctx.settings.snapshot.capture_timeout,
    };
    let answer = tokio::time::timeout(bound, ctx.ec2.create_snapshot_set(&req)).await;
    failpoint("snapshot.after-capture");
    let returned_ms = Timestamp::now().as_millisecond();
    let late = deadline.is_some_and(|d| returned_ms >= d * 1000);
    let snaps = match answer {
        Err(_) if deadline.is_some() => {
            let msg = format!(
                "CreateSnapshots did not answer within the hold ({} ms): the capture may postdate the release, so the set is deleted",
                bound.as_millis()
            );
            return run.fail(reason::HOLD_DEADLINE_EXCEEDED, msg, true).await;
        }
        Err(_) => {
            return Err(Error::Aws(pgml_aws::AwsError::new(
                "CreateSnapshots",
                ErrorKind::Transient,
                "Timeout",
                format!("no answer in {}s", bound.as_secs()),
            )));
        }
        Ok(Err(e)) if e.is_retryable() && !late => return Err(e.into()),
        Ok(Err(e)) => {
            let why = if late {
                reason::HOLD_DEADLINE_EXCEEDED
            } else {
                reason::CAPTURE_FAILED
            };
            return run.fail(why, e.to_string(), true).await;
        }
        Ok(Ok(s)) => s,
    };
    tracing::info!(snapshot = %run.id.name, count = snaps.len(), late, "CreateSnapshots answered");
    if late {
        let msg = format!(
            "CreateSnapshots answered after the hold's deadline ({} ms after the request): the capture may postdate the release, so the set is deleted",
            returned_ms - started_ms
        );
        return run.fail(reason::HOLD_DEADLINE_EXCEEDED, msg, true).await;
    }
    let (set, extra) = match plan::assign(&snaps, &members) {
        Ok(x) => x,
        Err(missing) => {
            let msg = format!("CreateSnapshots left out members {missing:?}; the set is deleted");
            return run.fail(reason::CAPTURE_FAILED, msg, true).await;
        }
    };
    for s in &extra {
        ctx.ec2.delete_snapshot(s).await?;
    }
    captured(run, set, Some(started)).await
}

/// Tags each member's snapshot and records the set: Finalizing.
async fn captured(
    run: &mut Run<'_>,
    set: Vec<MemberSnapshot>,
    at: Option<Time>,
) -> Result<Action, Error> {
    for m in &set {
        if let Some(id) = &m.snapshot_id {
            run.ctx
                .ec2
                .create_tags(
                    std::slice::from_ref(id),
                    &plan::member_tags(&run.id, m.member_index),
                )
                .await?;
        }
    }
    let ids: Vec<&str> = set
        .iter()
        .filter_map(|m| m.snapshot_id.as_deref())
        .collect();
    let message = format!(
        "captured {} volumes ({}); AWS is copying the blocks",
        set.len(),
        ids.join(", ")
    );
    let mut s = run.with_phase(P::Finalizing, reason::FINALIZING, &message);
    s.snapshots = set;
    s.capture_time = at.or(s.capture_time);
    run.commit(s).await?;
    failpoint("snapshot.after-captured");
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Follows the set in AWS until every snapshot is completed (or one fails).
async fn finalizing(run: &mut Run<'_>) -> Result<Action, Error> {
    let ids: Vec<String> = run
        .observed
        .snapshots
        .iter()
        .filter_map(|m| m.snapshot_id.clone())
        .collect();
    let described = run.ctx.ec2.describe_snapshots(&ids).await?;
    let mut s = owned_view(&run.written);
    let verdict = plan::progress(&mut s.snapshots, &described);
    match verdict {
        Progress::Failed(why) => {
            run.written.snapshots = s.snapshots;
            let msg = format!("{why}; the set is deleted");
            run.fail(reason::SNAPSHOT_ERROR, msg, true).await
        }
        Progress::Pending => {
            let done = s
                .snapshots
                .iter()
                .filter(|m| m.state.as_deref() == Some("completed"))
                .count();
            let msg = format!(
                "{done} of {} snapshots completed; AWS is copying the blocks",
                s.snapshots.len()
            );
            let mut new = run.with_phase(P::Finalizing, reason::FINALIZING, &msg);
            new.snapshots = s.snapshots;
            run.commit(new).await?;
            Ok(Action::requeue(run.ctx.settings.requeue.progress))
        }
        Progress::Completed => {
            let size: i64 = s.snapshots.iter().filter_map(|m| m.size_gib).sum();
            let msg = format!(
                "{} snapshots completed ({size} GiB of volumes) of {}",
                s.snapshots.len(),
                run.written.source.as_deref().unwrap_or("the source")
            );
            let mut new = run.with_phase(P::Completed, reason::COMPLETED, &msg);
            if let Some((prev, bytes)) = changed_since_previous(run, &s.snapshots).await? {
                new.previous_snapshot = Some(prev);
                new.changed_bytes = Some(bytes);
            }
            new.snapshots = s.snapshots;
            new.size_gib = Some(size);
            new.completion_time = Some(run.now.clone());
            run.commit(new).await?;
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

/// Deletes the snapshots tagged with the UID that status does not name.
async fn sweep(run: &Run<'_>) -> Result<(), Error> {
    let found = run
        .ctx
        .ec2
        .find_snapshots(&plan::uid_filter(&run.id.uid))
        .await?;
    for s in plan::strays(&found, &run.written.snapshots) {
        tracing::warn!(snapshot = %run.id.name, aws = %s, "deleting a stray snapshot of this object");
        run.ctx.ec2.delete_snapshot(&s).await?;
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
    let generation = run.snap.metadata.generation;
    if run.written.observed_generation == generation {
        return Ok(());
    }
    let mut s = owned_view(&run.written);
    s.observed_generation = generation;
    for c in &mut s.conditions {
        c.observed_generation = generation;
    }
    run.commit(s).await
}

/// Failed: a failed set has no snapshot worth keeping; late answers are deleted too.
async fn failed(run: &mut Run<'_>) -> Result<Action, Error> {
    observe_generation(run).await?;
    let found = run
        .ctx
        .ec2
        .find_snapshots(&plan::uid_filter(&run.id.uid))
        .await?;
    for s in found.iter().filter(|s| s.state != "deleted") {
        tracing::warn!(snapshot = %run.id.name, aws = %s.snapshot_id, "deleting a snapshot of a failed set");
        run.ctx.ec2.delete_snapshot(&s.snapshot_id).await?;
    }
    Ok(settled_requeue(run))
}
