//! Judging what was observed: the agent's status fields and its four conditions, from the
//! facts of one reconcile and how its last step ended. Pure, so tested without a node.

use k8s_openapi::jiff::Timestamp;
use pgml_api::common::{Condition, condition as c};
use pgml_api::zfspool::{DatasetStatus, Layout, ResilverStatus, ZfsPool};
use pgml_zfs::{PoolStatus, ScanState};

use crate::decide::{Imported, Observed, Wait};
use crate::observe::{Facts, dialect_name};
use crate::reconcile::Ctx;
use crate::report::{AgentStatus, AgentVolume, Verdict, cond, conditions};

/// How the last step ended, for the conditions.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub refused: Option<(String, String)>,
    pub failed: Option<String>,
    pub released: Option<&'static str>,
    pub wait: Option<Wait>,
    /// `zpool replace` was run: (member index, old leaf, new device).
    pub replaced: Option<(i32, String, String)>,
}

impl Outcome {
    /// Waiting for the controller to create or attach volumes: nothing of the node's to
    /// report yet. The agent's report stays the same through this phase (one status write
    /// rather than one per created or attached member, each of which would wake the
    /// controller too); the controller's `VolumesAttached` says how far it is.
    pub fn awaits_controller(&self) -> bool {
        matches!(self.wait, Some(Wait::VolumeIds | Wait::Attachment(_)))
    }
}

/// The agent's status from what was observed and how the last step ended.
pub fn agent_status(pool: &ZfsPool, ctx: &Ctx, facts: &Facts, outcome: &Outcome) -> AgentStatus {
    let o = &facts.observed;
    let existing = pool.status.clone().unwrap_or_default();
    let imported = o.imported.as_ref();
    let index_of = |vol: &str| {
        o.members
            .iter()
            .find(|m| m.volume_id.as_deref() == Some(vol))
            .map(|m| m.index)
    };
    let volumes = reported_volumes(facts, outcome);
    let resilver = facts
        .status
        .as_ref()
        .and_then(|st| resilver_status(st, index_of));
    let list = facts.list.as_ref();
    let usage = settled_usage(
        (
            existing.allocated_bytes,
            existing.free_bytes,
            existing.size_bytes,
        ),
        (
            list.and_then(|l| l.allocated).map(|b| b as i64),
            list.and_then(|l| l.free).map(|b| b as i64),
            list.and_then(|l| l.size).map(|b| b as i64),
        ),
    );
    AgentStatus {
        pool_guid: list
            .and_then(|l| l.guid)
            .map(|g| g.to_string())
            .or(existing.pool_guid.clone()),
        zfs_dialect: Some(dialect_name(ctx.dialect).to_string()),
        health: imported.map(|i| i.health.clone()),
        size: list.and_then(|l| l.size).map(crate::report::human_size),
        size_bytes: list.and_then(|l| l.size).map(|b| b as i64),
        allocated_bytes: usage.0,
        free_bytes: usage.1,
        volumes,
        resilver,
        datasets: facts
            .datasets
            .iter()
            .map(|(name, mount, mounted)| DatasetStatus {
                name: name.clone(),
                // "-" or "legacy" or "none": not a path anything can mount.
                mount_path: mount.starts_with('/').then(|| mount.clone()),
                mounted: *mounted,
            })
            .collect(),
        conditions: conditions(&verdicts(pool, facts, outcome), pool, Timestamp::now()),
    }
    .normalized()
}

