//! Repair of a lost member (pure): which member is lost, whether the controller replaces it
//! and with which member generation, and what becomes of the volume it replaced. No client,
//! no clock: every branch is tested from plain values.
//!
//! A raidz1 member is lost when its volume is gone from EC2, in EBS state `error`, or the
//! agent reports it UNAVAIL, REMOVED or FAULTED while the pool is DEGRADED. With
//! `memberReplacement: Automatic` and exactly one member lost, the controller records the
//! next generation of that member (with the lost volume as `replacedVolumeId`) before it
//! creates the replacement with that generation's ClientToken, so a crash at any point
//! repeats the same create and never forgets the old volume. The old volume is detached at
//! once and deleted when the new member is ONLINE in an ONLINE pool.

use pgml_api::zfspool::{Layout, MemberReplacement};
use pgml_aws::{AttachmentState, Volume, VolumeState};

/// Member states (`zpool status`) that mean the member's device is lost.
pub const LOST_MEMBER_STATES: [&str; 3] = ["UNAVAIL", "REMOVED", "FAULTED"];

/// One member as the controller sees it in one reconcile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberView {
    pub index: usize,
    /// The member's volume (status, or the volume found for it).
    pub volume_id: Option<String>,
    /// `status.volumes[i].generation`.
    pub generation: i32,
    /// `status.volumes[i].replacedVolumeId`: a replacement not finished yet.
    pub replaced: Option<String>,
    /// EC2's state of `volume_id`; `None` when EC2 no longer knows the volume.
    pub ec2_state: Option<VolumeState>,
    /// The agent's `memberState`, only when its report is about `volume_id` (see
    /// [`crate::zfspool::status::AgentView::member_state`]).
    pub member_state: Option<String>,
}

/// Why a member counts as lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// EC2 no longer knows the volume.
    Gone,
    /// The volume is in EBS state `error`.
    Error,
    /// The agent reports the member in this state while the pool is DEGRADED.
    Member(String),
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Gone => f.write_str("its volume no longer exists in EC2"),
            Loss::Error => f.write_str("its volume is in EBS state error"),
            Loss::Member(s) => write!(f, "zpool status shows it {s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub index: usize,
    pub volume_id: String,
    pub loss: Loss,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "member {} ({}) is lost: {}",
            self.index, self.volume_id, self.loss
        )
    }
}

/// The members that are lost. A member being replaced is judged by EC2 alone: the agent's
/// report may still describe the volume it replaces.
pub fn lost_members(members: &[MemberView], health: Option<&str>) -> Vec<Lost> {
    members
        .iter()
        .filter_map(|m| {
            let id = m.volume_id.clone()?;
            let loss = match (&m.ec2_state, m.member_state.as_deref()) {
                (None, _) => Loss::Gone,
                (Some(VolumeState::Error), _) => Loss::Error,
                (_, Some(s))
                    if m.replaced.is_none()
                        && health == Some("DEGRADED")
                        && LOST_MEMBER_STATES.contains(&s) =>
                {
                    Loss::Member(s.to_string())
                }
                _ => return None,
            };
            Some(Lost {
                index: m.index,
                volume_id: id,
                loss,
            })
        })
        .collect()
}

/// What the controller does about lost members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No member is lost.
    Healthy,
    /// Replace member `index`: record `generation` and `old` as replaced, then create the
    /// replacement with that generation's ClientToken.
    Replace {
        index: usize,
        old: String,
        generation: i32,
        loss: Loss,
    },
    /// A raidz1 member is lost and `memberReplacement` is Manual: report, wait.
    Manual(Vec<Lost>),
    /// A raid0 member is lost: the pool cannot survive it; nothing is deleted.
    Raid0(Vec<Lost>),
    /// More is lost than raidz1 survives (two members, or one while another still
    /// resilvers, or a replacement lost before its resilver finished): nothing is done.
    TooMany(Vec<Lost>),
}

/// A replacement is finished once its member is ONLINE and no resilver runs.
fn replacement_pending(m: &MemberView, resilvering: bool) -> bool {
    m.replaced.is_some() && (m.member_state.as_deref() != Some("ONLINE") || resilvering)
}

pub fn decide(
    layout: Layout,
    policy: MemberReplacement,
    members: &[MemberView],
    health: Option<&str>,
    resilvering: bool,
) -> Decision {
    let lost = lost_members(members, health);
    let Some(first) = lost.first() else {
        return Decision::Healthy;
    };
    if layout == Layout::Raid0 {
        return Decision::Raid0(lost);
    }
    let lost_index = |i: usize| lost.iter().any(|l| l.index == i);
    let pending = members
        .iter()
        .filter(|m| !lost_index(m.index) && replacement_pending(m, resilvering))
        .count();
    let member = members.iter().find(|m| m.index == first.index);
    // A lost member whose own previous replacement is not finished: its replaced volume is
    // still to be dealt with, and the data may need it.
    let relost = member.is_some_and(|m| m.replaced.is_some());
    if lost.len() + pending > 1 || relost || matches!(health, Some("FAULTED" | "UNAVAIL")) {
        return Decision::TooMany(lost);
    }
    if policy == MemberReplacement::Manual {
        return Decision::Manual(lost);
    }
    Decision::Replace {
        index: first.index,
        old: first.volume_id.clone(),
        generation: member.map_or(0, |m| m.generation) + 1,
        loss: first.loss.clone(),
    }
}

