//! One verdict per condition the controller owns, and the phase, each from the facts of
//! one reconcile (pure). Ready and Progressing build on the verdicts before them.

use pgml_api::zfspool::{Layout, PoolPhase, VolumeModification};

use super::{Facts, RepairView, SickMember, reason};

/// A condition's status, reason and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    fn new(status: bool, reason: &str, message: String) -> Verdict {
        Verdict {
            status,
            reason: reason.to_string(),
            message,
        }
    }
}

/// The members' attachments: VolumesAttached, and what Ready, Progressing and the phase
/// need of them.
pub struct Attachments {
    /// Every member has a volume, attached.
    pub all: bool,
    /// Members without a volume (not created yet, or a replacement still to create).
    pub missing: usize,
    pub verdict: Verdict,
}

pub fn attachments(f: &Facts) -> Attachments {
    let attached = f.volumes.iter().filter(|v| v.is_attached()).count();
    // An entry without a volume is a member whose replacement is still to be created.
    let with_volume = f.volumes.iter().filter(|v| v.volume_id.is_some()).count();
    let all = attached == f.count && with_volume == f.count;
    let missing = f.count.saturating_sub(with_volume);
    let verdict = if all {
        Verdict::new(
            true,
            reason::ATTACHED,
            format!(
                "all {} volumes are attached to {} ({})",
                f.count, f.instance_id, f.node_name
            ),
        )
    } else if let Some(p) = &f.attach_problem {
        Verdict::new(false, p.reason, p.message.clone())
    } else if missing > 0 {
        Verdict::new(
            false,
            reason::CREATING_VOLUMES,
            format!("{missing} of {} volumes are still to be created", f.count),
        )
    } else {
        Verdict::new(
            false,
            reason::ATTACHING,
            format!(
                "{attached} of {} volumes attached to {}",
                f.count, f.instance_id
            ),
        )
    };
    Attachments {
        all,
        missing,
        verdict,
    }
}