/// An Event to publish: Warning or Normal, its reason and its note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The Events a change of the agent's report from `before` (what the object held) to
/// `after` (what was just written) calls for, about the pool named `pool`: its health
/// turning bad (`PoolDegraded`, `PoolFaulted`…) or good again (`PoolHealthy`), a member
/// leaving ONLINE (`MemberUnavail`, `MemberFaulted`, `MemberRemoved`…) or coming back
/// (`MemberOnline`), and a `zpool replace` run in this pass (`MemberReplaceStarted`).
/// Told once: the stored report is the agent's memory across restarts, so a restarted agent
/// that finds the same health says nothing again.
pub fn notices(
    pool: &str,
    before: &AgentStatus,
    after: &AgentStatus,
    outcome: &Outcome,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let notice = |warning: bool, reason: String, note: String| Notice {
        warning,
        reason,
        note,
    };
    match (before.health.as_deref(), after.health.as_deref()) {
        (b, Some(a)) if b != Some(a) => {
            let was = b.map_or(String::new(), |b| format!(" (was {b})"));
            if a == "ONLINE" {
                // A pool imported ONLINE for the first time is a milestone of PoolImported.
                if b.is_some() {
                    out.push(notice(
                        false,
                        "PoolHealthy".into(),
                        format!("pool {pool} is ONLINE again{was}"),
                    ));
                }
            } else {
                let members = bad_members(after);
                out.push(notice(
                    true,
                    format!("Pool{}", capitalized(a)),
                    format!("pool {pool} is {a}{was}{members}"),
                ));
            }
        }
        _ => {}
    }
    for v in &after.volumes {
        let (Some(vol), Some(state)) = (v.member_volume_id.as_deref(), v.member_state.as_deref())
        else {
            continue;
        };
        let prev = before
            .volumes
            .iter()
            .find(|p| p.index == v.index && p.member_volume_id.as_deref() == Some(vol))
            .and_then(|p| p.member_state.as_deref());
        if prev == Some(state) {
            continue;
        }
        let was = prev.map_or(String::new(), |p| format!(" (was {p})"));
        if state != "ONLINE" {
            out.push(notice(
                true,
                format!("Member{}", capitalized(state)),
                format!("member {} ({vol}) of pool {pool} is {state}{was}", v.index),
            ));
        } else if prev.is_some() {
            out.push(notice(
                false,
                "MemberOnline".into(),
                format!("member {} ({vol}) of pool {pool} is ONLINE{was}", v.index),
            ));
        }
    }
    if let Some((index, old, new)) = &outcome.replaced {
        out.push(notice(
            false,
            "MemberReplaceStarted".into(),
            format!(
                "zpool replace {pool} {old} {new}: member {index} resilvers onto the new volume"
            ),
        ));
    }
    out
}

/// `; members: vol-01 UNAVAIL, …` of a report, or nothing when all are ONLINE.
fn bad_members(s: &AgentStatus) -> String {
    let bad: Vec<String> = s
        .volumes
        .iter()
        .filter_map(|v| {
            let state = v.member_state.as_deref().filter(|s| *s != "ONLINE")?;
            Some(format!(
                "member {} ({}) {state}",
                v.index,
                v.member_volume_id.as_deref().unwrap_or("unknown volume")
            ))
        })
        .collect();
    if bad.is_empty() {
        String::new()
    } else {
        format!("; {}", bad.join(", "))
    }
}

/// `status.resilver` from the pool's scans. A scan line not read in full counts as a
/// resilver in progress (of unknown progress): it is never reported as finished.
fn resilver_status(
    st: &PoolStatus,
    index_of: impl Fn(&str) -> Option<i32>,
) -> Option<ResilverStatus> {
    let scan = st.resilver()?;
    let member_index = st
        .members()
        .iter()
        .find(|v| v.resilvering)
        .and_then(|v| v.ebs_volume_id())
        .and_then(|v| index_of(&v));
    Some(ResilverStatus {
        in_progress: !scan.state.is_over(),
        member_index,
        // zfs-fuse prints no percentage once finished ("resilver completed after …").
        percent_done: scan
            .percent_done
            .map(|p| p.round() as i32)
            .or((scan.state == ScanState::Finished).then_some(100)),
        ..Default::default()
    })
}

/// The fraction of the pool's size by which the allocated bytes must move to be rewritten.
const USAGE_STEP: i64 = 200;

/// `(allocated, free)` to report: the stored pair while the allocation stays within
/// 1/[`USAGE_STEP`] of the pool's size of it (and the size is unchanged), else the new one.
/// A database writing all the time would otherwise rewrite its status at every look.
fn settled_usage(
    stored: (Option<i64>, Option<i64>, Option<i64>),
    now: (Option<i64>, Option<i64>, Option<i64>),
) -> (Option<i64>, Option<i64>) {
    match (stored, now) {
        ((Some(a0), Some(f0), Some(s0)), (Some(a), Some(_), Some(s)))
            if s0 == s && (a - a0).abs() < s / USAGE_STEP =>
        {
            (Some(a0), Some(f0))
        }
        (_, (a, f, _)) => (a, f),
    }
}

/// The stored `PoolReleased=True` condition, once the agent has reported the release.
pub fn released_condition(pool: &ZfsPool) -> Option<&Condition> {
    pool.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|x| x.type_ == cond::POOL_RELEASED && x.status == c::TRUE)
    })
}

