//! Lost members: how each member looks to the repair decision ([`super::super::repair`]),
//! what is recorded before a replacement is created, where the repair stands, and what
//! becomes of the volumes members replaced.

use std::collections::BTreeMap;

use pgml_api::zfspool::{VolumeStatus, ZfsPoolTemplate};

use pgml_aws::Volume;

use super::entry_mut;
use crate::runtime::ownership::{self, Ownership};
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
/// when EC2 no longer has them. Nothing is detached or deleted whose tags (`owner`:
/// [`crate::zfspool::build::ownership`]) do not say it is this pool's and this
/// installation's.
pub fn retirements(
    facts: &Facts,
    members: &Members,
    instance_id: &str,
    owner: impl Fn(&Volume) -> Ownership,
    installation: &str,
) -> Vec<Retirement> {
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
            let step = match v.map(&owner) {
                Some(o)
                    if o != Ownership::Ours && matches!(step, Retire::Detach | Retire::Delete) =>
                {
                    let unadopted = o == Ownership::Unadopted;
                    let warning =
                        ownership::left_alone("volume", &[(old.clone(), o)], installation);
                    let (why, note) = warning.into_iter().next().unwrap_or_default();
                    if unadopted {
                        Retire::Unadopted(why, note)
                    } else {
                        Retire::NotOurs(why, note)
                    }
                }
                _ => step,
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfspool::fixtures::*;
    use crate::zfspool::status::{AgentView, ReportedMember};
    use pgml_aws::AttachmentState as Ec2;
    use pgml_aws::VolumeState;

    /// The agent's report of member `index`: the by-id device of `volume` and its state (as
    /// an agent older than `memberVolumeId` wrote it: the device tells what it is about).
    fn reported(index: i32, volume: Option<&str>, state: &str) -> ReportedMember {
        ReportedMember {
            index,
            device: volume.map(|v| {
                format!(
                    "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol{}",
                    v.trim_start_matches("vol-")
                )
            }),
            state: Some(state.into()),
            volume_id: None,
        }
    }

    fn agent(health: &str, resilvering: bool, members: Vec<ReportedMember>) -> AgentView {
        AgentView {
            imported: true,
            healthy: health == "ONLINE",
            health: Some(health.into()),
            members,
            resilvering,
            resilver_percent: resilvering.then_some(40),
            ..Default::default()
        }
    }

    /// Three raidz1 members in use; member 1 replaced vol-old with vol-1 (generation 1).
    fn replacing() -> (Facts, Members) {
        let mut m = members(
            (0..3)
                .map(|i| {
                    Some(on(
                        vol(&format!("vol-{i}"), i, VolumeState::InUse),
                        INSTANCE,
                        "/d",
                        Ec2::Attached,
                    ))
                })
                .collect(),
        );
        m.retired = vec![(1, vol("vol-old", 1, VolumeState::Error))];
        let mut f = facts(&m);
        f.volumes[1].generation = 1;
        f.volumes[1].replaced_volume_id = Some("vol-old".into());
        (f, m)
    }

    #[test]
    fn views_take_the_agents_state_only_when_it_is_about_the_volume() {
        let m = members(vec![
            Some(vol("vol-0", 0, VolumeState::InUse)),
            Some(vol("vol-1", 1, VolumeState::Error)),
            None,
            Some(vol("vol-3", 3, VolumeState::InUse)),
        ]);
        let mut f = facts(&m);
        f.volumes.push(VolumeStatus {
            index: 2,
            volume_id: Some("vol-2".into()),
            generation: 1,
            ..Default::default()
        });
        f.agent = agent(
            "DEGRADED",
            false,
            vec![
                reported(0, Some("vol-0"), "ONLINE"),
                // Lost devices have no by-id link: the state still describes the volume.
                reported(1, None, "UNAVAIL"),
                reported(2, Some("vol-9"), "ONLINE"),
                reported(3, None, "ONLINE"),
            ],
        );
        let v = views(&f, &m);
        let states: Vec<Option<&str>> = v.iter().map(|v| v.member_state.as_deref()).collect();
        assert_eq!(states, vec![Some("ONLINE"), Some("UNAVAIL"), None, None]);
        assert_eq!(v[1].ec2_state, Some(VolumeState::Error));
        assert_eq!((v[2].ec2_state.clone(), v[2].generation), (None, 1));
        assert_eq!(v[2].volume_id.as_deref(), Some("vol-2"));

        // A member being replaced: the unlinked report is about the volume it replaces.
        f.volumes[1].replaced_volume_id = Some("vol-x".into());
        assert_eq!(views(&f, &m)[1].member_state, None);
        assert_eq!(views(&f, &m)[1].replaced.as_deref(), Some("vol-x"));
    }

    #[test]
    fn the_decision_follows_the_spec() {
        let m = members(vec![
            Some(vol("vol-0", 0, VolumeState::InUse)),
            Some(vol("vol-1", 1, VolumeState::Error)),
            Some(vol("vol-2", 2, VolumeState::InUse)),
        ]);
        let f = facts(&m);
        let template = |yaml: &str| -> ZfsPoolTemplate { serde_yaml::from_str(yaml).unwrap() };
        let auto = template("{volumes: {count: 3, sizeGiB: 10}, layout: raidz1}");
        assert_eq!(
            decide(&auto, &f, &m),
            Decision::Replace {
                index: 1,
                old: "vol-1".into(),
                generation: 1,
                loss: Loss::Error
            }
        );
        let manual = template(
            "{volumes: {count: 3, sizeGiB: 10}, layout: raidz1, memberReplacement: Manual}",
        );
        assert!(matches!(decide(&manual, &f, &m), Decision::Manual(_)));
        let raid0 = template("{volumes: {count: 3, sizeGiB: 10}}");
        assert!(matches!(decide(&raid0, &f, &m), Decision::Raid0(_)));
    }

    #[test]
    fn a_replacement_is_recorded_before_anything_is_created() {
        let mut m = members(vec![
            Some(vol("vol-0", 0, VolumeState::InUse)),
            Some(vol("vol-1", 1, VolumeState::Error)),
            None,
        ]);
        let mut f = facts(&m);
        let mut gone = BTreeMap::from([(2, "vol-2".to_string())]);
        begin(&mut f, &mut m, &mut gone, 1, "vol-1", 3);
        assert_eq!(
            *entry(&f, 1),
            VolumeStatus {
                index: 1,
                generation: 3,
                replaced_volume_id: Some("vol-1".into()),
                ..Default::default()
            }
        );
        assert!(m.slots[1].is_none());
        assert_eq!(m.retired.len(), 1);
        assert_eq!(
            (m.retired[0].0, m.retired[0].1.volume_id.as_str()),
            (1, "vol-1")
        );
        assert_eq!(gone.len(), 1, "another member stays gone");
        // A gone member: no volume to retire, no longer gone (to be created).
        begin(&mut f, &mut m, &mut gone, 2, "vol-2", 1);
        assert!(gone.is_empty());
        assert_eq!(m.retired.len(), 1);
        assert_eq!(entry(&f, 2).replaced_volume_id.as_deref(), Some("vol-2"));
        assert_eq!(
            lost_note("tank", 1, "vol-1", &Loss::Error, 3),
            "member 1 (vol-1) of pool tank is lost: its volume is in EBS state error; replacing it with a new volume (member generation 3)"
        );
    }

    #[test]
    fn the_view_follows_a_replacement_until_its_member_is_online_and_resilvered() {
        let lost = |i| repair::Lost {
            index: i,
            volume_id: format!("vol-{i}"),
            loss: Loss::Gone,
        };
        let (mut f, _) = replacing();
        let described =
            vec!["member 1 (vol-1) is lost: its volume no longer exists in EC2".to_string()];
        assert_eq!(
            view(&Decision::Manual(vec![lost(1)]), &f),
            RepairView::Manual(described.clone())
        );
        assert_eq!(
            view(&Decision::TooMany(vec![lost(1)]), &f),
            RepairView::TooMany(described.clone())
        );
        assert_eq!(
            view(&Decision::Raid0(vec![lost(1)]), &f),
            RepairView::Raid0(described)
        );

        // The agent has not taken the new volume yet.
        f.agent = agent(
            "DEGRADED",
            false,
            vec![reported(1, Some("vol-old"), "UNAVAIL")],
        );
        let replacing = |attached| RepairView::Replacing {
            index: 1,
            old: "vol-old".into(),
            new: Some("vol-1".into()),
            attached,
        };
        assert_eq!(view(&Decision::Healthy, &f), replacing(true));
        f.volumes[1].attachment_state = Some("attaching".into());
        assert_eq!(view(&Decision::Healthy, &f), replacing(false));
        // Not created yet.
        f.volumes[1].volume_id = None;
        assert!(matches!(
            view(&Decision::Healthy, &f),
            RepairView::Replacing { new: None, .. }
        ));
        f.volumes[1].volume_id = Some("vol-1".into());

        // In the pool, resilvering.
        f.agent = agent("DEGRADED", true, vec![reported(1, Some("vol-1"), "ONLINE")]);
        assert_eq!(
            view(&Decision::Healthy, &f),
            RepairView::Resilvering {
                index: 1,
                old: "vol-old".into(),
                new: "vol-1".into(),
                percent: Some(40)
            }
        );
        // Done: ONLINE in an ONLINE pool, no resilver.
        f.agent = agent("ONLINE", false, vec![reported(1, Some("vol-1"), "ONLINE")]);
        assert_eq!(view(&Decision::Healthy, &f), RepairView::None);
    }

    #[test]
    fn replaced_volumes_are_detached_then_deleted_then_forgotten() {
        let (mut f, mut m) = replacing();
        let step = |f: &Facts, m: &Members| {
            let r = retirements(f, m, INSTANCE, |_| Ownership::Ours, "prod-a");
            assert_eq!(r.len(), 1);
            assert_eq!(
                (r[0].index, r[0].old.as_str(), r[0].new.as_deref()),
                (1, "vol-old", Some("vol-1"))
            );
            r[0].step.clone()
        };
        // Still attached to our instance: detached at once, whatever the pool says.
        m.retired[0].1 = on(
            vol("vol-old", 1, VolumeState::Error),
            INSTANCE,
            "/d",
            Ec2::Attached,
        );
        f.agent = agent("DEGRADED", false, vec![]);
        assert_eq!(step(&f, &m), Retire::Detach);
        // Detached, the new member not ONLINE yet: kept.
        m.retired[0].1 = vol("vol-old", 1, VolumeState::Error);
        assert_eq!(step(&f, &m), Retire::Wait);
        // The new member ONLINE in an ONLINE pool: deleted.
        f.agent = agent("ONLINE", false, vec![reported(1, Some("vol-1"), "ONLINE")]);
        assert_eq!(step(&f, &m), Retire::Delete);
        // Gone from EC2: forgotten.
        m.retired.clear();
        assert_eq!(step(&f, &m), Retire::Forget);

        let r = &retirements(&f, &m, INSTANCE, |_| Ownership::Ours, "prod-a")[0];
        assert_eq!(
            replaced_note(r, "tank"),
            "member 1: vol-1 replaced vol-old, resilvered, pool tank ONLINE; deleted vol-old"
        );
        retired(&mut f, 1);
        assert_eq!(entry(&f, 1).replaced_volume_id, None);
        assert_eq!(entry(&f, 1).generation, 1, "the generation stays");
        assert!(retirements(&f, &m, INSTANCE, |_| Ownership::Ours, "prod-a").is_empty());
    }

    #[test]
    fn a_replaced_volume_whose_tags_are_not_ours_is_never_detached_or_deleted() {
        let (mut f, mut m) = replacing();
        let with = |f: &Facts, m: &Members, o: Ownership| {
            retirements(f, m, INSTANCE, move |_| o.clone(), "prod-a")[0]
                .step
                .clone()
        };
        let unadopted = Ownership::Unadopted;
        let theirs = Ownership::NotOurs("tagged pgml.io/installation=prod-b".into());
        // Attached to our instance: would be detached.
        m.retired[0].1 = on(
            vol("vol-old", 1, VolumeState::InUse),
            INSTANCE,
            "/d",
            Ec2::Attached,
        );
        assert_eq!(with(&f, &m, Ownership::Ours), Retire::Detach);
        let Retire::NotOurs(r, note) = with(&f, &m, theirs.clone()) else {
            panic!("another installation's is left alone")
        };
        assert_eq!(r, ownership::reason::NOT_OURS);
        assert!(
            note.contains("vol-old") && note.contains("prod-b"),
            "{note}"
        );
        let Retire::Unadopted(r, note) = with(&f, &m, unadopted.clone()) else {
            panic!("an unadopted one is left alone")
        };
        assert_eq!(r, ownership::reason::INSTALLATION_TAG_MISSING);
        assert!(
            note.contains("Key=pgml.io/installation,Value=prod-a"),
            "{note}"
        );
        // Detached, the new member ONLINE: would be deleted.
        m.retired[0].1 = vol("vol-old", 1, VolumeState::Available);
        f.agent = agent("ONLINE", false, vec![reported(1, Some("vol-1"), "ONLINE")]);
        f.volumes[1].volume_id = Some("vol-1".into());
        assert_eq!(with(&f, &m, Ownership::Ours), Retire::Delete);
        assert!(matches!(with(&f, &m, theirs.clone()), Retire::NotOurs(..)));
        assert!(matches!(
            with(&f, &m, unadopted.clone()),
            Retire::Unadopted(..)
        ));
        // Waiting or forgetting touches nothing in EC2: the tags do not matter.
        f.agent = agent("DEGRADED", true, vec![]);
        assert_eq!(with(&f, &m, theirs.clone()), Retire::Wait);
        m.retired.clear();
        assert_eq!(with(&f, &m, theirs), Retire::Forget);
    }
}
