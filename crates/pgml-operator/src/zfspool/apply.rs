//! Apply: carry out what [`super::plan`] decides — record a lost member's replacement,
//! create the missing members side by side (recording their IDs before anything else),
//! retire replaced volumes, attach, grow — then write the status if it changed. A driver:
//! it makes the calls, in order, and records their answers; every choice is the plan's.

use std::collections::BTreeMap;

use futures::future::join_all;
use kube::runtime::controller::Action;
use pgml_api::ZfsPool;
use pgml_api::common::Time;
use pgml_api::zfspool::{AttachmentState, ZfsPoolStatus};
use pgml_aws::{AwsError, ModifyVolume, Volume, VolumeState};

use super::build::{self, Members, PoolRef};
use super::observe::{self, Target, Volumes};
use super::plan::attach::{Attach, Device, Progress, Todo};
use super::plan::grow::Growth;
use super::plan::{self, Halt};
use super::repair::{Decision, Retire};
use super::restore::{self, Restore};
use super::status::{self, Facts, reason};
use crate::runtime::Error;
use crate::runtime::ssa;
use crate::runtime::{Context, conditions, devices, events};

/// Server-side apply of the controller's status fields on the status subresource.
pub async fn write_status(ctx: &Context, pool: &ZfsPool, s: &ZfsPoolStatus) -> Result<(), Error> {
    ssa::apply_status(&ctx.client, pool, s).await
}

/// Writes `new` unless it equals the controller's part of `written`, then publishes the
/// Events its changes from `observed` deserve. Returns whether it wrote.
pub async fn commit(
    ctx: &Context,
    pool: &ZfsPool,
    observed: &ZfsPoolStatus,
    written: &ZfsPoolStatus,
    new: &ZfsPoolStatus,
) -> Result<bool, Error> {
    if status::owned_view(written) == *new {
        return Ok(false);
    }
    write_status(ctx, pool, new).await?;
    for (warning, reason, note) in status::notices(observed, new) {
        events::publish(ctx, pool, warning, &reason, note).await;
    }
    if let Some(note) = status::attached_note(observed, new) {
        events::publish(ctx, pool, false, "VolumeAttached", note).await;
    }
    Ok(true)
}

pub async fn reconcile(pool: &ZfsPool, ctx: &Context) -> Result<Action, Error> {
    let observed = pool.status.clone().unwrap_or_default();
    let now = conditions::now();
    let requeue = &ctx.settings.requeue;
    let stop = |h: Halt| halt(ctx, pool, &observed, &now, h);
    if let Some(h) = plan::invalid_spec(&pool.spec.template) {
        return stop(h).await;
    }
    let restore = match restore::resolve(pool, ctx, &observed).await? {
        Ok(r) => r,
        Err(b) => return stop(plan::restore_blocked(b, requeue)).await,
    };
    let target = match observe::resolve(ctx, &pool.spec.node_name).await? {
        Ok(t) => t,
        Err(u) => return stop(plan::unresolved(u, requeue)).await,
    };
    let pref = PoolRef::of(pool, &ctx.settings.installation)
        .ok_or(Error::Incomplete("uid, namespace or name"))?;
    let count = pool.spec.template.volumes.count.max(0) as usize;
    let volumes = observe::volumes(ctx, pref.uid, count, &observed).await?;
    for (why, note) in &volumes.left_alone {
        tracing::warn!(pool_uid = %pref.uid, %note, "volume left alone");
        events::publish(ctx, pool, true, why, note.clone()).await;
    }
    if let Some(h) = plan::adopt::await_adoption(&volumes.unadopted, pref.installation, requeue) {
        return stop(h).await;
    }
    let spec = &pool.spec.template.volumes;
    if let Some(h) = plan::no_room(spec, &target, &volumes.members, requeue) {
        return stop(h).await;
    }

    let mut pass = Pass::new(ctx, pool, target, observed, volumes, now);
    pass.replace_lost().await?;
    pass.create_missing(&pref, restore.as_ref()).await?;
    if let Some(r) = &restore
        && pass.members.slots.iter().all(Option::is_some)
    {
        pass.facts.restored_from = Some(r.name.clone());
    }
    let converged = pass.converge().await;
    let new = status::compute(&pass.facts, &pass.observed, &pass.now);
    commit(ctx, pool, &pass.observed, &pass.written, &new).await?;
    converged?;
    Ok(Action::requeue(plan::requeue(&pass.facts, &new, requeue)))
}

