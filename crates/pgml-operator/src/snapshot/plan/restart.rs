//! A reconcile that finds the object in Capturing: a previous one made (or may have made)
//! the call and did not record its answer — the process died, the answer was an error after
//! the call took effect, a CreateTags failed. What the snapshots tagged with the UID say
//! decides: adopt a full set made in time, delete a partial, doubled or late one, then
//! call again while the hold lasts, or give up.

use std::collections::BTreeSet;

use pgml_api::snapshot::MemberSnapshot;
use pgml_aws::Snapshot;

use super::{Failure, MARGIN, reason, recorded, state};

/// What the snapshots tagged with the object's UID say after a restart in Capturing.
#[derive(Clone, Debug, PartialEq)]
pub enum Adoption {
    /// None exist: the call was never made (or made nothing).
    Nothing,
    /// One snapshot per member, taken before the deadline: the set, in member order, and
    /// snapshots of other volumes to delete.
    Set {
        members: Vec<MemberSnapshot>,
        extra: Vec<String>,
    },
    /// Partial, doubled or late: every one of them is deleted.
    Discard(Vec<String>),
}

/// Sorts `found` (tagged with the UID) against the members' volumes.
pub fn adopt(found: &[Snapshot], members: &[MemberSnapshot], deadline: Option<i64>) -> Adoption {
    let live: Vec<&Snapshot> = found.iter().filter(|s| s.state != state::DELETED).collect();
    if live.is_empty() {
        return Adoption::Nothing;
    }
    let all = || Adoption::Discard(live.iter().map(|s| s.snapshot_id.clone()).collect());
    let volumes: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.volume_id.as_deref())
        .collect();
    let mut set = Vec::new();
    for m in members {
        let Some(vol) = m.volume_id.as_deref() else {
            return all();
        };
        let of: Vec<&&Snapshot> = live.iter().filter(|s| s.volume_id == vol).collect();
        let [one] = of.as_slice() else {
            return all();
        };
        let late = match (deadline, one.start_time) {
            (Some(d), Some(t)) => t >= d,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if late {
            return all();
        }
        set.push(recorded(m, one));
    }
    let extra = live
        .iter()
        .filter(|s| !volumes.contains(s.volume_id.as_str()))
        .map(|s| s.snapshot_id.clone())
        .collect();
    Adoption::Set {
        members: set,
        extra,
    }
}

/// When an adopted set was taken: the earliest start time of what was found (seconds).
pub fn captured_at(found: &[Snapshot]) -> Option<i64> {
    found.iter().filter_map(|s| s.start_time).min()
}

/// What follows the deletions of a [`Restart`].
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    /// Record the set found (tag its members first), taken at `at` (seconds).
    Adopt {
        members: Vec<MemberSnapshot>,
        at: Option<i64>,
    },
    /// Nothing usable was made: call again, bounded by the hold's `deadline` (none without a
    /// hold).
    Capture { deadline: Option<i64> },
    /// The hold is over: the snapshot fails, whatever the object made deleted.
    Fail(Failure),
}

/// Snapshots to delete first, then what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Restart {
    pub delete: Vec<String>,
    pub next: Resume,
}

