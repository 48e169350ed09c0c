//! After the capture: how far the set has come in AWS (Finalizing), what is compared with the
//! previous set, which snapshots tagged with the UID do not belong (strays, a failed set's
//! leftovers).

use std::collections::BTreeSet;

use pgml_api::snapshot::MemberSnapshot;
use pgml_aws::Snapshot;

use super::{Failure, reason, state};

/// How far the set has come in Finalizing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Pending,
    Completed,
    /// A snapshot failed (`error`) or is gone: the message.
    Failed(String),
}

/// Updates each member's state and progress from DescribeSnapshots and judges the set.
pub fn progress(members: &mut [MemberSnapshot], described: &[Snapshot]) -> Progress {
    let mut failed = Vec::new();
    let mut pending = false;
    for m in members.iter_mut() {
        let Some(id) = m.snapshot_id.clone() else {
            failed.push(format!("member {} has no snapshot", m.member_index));
            continue;
        };
        match described.iter().find(|s| s.snapshot_id == id) {
            None => {
                m.state = Some(state::DELETED.into());
                failed.push(format!(
                    "member {}'s snapshot {id} no longer exists",
                    m.member_index
                ));
            }
            Some(s) => {
                m.state = Some(s.state.clone());
                m.progress = s.progress.clone().filter(|p| !p.is_empty());
                match s.state.as_str() {
                    state::COMPLETED => {}
                    state::ERROR => failed.push(format!(
                        "member {}'s snapshot {id} is in state error{}",
                        m.member_index,
                        s.state_message
                            .as_deref()
                            .map_or(String::new(), |w| format!(": {w}"))
                    )),
                    _ => pending = true,
                }
            }
        }
    }
    if !failed.is_empty() {
        Progress::Failed(failed.join("; "))
    } else if pending {
        Progress::Pending
    } else {
        Progress::Completed
    }
}

/// What Finalizing does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Follow {
    /// AWS is still copying: stay Finalizing with this message, look again soon.
    Wait(String),
    /// Every snapshot completed: the message, and the members' volume sizes added up.
    Complete { message: String, size_gib: i64 },
    /// A snapshot failed or is gone: the set is deleted.
    Fail(Failure),
}

/// [`progress`] (updating `members`) and what it means; `source` as status records it.
pub fn follow(
    members: &mut [MemberSnapshot],
    described: &[Snapshot],
    source: Option<&str>,
) -> Follow {
    match progress(members, described) {
        Progress::Failed(why) => Follow::Fail(Failure::set_deleted(
            reason::SNAPSHOT_ERROR,
            format!("{why}; the set is deleted"),
        )),
        Progress::Pending => {
            let done = members
                .iter()
                .filter(|m| m.state.as_deref() == Some(state::COMPLETED))
                .count();
            Follow::Wait(format!(
                "{done} of {} snapshots completed; AWS is copying the blocks",
                members.len()
            ))
        }
        Progress::Completed => {
            let size_gib: i64 = members.iter().filter_map(|m| m.size_gib).sum();
            let message = format!(
                "{} snapshots completed ({size_gib} GiB of volumes) of {}",
                members.len(),
                source.unwrap_or("the source")
            );
            Follow::Complete { message, size_gib }
        }
    }
}

/// The snapshot IDs status records, in member order.
pub fn snapshot_ids(members: &[MemberSnapshot]) -> Vec<String> {
    members
        .iter()
        .filter_map(|m| m.snapshot_id.clone())
        .collect()
}

/// Snapshots tagged with the UID that the status does not name: a retried call's, or one
/// whose recording a crash cut short.
pub fn strays(found: &[Snapshot], members: &[MemberSnapshot]) -> Vec<String> {
    let ours: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.snapshot_id.as_deref())
        .collect();
    found
        .iter()
        .filter(|s| !ours.contains(s.snapshot_id.as_str()))
        .map(|s| s.snapshot_id.clone())
        .collect()
}

/// A Failed object keeps no snapshot: every one tagged with its UID that is not already
/// deleted (a call that answered after the failure included).
pub fn leftovers(found: &[Snapshot]) -> Vec<String> {
    found
        .iter()
        .filter(|s| s.state != state::DELETED)
        .map(|s| s.snapshot_id.clone())
        .collect()
}

