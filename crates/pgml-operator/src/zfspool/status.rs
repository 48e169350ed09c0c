//! The status the controller owns, computed from what it observed (pure). Conditions keep
//! their `lastTransitionTime` while their status stays; the apply is skipped when the result
//! equals the controller's part of the observed status, so a no-op reconcile writes nothing.

use pgml_api::common::{Condition, Time, condition as c};
use pgml_api::zfspool::{Layout, PerformanceCeiling, PoolPhase, VolumeStatus, ZfsPoolStatus};

use crate::runtime::conditions::{Stamp, set_condition};
use crate::runtime::ssa;

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
/// fields of each volume entry (sorted by index).
pub fn owned_view(s: &ZfsPoolStatus) -> ZfsPoolStatus {
    let conditions = ssa::owned_conditions(&s.conditions, &OWNED_CONDITIONS);
    let mut volumes: Vec<VolumeStatus> = s
        .volumes
        .iter()
        .map(|v| VolumeStatus {
            device: None,
            member_state: None,
            ..v.clone()
        })
        .filter(|v| {
            *v != VolumeStatus {
                index: v.index,
                ..Default::default()
            }
        })
        .collect();
    volumes.sort_by_key(|v| v.index);
    ZfsPoolStatus {
        observed_generation: s.observed_generation,
        phase: s.phase,
        conditions,
        instance_id: s.instance_id.clone(),
        instance_type: s.instance_type.clone(),
        availability_zone: s.availability_zone.clone(),
        pool_name: s.pool_name.clone(),
        volumes,
        performance: s.performance.clone(),
        recent_modifications: s.recent_modifications.clone(),
        restored_from: s.restored_from.clone(),
        ..Default::default()
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
    if let Some((r, m)) = spec_error {
        set_condition(
            &mut s.conditions,
            &old,
            c::SPEC_VALID,
            false,
            r,
            m,
            Stamp { generation, now },
        );
    }
    set_condition(
        &mut s.conditions,
        &old,
        c::READY,
        false,
        reason,
        message,
        Stamp { generation, now },
    );
    set_condition(
        &mut s.conditions,
        &old,
        c::PROGRESSING,
        false,
        reason,
        message,
        Stamp { generation, now },
    );
    s.phase = Some(if spec_error.is_some() {
        PoolPhase::Failed
    } else {
        PoolPhase::Pending
    });
    s
}

/// What the node agent reports, read from the object.
#[derive(Debug, Default, Clone)]
pub struct AgentView {
    pub imported: bool,
    pub healthy: bool,
    pub health: Option<String>,
    /// (index, volume ID, member state) of members not ONLINE.
    pub sick_members: Vec<(i32, Option<String>, String)>,
    /// (index, device, member state) as the agent reported them.
    pub members: Vec<(i32, Option<String>, Option<String>)>,
    /// A resilver runs (`status.resilver.inProgress`).
    pub resilvering: bool,
    pub resilver_percent: Option<i32>,
}

impl AgentView {
    pub fn read(s: &ZfsPoolStatus) -> AgentView {
        AgentView {
            imported: is_true(s, c::POOL_IMPORTED),
            healthy: is_true(s, c::POOL_HEALTHY),
            health: s.health.clone(),
            sick_members: s
                .volumes
                .iter()
                .filter_map(|v| {
                    let st = v.member_state.as_deref()?;
                    (st != "ONLINE").then(|| (v.index, v.volume_id.clone(), st.to_string()))
                })
                .collect(),
            members: s
                .volumes
                .iter()
                .map(|v| (v.index, v.device.clone(), v.member_state.clone()))
                .collect(),
            resilvering: s.resilver.as_ref().is_some_and(|r| r.in_progress),
            resilver_percent: s.resilver.as_ref().and_then(|r| r.percent_done),
        }
    }

    /// The agent's state of member `index`, when its report is about `volume_id`: the agent
    /// writes a member's device (the volume's by-id link) and its state from the same pass,
    /// so a device naming another volume means the state describes that other volume (the
    /// report predates a replacement).
    pub fn member_state(&self, index: i32, volume_id: &str) -> Option<&str> {
        let (_, device, state) = self.members.iter().find(|(i, _, _)| *i == index)?;
        let link = format!(
            "nvme-Amazon_Elastic_Block_Store_vol{}",
            volume_id.strip_prefix("vol-").unwrap_or(volume_id)
        );
        let named = device
            .as_deref()
            .and_then(|d| d.rsplit('/').next())
            .is_some_and(|name| name == link);
        named.then_some(state.as_deref()).flatten()
    }

    /// The agent's state of member `index`, whatever volume it describes.
    pub fn reported_state(&self, index: i32) -> Option<&str> {
        self.members
            .iter()
            .find(|(i, _, _)| *i == index)
            .and_then(|(_, _, s)| s.as_deref())
    }
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
    /// Why attaching is stuck, when it is: (reason, message).
    pub attach_problem: Option<(String, String)>,
    /// A growth waiting for the modification budget: the message.
    pub budget_wait: Option<String>,
    pub agent: AgentView,
    pub repair: RepairView,
    /// The EbsSnapshot every member was created from, once all were.
    pub restored_from: Option<String>,
}

fn attached(v: &VolumeStatus) -> bool {
    v.attachment_state.as_deref() == Some("attached")
}

/// The controller's status from the facts; `observed` supplies transition times.
pub fn compute(f: &Facts, observed: &ZfsPoolStatus, now: &Time) -> ZfsPoolStatus {
    let old = owned_view(observed).conditions;
    let g = f.generation;
    let mut conds = Vec::new();
    let mut set = |t: &str, s: bool, r: &str, m: String| {
        set_condition(&mut conds, &old, t, s, r, m, Stamp { generation: g, now })
    };

    set(
        c::SPEC_VALID,
        true,
        reason::SPEC_VALID,
        "the spec passed the operator's checks".into(),
    );

    let n_attached = f.volumes.iter().filter(|v| attached(v)).count();
    // An entry without a volume is a member whose replacement is still to be created.
    let with_volume = f.volumes.iter().filter(|v| v.volume_id.is_some()).count();
    let all_attached = n_attached == f.count && with_volume == f.count;
    let missing = f.count.saturating_sub(with_volume);
    let (att_reason, att_msg) = if all_attached {
        (
            reason::ATTACHED.to_string(),
            format!(
                "all {} volumes are attached to {} ({})",
                f.count, f.instance_id, f.node_name
            ),
        )
    } else if let Some((r, m)) = &f.attach_problem {
        (r.clone(), m.clone())
    } else if missing > 0 {
        (
            reason::CREATING_VOLUMES.to_string(),
            format!("{missing} of {} volumes are still to be created", f.count),
        )
    } else {
        (
            reason::ATTACHING.to_string(),
            format!(
                "{n_attached} of {} volumes attached to {}",
                f.count, f.instance_id
            ),
        )
    };
    set(
        c::VOLUMES_ATTACHED,
        all_attached,
        &att_reason,
        att_msg.clone(),
    );

    if let Some(p) = &f.performance {
        let limited = p.limited_by == "Instance";
        let msg = format!(
            "volumes buy {} IOPS and {} MiB/s; instance type {} allows {} IOPS and {} MiB/s",
            p.volume_iops,
            p.volume_throughput_mibps,
            f.instance_type,
            p.instance_iops.map_or("unknown".into(), |i| i.to_string()),
            p.instance_throughput_mibps
                .map_or("unknown".into(), |i| i.to_string()),
        );
        let r = if limited {
            reason::INSTANCE_LIMITED
        } else {
            reason::WITHIN_INSTANCE_LIMITS
        };
        set(c::PERFORMANCE_LIMITED, limited, r, msg);
    }

    let broken: Vec<&VolumeStatus> = f
        .volumes
        .iter()
        .filter(|v| v.state.as_deref() == Some("error"))
        .collect();
    let health = f.agent.health.as_deref();
    let members = |list: &[(i32, Option<String>, String)]| {
        list.iter()
            .map(|(i, id, st)| format!("member {i} ({}) is {st}", id.as_deref().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let advice = match f.layout {
        Layout::Raid0 => {
            "a raid0 pool cannot lose a member: the data must come back from a snapshot (an EbsSnapshot restored with restoreFrom); nothing was deleted"
        }
        Layout::Raidz1 => {
            "more members were lost than raidz1 can survive: the data must come back from a snapshot; nothing was deleted"
        }
    };
    let (degraded, deg_reason, deg_msg) = match (health, &f.repair) {
        (Some("FAULTED") | Some("UNAVAIL"), _)
        | (_, RepairView::Raid0(_))
        | (_, RepairView::TooMany(_)) => {
            let mut named = members(&f.agent.sick_members);
            if let RepairView::Raid0(lost) | RepairView::TooMany(lost) = &f.repair {
                let more = lost.join(", ");
                named = if named.is_empty() {
                    more
                } else {
                    format!("{named}; {more}")
                };
            }
            let state = match health {
                Some(h @ ("FAULTED" | "UNAVAIL")) => h.to_string(),
                _ => "losing members".to_string(),
            };
            (
                true,
                reason::POOL_FAULTED,
                format!("pool {} is {state}: {named}; {advice}", f.pool_name),
            )
        }
        (_, RepairView::Manual(lost)) => (
            true,
            reason::MEMBER_LOST,
            format!(
                "pool {}: {}; spec.memberReplacement is Manual, so the operator does not replace it: set spec.memberReplacement to Automatic to have it replace the member (a new volume, zpool replace, resilver) while the pool stays online",
                f.pool_name,
                lost.join(", ")
            ),
        ),
        (
            _,
            RepairView::Resilvering {
                index,
                old,
                new,
                percent,
            },
        ) => (
            true,
            reason::RESILVERING,
            format!(
                "member {index}: {new} replaces the lost {old}; the pool is resilvering{}",
                percent.map_or(String::new(), |p| format!(" ({p}% done)"))
            ),
        ),
        (
            _,
            RepairView::Replacing {
                index,
                old,
                new,
                attached,
            },
        ) => (
            true,
            reason::MEMBER_REPLACING,
            match (new, attached) {
                (None, _) => {
                    format!("member {index} ({old}) is lost; creating its replacement volume")
                }
                (Some(n), false) => {
                    format!("member {index} ({old}) is lost; attaching its replacement {n}")
                }
                (Some(n), true) => format!(
                    "member {index} ({old}) is lost; waiting for the node agent on {} to replace it with {n} (zpool replace)",
                    f.node_name
                ),
            },
        ),
        (Some("DEGRADED"), _) => (
            true,
            reason::POOL_DEGRADED,
            format!(
                "pool {} is DEGRADED: {}",
                f.pool_name,
                members(&f.agent.sick_members)
            ),
        ),
        _ if !broken.is_empty() => (
            true,
            reason::VOLUME_ERROR,
            broken
                .iter()
                .map(|v| {
                    format!(
                        "member {} ({}) is in EBS state error",
                        v.index,
                        v.volume_id.as_deref().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => (false, reason::HEALTHY, "no member is lost".into()),
    };
    set(c::DEGRADED, degraded, deg_reason, deg_msg.clone());

    let repairing = matches!(
        f.repair,
        RepairView::Replacing { .. } | RepairView::Resilvering { .. }
    );
    let ready = all_attached && f.agent.imported && f.agent.healthy && !f.repair.active();
    let modifying = f.volumes.iter().any(|v| {
        v.modification
            .as_ref()
            .is_some_and(|m| m.state == "modifying")
    });
    let (ready_reason, ready_msg) = if ready {
        (
            reason::POOL_ONLINE.to_string(),
            format!(
                "pool {} is imported and healthy on {}",
                f.pool_name, f.node_name
            ),
        )
    } else if f.repair.active() {
        (deg_reason.to_string(), deg_msg)
    } else if !all_attached {
        (att_reason.clone(), att_msg.clone())
    } else {
        (
            reason::WAITING_FOR_AGENT.to_string(),
            format!(
                "volumes attached; waiting for the node agent on {} to report pool {} imported and healthy (PoolImported, PoolHealthy)",
                f.node_name, f.pool_name
            ),
        )
    };
    set(c::READY, ready, &ready_reason, ready_msg.clone());

    let blocked_attach = f
        .attach_problem
        .as_ref()
        .is_some_and(|(r, _)| r != reason::ATTACHMENT_STUCK)
        && !all_attached;
    let (progressing, prog_reason, prog_msg) = if repairing {
        (true, ready_reason, ready_msg)
    } else if f.repair.active() {
        // Lost members the operator does not replace: nothing moves until someone acts.
        (false, ready_reason, ready_msg)
    } else if let Some(m) = &f.budget_wait {
        (false, reason::MODIFICATION_BUDGET.to_string(), m.clone())
    } else if modifying {
        (
            true,
            reason::RESIZING.to_string(),
            "EBS is modifying the volumes to the new spec".to_string(),
        )
    } else if ready {
        (false, reason::POOL_ONLINE.to_string(), ready_msg)
    } else if blocked_attach {
        (false, ready_reason, ready_msg)
    } else {
        (true, ready_reason, ready_msg)
    };
    set(c::PROGRESSING, progressing, &prog_reason, prog_msg);

    let phase = match (health, &f.repair) {
        (Some("FAULTED") | Some("UNAVAIL"), _)
        | (_, RepairView::Raid0(_) | RepairView::TooMany(_)) => PoolPhase::Failed,
        (_, RepairView::Resilvering { .. }) => PoolPhase::Resilvering,
        (_, RepairView::Replacing { .. } | RepairView::Manual(_)) | (Some("DEGRADED"), _) => {
            PoolPhase::Degraded
        }
        _ if missing > 0 => PoolPhase::Creating,
        _ if !all_attached => PoolPhase::Attaching,
        _ if modifying => PoolPhase::Resizing,
        _ if !ready => PoolPhase::Importing,
        _ => PoolPhase::Online,
    };

    let mut volumes = f.volumes.clone();
    volumes.sort_by_key(|v| v.index);
    ZfsPoolStatus {
        observed_generation: g,
        phase: Some(phase),
        conditions: conds,
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

/// An Event the status change deserves: (warning?, reason, note).
pub type Notice = (bool, String, String);

/// Events for conditions that changed between the observed and the new status: the
/// warnings a user must see once (not on every reconcile) and `PoolReady`.
pub fn notices(observed: &ZfsPoolStatus, new: &ZfsPoolStatus) -> Vec<Notice> {
    let changed = |t: &str| -> Option<&Condition> {
        let n = condition(new, t)?;
        let o = condition(observed, t);
        (o.map(|o| (&o.status, &o.reason)) != Some((&n.status, &n.reason))).then_some(n)
    };
    let mut out = Vec::new();
    if let Some(n) = changed(c::SPEC_VALID).filter(|n| n.status == c::FALSE) {
        out.push((true, n.reason.clone(), n.message.clone()));
    }
    if let Some(n) = changed(c::READY) {
        if n.status == c::TRUE {
            out.push((false, "PoolReady".into(), n.message.clone()));
        } else if [
            reason::NODE_NOT_FOUND,
            reason::NODE_WITHOUT_PROVIDER_ID,
            reason::INSTANCE_NOT_FOUND,
            reason::SNAPSHOT_NOT_FOUND,
        ]
        .contains(&n.reason.as_str())
        {
            out.push((true, n.reason.clone(), n.message.clone()));
        }
    }
    if let Some(n) = changed(c::VOLUMES_ATTACHED).filter(|n| {
        [
            reason::ATTACHED_ELSEWHERE,
            reason::ATTACHMENT_LIMIT,
            reason::ATTACHMENT_STUCK,
            reason::VOLUME_IN_USE,
        ]
        .contains(&n.reason.as_str())
    }) {
        out.push((true, n.reason.clone(), n.message.clone()));
    }
    for t in [c::DEGRADED, c::PERFORMANCE_LIMITED] {
        if let Some(n) = changed(t).filter(|n| n.status == c::TRUE) {
            // A repair under way is news, not a warning (MemberLost was the warning).
            let progress =
                [reason::MEMBER_REPLACING, reason::RESILVERING].contains(&n.reason.as_str());
            out.push((!progress, n.reason.clone(), n.message.clone()));
        }
    }
    if let Some(n) = changed(c::PROGRESSING).filter(|n| n.reason == reason::MODIFICATION_BUDGET) {
        out.push((true, n.reason.clone(), n.message.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn vol(i: i32, att: &str) -> VolumeStatus {
        VolumeStatus {
            index: i,
            volume_id: Some(format!("vol-{i}")),
            state: Some("in-use".into()),
            attachment_state: Some(att.into()),
            ..Default::default()
        }
    }

    fn facts(atts: &[&str]) -> Facts {
        Facts {
            generation: Some(2),
            node_name: "node-a".into(),
            pool_name: "tank".into(),
            count: 3,
            instance_id: "i-1".into(),
            instance_type: "m7i.large".into(),
            availability_zone: "us-east-1a".into(),
            volumes: atts
                .iter()
                .enumerate()
                .map(|(i, a)| vol(i as i32, a))
                .collect(),
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a ZfsPoolStatus, t: &str) -> &'a Condition {
        condition(s, t).unwrap_or_else(|| panic!("no {t}"))
    }

    #[test]
    fn transition_time_is_kept_while_status_stays() {
        let mut conds = vec![];
        set_condition(
            &mut conds,
            &[],
            c::READY,
            false,
            "A",
            "m",
            Stamp {
                generation: Some(1),
                now: &t(100),
            },
        );
        let old = conds.clone();
        set_condition(
            &mut conds,
            &old,
            c::READY,
            false,
            "B",
            "m2",
            Stamp {
                generation: Some(2),
                now: &t(200),
            },
        );
        assert_eq!(conds[0].last_transition_time, t(100));
        assert_eq!(
            (conds[0].reason.as_str(), conds[0].observed_generation),
            ("B", Some(2))
        );
        let old = conds.clone();
        set_condition(
            &mut conds,
            &old,
            c::READY,
            true,
            "C",
            "m3",
            Stamp {
                generation: Some(2),
                now: &t(300),
            },
        );
        assert_eq!(conds[0].last_transition_time, t(300));
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn attached_volumes_wait_for_the_agent() {
        let s = compute(&facts(&["attached"; 3]), &ZfsPoolStatus::default(), &t(1));
        assert_eq!(cond(&s, c::VOLUMES_ATTACHED).status, c::TRUE);
        let ready = cond(&s, c::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            (c::FALSE, reason::WAITING_FOR_AGENT)
        );
        assert!(ready.message.contains("node-a"), "{}", ready.message);
        assert_eq!(cond(&s, c::PROGRESSING).status, c::TRUE);
        assert_eq!(s.phase, Some(PoolPhase::Importing));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    }

    #[test]
    fn phases_follow_progress() {
        let mut f = facts(&["attached"]);
        assert_eq!(
            compute(&f, &Default::default(), &t(1)).phase,
            Some(PoolPhase::Creating)
        );
        f = facts(&["attached", "attaching", "detached"]);
        let s = compute(&f, &Default::default(), &t(1));
        assert_eq!(s.phase, Some(PoolPhase::Attaching));
        assert_eq!(cond(&s, c::VOLUMES_ATTACHED).reason, reason::ATTACHING);
        f = facts(&["attached"; 3]);
        f.agent = AgentView {
            imported: true,
            healthy: true,
            health: Some("ONLINE".into()),
            ..Default::default()
        };
        let s = compute(&f, &Default::default(), &t(1));
        assert_eq!(s.phase, Some(PoolPhase::Online));
        assert_eq!(cond(&s, c::READY).status, c::TRUE);
        assert_eq!(cond(&s, c::PROGRESSING).status, c::FALSE);
    }

    #[test]
    fn faulted_raid0_says_restore_from_snapshot() {
        let mut f = facts(&["attached"; 3]);
        f.agent = AgentView {
            imported: true,
            healthy: false,
            health: Some("FAULTED".into()),
            sick_members: vec![(1, Some("vol-1".into()), "UNAVAIL".into())],
            ..Default::default()
        };
        let s = compute(&f, &Default::default(), &t(1));
        let d = cond(&s, c::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            (c::TRUE, reason::POOL_FAULTED)
        );
        assert!(
            d.message.contains("member 1 (vol-1) is UNAVAIL"),
            "{}",
            d.message
        );
        assert!(d.message.contains("snapshot"), "{}", d.message);
        assert_eq!(s.phase, Some(PoolPhase::Failed));
        f.layout = Layout::Raidz1;
        f.agent.health = Some("DEGRADED".into());
        let s = compute(&f, &Default::default(), &t(1));
        assert_eq!(cond(&s, c::DEGRADED).reason, reason::POOL_DEGRADED);
        assert_eq!(s.phase, Some(PoolPhase::Degraded));
    }

    #[test]
    fn a_replacement_is_reported_until_the_pool_is_online() {
        let mut f = facts(&["attached"; 3]);
        f.layout = Layout::Raidz1;
        f.agent = AgentView {
            imported: true,
            healthy: false,
            health: Some("DEGRADED".into()),
            ..Default::default()
        };
        // Recorded, not created yet: an entry without a volume.
        f.volumes[1] = VolumeStatus {
            index: 1,
            generation: 1,
            replaced_volume_id: Some("vol-1".into()),
            ..Default::default()
        };
        f.repair = RepairView::Replacing {
            index: 1,
            old: "vol-1".into(),
            new: None,
            attached: false,
        };
        let s = compute(&f, &Default::default(), &t(1));
        let d = cond(&s, c::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            (c::TRUE, reason::MEMBER_REPLACING)
        );
        assert!(
            d.message.contains("member 1 (vol-1) is lost"),
            "{}",
            d.message
        );
        assert_eq!(cond(&s, c::READY).reason, reason::MEMBER_REPLACING);
        assert_eq!(cond(&s, c::PROGRESSING).status, c::TRUE);
        assert_eq!(s.phase, Some(PoolPhase::Degraded));
        assert_eq!(s.volumes[1].generation, 1);
        // Progress, not a warning (MemberLost was the warning).
        let n = notices(&Default::default(), &s);
        assert!(
            n.iter()
                .any(|(w, r, _)| !*w && r == reason::MEMBER_REPLACING),
            "{n:?}"
        );

        f.repair = RepairView::Resilvering {
            index: 1,
            old: "vol-1".into(),
            new: "vol-9".into(),
            percent: Some(40),
        };
        let s2 = compute(&f, &s, &t(5));
        let d = cond(&s2, c::DEGRADED);
        assert_eq!(d.reason, reason::RESILVERING);
        assert!(d.message.contains("40% done"), "{}", d.message);
        assert_eq!(s2.phase, Some(PoolPhase::Resilvering));
        assert_eq!(d.last_transition_time, t(1), "still Degraded since t=1");

        // Done: the agent says ONLINE, nothing is replaced any longer.
        f.volumes[1] = vol(1, "attached");
        f.repair = RepairView::None;
        f.agent.health = Some("ONLINE".into());
        f.agent.healthy = true;
        let s3 = compute(&f, &s2, &t(9));
        assert_eq!(cond(&s3, c::DEGRADED).status, c::FALSE);
        assert_eq!(cond(&s3, c::READY).status, c::TRUE);
        assert_eq!(s3.phase, Some(PoolPhase::Online));
    }

    #[test]
    fn manual_replacement_tells_the_user_what_to_do() {
        let mut f = facts(&["attached"; 3]);
        f.layout = Layout::Raidz1;
        f.repair = RepairView::Manual(vec![
            "member 2 (vol-2) is lost: its volume is in EBS state error".into(),
        ]);
        let s = compute(&f, &Default::default(), &t(1));
        let d = cond(&s, c::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            (c::TRUE, reason::MEMBER_LOST)
        );
        assert!(d.message.contains("member 2 (vol-2)"), "{}", d.message);
        assert!(
            d.message.contains("memberReplacement to Automatic"),
            "{}",
            d.message
        );
        assert_eq!(cond(&s, c::PROGRESSING).status, c::FALSE);
        assert_eq!(s.phase, Some(PoolPhase::Degraded));
        let n = notices(&Default::default(), &s);
        assert!(
            n.iter().any(|(w, r, _)| *w && r == reason::MEMBER_LOST),
            "{n:?}"
        );
    }

    #[test]
    fn a_lost_raid0_member_is_faulted_before_the_agent_says_so() {
        let mut f = facts(&["attached"; 3]);
        f.repair = RepairView::Raid0(vec![
            "member 0 (vol-0) is lost: its volume is in EBS state error".into(),
        ]);
        let s = compute(&f, &Default::default(), &t(1));
        let d = cond(&s, c::DEGRADED);
        assert_eq!(d.reason, reason::POOL_FAULTED);
        assert!(d.message.contains("member 0 (vol-0)"), "{}", d.message);
        assert!(d.message.contains("snapshot"), "{}", d.message);
        assert_eq!(s.phase, Some(PoolPhase::Failed));
        assert_eq!(cond(&s, c::READY).status, c::FALSE);
    }

    #[test]
    fn member_states_count_only_when_the_report_is_about_the_volume() {
        let s = ZfsPoolStatus {
            volumes: vec![
                VolumeStatus {
                    index: 0,
                    volume_id: Some("vol-0new".into()),
                    device: Some("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0old".into()),
                    member_state: Some("UNAVAIL".into()),
                    ..Default::default()
                },
                VolumeStatus {
                    index: 1,
                    volume_id: Some("vol-0b".into()),
                    device: Some("/x/nvme-Amazon_Elastic_Block_Store_vol0b".into()),
                    member_state: Some("ONLINE".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let a = AgentView::read(&s);
        assert_eq!(a.member_state(0, "vol-0new"), None);
        assert_eq!(a.member_state(0, "vol-0old"), Some("UNAVAIL"));
        assert_eq!(a.reported_state(0), Some("UNAVAIL"));
        assert_eq!(a.member_state(1, "vol-0b"), Some("ONLINE"));
    }

    #[test]
    fn attach_problems_stop_progress_with_their_reason() {
        let mut f = facts(&["attached", "detached", "attached"]);
        f.attach_problem = Some((
            reason::ATTACHED_ELSEWHERE.into(),
            "vol-1 is attached to i-9".into(),
        ));
        let s = compute(&f, &Default::default(), &t(1));
        assert_eq!(
            cond(&s, c::VOLUMES_ATTACHED).reason,
            reason::ATTACHED_ELSEWHERE
        );
        assert_eq!(cond(&s, c::PROGRESSING).status, c::FALSE);
        let n = notices(&ZfsPoolStatus::default(), &s);
        assert!(
            n.iter()
                .any(|(w, r, _)| *w && r == reason::ATTACHED_ELSEWHERE),
            "{n:?}"
        );
    }

    #[test]
    fn a_lasting_attachment_is_reported_but_still_progressing() {
        let mut f = facts(&["attached", "attaching", "attached"]);
        f.attach_problem = Some((
            reason::ATTACHMENT_STUCK.into(),
            "member 1 attaching for 300s".into(),
        ));
        let s = compute(&f, &Default::default(), &t(1));
        assert_eq!(
            cond(&s, c::VOLUMES_ATTACHED).reason,
            reason::ATTACHMENT_STUCK
        );
        assert_eq!(cond(&s, c::PROGRESSING).status, c::TRUE);
        let n = notices(&ZfsPoolStatus::default(), &s);
        assert!(
            n.iter()
                .any(|(w, r, _)| *w && r == reason::ATTACHMENT_STUCK),
            "{n:?}"
        );
    }

    #[test]
    fn performance_limited_when_the_instance_caps() {
        let mut f = facts(&["attached"; 3]);
        f.performance = Some(PerformanceCeiling {
            volume_iops: 9000,
            volume_throughput_mibps: 375,
            instance_iops: Some(6000),
            instance_throughput_mibps: Some(1000),
            iops: 6000,
            throughput_mibps: 375,
            limited_by: "Instance".into(),
        });
        let s = compute(&f, &Default::default(), &t(1));
        assert_eq!(cond(&s, c::PERFORMANCE_LIMITED).status, c::TRUE);
        f.performance.as_mut().unwrap().limited_by = "Volumes".into();
        let s = compute(&f, &Default::default(), &t(1));
        assert_eq!(cond(&s, c::PERFORMANCE_LIMITED).status, c::FALSE);
    }

    #[test]
    fn recomputing_from_the_result_is_a_no_op() {
        let f = facts(&["attached"; 3]);
        let first = compute(&f, &ZfsPoolStatus::default(), &t(1));
        // The observed status also carries the agent's fields: they do not count.
        let mut observed = first.clone();
        observed.health = Some("ONLINE".into());
        observed.volumes[0].device = Some("/dev/disk/by-id/x".into());
        observed.conditions.push(Condition {
            type_: c::POOL_IMPORTED.into(),
            status: c::FALSE.into(),
            reason: "Importing".into(),
            message: String::new(),
            observed_generation: Some(2),
            last_transition_time: t(1),
        });
        let again = compute(&f, &observed, &t(500));
        assert_eq!(again, owned_view(&observed));
        assert!(notices(&observed, &again).is_empty());
    }

    #[test]
    fn blocked_keeps_the_rest_and_warns_once() {
        let s = blocked(
            &ZfsPoolStatus::default(),
            Some(1),
            None,
            reason::NODE_WITHOUT_PROVIDER_ID,
            "node x has no spec.providerID",
            &t(1),
        );
        assert_eq!(cond(&s, c::READY).reason, reason::NODE_WITHOUT_PROVIDER_ID);
        assert_eq!(s.phase, Some(PoolPhase::Pending));
        let n = notices(&ZfsPoolStatus::default(), &s);
        assert_eq!(
            n,
            vec![(
                true,
                reason::NODE_WITHOUT_PROVIDER_ID.to_string(),
                "node x has no spec.providerID".to_string()
            )]
        );
        let again = blocked(
            &s,
            Some(1),
            None,
            reason::NODE_WITHOUT_PROVIDER_ID,
            "node x has no spec.providerID",
            &t(50),
        );
        assert_eq!(again, s);
        assert!(notices(&s, &again).is_empty());

        let inv = blocked(
            &ZfsPoolStatus::default(),
            Some(3),
            Some(("InvalidZfsProperty", "bad")),
            "InvalidSpec",
            "bad",
            &t(1),
        );
        assert_eq!(cond(&inv, c::SPEC_VALID).status, c::FALSE);
        assert_eq!(inv.phase, Some(PoolPhase::Failed));
    }
}