/// PerformanceLimited, when the ceiling is known.
pub fn performance(f: &Facts) -> Option<Verdict> {
    let p = f.performance.as_ref()?;
    let limited = p.limited_by == "Instance";
    let message = format!(
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
    Some(Verdict::new(limited, r, message))
}

/// Degraded: a pool beyond repair first, then a repair waiting for a user, a repair under
/// way, a DEGRADED pool, volumes in EBS state error.
pub fn degraded(f: &Facts) -> Verdict {
    match (f.agent.health.as_deref(), &f.repair) {
        (Some("FAULTED") | Some("UNAVAIL"), _)
        | (_, RepairView::Raid0(_))
        | (_, RepairView::TooMany(_)) => faulted(f),
        (_, RepairView::Manual(lost)) => Verdict::new(
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
        ) => Verdict::new(
            true,
            reason::RESILVERING,
            format!(
                "member {index}: {new} replaces the lost {old}; the pool is resilvering{}",
                percent.map_or(String::new(), |p| format!(" ({p}% done)"))
            ),
        ),
        (_, RepairView::Replacing { .. }) => replacing(f),
        (Some("DEGRADED"), _) => Verdict::new(
            true,
            reason::POOL_DEGRADED,
            format!(
                "pool {} is DEGRADED: {}",
                f.pool_name,
                sick(&f.agent.sick_members)
            ),
        ),
        _ => volume_errors(f)
            .unwrap_or_else(|| Verdict::new(false, reason::HEALTHY, "no member is lost".into())),
    }
}

/// "member 1 (vol-…) is UNAVAIL, …" of the members the agent reports not ONLINE.
fn sick(list: &[SickMember]) -> String {
    list.iter()
        .map(|m| {
            format!(
                "member {} ({}) is {}",
                m.index,
                m.volume_id.as_deref().unwrap_or("?"),
                m.state
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A pool FAULTED or UNAVAIL, or with more members lost than its layout survives.
fn faulted(f: &Facts) -> Verdict {
    let health = f.agent.health.as_deref();
    let mut named = sick(&f.agent.sick_members);
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
    let advice = match f.layout {
        Layout::Raid0 => {
            "a raid0 pool cannot lose a member: the data must come back from a snapshot (an EbsSnapshot restored with restoreFrom); nothing was deleted"
        }
        Layout::Raidz1 => {
            "more members were lost than raidz1 can survive: the data must come back from a snapshot; nothing was deleted"
        }
    };
    Verdict::new(
        true,
        reason::POOL_FAULTED,
        format!("pool {} is {state}: {named}; {advice}", f.pool_name),
    )
}

/// A lost member's replacement being created, attached or handed to the agent.
fn replacing(f: &Facts) -> Verdict {
    let RepairView::Replacing {
        index,
        old,
        new,
        attached,
    } = &f.repair
    else {
        unreachable!("replacing() is only called for RepairView::Replacing")
    };
    let message = match (new, attached) {
        (None, _) => format!("member {index} ({old}) is lost; creating its replacement volume"),
        (Some(n), false) => {
            format!("member {index} ({old}) is lost; attaching its replacement {n}")
        }
        (Some(n), true) => format!(
            "member {index} ({old}) is lost; waiting for the node agent on {} to replace it with {n} (zpool replace)",
            f.node_name
        ),
    };
    Verdict::new(true, reason::MEMBER_REPLACING, message)
}

/// Members whose volume is in EBS state error, if any.
fn volume_errors(f: &Facts) -> Option<Verdict> {
    let broken: Vec<String> = f
        .volumes
        .iter()
        .filter(|v| v.volume_state() == Some(pgml_api::zfspool::VolumeState::Error))
        .map(|v| {
            format!(
                "member {} ({}) is in EBS state error",
                v.index,
                v.volume_id.as_deref().unwrap_or("?")
            )
        })
        .collect();
    (!broken.is_empty()).then(|| Verdict::new(true, reason::VOLUME_ERROR, broken.join(", ")))
}

/// Ready: every member attached, the pool imported and healthy, no repair.
pub fn ready(f: &Facts, attachments: &Attachments, degraded: &Verdict) -> Verdict {
    let ready = attachments.all && f.agent.imported && f.agent.healthy && !f.repair.active();
    if ready {
        Verdict::new(
            true,
            reason::POOL_ONLINE,
            format!(
                "pool {} is imported and healthy on {}",
                f.pool_name, f.node_name
            ),
        )
    } else if f.repair.active() {
        Verdict {
            status: false,
            ..degraded.clone()
        }
    } else if !attachments.all {
        Verdict {
            status: false,
            ..attachments.verdict.clone()
        }
    } else {
        Verdict::new(
            false,
            reason::WAITING_FOR_AGENT,
            format!(
                "volumes attached; waiting for the node agent on {} to report pool {} imported and healthy (PoolImported, PoolHealthy)",
                f.node_name, f.pool_name
            ),
        )
    }
}

/// EBS is modifying a member.
fn modifying(f: &Facts) -> bool {
    f.volumes.iter().any(|v| {
        v.modification
            .as_ref()
            .is_some_and(VolumeModification::is_modifying)
    })
}

/// Progressing: a repair under way, a resize, or the way to Ready; not while something a
/// user or EC2 must change blocks it.
pub fn progressing(f: &Facts, attachments: &Attachments, ready: &Verdict) -> Verdict {
    let repairing = matches!(
        f.repair,
        RepairView::Replacing { .. } | RepairView::Resilvering { .. }
    );
    let blocked_attach = f.attach_problem.as_ref().is_some_and(|p| p.blocks()) && !attachments.all;
    let moving = |status: bool| Verdict {
        status,
        ..ready.clone()
    };
    if repairing {
        moving(true)
    } else if f.repair.active() {
        // Lost members the operator does not replace: nothing moves until someone acts.
        moving(false)
    } else if let Some(m) = &f.budget_wait {
        Verdict::new(false, reason::MODIFICATION_BUDGET, m.clone())
    } else if modifying(f) {
        Verdict::new(
            true,
            reason::RESIZING,
            "EBS is modifying the volumes to the new spec".to_string(),
        )
    } else if ready.status {
        Verdict::new(false, reason::POOL_ONLINE, ready.message.clone())
    } else {
        moving(!blocked_attach)
    }
}

/// One word for `kubectl get`: failures first, then repairs, then the way to Online.
pub fn phase(f: &Facts, attachments: &Attachments, ready: bool) -> PoolPhase {
    match (f.agent.health.as_deref(), &f.repair) {
        (Some("FAULTED") | Some("UNAVAIL"), _)
        | (_, RepairView::Raid0(_) | RepairView::TooMany(_)) => PoolPhase::Failed,
        (_, RepairView::Resilvering { .. }) => PoolPhase::Resilvering,
        (_, RepairView::Replacing { .. } | RepairView::Manual(_)) | (Some("DEGRADED"), _) => {
            PoolPhase::Degraded
        }
        _ if attachments.missing > 0 => PoolPhase::Creating,
        _ if !attachments.all => PoolPhase::Attaching,
        _ if modifying(f) => PoolPhase::Resizing,
        _ if !ready => PoolPhase::Importing,
        _ => PoolPhase::Online,
    }
}