/// Marks the members whose snapshot was `deleted` (the IDs stay on record).
pub fn mark_deleted(members: &mut [MemberSnapshot], deleted: &[String]) {
    for m in members.iter_mut().filter(|m| {
        m.snapshot_id
            .as_ref()
            .is_some_and(|id| deleted.contains(id))
    }) {
        m.state = Some(state::DELETED.into());
        m.progress = None;
    }
}

/// The Completed set of the same source captured last before `captured` (seconds), and the
/// pairs (its snapshot, ours) of each member, for ListChangedBlocks. Only a set with the
/// same members (same volumes) compares.
pub fn previous_set(
    others: &[pgml_api::EbsSnapshot],
    name: &str,
    source: Option<&str>,
    captured: Option<i64>,
    members: &[MemberSnapshot],
) -> Option<(String, Vec<(String, String)>)> {
    let source = source?;
    let captured = captured?;
    let prev = others
        .iter()
        .filter(|o| o.metadata.name.as_deref() != Some(name))
        .filter_map(|o| Some((o.metadata.name.clone()?, o.status.as_ref()?)))
        .filter(|(_, s)| {
            s.phase == Some(pgml_api::snapshot::SnapshotPhase::Completed)
                && s.source.as_deref() == Some(source)
        })
        .filter_map(|(n, s)| Some((s.capture_time.as_ref()?.0.as_second(), n, s)))
        .filter(|(t, _, _)| *t < captured)
        .max_by_key(|(t, n, _)| (*t, n.clone()))?;
    let (_, prev_name, prev) = prev;
    if prev.snapshots.len() != members.len() {
        return None;
    }
    let pairs = members
        .iter()
        .map(|m| {
            let p = prev
                .snapshots
                .iter()
                .find(|p| p.member_index == m.member_index && p.volume_id == m.volume_id)?;
            Some((p.snapshot_id.clone()?, m.snapshot_id.clone()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((prev_name, pairs))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn progress_judges_the_set() {
        let mut m = captured(2);
        let mut d = vec![
            snap("snap-0", "vol-0", "completed", 1),
            snap("snap-1", "vol-1", "pending", 1),
        ];
        d[1].progress = Some("40%".into());
        assert_eq!(progress(&mut m, &d), Progress::Pending);
        assert_eq!(m[1].progress.as_deref(), Some("40%"));
        d[1].state = "completed".into();
        assert_eq!(progress(&mut m, &d), Progress::Completed);
        d[0].state = "error".into();
        d[0].state_message = Some("boom".into());
        assert!(matches!(progress(&mut m, &d), Progress::Failed(w) if w.contains("boom")));
        assert!(
            matches!(progress(&mut m, &d[1..]), Progress::Failed(w) if w.contains("no longer exists"))
        );
        assert_eq!(m[0].state.as_deref(), Some("deleted"));
    }

    #[test]
    fn a_member_without_a_snapshot_fails_the_set() {
        let mut m = members(1);
        assert_eq!(
            progress(&mut m, &[]),
            Progress::Failed("member 0 has no snapshot".into())
        );
    }

    #[test]
    fn finalizing_waits_completes_or_fails_with_its_messages() {
        let mut m = captured(2);
        let mut d = vec![
            snap("snap-0", "vol-0", "completed", 1),
            snap("snap-1", "vol-1", "pending", 1),
        ];
        assert_eq!(
            follow(&mut m, &d, Some("ZfsPool/tank")),
            Follow::Wait("1 of 2 snapshots completed; AWS is copying the blocks".into())
        );
        d[1].state = "completed".into();
        m[1].size_gib = Some(12);
        assert_eq!(
            follow(&mut m, &d, Some("ZfsPool/tank")),
            Follow::Complete {
                message: "2 snapshots completed (13 GiB of volumes) of ZfsPool/tank".into(),
                size_gib: 13
            }
        );
        assert!(matches!(
            follow(&mut m, &d, None),
            Follow::Complete { message, .. } if message.ends_with("of the source")
        ));
        d[1].state = "error".into();
        let Follow::Fail(f) = follow(&mut m, &d, None) else {
            panic!("not failed");
        };
        assert_eq!(
            f,
            Failure::set_deleted(
                reason::SNAPSHOT_ERROR,
                "member 1's snapshot snap-1 is in state error; the set is deleted"
            )
        );
        assert_eq!(m[1].state.as_deref(), Some("error"), "members updated");
    }

    fn completed(name: &str, source: &str, at: i64, snaps: &[&str]) -> pgml_api::EbsSnapshot {
        let members: Vec<String> = snaps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{{memberIndex: {i}, volumeId: vol-{i}, snapshotId: {s}}}"))
            .collect();
        let t = k8s_openapi::jiff::Timestamp::from_second(at).unwrap();
        serde_yaml::from_str(&format!(
            "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {{name: {name}}}\nspec: {{source: {{zfsPool: {{name: p}}}}}}\nstatus: {{phase: Completed, source: {source}, captureTime: '{t}', snapshots: [{}]}}\n",
            members.join(", ")
        ))
        .unwrap()
    }

    #[test]
    fn the_previous_set_is_the_last_completed_one_of_the_same_source() {
        let mut ours = members(2);
        ours[0].snapshot_id = Some("snap-n0".into());
        ours[1].snapshot_id = Some("snap-n1".into());
        let others = vec![
            completed("old", "ZfsPool/p", 100, &["snap-a0", "snap-a1"]),
            completed("last", "ZfsPool/p", 200, &["snap-b0", "snap-b1"]),
            completed("other", "ZfsPool/q", 250, &["snap-c0", "snap-c1"]),
            completed("later", "ZfsPool/p", 400, &["snap-d0", "snap-d1"]),
        ];
        let (name, pairs) =
            previous_set(&others, "new", Some("ZfsPool/p"), Some(300), &ours).unwrap();
        assert_eq!(name, "last");
        assert_eq!(
            pairs,
            [
                ("snap-b0".to_string(), "snap-n0".to_string()),
                ("snap-b1".to_string(), "snap-n1".to_string())
            ]
        );
        assert!(previous_set(&others, "new", Some("ZfsPool/p"), Some(100), &ours).is_none());
        // Another member count, or a replaced volume: nothing to compare.
        let three = vec![completed("x", "ZfsPool/p", 10, &["s0", "s1", "s2"])];
        assert!(previous_set(&three, "new", Some("ZfsPool/p"), Some(300), &ours).is_none());
        let mut moved = ours.clone();
        moved[1].volume_id = Some("vol-9".into());
        assert!(previous_set(&others, "new", Some("ZfsPool/p"), Some(300), &moved).is_none());
    }

    #[test]
    fn strays_are_what_status_does_not_name() {
        let mut m = members(1);
        m[0].snapshot_id = Some("snap-a".into());
        let found = vec![
            snap("snap-a", "vol-0", "completed", 1),
            snap("snap-b", "vol-0", "completed", 1),
        ];
        assert_eq!(strays(&found, &m), ["snap-b"]);
    }

    #[test]
    fn a_failed_set_deletes_what_is_left_and_only_what_was_deleted_is_marked() {
        let found = vec![
            snap("snap-1", "vol-1", "completed", 1),
            snap("snap-x", "vol-0", "deleted", 1),
            snap("snap-y", "vol-0", "pending", 1),
        ];
        assert_eq!(leftovers(&found), ["snap-1", "snap-y"]);
        let mut m = captured(2);
        m[0].snapshot_id = Some("snap-0".into());
        assert_eq!(snapshot_ids(&m), ["snap-0", "snap-1"]);
        let mut m = captured(3);
        m[0].progress = Some("100%".into());
        m.push(members(4).remove(3));
        // snap-2 was left alone (its tags are not ours): its state stays.
        mark_deleted(&mut m, &["snap-0".into(), "snap-1".into()]);
        let states: Vec<_> = m
            .iter()
            .map(|m| (m.state.as_deref(), m.progress.is_some()))
            .collect();
        assert_eq!(
            states,
            [
                (Some("deleted"), false),
                (Some("deleted"), false),
                (None, false),
                (None, false)
            ]
        );
        assert_eq!(
            snapshot_ids(&m),
            ["snap-0", "snap-1", "snap-2"],
            "the IDs stay"
        );
    }
}