/// Each member's device, and its state in the pool beside the volume that state is about:
/// the member's volume when it is in the pool, else (a replacement under way, the new
/// volume not in the pool yet) the volume it replaces. No devices while the controller is
/// still attaching (see [`Outcome::awaits_controller`]).
fn reported_volumes(facts: &Facts, outcome: &Outcome) -> Vec<AgentVolume> {
    let imported = facts.observed.imported.as_ref();
    let leaf = |vol: &Option<String>| {
        let vol = vol.as_deref()?;
        imported?
            .members
            .iter()
            .find(|p| p.volume_id.as_deref() == Some(vol))
            .map(|p| (vol.to_string(), p.state.clone()))
    };
    facts
        .observed
        .members
        .iter()
        .map(|m| {
            let state = leaf(&m.volume_id).or_else(|| leaf(&m.replaced_volume_id));
            AgentVolume {
                index: m.index,
                device: m.device.clone().filter(|_| !outcome.awaits_controller()),
                member_volume_id: state.as_ref().map(|(v, _)| v.clone()),
                member_state: state.map(|(_, s)| s),
            }
        })
        .collect()
}

/// The agent's conditions: DevicesFound, PoolImported, PoolHealthy, and PoolReleased
/// while the pool is being deleted.
pub fn verdicts(pool: &ZfsPool, facts: &Facts, outcome: &Outcome) -> Vec<Verdict> {
    let mut v = vec![
        devices_found(facts, outcome),
        pool_imported(facts, outcome),
        pool_healthy(&facts.observed),
    ];
    if facts.observed.deleting {
        v.push(pool_released(pool, outcome));
    }
    v
}

/// DevicesFound: unknown while the controller has volumes to create or attach, else
/// whether every member's volume has its device.
fn devices_found(facts: &Facts, outcome: &Outcome) -> Verdict {
    let o = &facts.observed;
    let unknown = (0..o.count as i32).any(|i| {
        !o.members
            .iter()
            .any(|m| m.index == i && m.volume_id.is_some())
    });
    let absent = absent_devices(facts);
    if outcome.awaits_controller() || unknown {
        Verdict::new(
            cond::DEVICES_FOUND,
            "Unknown",
            "WaitingForVolumes",
            format!(
                "waiting for the controller to create and attach all {} volumes",
                o.count
            ),
        )
    } else if absent.is_empty() {
        Verdict::new(
            cond::DEVICES_FOUND,
            c::TRUE,
            "Found",
            format!("all {} devices found by volume ID", o.count),
        )
    } else {
        Verdict::new(
            cond::DEVICES_FOUND,
            c::FALSE,
            "Missing",
            format!("no device for {}", absent.join(", ")),
        )
    }
}

/// The members with a volume ID but no device, in words: a link that points at another
/// volume's NVMe serial says so.
fn absent_devices(facts: &Facts) -> Vec<String> {
    facts
        .observed
        .members
        .iter()
        .filter(|m| m.volume_id.is_some() && m.device.is_none())
        .map(|m| {
            let vol = m.volume_id.clone().unwrap_or_default();
            match facts.stale.iter().find(|(i, _)| *i == m.index) {
                Some((_, serial)) => format!(
                    "{vol} (member {}): its link points at NVMe serial {serial}",
                    m.index
                ),
                None => format!("{vol} (member {})", m.index),
            }
        })
        .collect()
}

/// PoolImported: True once the pool is imported with its datasets where the spec wants
/// them; else why not.
fn pool_imported(facts: &Facts, outcome: &Outcome) -> Verdict {
    match &facts.observed.imported {
        Some(i) => imported_as_asked(facts, i, outcome),
        None => not_imported(&facts.observed, outcome),
    }
}

/// PoolImported of an imported pool: not usable, so not True, until its datasets are
/// created and mounted where the spec asks.
fn imported_as_asked(facts: &Facts, i: &Imported, outcome: &Outcome) -> Verdict {
    let o = &facts.observed;
    let pending: Vec<&str> = o
        .missing_datasets
        .iter()
        .map(String::as_str)
        .chain(o.misplaced_datasets.iter().map(|(n, _)| n.as_str()))
        .collect();
    if !pending.is_empty() {
        return Verdict::new(
            cond::POOL_IMPORTED,
            c::FALSE,
            "DatasetsPending",
            format!(
                "pool imported; datasets {pending:?} not created or not mounted yet{}",
                outcome
                    .failed
                    .as_ref()
                    .map_or(String::new(), |e| format!(": {e}"))
            ),
        );
    }
    Verdict::new(
        cond::POOL_IMPORTED,
        c::TRUE,
        "Imported",
        format!(
            "pool {} (GUID {}) is imported",
            facts
                .imported_name
                .as_ref()
                .map_or(o.pool_name.as_str(), |n| n.as_str()),
            i.guid.map_or("unknown".into(), |g| g.to_string())
        ),
    )
}