/// Writes the blocked status a halt asks for and looks again when it says.
async fn halt(
    ctx: &Context,
    pool: &ZfsPool,
    observed: &ZfsPoolStatus,
    now: &Time,
    h: Halt,
) -> Result<Action, Error> {
    let new = h.status(observed, pool.metadata.generation, now);
    commit(ctx, pool, observed, observed, &new).await?;
    Ok(h.requeue.map_or_else(Action::await_change, Action::requeue))
}

/// One reconcile past its checks: what it observed, and what it has learned and written
/// since.
struct Pass<'a> {
    ctx: &'a Context,
    pool: &'a ZfsPool,
    target: Target,
    observed: ZfsPoolStatus,
    /// The status this reconcile last wrote (the observed one until it writes).
    written: ZfsPoolStatus,
    now: Time,
    members: Members,
    /// Members whose volume EC2 no longer knows.
    gone: BTreeMap<usize, String>,
    facts: Facts,
    /// What to do about lost members.
    decision: Decision,
}

impl<'a> Pass<'a> {
    fn new(
        ctx: &'a Context,
        pool: &'a ZfsPool,
        target: Target,
        observed: ZfsPoolStatus,
        volumes: Volumes,
        now: Time,
    ) -> Self {
        let facts = observe::facts(pool, &target, &observed, &volumes);
        let decision = plan::replace::decide(&pool.spec.template, &facts, &volumes.members);
        Pass {
            ctx,
            pool,
            target,
            written: observed.clone(),
            observed,
            now,
            members: volumes.members,
            gone: volumes.gone,
            facts,
            decision,
        }
    }

    /// Writes the status as it stands: what was recorded must be in the object before the
    /// next call to EC2.
    async fn record(&mut self) -> Result<(), Error> {
        self.facts.repair = plan::replace::view(&self.decision, &self.facts);
        let new = status::compute(&self.facts, &self.observed, &self.now);
        write_status(self.ctx, self.pool, &new).await?;
        self.written = new;
        Ok(())
    }

    /// A lost member the plan replaces: its next generation and the volume it replaces are
    /// recorded before anything is created, so a crash from here on creates the same
    /// replacement (same ClientToken) and still knows the old volume.
    async fn replace_lost(&mut self) -> Result<(), Error> {
        let Decision::Replace {
            index,
            old,
            generation,
            loss,
        } = self.decision.clone()
        else {
            return Ok(());
        };
        let (facts, members, gone) = (&mut self.facts, &mut self.members, &mut self.gone);
        plan::replace::begin(facts, members, gone, index, &old, generation);
        self.record().await?;
        tracing::warn!(member = index, volume = %old, %loss, generation, "member lost; replacing it");
        let note = plan::replace::lost_note(&self.facts.pool_name, index, &old, &loss, generation);
        events::publish(self.ctx, self.pool, true, reason::MEMBER_LOST, note).await;
        Ok(())
    }