/// `found`: the snapshots tagged with the UID; `members` as status records them; `hold`:
/// whether the plan asks for one, `deadline` the hold's (seconds); `now` in seconds.
pub fn restart(
    found: &[Snapshot],
    members: &[MemberSnapshot],
    hold: bool,
    deadline: Option<i64>,
    now: i64,
) -> Restart {
    let deadline = hold.then_some(deadline).flatten();
    let delete = match adopt(found, members, deadline) {
        Adoption::Set { members, extra } => {
            let at = captured_at(found);
            let next = Resume::Adopt { members, at };
            return Restart {
                delete: extra,
                next,
            };
        }
        Adoption::Discard(ids) => ids,
        Adoption::Nothing => vec![],
    };
    let next = match (hold, deadline) {
        (false, _) => Resume::Capture { deadline: None },
        (true, Some(d)) if now < d - MARGIN => Resume::Capture { deadline: Some(d) },
        (true, _) => Resume::Fail(Failure::set_deleted(
            reason::HOLD_EXPIRED,
            "the operator restarted during the capture and the hold is over; no snapshot was kept",
        )),
    };
    Restart { delete, next }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_full_set_in_time_is_adopted_in_member_order() {
        let m = members(3);
        let found = vec![
            snap("snap-c", "vol-2", "pending", 100),
            snap("snap-a", "vol-0", "pending", 100),
            snap("snap-b", "vol-1", "completed", 100),
            snap("snap-x", "vol-other", "pending", 100),
        ];
        let Adoption::Set { members, extra } = adopt(&found, &m, Some(105)) else {
            panic!("not adopted");
        };
        let ids: Vec<_> = members
            .iter()
            .map(|m| m.snapshot_id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["snap-a", "snap-b", "snap-c"]);
        assert_eq!(members[1].state.as_deref(), Some("completed"));
        assert_eq!(extra, ["snap-x"]);
    }

    #[test]
    fn partial_doubled_or_late_sets_are_discarded() {
        let m = members(2);
        assert_eq!(adopt(&[], &m, Some(10)), Adoption::Nothing);
        let partial = vec![snap("snap-a", "vol-0", "pending", 1)];
        assert_eq!(
            adopt(&partial, &m, None),
            Adoption::Discard(vec!["snap-a".into()])
        );
        let doubled = vec![
            snap("snap-a", "vol-0", "pending", 1),
            snap("snap-b", "vol-1", "pending", 1),
            snap("snap-c", "vol-1", "pending", 2),
        ];
        assert!(matches!(adopt(&doubled, &m, None), Adoption::Discard(ids) if ids.len() == 3));
        let late = vec![
            snap("snap-a", "vol-0", "pending", 20),
            snap("snap-b", "vol-1", "pending", 20),
        ];
        assert!(matches!(adopt(&late, &m, Some(20)), Adoption::Discard(_)));
        assert!(matches!(adopt(&late, &m, None), Adoption::Set { .. }));
    }

    #[test]
    fn deleted_snapshots_do_not_count_and_unknown_times_are_late_under_a_hold() {
        let m = members(1);
        let gone = vec![snap("snap-a", "vol-0", "deleted", 1)];
        assert_eq!(adopt(&gone, &m, Some(10)), Adoption::Nothing);
        let mut untimed = snap("snap-a", "vol-0", "pending", 1);
        untimed.start_time = None;
        assert!(matches!(
            adopt(&[untimed.clone()], &m, Some(10)),
            Adoption::Discard(_)
        ));
        assert!(matches!(adopt(&[untimed], &m, None), Adoption::Set { .. }));
        let mut no_volume = members(1);
        no_volume[0].volume_id = None;
        let found = vec![snap("snap-a", "vol-0", "pending", 1)];
        assert!(matches!(
            adopt(&found, &no_volume, None),
            Adoption::Discard(_)
        ));
    }

    #[test]
    fn a_restart_adopts_a_set_taken_in_time_even_after_the_hold() {
        let found = vec![
            snap("snap-a", "vol-0", "pending", 95),
            snap("snap-b", "vol-1", "pending", 94),
            snap("snap-x", "vol-9", "pending", 96),
        ];
        let r = restart(&found, &members(2), true, Some(100), 500);
        assert_eq!(r.delete, ["snap-x"]);
        let Resume::Adopt { members, at } = r.next else {
            panic!("not adopted: {:?}", r.next);
        };
        assert_eq!(members.len(), 2);
        assert_eq!(at, Some(94), "the earliest start time found");
        assert_eq!(captured_at(&[]), None);
    }

    #[test]
    fn a_restart_with_nothing_found_calls_again_while_the_hold_lasts() {
        let m = members(2);
        assert_eq!(
            restart(&[], &m, true, Some(100), 98),
            Restart {
                delete: vec![],
                next: Resume::Capture {
                    deadline: Some(100)
                }
            }
        );
        assert_eq!(
            restart(&[], &m, false, Some(100), 500).next,
            Resume::Capture { deadline: None },
            "without a hold, a stale deadline does not matter"
        );
        for (deadline, now) in [(Some(100), 99), (None, 0)] {
            let r = restart(&[], &m, true, deadline, now);
            assert!(
                matches!(&r.next, Resume::Fail(f) if f.why == reason::HOLD_EXPIRED && f.delete),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_restart_deletes_a_partial_or_doubled_set_before_deciding() {
        let doubled = vec![
            snap("snap-a", "vol-0", "pending", 90),
            snap("snap-b", "vol-1", "pending", 90),
            snap("snap-c", "vol-0", "pending", 91),
            snap("snap-d", "vol-1", "pending", 91),
        ];
        let r = restart(&doubled, &members(2), true, Some(100), 50);
        assert_eq!(r.delete, ["snap-a", "snap-b", "snap-c", "snap-d"]);
        assert_eq!(
            r.next,
            Resume::Capture {
                deadline: Some(100)
            }
        );
        // A set begun at the deadline is late: deleted, and the hold is over.
        let late = vec![
            snap("snap-a", "vol-0", "pending", 100),
            snap("snap-b", "vol-1", "pending", 100),
        ];
        let r = restart(&late, &members(2), true, Some(100), 101);
        assert_eq!(r.delete.len(), 2);
        assert!(matches!(r.next, Resume::Fail(_)));
    }
}
