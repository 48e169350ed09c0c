//! Lost members: how each member looks to the repair decision ([`super::super::repair`]),
//! what is recorded before a replacement is created, where the repair stands, and what
//! becomes of the volumes members replaced.

use std::collections::BTreeMap;

use pgml_api::zfspool::{VolumeStatus, ZfsPoolTemplate};

use super::entry_mut;
use crate::zfspool::build::Members;
use crate::zfspool::repair::{self, Decision, Loss, MemberView, Retire};
use crate::zfspool::status::{Facts, RepairView};

/// Each member as the repair decision sees it: its volume, generation, replaced volume,
/// EC2 state (`None`: gone) and the agent's state when the agent's report is about it.
pub fn views(facts: &Facts, members: &Members) -> Vec<MemberView> {
    (0..facts.count)
        .map(|i| {
            let e = facts.volumes.iter().find(|v| v.index == i as i32);
            let volume_id = e.and_then(|e| e.volume_id.clone());
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
                ec2_state: members.slots[i].as_ref().map(|v| v.state.clone()),
            }
        })
        .collect()
}

/// What to do about lost members, under the spec's layout and replacement policy.
pub fn decide(template: &ZfsPoolTemplate, facts: &Facts, members: &Members) -> Decision {
    repair::decide(
        template.layout,
        template.member_replacement,
        &views(facts, members),
        facts.agent.health.as_deref(),
        facts.agent.resilvering,
    )
}

/// Records member `index`'s replacement before anything is created: its next
/// `generation`, with `old` as the volume it replaces. A crash from here on creates the
/// same replacement (same ClientToken) and still knows the old volume. The old volume
/// leaves its slot for the retired ones; the member is no longer gone but to be created.
pub fn begin(
    facts: &mut Facts,
    members: &mut Members,
    gone: &mut BTreeMap<usize, String>,
    index: usize,
    old: &str,
    generation: i32,
) {
    *entry_mut(&mut facts.volumes, index) = VolumeStatus {
        index: index as i32,
        generation,
        replaced_volume_id: Some(old.to_string()),
        ..Default::default()
    };
    if let Some(v) = members.slots[index].take() {
        members.retired.push((index, v));
    }
    gone.remove(&index);
}

/// The `MemberLost` Event of a replacement begun.
pub fn lost_note(pool_name: &str, index: usize, old: &str, loss: &Loss, generation: i32) -> String {
    format!(
        "member {index} ({old}) of pool {pool_name} is lost: {loss}; replacing it with a new volume (member generation {generation})"
    )
}

/// Where the repair stands, for the conditions: lost members the operator does not
/// replace, else the first replacement not finished (its member ONLINE in an ONLINE pool
/// that does not resilver).
pub fn view(decision: &Decision, facts: &Facts) -> RepairView {
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
                attached: v.is_attached(),
            },
        };
    }
    RepairView::None
}

/// What to do with one volume a member replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retirement {
    /// The member.
    pub index: i32,
    /// The volume it replaced.
    pub old: String,
    /// Its current volume.
    pub new: Option<String>,
    pub step: Retire,
}

/// The volumes members replaced, in member order: detached at once, deleted once the new
/// member is ONLINE in an ONLINE pool, dropped from status (`Forget`, and after `Delete`)
/// when EC2 no longer has them.
pub fn retirements(facts: &Facts, members: &Members, instance_id: &str) -> Vec<Retirement> {
    let agent = &facts.agent;
    facts
        .volumes
        .iter()
        .filter_map(|e| {
            let old = e.replaced_volume_id.clone()?;
            let v = members
                .retired
                .iter()
                .map(|(_, v)| v)
                .find(|v| v.volume_id == old);
            let state = e
                .volume_id
                .as_deref()
                .and_then(|id| agent.member_state(e.index, id));
            let step = repair::retire_step(
                v,
                instance_id,
                state,
                agent.health.as_deref(),
                agent.resilvering,
            );
            Some(Retirement {
                index: e.index,
                old,
                new: e.volume_id.clone(),
                step,
            })
        })
        .collect()
}

/// The member no longer has a volume it replaced.
pub fn retired(facts: &mut Facts, index: i32) {
    if let Some(e) = facts.volumes.iter_mut().find(|v| v.index == index) {
        e.replaced_volume_id = None;
    }
}

/// The `MemberReplaced` Event of a replaced volume deleted.
pub fn replaced_note(r: &Retirement, pool_name: &str) -> String {
    format!(
        "member {}: {} replaced {}, resilvered, pool {pool_name} ONLINE; deleted {}",
        r.index,
        r.new.as_deref().unwrap_or("?"),
        r.old,
        r.old
    )
}