/// PoolImported of a pool not imported: why, from how the last step ended (a refusal
/// first, then a failure, the release, a wait).
fn not_imported(o: &Observed, outcome: &Outcome) -> Verdict {
    let verdict = |reason: &str, message: String| {
        Verdict::new(cond::POOL_IMPORTED, c::FALSE, reason, message)
    };
    match outcome {
        Outcome {
            refused: Some((device, reason)),
            ..
        } => verdict(
            "DeviceInUse",
            format!(
                "device {device} {reason}; the agent never creates over existing data (clear the device or restore it)"
            ),
        ),
        Outcome {
            failed: Some(e), ..
        } => verdict("CommandFailed", e.clone()),
        _ if o.deleting => verdict("Released", "the pool was released for deletion".into()),
        Outcome {
            wait: Some(Wait::VolumeIds | Wait::Attachment(_)),
            ..
        } => verdict(
            "WaitingForVolumes",
            "waiting for the controller to create and attach the volumes (see VolumesAttached)"
                .into(),
        ),
        Outcome {
            wait: Some(Wait::Devices(i)),
            ..
        } => verdict(
            "WaitingForDevices",
            format!("members {i:?} have no device yet"),
        ),
        _ => verdict("NotImported", "the pool is not imported".into()),
    }
}

/// PoolHealthy: what `zpool status` says of the pool, with the members not online and
/// what to do when the pool lost more than its layout survives.
fn pool_healthy(o: &Observed) -> Verdict {
    match &o.imported {
        Some(i) if i.health == "ONLINE" => Verdict::new(
            cond::POOL_HEALTHY,
            c::TRUE,
            "Online",
            "zpool status: ONLINE",
        ),
        Some(i) => Verdict::new(
            cond::POOL_HEALTHY,
            c::FALSE,
            &capitalized(&i.health),
            format!(
                "zpool status: {}{}{}",
                i.health,
                not_online(i),
                lost_hint(o.layout, &i.health)
            ),
        ),
        None => Verdict::new(
            cond::POOL_HEALTHY,
            "Unknown",
            "NotImported",
            "the pool is not imported",
        ),
    }
}

/// PoolReleased, of a pool being deleted: once True it stays as first reported; else how
/// the release went.
fn pool_released(pool: &ZfsPool, outcome: &Outcome) -> Verdict {
    match (released_condition(pool), outcome.released, &outcome.failed) {
        (Some(p), _, _) => Verdict::new(
            cond::POOL_RELEASED,
            c::TRUE,
            &p.reason.clone(),
            p.message.clone(),
        ),
        (None, Some(how), _) => Verdict::new(
            cond::POOL_RELEASED,
            c::TRUE,
            how,
            match how {
                "Exported" => "pool exported (reclaimPolicy Retain); the volumes can be detached",
                "Destroyed" => {
                    "pool destroyed (reclaimPolicy Delete); the volumes can be detached and deleted"
                }
                _ => "no pool of this object is imported on the node; the volumes can be detached",
            },
        ),
        (None, None, Some(e)) => {
            Verdict::new(cond::POOL_RELEASED, c::FALSE, "ReleaseFailed", e.clone())
        }
        (None, None, None) => Verdict::new(
            cond::POOL_RELEASED,
            c::FALSE,
            "Releasing",
            "releasing the pool",
        ),
    }
}

fn not_online(i: &crate::decide::Imported) -> String {
    let bad: Vec<String> = i
        .members
        .iter()
        .filter(|m| m.state != "ONLINE")
        .map(|m| {
            format!(
                "{} {}",
                m.volume_id.as_deref().unwrap_or(&m.handle),
                m.state
            )
        })
        .collect();
    if bad.is_empty() {
        String::new()
    } else {
        format!("; members: {}", bad.join(", "))
    }
}

/// What a platform engineer needs to hear when a pool lost more than it can survive.
fn lost_hint(layout: Layout, health: &str) -> &'static str {
    match (layout, health) {
        (_, "ONLINE" | "DEGRADED") => "",
        (Layout::Raid0, _) => {
            "; a raid0 pool does not survive losing a member: its data must come back from an EbsSnapshot (restoreFrom); the agent deleted nothing"
        }
        (Layout::Raidz1, _) => {
            "; more members are lost than raidz1 survives: restore from an EbsSnapshot (restoreFrom); the agent deleted nothing"
        }
    }
}

