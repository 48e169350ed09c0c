//! Status: what the controller owns of a pool's status, computed from what it observed
//! (pure). Conditions keep their `lastTransitionTime` while their status stays; the apply
//! is skipped when the result equals the controller's part of the observed status, so a
//! no-op reconcile writes nothing. One function per condition is in `verdicts`, the Events
//! a change deserves in `notices`, what the node agent reports in `agent`.

mod agent;
mod notices;
mod verdicts;

#[cfg(test)]
mod tests;

use pgml_api::common::{Condition, Time, condition as c};
use pgml_api::schedule::ScheduleStatus;
use pgml_api::zfspool::{Layout, PerformanceCeiling, PoolPhase, VolumeStatus, ZfsPoolStatus};

use crate::runtime::conditions::{Stamp, set_condition};
use crate::runtime::ssa;

pub use agent::{AgentView, ReportedMember, SickMember};
pub use notices::{Notice, attached_note, notices};

/// Condition types the controller writes (the agent writes the others).
pub const OWNED_CONDITIONS: [&str; 6] = [
    c::READY,
    c::PROGRESSING,
    c::DEGRADED,
    c::VOLUMES_ATTACHED,
    c::SPEC_VALID,
    c::PERFORMANCE_LIMITED,
];

/// Reasons, as named constants so tests and the e2e suite can match them.
pub mod reason {
    pub const SPEC_VALID: &str = "SpecValid";
    pub const NODE_NOT_FOUND: &str = "NodeNotFound";
    pub const NODE_WITHOUT_PROVIDER_ID: &str = "NodeWithoutProviderID";
    pub const INSTANCE_NOT_FOUND: &str = "InstanceNotFound";
    pub const CREATING_VOLUMES: &str = "CreatingVolumes";
    pub const ATTACHING: &str = "Attaching";
    pub const ATTACHED: &str = "Attached";
    pub const ATTACHED_ELSEWHERE: &str = "AttachedToAnotherInstance";
    pub const ATTACHMENT_LIMIT: &str = "AttachmentLimitExceeded";
    /// Still `attaching` after the attach timeout: reported, still awaited.
    pub const ATTACHMENT_STUCK: &str = "AttachmentStuck";
    pub const VOLUME_IN_USE: &str = "VolumeInUse";
    pub const WAITING_FOR_AGENT: &str = "WaitingForAgent";
    pub const POOL_ONLINE: &str = "PoolOnline";
    pub const RESIZING: &str = "Resizing";
    pub const MODIFICATION_BUDGET: &str = "ModificationBudgetSpent";
    pub const HEALTHY: &str = "Healthy";
    pub const POOL_DEGRADED: &str = "PoolDegraded";
    pub const POOL_FAULTED: &str = "PoolFaulted";
    pub const VOLUME_ERROR: &str = "VolumeError";
    pub const WITHIN_INSTANCE_LIMITS: &str = "WithinInstanceLimits";
    pub const INSTANCE_LIMITED: &str = "InstanceLimited";
    pub const DELETING: &str = "Deleting";
    /// `restoreFrom` names an EbsSnapshot that does not exist (yet).
    pub const SNAPSHOT_NOT_FOUND: &str = "SnapshotNotFound";
    pub const WAITING_FOR_RELEASE: &str = "WaitingForAgentRelease";
    pub const AGENT_NOT_RELEASING: &str = "AgentNotReleasing";
    /// Deletion: the Node object is gone but EC2 says its instance still runs, so the
    /// volumes get a plain detach, not a forced one.
    pub const INSTANCE_STILL_RUNNING: &str = "InstanceStillRunning";
    /// A lost raidz1 member's replacement is being created, attached and handed to the agent.
    pub const MEMBER_REPLACING: &str = "MemberReplacing";
    /// The agent resilvers the replacement.
    pub const RESILVERING: &str = "Resilvering";
    /// A raidz1 member is lost and `memberReplacement` is Manual.
    pub const MEMBER_LOST: &str = "MemberLost";
    /// Event: a replacement finished and the replaced volume was deleted.
    pub const MEMBER_REPLACED: &str = "MemberReplaced";
}