/// What to do with a volume a member replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retire {
    /// EC2 no longer knows it: drop it from status.
    Forget,
    /// Detach it from our instance.
    Detach,
    /// Delete it: the new member is ONLINE and the pool ONLINE.
    Delete,
    /// Detaching, attached elsewhere, or the new member is not ONLINE yet.
    Wait,
    /// Its tags say it is not this pool's or not this installation's (only status named
    /// it): never detached or deleted; its record is dropped. The Event's (reason, note).
    NotOurs(&'static str, String),
    /// This pool's, but with no installation tag (made before the operator wrote one):
    /// left alone, its record kept, until an administrator adopts it by adding the tag.
    /// The Event's (reason, note).
    Unadopted(&'static str, String),
}

/// `old`: EC2's view of the replaced volume (`None`: unknown to EC2). `member_state`: the
/// agent's state of the member's new volume; `health`: the pool's.
pub fn retire_step(
    old: Option<&Volume>,
    instance_id: &str,
    member_state: Option<&str>,
    health: Option<&str>,
    resilvering: bool,
) -> Retire {
    let Some(v) = old.filter(|v| !v.state.is_gone()) else {
        return Retire::Forget;
    };
    let live: Vec<_> = v
        .attachments
        .iter()
        .filter(|a| a.state != AttachmentState::Detached)
        .collect();
    if let Some(a) = live.first() {
        return if a.instance_id == instance_id && !matches!(a.state, AttachmentState::Detaching) {
            Retire::Detach
        } else {
            Retire::Wait
        };
    }
    if member_state == Some("ONLINE") && health == Some("ONLINE") && !resilvering {
        Retire::Delete
    } else {
        Retire::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_aws::Attachment;

    fn member(i: usize) -> MemberView {
        MemberView {
            index: i,
            volume_id: Some(format!("vol-{i}")),
            generation: 0,
            replaced: None,
            ec2_state: Some("in-use".into()),
            member_state: Some("ONLINE".into()),
        }
    }

    fn five() -> Vec<MemberView> {
        (0..5).map(member).collect()
    }

    const Z: Layout = Layout::Raidz1;
    const AUTO: MemberReplacement = MemberReplacement::Automatic;

    #[test]
    fn nothing_lost_is_healthy() {
        assert_eq!(
            decide(Z, AUTO, &five(), Some("ONLINE"), false),
            Decision::Healthy
        );
        // A member not created yet is not lost.
        let mut m = five();
        m[2].volume_id = None;
        m[2].ec2_state = None;
        assert_eq!(decide(Z, AUTO, &m, None, false), Decision::Healthy);
    }

    #[test]
    fn one_lost_raidz1_member_is_replaced_with_the_next_generation() {
        // EBS state error (the agent may not have noticed yet).
        let mut m = five();
        m[3].ec2_state = Some("error".into());
        assert_eq!(
            decide(Z, AUTO, &m, Some("ONLINE"), false),
            Decision::Replace {
                index: 3,
                old: "vol-3".into(),
                generation: 1,
                loss: Loss::Error
            }
        );
        // Gone from EC2, on a member replaced once before.
        let mut m = five();
        m[1].ec2_state = None;
        m[1].generation = 1;
        assert_eq!(
            decide(Z, AUTO, &m, Some("DEGRADED"), false),
            Decision::Replace {
                index: 1,
                old: "vol-1".into(),
                generation: 2,
                loss: Loss::Gone
            }
        );
        // The agent says UNAVAIL in a DEGRADED pool (EC2 sees nothing wrong).
        let mut m = five();
        m[4].member_state = Some("UNAVAIL".into());
        assert_eq!(
            decide(Z, AUTO, &m, Some("DEGRADED"), false),
            Decision::Replace {
                index: 4,
                old: "vol-4".into(),
                generation: 1,
                loss: Loss::Member("UNAVAIL".into())
            }
        );
        // ... but not while the pool is ONLINE (a member state of a moment).
        assert_eq!(
            decide(Z, AUTO, &m, Some("ONLINE"), false),
            Decision::Healthy
        );
    }

    #[test]
    fn manual_reports_and_waits() {
        let mut m = five();
        m[0].ec2_state = Some("error".into());
        let d = decide(Z, MemberReplacement::Manual, &m, Some("DEGRADED"), false);
        assert_eq!(
            d,
            Decision::Manual(vec![Lost {
                index: 0,
                volume_id: "vol-0".into(),
                loss: Loss::Error
            }])
        );
    }

    #[test]
    fn raid0_is_never_replaced() {
        let mut m: Vec<MemberView> = (0..4).map(member).collect();
        m[2].ec2_state = Some("error".into());
        assert!(matches!(
            decide(Layout::Raid0, AUTO, &m, Some("UNAVAIL"), false),
            Decision::Raid0(l) if l.len() == 1 && l[0].index == 2
        ));
    }

    #[test]
    fn two_lost_members_are_not_replaced() {
        let mut m = five();
        m[1].ec2_state = Some("error".into());
        m[3].ec2_state = None;
        assert!(matches!(
            decide(Z, AUTO, &m, Some("UNAVAIL"), false),
            Decision::TooMany(l) if l.len() == 2
        ));
        // One lost while another member's replacement still resilvers.
        let mut m = five();
        m[1].ec2_state = Some("error".into());
        m[3].replaced = Some("vol-old".into());
        m[3].member_state = Some("ONLINE".into());
        assert!(matches!(
            decide(Z, AUTO, &m, Some("DEGRADED"), true),
            Decision::TooMany(_)
        ));
        // ... or whose new volume is not in the pool yet.
        m[3].member_state = None;
        assert!(matches!(
            decide(Z, AUTO, &m, Some("DEGRADED"), false),
            Decision::TooMany(_)
        ));
        // Once that replacement is ONLINE and resilvered, the next loss is replaced.
        m[3].member_state = Some("ONLINE".into());
        assert!(matches!(
            decide(Z, AUTO, &m, Some("DEGRADED"), false),
            Decision::Replace { index: 1, .. }
        ));
        // A pool the agent reports FAULTED is beyond repair.
        let mut m = five();
        m[2].ec2_state = Some("error".into());
        assert!(matches!(
            decide(Z, AUTO, &m, Some("FAULTED"), false),
            Decision::TooMany(_)
        ));
    }

    #[test]
    fn a_member_being_replaced_is_judged_by_ec2_only() {
        // The agent's report still shows the old volume UNAVAIL: not a new loss.
        let mut m = five();
        m[2].volume_id = Some("vol-new".into());
        m[2].generation = 1;
        m[2].replaced = Some("vol-2".into());
        m[2].member_state = Some("UNAVAIL".into());
        assert_eq!(
            decide(Z, AUTO, &m, Some("DEGRADED"), false),
            Decision::Healthy
        );
        // The replacement itself fails before its resilver finished: nothing is done (the
        // replaced volume is kept), it is reported.
        m[2].ec2_state = Some("error".into());
        assert!(matches!(
            decide(Z, AUTO, &m, Some("DEGRADED"), false),
            Decision::TooMany(_)
        ));
    }

    fn old(state: &str, att: Option<(&str, AttachmentState)>) -> Volume {
        Volume {
            volume_id: "vol-old".into(),
            availability_zone: "z".into(),
            state: state.into(),
            volume_type: "gp3".into(),
            size_gib: 1,
            iops: None,
            throughput_mibps: None,
            encrypted: true,
            snapshot_id: None,
            attachments: att
                .map(|(i, s)| Attachment {
                    instance_id: i.into(),
                    device: "/dev/xvdbb".into(),
                    state: s,
                })
                .into_iter()
                .collect(),
            tags: Default::default(),
        }
    }

    #[test]
    fn replaced_volumes_are_detached_then_deleted_once_the_pool_is_online() {
        let on = Some("ONLINE");
        assert_eq!(retire_step(None, "i-1", on, on, false), Retire::Forget);
        assert_eq!(
            retire_step(Some(&old("deleted", None)), "i-1", on, on, false),
            Retire::Forget
        );
        let attached = old("error", Some(("i-1", AttachmentState::Attached)));
        // Detached at once, whatever the pool says.
        assert_eq!(
            retire_step(Some(&attached), "i-1", None, Some("DEGRADED"), false),
            Retire::Detach
        );
        let detaching = old("error", Some(("i-1", AttachmentState::Detaching)));
        assert_eq!(
            retire_step(Some(&detaching), "i-1", on, on, false),
            Retire::Wait
        );
        // Attached to another instance: never taken from it.
        let elsewhere = old("in-use", Some(("i-9", AttachmentState::Attached)));
        assert_eq!(
            retire_step(Some(&elsewhere), "i-1", on, on, false),
            Retire::Wait
        );
        let detached = old("error", None);
        assert_eq!(
            retire_step(Some(&detached), "i-1", None, Some("DEGRADED"), false),
            Retire::Wait
        );
        assert_eq!(
            retire_step(Some(&detached), "i-1", on, Some("DEGRADED"), true),
            Retire::Wait
        );
        assert_eq!(
            retire_step(Some(&detached), "i-1", on, on, true),
            Retire::Wait
        );
        assert_eq!(
            retire_step(Some(&detached), "i-1", on, on, false),
            Retire::Delete
        );
    }
}