fn capitalized(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut c = lower.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphabetic() => f.to_ascii_uppercase().to_string() + c.as_str(),
        _ => "Unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Imported, Member, Observed, Placement, PoolMember};
    use crate::reconcile::relative_mount;
    use pgml_api::common::Time;
    use pgml_api::zfspool::{MemberReplacement, ReclaimPolicy};

    fn pool(deleting: bool) -> ZfsPool {
        let mut p: ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "tank", "namespace": "db", "generation": 2},
            "spec": {"nodeName": "n1", "volumes": {"count": 2, "sizeGiB": 10}},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        p
    }

    fn facts(imported: Option<Imported>) -> Facts {
        Facts {
            observed: Observed {
                pool_name: "tank".into(),
                layout: Layout::Raid0,
                deleting: false,
                reclaim: ReclaimPolicy::Retain,
                replacement: MemberReplacement::Automatic,
                restore: false,
                count: 2,
                members: (0..2)
                    .map(|i| Member {
                        index: i,
                        volume_id: Some(format!("vol-0{i}")),
                        attached: true,
                        device: Some(format!("/d/vol0{i}")),
                        signature: None,
                        ..Default::default()
                    })
                    .collect(),
                recorded_guid: None,
                imported,
                importable: vec![],
                missing_datasets: vec![],
                misplaced_datasets: vec![],
                grown: false,
            },
            imported_name: None,
            list: None,
            status: None,
            stale: vec![],
            sizes: vec![],
            datasets: vec![],
        }
    }

    fn find<'a>(v: &'a [Verdict], t: &str) -> &'a Verdict {
        v.iter().find(|v| v.type_ == t).unwrap()
    }

    #[test]
    fn refusal_names_the_device_and_no_release_before_deletion() {
        let out = Outcome {
            refused: Some(("/d/vol01".into(), "carries a ext4 file system".into())),
            ..Default::default()
        };
        let v = verdicts(&pool(false), &facts(None), &out);
        let imported = find(&v, cond::POOL_IMPORTED);
        assert_eq!(
            (imported.status, imported.reason.as_str()),
            ("False", "DeviceInUse")
        );
        assert!(imported.message.contains("/d/vol01") && imported.message.contains("ext4"));
        assert_eq!(find(&v, cond::POOL_HEALTHY).status, "Unknown");
        assert_eq!(find(&v, cond::DEVICES_FOUND).status, "True");
        assert!(!v.iter().any(|v| v.type_ == cond::POOL_RELEASED));
    }

    #[test]
    fn lost_raid0_member_is_reported_with_what_to_do() {
        let mut f = facts(Some(Imported {
            guid: Some(1),
            health: "UNAVAIL".into(),
            members: vec![
                PoolMember {
                    volume_id: Some("vol-00".into()),
                    handle: "/d/vol00".into(),
                    state: "ONLINE".into(),
                },
                PoolMember {
                    volume_id: Some("vol-01".into()),
                    handle: "/d/vol01".into(),
                    state: "UNAVAIL".into(),
                },
            ],
            resilvering: false,
        }));
        f.observed.members[1].device = None;
        let v = verdicts(&pool(false), &f, &Outcome::default());
        let healthy = find(&v, cond::POOL_HEALTHY);
        assert_eq!(
            (healthy.status, healthy.reason.as_str()),
            ("False", "Unavail")
        );
        assert!(
            healthy.message.contains("vol-01 UNAVAIL"),
            "{}",
            healthy.message
        );
        assert!(
            healthy.message.contains("EbsSnapshot"),
            "{}",
            healthy.message
        );
        let devices = find(&v, cond::DEVICES_FOUND);
        assert_eq!(devices.status, "False");
        assert!(devices.message.contains("vol-01 (member 1)"));
        assert_eq!(find(&v, cond::POOL_IMPORTED).status, "True");
    }

    #[test]
    fn each_state_is_reported_beside_the_volume_it_is_about() {
        let leaf = |v: &str, state: &str| PoolMember {
            volume_id: Some(v.into()),
            handle: format!("/d/{v}"),
            state: state.into(),
        };
        let mut f = facts(Some(Imported {
            guid: Some(1),
            health: "DEGRADED".into(),
            members: vec![leaf("vol-00", "ONLINE"), leaf("vol-01", "UNAVAIL")],
            resilvering: false,
        }));
        let vols = reported_volumes(&f, &Outcome::default());
        let pairs = |vols: &[AgentVolume]| -> Vec<(Option<String>, Option<String>)> {
            vols.iter()
                .map(|v| (v.member_volume_id.clone(), v.member_state.clone()))
                .collect()
        };
        assert_eq!(
            pairs(&vols),
            [
                (Some("vol-00".into()), Some("ONLINE".into())),
                (Some("vol-01".into()), Some("UNAVAIL".into()))
            ]
        );
        // The controller recorded vol-09 replacing vol-01, not in the pool yet: the state
        // reported is the old volume's, and says so.
        f.observed.members[1].volume_id = Some("vol-09".into());
        f.observed.members[1].replaced_volume_id = Some("vol-01".into());
        f.observed.members[1].device = Some("/d/vol09".into());
        let vols = reported_volumes(&f, &Outcome::default());
        assert_eq!(
            pairs(&vols)[1],
            (Some("vol-01".into()), Some("UNAVAIL".into()))
        );
        assert_eq!(vols[1].device.as_deref(), Some("/d/vol09"));
        // Once the new volume is in the pool, its own state.
        if let Some(i) = f.observed.imported.as_mut() {
            i.members.push(leaf("vol-09", "ONLINE"));
        }
        let vols = reported_volumes(&f, &Outcome::default());
        assert_eq!(
            pairs(&vols)[1],
            (Some("vol-09".into()), Some("ONLINE".into()))
        );
        // Not imported: nothing to say of any member.
        f.observed.imported = None;
        assert!(
            reported_volumes(&f, &Outcome::default())
                .iter()
                .all(|v| v.member_volume_id.is_none() && v.member_state.is_none())
        );
    }

    #[test]
    fn health_changes_are_told_once_as_events() {
        let report = |health: &str, states: &[(&str, &str)]| AgentStatus {
            health: Some(health.into()),
            volumes: states
                .iter()
                .enumerate()
                .map(|(i, (vol, st))| AgentVolume {
                    index: i as i32,
                    member_volume_id: Some(vol.to_string()),
                    member_state: Some(st.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let reasons = |n: &[Notice]| -> Vec<(bool, String)> {
            n.iter().map(|n| (n.warning, n.reason.clone())).collect()
        };
        let none = Outcome::default();
        let online = report("ONLINE", &[("vol-00", "ONLINE"), ("vol-01", "ONLINE")]);
        let lost = report("DEGRADED", &[("vol-00", "ONLINE"), ("vol-01", "UNAVAIL")]);
        // Nothing changed: nothing to tell (a restarted agent reads its last report back).
        assert_eq!(notices("tank", &online, &online, &none), vec![]);
        assert_eq!(notices("tank", &lost, &lost, &none), vec![]);
        // A member lost: the pool degraded and the member, both Warnings, naming the volume.
        let n = notices("tank", &online, &lost, &none);
        assert_eq!(
            reasons(&n),
            [
                (true, "PoolDegraded".into()),
                (true, "MemberUnavail".into())
            ]
        );
        assert!(
            n[0].note.contains("member 1 (vol-01) UNAVAIL"),
            "{}",
            n[0].note
        );
        assert!(n[1].note.contains("vol-01") && n[1].note.contains("was ONLINE"));
        // Faulted further: the pool's new health.
        let faulted = report("FAULTED", &[("vol-00", "FAULTED"), ("vol-01", "UNAVAIL")]);
        assert_eq!(
            reasons(&notices("tank", &lost, &faulted, &none)),
            [(true, "PoolFaulted".into()), (true, "MemberFaulted".into())]
        );
        // The replacement started: a Normal Event saying which devices.
        let replacing = Outcome {
            replaced: Some((1, "1234".into(), "/d/vol09".into())),
            ..Default::default()
        };
        let n = notices("tank", &lost, &lost, &replacing);
        assert_eq!(reasons(&n), [(false, "MemberReplaceStarted".into())]);
        assert!(n[0].note.contains("1234") && n[0].note.contains("/d/vol09"));
        // The new volume in the pool, resilvered: healthy again. Its first sighting ONLINE
        // is not news; a member back ONLINE is.
        let replaced = report("ONLINE", &[("vol-00", "ONLINE"), ("vol-09", "ONLINE")]);
        assert_eq!(
            reasons(&notices("tank", &lost, &replaced, &none)),
            [(false, "PoolHealthy".into())]
        );
        let back = report("ONLINE", &[("vol-00", "ONLINE"), ("vol-01", "ONLINE")]);
        assert_eq!(
            reasons(&notices("tank", &lost, &back, &none)),
            [
                (false, "PoolHealthy".into()),
                (false, "MemberOnline".into())
            ]
        );
        // First import: ONLINE is PoolImported's news; anything else is a Warning.
        let fresh = AgentStatus::default();
        assert_eq!(notices("tank", &fresh, &online, &none), vec![]);
        assert_eq!(
            reasons(&notices("tank", &fresh, &lost, &none)),
            [
                (true, "PoolDegraded".into()),
                (true, "MemberUnavail".into())
            ]
        );
    }

    #[test]
    fn report_stays_the_same_while_the_controller_creates_and_attaches() {
        let p = pool(false);
        // No volume IDs; then IDs, none attached; then member 0 attached with its link.
        let mut none = facts(None);
        for m in &mut none.observed.members {
            (m.volume_id, m.attached, m.device) = (None, false, None);
        }
        let mut ids = facts(None);
        for m in &mut ids.observed.members {
            (m.attached, m.device) = (false, None);
        }
        let mut half = facts(None);
        half.observed.members[1].attached = false;
        half.observed.members[1].device = None;
        let phases = [
            (&none, Wait::VolumeIds),
            (&ids, Wait::Attachment(vec![0, 1])),
            (&half, Wait::Attachment(vec![1])),
        ];
        let reports: Vec<_> = phases
            .iter()
            .map(|(f, w)| {
                let out = Outcome {
                    wait: Some(w.clone()),
                    ..Default::default()
                };
                (verdicts(&p, f, &out), reported_volumes(f, &out))
            })
            .collect();
        assert!(reports.windows(2).all(|w| w[0] == w[1]), "{reports:#?}");
        let (v, vols) = &reports[2];
        assert_eq!(find(v, cond::POOL_IMPORTED).reason, "WaitingForVolumes");
        assert_eq!(find(v, cond::DEVICES_FOUND).status, "Unknown");
        assert!(vols.iter().all(|v| v.device.is_none()));
        // Attached, the link not there yet: that is the node's to say, and it says which.
        let out = Outcome {
            wait: Some(Wait::Devices(vec![1])),
            ..Default::default()
        };
        let mut attached = half.clone();
        attached.observed.members[1].attached = true;
        let v = verdicts(&p, &attached, &out);
        let d = find(&v, cond::DEVICES_FOUND);
        assert_eq!((d.status, d.reason.as_str()), ("False", "Missing"));
        assert!(d.message.contains("vol-01 (member 1)"), "{}", d.message);
        assert_eq!(find(&v, cond::POOL_IMPORTED).reason, "WaitingForDevices");
        let vols = reported_volumes(&attached, &out);
        assert_eq!(vols[0].device.as_deref(), Some("/d/vol00"));
    }

    #[test]
    fn usage_is_rewritten_only_when_it_moves_by_half_a_percent_of_the_size() {
        let size = 200 << 30;
        let stored = (Some(10 << 30), Some(190 << 30), Some(size));
        let near = (
            Some((10 << 30) + (1 << 29)),
            Some((190 << 30) - (1 << 29)),
            Some(size),
        );
        assert_eq!(
            settled_usage(stored, near),
            (Some(10 << 30), Some(190 << 30))
        );
        let far = (Some(11 << 30), Some(189 << 30), Some(size));
        assert_eq!(
            settled_usage(stored, far),
            (Some(11 << 30), Some(189 << 30))
        );
        // Freed as much: rewritten too.
        let freed = (Some(9 << 30), Some(191 << 30), Some(size));
        assert_eq!(
            settled_usage(stored, freed),
            (Some(9 << 30), Some(191 << 30))
        );
        // The pool grew: the new numbers at once.
        let grown = (Some(10 << 30), Some(390 << 30), Some(400 << 30));
        assert_eq!(
            settled_usage(stored, grown),
            (Some(10 << 30), Some(390 << 30))
        );
        // Nothing stored, or nothing imported: what is seen.
        assert_eq!(settled_usage((None, None, None), near), (near.0, near.1));
        assert_eq!(settled_usage(stored, (None, None, None)), (None, None));
    }

    #[test]
    fn release_is_reported_once_and_kept() {
        let mut f = facts(None);
        f.observed.deleting = true;
        let out = Outcome {
            released: Some("Exported"),
            ..Default::default()
        };
        let p = pool(true);
        let v = verdicts(&p, &f, &out);
        let r = find(&v, cond::POOL_RELEASED);
        assert_eq!((r.status, r.reason.as_str()), ("True", "Exported"));
        // The next resync finds nothing imported; the reason stays Exported.
        let mut p2 = p.clone();
        p2.status = Some(pgml_api::zfspool::ZfsPoolStatus {
            conditions: conditions(&v, &p, Timestamp::now()),
            ..Default::default()
        });
        let out = Outcome {
            released: Some("NotImported"),
            ..Default::default()
        };
        let v2 = verdicts(&p2, &f, &out);
        assert_eq!(find(&v2, cond::POOL_RELEASED).reason, "Exported");
        // A failed export is not a release.
        let out = Outcome {
            failed: Some("pool is busy".into()),
            ..Default::default()
        };
        let r = verdicts(&p, &f, &out);
        let r = find(&r, cond::POOL_RELEASED);
        assert_eq!((r.status, r.reason.as_str()), ("False", "ReleaseFailed"));
    }

    #[test]
    fn imported_with_datasets_pending_is_not_imported_yet() {
        let mut f = facts(Some(Imported {
            guid: Some(1),
            health: "ONLINE".into(),
            members: vec![],
            resilvering: false,
        }));
        f.observed.misplaced_datasets = vec![("pgwal".into(), Placement::Unmounted)];
        let out = Outcome {
            failed: Some("dataset is busy".into()),
            ..Default::default()
        };
        let v = verdicts(&pool(false), &f, &out);
        let i = find(&v, cond::POOL_IMPORTED);
        assert_eq!((i.status, i.reason.as_str()), ("False", "DatasetsPending"));
        assert!(i.message.contains("pgwal") && i.message.contains("busy"));
    }

    #[test]
    fn not_imported_says_a_refusal_first_then_a_failure_the_release_and_a_wait() {
        let mut f = facts(None);
        f.observed.deleting = true;
        let mut out = Outcome {
            refused: Some(("/d/vol00".into(), "carries data".into())),
            failed: Some("boom".into()),
            wait: Some(Wait::Devices(vec![1])),
            ..Default::default()
        };
        let reason = |f: &Facts, out: &Outcome| not_imported(&f.observed, out).reason;
        assert_eq!(reason(&f, &out), "DeviceInUse");
        out.refused = None;
        assert_eq!(reason(&f, &out), "CommandFailed");
        out.failed = None;
        assert_eq!(reason(&f, &out), "Released");
        f.observed.deleting = false;
        assert_eq!(reason(&f, &out), "WaitingForDevices");
        out.wait = None;
        assert_eq!(reason(&f, &out), "NotImported");
    }

    #[test]
    fn mount_points_relative_to_the_mount_root() {
        let mut p = pool(false);
        let ds = p.spec.template.datasets[0].clone();
        assert_eq!(relative_mount(&p, &ds), "/tank/pgdata");
        let mut explicit = ds.clone();
        explicit.mount_point = Some("/data/pg".into());
        assert_eq!(relative_mount(&p, &explicit), "/data/pg");
        p.spec.pool_name = Some("other".into());
        assert_eq!(relative_mount(&p, &ds), "/other/pgdata");
    }

    /// Real `zpool status` output from public reports (crates/pgml-zfs/tests/fixtures/public).
    macro_rules! public {
        ($f:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../pgml-zfs/tests/fixtures/public/",
                $f
            ))
        };
    }

    fn resilver_of(out: &str) -> Option<ResilverStatus> {
        let st = pgml_zfs::parse_status(out).unwrap().remove(0);
        resilver_status(&st, |_| None)
    }

    #[test]
    fn a_resilver_is_finished_only_when_zfs_says_so_in_full() {
        let running = resilver_of(public!("openzfs-2.2.4-resilver-in-progress.txt")).unwrap();
        assert_eq!(
            (running.in_progress, running.percent_done),
            (true, Some(81))
        );
        let done = public!("openzfs-2.x-resilvered.txt");
        let finished = resilver_of(done).unwrap();
        assert_eq!(
            (finished.in_progress, finished.percent_done),
            (false, Some(100))
        );
        // The same line cut short: in progress, of unknown progress, never finished.
        let cut = resilver_of(&done[..done.find("rors on").unwrap()]).unwrap();
        assert_eq!((cut.in_progress, cut.percent_done), (true, None));
        // A paused scrub is no resilver; a finished scrub neither.
        assert_eq!(resilver_of(public!("openzfs-2.3.1-scrub-paused.txt")), None);
        assert_eq!(
            resilver_of(public!("openzfs-2.2.2-scrub-data-errors.txt")),
            None
        );
    }
}