/// The controller's part of a status: its fields, its conditions (sorted by type) and its
/// fields of each volume entry (sorted by index). Every field is named, the agent's and the
/// scheduler's left out by name, so a field added to the status is a decision here.
pub fn owned_view(s: &ZfsPoolStatus) -> ZfsPoolStatus {
    let ZfsPoolStatus {
        observed_generation,
        phase,
        conditions,
        instance_id,
        instance_type,
        availability_zone,
        pool_name,
        volumes,
        performance,
        recent_modifications,
        restored_from,
        // The node agent's.
        pool_guid: _,
        zfs_dialect: _,
        health: _,
        size: _,
        size_bytes: _,
        allocated_bytes: _,
        free_bytes: _,
        resilver: _,
        datasets: _,
        // The snapshot scheduler's.
        schedule: _,
    } = s;
    let mut volumes: Vec<VolumeStatus> = volumes
        .iter()
        .map(owned_volume)
        .filter(|v| {
            *v != VolumeStatus {
                index: v.index,
                ..Default::default()
            }
        })
        .collect();
    volumes.sort_by_key(|v| v.index);
    ZfsPoolStatus {
        observed_generation: *observed_generation,
        phase: *phase,
        conditions: ssa::owned_conditions(conditions, &OWNED_CONDITIONS),
        instance_id: instance_id.clone(),
        instance_type: instance_type.clone(),
        availability_zone: availability_zone.clone(),
        pool_name: pool_name.clone(),
        volumes,
        performance: performance.clone(),
        recent_modifications: recent_modifications.clone(),
        restored_from: restored_from.clone(),
        pool_guid: None,
        zfs_dialect: None,
        health: None,
        size: None,
        size_bytes: None,
        allocated_bytes: None,
        free_bytes: None,
        resilver: None,
        datasets: Vec::new(),
        schedule: ScheduleStatus::default(),
    }
}

/// The controller's fields of one volume entry (the agent writes `device`, `memberState`
/// and `memberVolumeId`).
fn owned_volume(v: &VolumeStatus) -> VolumeStatus {
    let VolumeStatus {
        index,
        volume_id,
        generation,
        replaced_volume_id,
        availability_zone,
        state,
        attachment_state,
        volume_type,
        size_gib,
        iops,
        throughput_mibps,
        modification,
        // The node agent's.
        device: _,
        member_state: _,
        member_volume_id: _,
    } = v;
    VolumeStatus {
        index: *index,
        volume_id: volume_id.clone(),
        generation: *generation,
        replaced_volume_id: replaced_volume_id.clone(),
        availability_zone: availability_zone.clone(),
        state: state.clone(),
        attachment_state: attachment_state.clone(),
        volume_type: volume_type.clone(),
        size_gib: *size_gib,
        iops: *iops,
        throughput_mibps: *throughput_mibps,
        modification: modification.clone(),
        device: None,
        member_state: None,
        member_volume_id: None,
    }
}

pub fn condition<'a>(s: &'a ZfsPoolStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(s: &ZfsPoolStatus, type_: &str) -> bool {
    condition(s, type_).is_some_and(|c| c.status == c::TRUE)
}

/// Why the controller cannot go on (spec invalid, node or instance unresolved): Ready and
/// Progressing False with that reason, the rest of the controller's status as observed.
pub fn blocked(
    observed: &ZfsPoolStatus,
    generation: Option<i64>,
    spec_error: Option<(&str, &str)>,
    reason: &str,
    message: &str,
    now: &Time,
) -> ZfsPoolStatus {
    let mut s = owned_view(observed);
    let old = s.conditions.clone();
    s.observed_generation = generation;
    let stamp = Stamp { generation, now };
    if let Some((r, m)) = spec_error {
        set_condition(&mut s.conditions, &old, c::SPEC_VALID, false, r, m, stamp);
    }
    for type_ in [c::READY, c::PROGRESSING] {
        set_condition(
            &mut s.conditions,
            &old,
            type_,
            false,
            reason,
            message,
            stamp,
        );
    }
    s.phase = Some(if spec_error.is_some() {
        PoolPhase::Failed
    } else {
        PoolPhase::Pending
    });
    s
}