    /// Creates what is missing, side by side (each waits for its own token of the rate
    /// limiter), then records every ID in one status write before anything else happens. A
    /// crash in between loses nothing: the volumes carry the pool's tags from their
    /// creation (the next reconcile finds them) and a retry with the same ClientToken
    /// returns them.
    async fn create_missing(
        &mut self,
        pool: &PoolRef<'_>,
        restore: Option<&Restore>,
    ) -> Result<(), Error> {
        let az = self.target.instance.availability_zone.clone();
        let recorded = &self.facts.volumes;
        let wanted = plan::create::missing(pool, &self.members, &self.gone, recorded, &az, restore);
        let ec2 = &self.ctx.ec2;
        let answers = join_all(wanted.iter().map(|c| ec2.create_volume(&c.request))).await;
        let (mut created, mut notes, mut failed) = (Vec::new(), Vec::new(), None);
        for (c, answer) in wanted.iter().zip(answers) {
            let v = match answer {
                Ok(v) => v,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            let generation = c.generation;
            tracing::info!(volume = %v.volume_id, member = c.index, generation, "created volume");
            notes.push(plan::create::note(c, &v));
            let instance_id = &self.facts.instance_id;
            plan::create::record(
                &mut self.facts.volumes,
                &mut self.members,
                instance_id,
                c,
                v,
            );
            created.push(c.index);
        }
        if !created.is_empty() {
            self.record().await?;
            let note = plan::create::event(&notes, &az);
            events::publish(self.ctx, self.pool, false, "VolumeCreated", note).await;
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.await_available(&created).await
    }

    /// Looks at the volumes just created (`creating` for a few seconds on EC2) so that
    /// they are attached in this reconcile rather than a requeue later.
    async fn await_available(&mut self, created: &[usize]) -> Result<(), Error> {
        let pending = plan::create::still_creating(&self.members, created);
        let members = &mut self.members;
        poll_volumes(self.ctx, &CREATED_POLLS, pending, |i, fresh| {
            let creating = fresh.state == VolumeState::Creating;
            members.slots[i] = Some(fresh.clone());
            creating
        })
        .await
    }

    /// Retires replaced volumes, attaches, then grows, each only when the one before
    /// succeeded; where the repair stands is taken after the attaches, whatever happened.
    async fn converge(&mut self) -> Result<(), Error> {
        let attached = match self.retire_replaced().await {
            Ok(()) => self.attach().await,
            Err(e) => Err(e),
        };
        self.facts.repair = plan::replace::view(&self.decision, &self.facts);
        match attached {
            Ok(()) => self.grow().await,
            Err(e) => Err(e),
        }
    }

    /// The volumes members replaced: detached, deleted, forgotten or left alone as the plan
    /// says.
    async fn retire_replaced(&mut self) -> Result<(), Error> {
        let instance_id = self.target.instance.instance_id.clone();
        let ec2 = &self.ctx.ec2;
        let uid = self.pool.metadata.uid.as_deref().unwrap_or_default();
        let installation = &self.ctx.settings.installation;
        let owner = |v: &Volume| build::ownership(v, uid, installation);
        let retirements = plan::replace::retirements(
            &self.facts,
            &self.members,
            &instance_id,
            owner,
            installation,
        );
        for r in retirements {
            let (member, volume) = (r.index, &r.old);
            match r.step {
                Retire::Wait => {}
                Retire::Forget => {
                    tracing::info!(member, %volume, "replaced volume no longer exists");
                    plan::replace::retired(&mut self.facts, r.index);
                }
                Retire::NotOurs(why, note) => {
                    // Recorded as replaced, but its tags are not this pool's: never detached
                    // or deleted on the word of status; the record is dropped.
                    tracing::warn!(member, %volume, %note, "replaced volume left alone");
                    plan::replace::retired(&mut self.facts, r.index);
                    events::publish(self.ctx, self.pool, true, why, note).await;
                }
                Retire::Unadopted(why, note) => {
                    // The record stays: once an administrator adds the installation tag,
                    // the next reconcile retires it.
                    tracing::warn!(member, %volume, %note, "replaced volume left alone");
                    events::publish(self.ctx, self.pool, true, why, note).await;
                }
                Retire::Detach => {
                    ec2.detach_volume(volume, &instance_id, false).await?;
                    tracing::info!(member, %volume, "detach of the replaced volume requested");
                }
                Retire::Delete => {
                    ec2.delete_volume(volume).await?;
                    tracing::info!(member, %volume, "replaced volume deleted");
                    plan::replace::retired(&mut self.facts, r.index);
                    let note = plan::replace::replaced_note(&r, &self.facts.pool_name);
                    events::publish(self.ctx, self.pool, false, reason::MEMBER_REPLACED, note)
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Attaches every available member to the instance (the problems the plan reports go
    /// to the VolumesAttached condition), then looks until they are attached.
    async fn attach(&mut self) -> Result<(), Error> {
        let instance_id = self.target.instance.instance_id.clone();
        let wanted = self.reserve_devices(&instance_id).await?;
        // Every member asks at once (each waits for its own token of the rate limiter, in
        // order), so that a pool's attaches are not spread across everyone else's.
        let ec2 = &self.ctx.ec2;
        let answers = join_all(
            wanted
                .iter()
                .map(|a| ec2.attach_volume(&a.volume_id, &instance_id, &a.device)),
        )
        .await;
        let attaching = self.take_attach_answers(&instance_id, wanted, answers)?;
        self.await_attached(&instance_id, attaching).await
    }

    /// The attaches to make, each with a device name reserved for it. Names are picked
    /// from a recent view of the instance only: the reservations of other pools' attaches
    /// lapse a while after EC2 answered them ([`devices::DeviceReservations`]).
    async fn reserve_devices(&mut self, instance_id: &str) -> Result<Vec<Attach>, Error> {
        let waited = plan::attach::waited(&self.observed, &self.now);
        let timeout = self.ctx.settings.pool.attach_timeout;
        let node = &self.facts.node_name;
        let todo = plan::attach::todo(&self.members, instance_id, node, waited, timeout);
        let mut used = build::used_devices(&self.target.instance, &self.members);
        let mut described = self.target.described;
        let mut wanted = Vec::new();
        for t in todo {
            let (index, volume_id) = match t {
                Todo::Report(p) => {
                    self.facts.attach_problem = Some(p);
                    continue;
                }
                Todo::Attach { index, volume_id } => (index, volume_id),
            };
            if described.elapsed() > devices::INSTANCE_VIEW_MAX_AGE {
                described = std::time::Instant::now();
                if let Some(fresh) = self.ctx.ec2.describe_instance(instance_id).await? {
                    used.extend(build::used_devices(&fresh, &self.members));
                }
            }
            let Some(device) = self
                .ctx
                .reserve_device(instance_id, &volume_id, index, &used)
            else {
                self.facts.attach_problem = Some(plan::attach::no_device(instance_id, index));
                continue;
            };
            used.insert(device.clone());
            wanted.push(Attach {
                index,
                volume_id,
                device,
            });
        }
        Ok(wanted)
    }

    /// Records each AttachVolume answer as the plan takes it, and settles its device
    /// name. Returns the members still attaching, or the first failure once every answer
    /// is recorded.
    fn take_attach_answers(
        &mut self,
        instance_id: &str,
        wanted: Vec<Attach>,
        answers: Vec<Result<pgml_aws::AttachmentState, AwsError>>,
    ) -> Result<Vec<(usize, String)>, Error> {
        let (ctx, mut failed, mut pending) = (self.ctx, None, Vec::new());
        for (a, result) in wanted.into_iter().zip(answers) {
            let answer = plan::attach::answer(result);
            match answer.device() {
                Device::Answered => ctx.device_answered(instance_id, &a.device),
                Device::Released => ctx.release_device(instance_id, &a.device),
                Device::Taken => ctx.device_taken(instance_id, &a.device),
            }
            let (volume, device) = (&a.volume_id, &a.device);
            match answer {
                plan::attach::Answer::Took(state) => {
                    tracing::info!(%volume, %device, ?state, "attach requested");
                    plan::attach::set(&mut self.facts.volumes, a.index, state);
                    if state != AttachmentState::Attached {
                        pending.push((a.index, a.volume_id));
                    }
                }
                plan::attach::Answer::Refused(p) => self.facts.attach_problem = Some(p),
                plan::attach::Answer::DeviceTaken => {
                    tracing::info!(%volume, "device name taken; retrying with another");
                }
                plan::attach::Answer::Failed(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(pending),
        }
    }

    /// After AttachVolume (answered `attaching`): EC2 usually finishes within seconds.
    /// Look a few times, as the EBS CSI driver does, so that the status says `attached`
    /// (which the node agent waits for) in this reconcile rather than the next.
    async fn await_attached(
        &mut self,
        instance_id: &str,
        pending: Vec<(usize, String)>,
    ) -> Result<(), Error> {
        let volumes = &mut self.facts.volumes;
        poll_volumes(
            self.ctx,
            &ATTACHED_POLLS,
            pending,
            |i, v| match plan::attach::progress(v, instance_id) {
                Progress::Attached => {
                    plan::attach::set(volumes, i, AttachmentState::Attached);
                    false
                }
                Progress::Pending(state) => {
                    plan::attach::set(volumes, i, state);
                    true
                }
                Progress::Leave => false,
            },
        )
        .await
    }

    /// Grows members below the spec with ModifyVolume, within AWS's 4 per volume per 24 h.
    async fn grow(&mut self) -> Result<(), Error> {
        let t = self.now.0.as_second();
        let spec = &self.pool.spec.template.volumes;
        let recent = &self.facts.recent_modifications;
        match plan::grow::growth(&self.members, &self.facts.volumes, spec, recent, t) {
            Growth::Nothing => {
                self.facts.recent_modifications = plan::grow::recent(recent, t, false);
                Ok(())
            }
            Growth::Spent(message) => {
                self.facts.budget_wait = Some(message);
                Ok(())
            }
            Growth::Modify(list) => self.modify(list).await,
        }
    }

    /// ModifyVolume each member in turn; the first failure stops the round.
    async fn modify(&mut self, list: Vec<(usize, ModifyVolume)>) -> Result<(), Error> {
        let (mut started, mut result) = (false, Ok(()));
        for (i, m) in list {
            let volume = &m.volume_id;
            match plan::grow::answer(self.ctx.ec2.modify_volume(&m).await) {
                plan::grow::Answer::Started => {
                    started = true;
                    tracing::info!(%volume, ?m, "modification requested");
                    let entry = self.facts.volumes.iter_mut().find(|v| v.index == i as i32);
                    if let Some(v) = entry {
                        v.modification = Some(plan::grow::started(&m, &self.now));
                    }
                }
                plan::grow::Answer::StillRunning => {
                    tracing::info!(%volume, "a modification is still running; waiting");
                }
                plan::grow::Answer::Failed(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        let t = self.now.0.as_second();
        let recent = &self.facts.recent_modifications;
        self.facts.recent_modifications = plan::grow::recent(recent, t, started);
        if started {
            let note = "EBS is growing the volumes to the new spec".to_string();
            events::publish(self.ctx, self.pool, false, "VolumesModifying", note).await;
        }
        result
    }
}

/// Polls of the volumes just created (`creating` for a few seconds on EC2) before they are
/// attached in the same reconcile, rather than a requeue later: after 0, 1, 2 and 2 s, one
/// DescribeVolumes for all of them each time. Still `creating` after that: the requeue
/// comes back for them.
const CREATED_POLLS: [u64; 4] = [0, 1, 2, 2];

/// Polls after AttachVolume: one DescribeVolumes per look, for this pool's attaching
/// members only.
const ATTACHED_POLLS: [u64; 4] = [0, 1, 1, 2];

/// Looks at `pending` members' volumes after each wait of `schedule` (one DescribeVolumes
/// for all of them) until none is left: `settle` takes each member's fresh volume and says
/// whether it is still pending. A volume EC2 does not return yet stays pending.
async fn poll_volumes(
    ctx: &Context,
    schedule: &[u64],
    mut pending: Vec<(usize, String)>,
    mut settle: impl FnMut(usize, &Volume) -> bool,
) -> Result<(), Error> {
    for &wait in schedule {
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        let ids: Vec<String> = pending.iter().map(|(_, v)| v.clone()).collect();
        let fresh = ctx.ec2.describe_volumes(&ids).await?;
        pending.retain(|(i, id)| {
            fresh
                .iter()
                .find(|v| v.volume_id == *id)
                .is_none_or(|v| settle(*i, v))
        });
    }
    Ok(())
}
