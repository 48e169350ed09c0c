//! Apply: bring EC2 to the spec — create the missing members side by side (recording their
//! IDs before anything else), attach them, grow them — then write the status if it changed.

use kube::runtime::controller::Action;
use pgml_api::validate;
use pgml_api::zfspool::{VolumeModification, VolumeStatus, ZfsPoolStatus};
use pgml_api::{ZfsPool, condition as c};
use pgml_aws::{AttachmentState, Volume, VolumeState};
use std::collections::BTreeMap;

use super::build::{self, AttachStep, Budget, PoolRef};
use super::dereference::{self, Target};
use super::repair::{self, Decision, MemberView, Retire};
use super::restore;
use super::status::{self, AgentView, Facts, RepairView, reason};
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
    let attached: Vec<String> = new
        .volumes
        .iter()
        .filter(|v| {
            let was = observed.volumes.iter().find(|o| o.index == v.index);
            v.attachment_state.as_deref() == Some("attached")
                && was.and_then(|o| o.attachment_state.as_deref()) != Some("attached")
        })
        .map(|v| {
            format!(
                "member {} ({})",
                v.index,
                v.volume_id.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if !attached.is_empty() {
        let note = format!(
            "{} attached to {}",
            attached.join(", "),
            new.instance_id.as_deref().unwrap_or("?")
        );
        events::publish(ctx, pool, false, "VolumeAttached", note).await;
    }
    Ok(true)
}

pub async fn reconcile(pool: &ZfsPool, ctx: &Context) -> Result<Action, Error> {
    let observed = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let now = conditions::now();

    let errors = validate::check_pool_template(&pool.spec.template);
    if let Some(first) = errors.first() {
        let msg = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let new = status::blocked(
            &observed,
            generation,
            Some((first.reason(), &msg)),
            "InvalidSpec",
            &msg,
            &now,
        );
        commit(ctx, pool, &observed, &observed, &new).await?;
        return Ok(Action::await_change());
    }

    let restore = match restore::plan(pool, ctx, &observed).await? {
        Ok(r) => r,
        Err(blocked) => {
            let new = blocked.status(&observed, generation, &now);
            commit(ctx, pool, &observed, &observed, &new).await?;
            return Ok(Action::requeue(blocked.retry(&ctx.settings)));
        }
    };

    let target = match dereference::resolve(ctx, &pool.spec.node_name).await? {
        Ok(t) => t,
        Err(u) => {
            let new = status::blocked(&observed, generation, None, u.reason, &u.message, &now);
            commit(ctx, pool, &observed, &observed, &new).await?;
            return Ok(Action::requeue(ctx.settings.requeue.ready));
        }
    };
    let pref = PoolRef::of(pool).ok_or(Error::Incomplete("uid, namespace or name"))?;
    let count = pool.spec.template.volumes.count.max(0) as usize;
    let found = ctx.ec2.find_volumes(&build::pool_filter(pref.uid)).await?;
    let mut members = build::sort_members(&found, count, &observed.volumes);
    if !members.extra.is_empty() {
        let ids: Vec<&str> = members.extra.iter().map(|v| v.volume_id.as_str()).collect();
        tracing::warn!(
            ?ids,
            "volumes tagged for this pool that fill no member slot"
        );
    }
    let mut gone = recover_unlisted(ctx, &observed, &mut members).await?;

    let max = target
        .limits
        .as_ref()
        .and_then(|l| l.maximum_ebs_attachments);
    if let Some(free) = build::free_attachments(max, &target.instance, &members)
        && let Err(e) = validate::check_attachments(
            &pool.spec.template.volumes,
            free,
            &target.instance.instance_type,
        )
    {
        let msg = e.to_string();
        let new = status::blocked(
            &observed,
            generation,
            Some((e.reason(), &msg)),
            e.reason(),
            &msg,
            &now,
        );
        commit(ctx, pool, &observed, &observed, &new).await?;
        // Slots free up when other volumes detach: look again later.
        return Ok(Action::requeue(ctx.settings.requeue.ready * 5));
    }

    let mut facts = facts(pool, &target, &observed, &members, &gone);
    let mut written = observed.clone();

    // A lost member: replace it (raidz1, Automatic, only one lost), or report it.
    let views = member_views(&facts, &members);
    let decision = repair::decide(
        pool.spec.template.layout,
        pool.spec.template.member_replacement,
        &views,
        facts.agent.health.as_deref(),
        facts.agent.resilvering,
    );
    if let Decision::Replace {
        index,
        old,
        generation,
        loss,
    } = &decision
    {
        // The next generation and the volume it replaces are recorded before anything is
        // created: a crash from here on creates the same replacement (same ClientToken) and
        // still knows the old volume.
        *entry_mut(&mut facts.volumes, *index) = VolumeStatus {
            index: *index as i32,
            generation: *generation,
            replaced_volume_id: Some(old.clone()),
            ..Default::default()
        };
        if let Some(v) = members.slots[*index].take() {
            members.retired.push((*index, v));
        }
        gone.remove(index);
        facts.repair = repair_view(&decision, &facts);
        let new = status::compute(&facts, &observed, &now);
        write_status(ctx, pool, &new).await?;
        written = new;
        tracing::warn!(member = index, volume = %old, %loss, generation, "member lost; replacing it");
        let note = format!(
            "member {index} ({old}) of pool {} is lost: {loss}; replacing it with a new volume (member generation {generation})",
            facts.pool_name
        );
        events::publish(ctx, pool, true, reason::MEMBER_LOST, note).await;
    }

    // Create what is missing, side by side (each waits for its own token of the rate
    // limiter), then record every ID in one status write before anything else happens. A
    // crash in between loses nothing: the volumes carry the pool's tags from their creation
    // (the next reconcile finds them) and a retry with the same ClientToken returns them.
    let mut wanted = Vec::new();
    for i in 0..count {
        if members.slots[i].is_some() || gone.contains_key(&i) {
            continue;
        }
        let (generation, replaced) = facts
            .volumes
            .iter()
            .find(|v| v.index == i as i32)
            .map_or((0, None), |v| (v.generation, v.replaced_volume_id.clone()));
        let mut req = build::create_request(
            &pref,
            i,
            generation.max(0) as u32,
            &target.instance.availability_zone,
        );
        if let Some(r) = restore.as_ref().filter(|_| generation == 0) {
            req = build::restored(req, &r.sources[&i], r.rate_mibps);
        }
        wanted.push((i, generation, replaced, req));
    }
    let answers = futures::future::join_all(
        wanted
            .iter()
            .map(|(_, _, _, req)| ctx.ec2.create_volume(req)),
    )
    .await;
    let mut created = Vec::new();
    let mut notes = Vec::new();
    let mut failed = None;
    for ((i, generation, replaced, req), answer) in wanted.into_iter().zip(answers) {
        let v = match answer {
            Ok(v) => v,
            Err(e) => {
                failed.get_or_insert(e);
                continue;
            }
        };
        tracing::info!(volume = %v.volume_id, member = i, generation, "created volume");
        *entry_mut(&mut facts.volumes, i) = VolumeStatus {
            generation,
            replaced_volume_id: replaced.clone(),
            ..build::volume_status(i, &v, &facts.instance_id, None)
        };
        notes.push(format!(
            "{} ({} GiB {}) as member {i}{}{}",
            v.volume_id,
            req.size_gib,
            req.volume_type.as_str(),
            req.snapshot_id
                .as_deref()
                .map_or(String::new(), |s| format!(" from snapshot {s}")),
            replaced.map_or(String::new(), |old| format!(", replacing {old}"))
        ));
        members.slots[i] = Some(v);
        created.push(i);
    }
    if !created.is_empty() {
        facts.repair = repair_view(&decision, &facts);
        let new = status::compute(&facts, &observed, &now);
        write_status(ctx, pool, &new).await?;
        written = new;
        let note = format!(
            "created {} in {}",
            notes.join(", "),
            target.instance.availability_zone
        );
        events::publish(ctx, pool, false, "VolumeCreated", note).await;
    }
    if let Some(e) = failed {
        return Err(e.into());
    }

    if !created.is_empty() {
        await_available(ctx, &mut members, &created).await?;
    }

    if let Some(r) = &restore
        && members.slots.iter().all(Option::is_some)
    {
        facts.restored_from = Some(r.name.clone());
    }
    let retire = retire_replaced(ctx, pool, &target, &members, &mut facts).await;
    let attach = match retire {
        Ok(()) => attach_members(ctx, &target, &members, &mut facts, &observed, &now).await,
        Err(e) => Err(e),
    };
    facts.repair = repair_view(&decision, &facts);
    let grow = match attach {
        Ok(()) => grow_members(ctx, pool, &members, &mut facts, &now).await,
        Err(e) => Err(e),
    };
    let new = status::compute(&facts, &observed, &now);
    commit(ctx, pool, &observed, &written, &new).await?;
    grow?;

    let ready = status::is_true(&new, c::READY);
    // Blocked on something EC2 or a user must change: look again slowly. An attachment that
    // lasts is still awaited at the progress pace.
    let stuck = facts.budget_wait.is_some()
        || matches!(
            facts.repair,
            RepairView::Manual(_) | RepairView::TooMany(_) | RepairView::Raid0(_)
        )
        || facts
            .attach_problem
            .as_ref()
            .is_some_and(|(r, _)| r != reason::ATTACHMENT_STUCK);
    let settled = ready && new.phase != Some(pgml_api::zfspool::PoolPhase::Resizing);
    Ok(Action::requeue(if settled || stuck {
        ctx.settings.requeue.ready
    } else {
        ctx.settings.requeue.progress
    }))
}

/// A member whose ID the status records but the tag search did not return: EC2 may not
/// list a new volume by tag yet (eventual consistency), or its tags were removed. One
/// DescribeVolumes by ID settles it (for replaced volumes too); a member volume EC2 no
/// longer knows is lost, never silently recreated under the same generation. Returns the
/// members whose volume is gone.
async fn recover_unlisted(
    ctx: &Context,
    observed: &ZfsPoolStatus,
    members: &mut build::Members,
) -> Result<BTreeMap<usize, String>, Error> {
    let unlisted: Vec<(usize, String)> = observed
        .volumes
        .iter()
        .filter_map(|v| Some((usize::try_from(v.index).ok()?, v.volume_id.clone()?)))
        .filter(|(i, id)| {
            *i < members.slots.len()
                && members.slots[*i].is_none()
                && !members.extra.iter().any(|v| &v.volume_id == id)
        })
        .collect();
    let retired_unlisted: Vec<(usize, String)> = observed
        .volumes
        .iter()
        .filter_map(|v| {
            Some((
                usize::try_from(v.index).ok()?,
                v.replaced_volume_id.clone()?,
            ))
        })
        .filter(|(_, id)| {
            !members.retired.iter().any(|(_, v)| &v.volume_id == id) && v_not_current(observed, id)
        })
        .collect();
    let mut gone = BTreeMap::new();
    if unlisted.is_empty() && retired_unlisted.is_empty() {
        return Ok(gone);
    }
    let ids: Vec<String> = unlisted
        .iter()
        .chain(&retired_unlisted)
        .map(|(_, id)| id.clone())
        .collect();
    let known = ctx.ec2.describe_volumes(&ids).await?;
    let live = |id: &str| {
        known
            .iter()
            .find(|v| v.volume_id == id && !v.state.is_gone())
    };
    for (i, id) in unlisted {
        match live(&id) {
            Some(v) => members.slots[i] = Some(v.clone()),
            None => {
                gone.insert(i, id);
            }
        }
    }
    for (i, id) in retired_unlisted {
        if let Some(v) = live(&id) {
            members.retired.push((i, v.clone()));
        }
    }
    Ok(gone)
}

/// Whether `id` is no member's current volume.
fn v_not_current(observed: &ZfsPoolStatus, id: &str) -> bool {
    !observed
        .volumes
        .iter()
        .any(|v| v.volume_id.as_deref() == Some(id))
}

/// The entry of member `index` in `volumes`, added when missing.
fn entry_mut(volumes: &mut Vec<VolumeStatus>, index: usize) -> &mut VolumeStatus {
    let pos = match volumes.iter().position(|v| v.index == index as i32) {
        Some(p) => p,
        None => {
            volumes.push(VolumeStatus {
                index: index as i32,
                ..Default::default()
            });
            volumes.len() - 1
        }
    };
    &mut volumes[pos]
}

/// Each member as the repair decision sees it: its volume, generation, replaced volume,
/// EC2 state (`None`: gone) and the agent's state when the agent's report is about it.
fn member_views(facts: &Facts, members: &build::Members) -> Vec<MemberView> {
    (0..facts.count)
        .map(|i| {
            let e = facts.volumes.iter().find(|v| v.index == i as i32);
            let volume_id = e.and_then(|e| e.volume_id.clone());
            let ec2_state = members.slots[i].as_ref().map(|v| v.state.clone());
            MemberView {
                index: i,
                member_state: volume_id
                    .as_deref()
                    .and_then(|id| facts.agent.member_state(i as i32, id))
                    .or_else(|| {
                        // A lost device has no by-id link, so the agent reports no device
                        // for it; its state still describes the recorded volume unless a
                        // replacement is under way.
                        e.filter(|e| e.replaced_volume_id.is_none())
                            .and_then(|_| facts.agent.reported_state(i as i32))
                            .filter(|s| repair::LOST_MEMBER_STATES.contains(s))
                    })
                    .map(str::to_string),
                volume_id,
                generation: e.map_or(0, |e| e.generation),
                replaced: e.and_then(|e| e.replaced_volume_id.clone()),
                ec2_state,
            }
        })
        .collect()
}

/// Where the repair stands, for the conditions.
fn repair_view(decision: &Decision, facts: &Facts) -> RepairView {
    let describe = |lost: &[repair::Lost]| lost.iter().map(ToString::to_string).collect();
    match decision {
        Decision::Manual(l) => return RepairView::Manual(describe(l)),
        Decision::TooMany(l) => return RepairView::TooMany(describe(l)),
        Decision::Raid0(l) => return RepairView::Raid0(describe(l)),
        Decision::Healthy | Decision::Replace { .. } => {}
    }
    let agent = &facts.agent;
    for v in &facts.volumes {
        let Some(old) = v.replaced_volume_id.clone() else {
            continue;
        };
        let state = v
            .volume_id
            .as_deref()
            .and_then(|id| agent.member_state(v.index, id));
        let done = state == Some("ONLINE")
            && agent.health.as_deref() == Some("ONLINE")
            && !agent.resilvering;
        if done {
            continue;
        }
        return match (&v.volume_id, state) {
            (Some(new), Some(_)) => RepairView::Resilvering {
                index: v.index,
                old,
                new: new.clone(),
                percent: agent.resilver_percent,
            },
            (new, _) => RepairView::Replacing {
                index: v.index,
                old,
                new: new.clone(),
                attached: v.attachment_state.as_deref() == Some("attached"),
            },
        };
    }
    RepairView::None
}

/// The volumes members replaced: detached at once, deleted once the new member is ONLINE
/// in an ONLINE pool, dropped from status only when EC2 no longer has them.
async fn retire_replaced(
    ctx: &Context,
    pool: &ZfsPool,
    target: &Target,
    members: &build::Members,
    facts: &mut Facts,
) -> Result<(), Error> {
    let instance_id = target.instance.instance_id.clone();
    let agent = facts.agent.clone();
    for e in facts.volumes.iter_mut() {
        let Some(old) = e.replaced_volume_id.clone() else {
            continue;
        };
        let v = members
            .retired
            .iter()
            .map(|(_, v)| v)
            .find(|v| v.volume_id == old);
        let state = e
            .volume_id
            .as_deref()
            .and_then(|id| agent.member_state(e.index, id));
        match repair::retire_step(
            v,
            &instance_id,
            state,
            agent.health.as_deref(),
            agent.resilvering,
        ) {
            Retire::Wait => {}
            Retire::Forget => {
                tracing::info!(member = e.index, volume = %old, "replaced volume no longer exists");
                e.replaced_volume_id = None;
            }
            Retire::Detach => {
                ctx.ec2.detach_volume(&old, &instance_id, false).await?;
                tracing::info!(member = e.index, volume = %old, "detach of the replaced volume requested");
            }
            Retire::Delete => {
                ctx.ec2.delete_volume(&old).await?;
                tracing::info!(member = e.index, volume = %old, "replaced volume deleted");
                e.replaced_volume_id = None;
                let note = format!(
                    "member {}: {} replaced {old}, resilvered, pool {} ONLINE; deleted {old}",
                    e.index,
                    e.volume_id.as_deref().unwrap_or("?"),
                    facts.pool_name
                );
                events::publish(ctx, pool, false, reason::MEMBER_REPLACED, note).await;
            }
        }
    }
    Ok(())
}

fn facts(
    pool: &ZfsPool,
    target: &Target,
    observed: &ZfsPoolStatus,
    members: &build::Members,
    gone: &BTreeMap<usize, String>,
) -> Facts {
    let spec = &pool.spec.template;
    let instance_id = target.instance.instance_id.clone();
    let old_mods: BTreeMap<i32, VolumeModification> = observed
        .volumes
        .iter()
        .filter_map(|v| Some((v.index, v.modification.clone()?)))
        .collect();
    let volumes: Vec<VolumeStatus> = members
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let recorded = observed.volumes.iter().find(|o| o.index == i as i32);
            let (generation, replaced) =
                recorded.map_or((0, None), |o| (o.generation, o.replaced_volume_id.clone()));
            let Some(v) = v.as_ref() else {
                // Gone from EC2: kept (state deleted) until the member is replaced. A member
                // still to be created keeps its generation and replaced volume.
                return match gone.get(&i) {
                    Some(id) => Some(VolumeStatus {
                        index: i as i32,
                        volume_id: Some(id.clone()),
                        state: Some("deleted".into()),
                        attachment_state: Some("detached".into()),
                        generation,
                        replaced_volume_id: replaced,
                        ..Default::default()
                    }),
                    None => (generation != 0 || replaced.is_some()).then(|| VolumeStatus {
                        index: i as i32,
                        generation,
                        replaced_volume_id: replaced,
                        ..Default::default()
                    }),
                };
            };
            let m = old_mods
                .get(&(i as i32))
                .map(|m| build::settle_modification(m, v));
            Some(VolumeStatus {
                generation,
                replaced_volume_id: replaced,
                ..build::volume_status(i, v, &instance_id, m)
            })
        })
        .collect();
    let performance = target.limits.as_ref().map(|l| {
        validate::performance_ceiling(
            &spec.volumes,
            spec.layout,
            l.maximum_iops,
            l.maximum_throughput_mibps,
        )
    });
    Facts {
        generation: pool.metadata.generation,
        node_name: pool.spec.node_name.clone(),
        pool_name: pool.pool_name(),
        layout: spec.layout,
        count: spec.volumes.count.max(0) as usize,
        instance_id,
        instance_type: target.instance.instance_type.clone(),
        availability_zone: target.instance.availability_zone.clone(),
        volumes,
        performance: performance.or_else(|| {
            Some(validate::performance_ceiling(
                &spec.volumes,
                spec.layout,
                None,
                None,
            ))
        }),
        recent_modifications: observed.recent_modifications.clone(),
        attach_problem: None,
        budget_wait: None,
        agent: AgentView::read(observed),
        repair: RepairView::None,
        restored_from: None,
    }
}