/// Where the repair of lost members stands, for the conditions.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum RepairView {
    #[default]
    None,
    /// Member `index`'s replacement `new` (not created yet: `None`) for `old` is being
    /// created, attached or handed to the agent.
    Replacing {
        index: i32,
        old: String,
        new: Option<String>,
        attached: bool,
    },
    /// The agent resilvers member `index`'s replacement.
    Resilvering {
        index: i32,
        old: String,
        new: String,
        percent: Option<i32>,
    },
    /// Lost raidz1 members with `memberReplacement: Manual` (descriptions).
    Manual(Vec<String>),
    /// More lost than raidz1 survives (descriptions).
    TooMany(Vec<String>),
    /// Lost raid0 members (descriptions).
    Raid0(Vec<String>),
}

impl RepairView {
    /// A repair under way or needed: the pool is not Ready.
    pub fn active(&self) -> bool {
        *self != RepairView::None
    }

    /// Lost members the operator does not replace: nothing moves until someone acts.
    pub fn blocked(&self) -> bool {
        matches!(
            self,
            RepairView::Manual(_) | RepairView::TooMany(_) | RepairView::Raid0(_)
        )
    }
}

/// Why members are not (all) attached, for the VolumesAttached condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachProblem {
    pub reason: &'static str,
    pub message: String,
}

impl AttachProblem {
    /// Something EC2 or a user must change, rather than an attachment that lasts (which
    /// is reported but still awaited).
    pub fn blocks(&self) -> bool {
        self.reason != reason::ATTACHMENT_STUCK
    }
}

/// Everything the controller learned in one reconcile, for [`compute`].
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub generation: Option<i64>,
    pub node_name: String,
    pub pool_name: String,
    pub layout: Layout,
    pub count: usize,
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    /// The controller's fields of each member that exists.
    pub volumes: Vec<VolumeStatus>,
    pub performance: Option<PerformanceCeiling>,
    pub recent_modifications: Vec<Time>,
    /// Why attaching is stuck, when it is.
    pub attach_problem: Option<AttachProblem>,
    /// A growth waiting for the modification budget: the message.
    pub budget_wait: Option<String>,
    pub agent: AgentView,
    pub repair: RepairView,
    /// The EbsSnapshot every member was created from, once all were.
    pub restored_from: Option<String>,
}

/// The controller's status from the facts; `observed` supplies transition times.
pub fn compute(f: &Facts, observed: &ZfsPoolStatus, now: &Time) -> ZfsPoolStatus {
    let attachments = verdicts::attachments(f);
    let degraded = verdicts::degraded(f);
    let ready = verdicts::ready(f, &attachments, &degraded);
    let progressing = verdicts::progressing(f, &attachments, &ready);
    let performance = verdicts::performance(f);
    let spec_valid = verdicts::Verdict {
        status: true,
        reason: reason::SPEC_VALID.into(),
        message: "the spec passed the operator's checks".into(),
    };

    let old = owned_view(observed).conditions;
    let stamp = Stamp {
        generation: f.generation,
        now,
    };
    let mut conditions = Vec::new();
    let verdicts = [
        (c::SPEC_VALID, Some(&spec_valid)),
        (c::VOLUMES_ATTACHED, Some(&attachments.verdict)),
        (c::PERFORMANCE_LIMITED, performance.as_ref()),
        (c::DEGRADED, Some(&degraded)),
        (c::READY, Some(&ready)),
        (c::PROGRESSING, Some(&progressing)),
    ];
    for (type_, v) in verdicts {
        if let Some(v) = v {
            let message = v.message.clone();
            set_condition(
                &mut conditions,
                &old,
                type_,
                v.status,
                &v.reason,
                message,
                stamp,
            );
        }
    }

    let mut volumes = f.volumes.clone();
    volumes.sort_by_key(|v| v.index);
    ZfsPoolStatus {
        observed_generation: f.generation,
        phase: Some(verdicts::phase(f, &attachments, ready.status)),
        conditions,
        instance_id: Some(f.instance_id.clone()),
        instance_type: Some(f.instance_type.clone()).filter(|s| !s.is_empty()),
        availability_zone: Some(f.availability_zone.clone()),
        pool_name: Some(f.pool_name.clone()),
        volumes,
        performance: f.performance.clone(),
        recent_modifications: f.recent_modifications.clone(),
        restored_from: f
            .restored_from
            .clone()
            .or_else(|| observed.restored_from.clone()),
        ..Default::default()
    }
}