/// Polls of the volumes just created (`creating` for a few seconds on EC2) before they are
/// attached in the same reconcile, rather than a requeue later: after 0, 1, 2 and 2 s, one
/// DescribeVolumes for all of them each time. Still `creating` after that: the requeue
/// comes back for them.
const CREATED_POLLS: [u64; 4] = [0, 1, 2, 2];

async fn await_available(
    ctx: &Context,
    members: &mut build::Members,
    created: &[usize],
) -> Result<(), Error> {
    let pending: Vec<(usize, String)> = created
        .iter()
        .filter_map(|&i| members.slots[i].as_ref().map(|v| (i, v)))
        .filter(|(_, v)| v.state == VolumeState::Creating)
        .map(|(i, v)| (i, v.volume_id.clone()))
        .collect();
    poll_volumes(ctx, &CREATED_POLLS, pending, |i, fresh| {
        let creating = fresh.state == VolumeState::Creating;
        members.slots[i] = Some(fresh.clone());
        creating
    })
    .await
}

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

fn set_attachment(facts: &mut Facts, index: usize, state: &str) {
    if let Some(v) = facts.volumes.iter_mut().find(|v| v.index == index as i32) {
        v.attachment_state = Some(state.to_string());
    }
}

/// Attaches every available member to the instance; reports members attached elsewhere,
/// attachments that last, and attach limits as the VolumesAttached condition.
async fn attach_members(
    ctx: &Context,
    target: &Target,
    members: &build::Members,
    facts: &mut Facts,
    observed: &ZfsPoolStatus,
    now: &pgml_api::common::Time,
) -> Result<(), Error> {
    let instance_id = target.instance.instance_id.clone();
    let mut used = build::used_devices(&target.instance, members);
    let mut described = target.described;
    let mut wanted = Vec::new();
    // How long the pool has been waiting for its volumes (for attachments that last).
    let waiting_since = status::condition(observed, c::VOLUMES_ATTACHED)
        .filter(|c| c.status == c::FALSE)
        .map(|c| now.0.as_second() - c.last_transition_time.0.as_second())
        .unwrap_or(0);
    for (i, slot) in members.slots.iter().enumerate() {
        let Some(v) = slot else { continue };
        match build::attach_step(v, &instance_id) {
            AttachStep::Attached | AttachStep::NotReady(_) => {}
            AttachStep::InProgress(state) => {
                if state == AttachmentState::Attaching
                    && waiting_since > ctx.settings.pool.attach_timeout.as_secs() as i64
                {
                    facts.attach_problem = Some((
                        reason::ATTACHMENT_STUCK.into(),
                        format!(
                            "member {i} ({}) has been attaching to {instance_id} for over {}s; EC2 has not finished it",
                            v.volume_id,
                            ctx.settings.pool.attach_timeout.as_secs()
                        ),
                    ));
                }
            }
            AttachStep::Elsewhere(other) => {
                facts.attach_problem = Some((
                    reason::ATTACHED_ELSEWHERE.into(),
                    format!(
                        "member {i} ({}) is attached to instance {other}, not {instance_id} of node {}; the operator does not take volumes from other instances",
                        v.volume_id, facts.node_name
                    ),
                ));
            }
            AttachStep::Attach => {
                // Names are picked from a recent view only: the reservations of other pools'
                // attaches lapse a while after EC2 answered them ([`devices::DeviceReservations`]).
                if described.elapsed() > devices::INSTANCE_VIEW_MAX_AGE {
                    described = std::time::Instant::now();
                    if let Some(fresh) = ctx.ec2.describe_instance(&instance_id).await? {
                        used.extend(build::used_devices(&fresh, members));
                    }
                }
                let Some(device) = ctx.reserve_device(&instance_id, &v.volume_id, i, &used) else {
                    facts.attach_problem = Some((
                        reason::ATTACHMENT_LIMIT.into(),
                        format!("no free device name on {instance_id} for member {i}"),
                    ));
                    continue;
                };
                used.insert(device.clone());
                wanted.push((i, v.volume_id.clone(), device));
            }
        }
    }
    // Every member asks at once (each waits for its own token of the rate limiter, in
    // order), so that a pool's attaches are not spread across everyone else's.
    let answers = futures::future::join_all(
        wanted
            .iter()
            .map(|(_, volume, device)| ctx.ec2.attach_volume(volume, &instance_id, device)),
    )
    .await;
    let mut failed = None;
    let mut attaching = Vec::new();
    for ((i, volume, device), answer) in wanted.into_iter().zip(answers) {
        match answer {
            Ok(state) => {
                ctx.device_answered(&instance_id, &device);
                tracing::info!(%volume, %device, ?state, "attach requested");
                set_attachment(facts, i, build::attachment_word(state));
                if state != AttachmentState::Attached {
                    attaching.push((i, volume));
                }
            }
            Err(e) if e.code == "AttachmentLimitExceeded" => {
                ctx.release_device(&instance_id, &device);
                facts.attach_problem = Some((reason::ATTACHMENT_LIMIT.into(), e.to_string()));
            }
            Err(e) if e.code == "VolumeInUse" => {
                ctx.release_device(&instance_id, &device);
                facts.attach_problem = Some((reason::VOLUME_IN_USE.into(), e.to_string()));
            }
            Err(e) if e.code == "InvalidParameterValue" && e.message.contains("already in use") => {
                // Our view of the instance's devices was stale: next time, another name
                // (this one stays reserved, for whoever holds it).
                ctx.device_taken(&instance_id, &device);
                tracing::info!(%volume, "device name taken; retrying with another");
            }
            Err(e) => {
                ctx.release_device(&instance_id, &device);
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    await_attached(ctx, &instance_id, facts, attaching).await
}

/// After AttachVolume (answered `attaching`): EC2 usually finishes within seconds. Look a
/// few times, as the EBS CSI driver does, so that the status says `attached` (which the
/// node agent waits for) in this reconcile rather than the next. One DescribeVolumes per
/// look, for this pool's attaching members only.
const ATTACHED_POLLS: [u64; 4] = [0, 1, 1, 2];

async fn await_attached(
    ctx: &Context,
    instance_id: &str,
    facts: &mut Facts,
    attaching: Vec<(usize, String)>,
) -> Result<(), Error> {
    poll_volumes(ctx, &ATTACHED_POLLS, attaching, |i, v| {
        match build::attach_step(v, instance_id) {
            AttachStep::Attached => {
                set_attachment(facts, i, "attached");
                false
            }
            AttachStep::InProgress(state) => {
                set_attachment(facts, i, build::attachment_word(state));
                true
            }
            // Anything else is the next reconcile's to judge.
            _ => false,
        }
    })
    .await
}

/// Grows members below the spec with ModifyVolume, within AWS's 4 per volume per 24 h.
async fn grow_members(
    ctx: &Context,
    pool: &ZfsPool,
    members: &build::Members,
    facts: &mut Facts,
    now: &pgml_api::common::Time,
) -> Result<(), Error> {
    let spec = &pool.spec.template.volumes;
    let in_flight = |i: usize| {
        facts.volumes.iter().any(|v| {
            v.index == i as i32
                && v.modification
                    .as_ref()
                    .is_some_and(|m| m.state == "modifying")
        })
    };
    let plan: Vec<(usize, pgml_aws::ModifyVolume)> = members
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v: &Volume = v.as_ref()?;
            (matches!(v.state, VolumeState::Available | VolumeState::InUse) && !in_flight(i))
                .then(|| build::growth(v, spec).map(|m| (i, m)))
                .flatten()
        })
        .collect();
    let secs =
        |ts: &[pgml_api::common::Time]| ts.iter().map(|t| t.0.as_second()).collect::<Vec<_>>();
    let t = now.0.as_second();
    let recent = secs(&facts.recent_modifications);
    if plan.is_empty() {
        facts.recent_modifications = to_times(&build::prune_recent(&recent, t, false));
        return Ok(());
    }
    match build::modification_budget(&recent, t) {
        Budget::SpentUntil(at) => {
            let when = k8s_openapi::jiff::Timestamp::from_second(at)
                .map(|t| t.to_string())
                .unwrap_or_default();
            facts.budget_wait = Some(format!(
                "the spec asks for larger volumes, but AWS allows 4 modifications per volume in 24 hours and they are spent; the next can start at {when}"
            ));
            Ok(())
        }
        Budget::Available { .. } => {
            let mut started = false;
            let mut result = Ok(());
            for (i, m) in plan {
                match ctx.ec2.modify_volume(&m).await {
                    Ok(()) => {
                        started = true;
                        tracing::info!(volume = %m.volume_id, ?m, "modification requested");
                        if let Some(v) = facts.volumes.iter_mut().find(|v| v.index == i as i32) {
                            v.modification = Some(VolumeModification {
                                state: "modifying".into(),
                                progress: Some(0),
                                start_time: Some(now.clone()),
                                target_size_gib: m.size_gib.map(i64::from),
                                target_iops: m.iops.map(i64::from),
                                target_throughput_mibps: m.throughput_mibps.map(i64::from),
                                target_type: None,
                                message: None,
                            });
                        }
                    }
                    Err(e) if e.code == "IncorrectModificationState" => {
                        tracing::info!(volume = %m.volume_id, "a modification is still running; waiting");
                    }
                    Err(e) => {
                        result = Err(e.into());
                        break;
                    }
                }
            }
            facts.recent_modifications = to_times(&build::prune_recent(&recent, t, started));
            if started {
                events::publish(
                    ctx,
                    pool,
                    false,
                    "VolumesModifying",
                    "EBS is growing the volumes to the new spec".into(),
                )
                .await;
            }
            result
        }
    }
}

fn to_times(secs: &[i64]) -> Vec<pgml_api::common::Time> {
    secs.iter()
        .filter_map(|s| k8s_openapi::jiff::Timestamp::from_second(*s).ok())
        .map(pgml_api::common::Time)
        .collect()
}
