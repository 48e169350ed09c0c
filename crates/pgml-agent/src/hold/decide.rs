//! What to do next for one hold: a pure function of the object (as last seen, or gone), the
//! hold record (if any) and the clock.

use pgml_api::snapshot::{HoldState, SnapshotPhase};

use super::record::{End, Record};

/// The parts of an EbsSnapshot the decision reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub uid: String,
    pub phase: Option<SnapshotPhase>,
    pub hold: Option<HoldState>,
    pub deleting: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do for this object.
    Nothing,
    /// Stamp, freeze and report Held (or carry on where a dead agent stopped).
    Prepare,
    /// Undo (if not undone yet), report how it ended, forget the record.
    Release(End),
    /// Held: wait for the capture to pass, or for the deadline.
    Wait,
}

/// The capture is over (or will never happen) once the phase is past Capturing.
fn past_capture(phase: Option<SnapshotPhase>) -> bool {
    matches!(
        phase,
        Some(SnapshotPhase::Finalizing | SnapshotPhase::Completed | SnapshotPhase::Failed)
    )
}

/// `obj` is `None` when the object is gone (or another object now has its name).
pub fn next(obj: Option<&View>, rec: Option<&Record>, now_ms: i64) -> Next {
    let obj = obj.filter(|o| rec.is_none_or(|r| r.uid == o.uid));
    match (obj, rec) {
        // Undone already; the status write is what is left.
        (
            _,
            Some(Record {
                undone: Some(u), ..
            }),
        ) => Next::Release(u.end),
        (None, Some(r)) => Next::Release(if r.expired(now_ms) {
            End::Expired
        } else {
            End::Released
        }),
        (Some(o), Some(r)) => {
            if o.deleting || past_capture(o.phase) {
                Next::Release(End::Released)
            } else if r.expired(now_ms) {
                Next::Release(End::Expired)
            } else if !r.held || o.hold.is_none() {
                // A dead agent's half-done hold (same deadline), or a Held status write
                // that did not land.
                Next::Prepare
            } else {
                Next::Wait
            }
        }
        (Some(o), None) => {
            if o.phase == Some(SnapshotPhase::Preparing) && o.hold.is_none() && !o.deleting {
                Next::Prepare
            } else {
                Next::Nothing
            }
        }
        (None, None) => Next::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::record::Undone;

    const UID: &str = "aaaa-1";

    fn view(phase: SnapshotPhase, hold: Option<HoldState>) -> View {
        View {
            uid: UID.into(),
            phase: Some(phase),
            hold,
            deleting: false,
        }
    }

    fn rec(held: bool) -> Record {
        let mut r = Record::new(UID, "ns", "s", 0, 10);
        r.held = held;
        r
    }

    use HoldState::{Expired, Held, Released};
    use SnapshotPhase::{Capturing, Completed, Finalizing, Pending, Preparing};

    #[test]
    fn a_new_preparing_object_is_prepared_once() {
        assert_eq!(next(Some(&view(Preparing, None)), None, 0), Next::Prepare);
        assert_eq!(next(Some(&view(Pending, None)), None, 0), Next::Nothing);
        assert_eq!(next(Some(&view(Capturing, None)), None, 0), Next::Nothing);
        // Done before (the record is gone once the end is reported).
        for h in [Held, Released, Expired, HoldState::Failed] {
            assert_eq!(
                next(Some(&view(Preparing, Some(h))), None, 0),
                Next::Nothing
            );
        }
        let mut deleting = view(Preparing, None);
        deleting.deleting = true;
        assert_eq!(next(Some(&deleting), None, 0), Next::Nothing);
        assert_eq!(next(None, None, 0), Next::Nothing);
    }

    #[test]
    fn held_waits_through_capturing_until_the_deadline() {
        let r = rec(true);
        assert_eq!(
            next(Some(&view(Preparing, Some(Held))), Some(&r), 9_999),
            Next::Wait
        );
        assert_eq!(
            next(Some(&view(Capturing, Some(Held))), Some(&r), 5_000),
            Next::Wait
        );
        assert_eq!(
            next(Some(&view(Capturing, Some(Held))), Some(&r), 10_000),
            Next::Release(End::Expired)
        );
    }

    #[test]
    fn released_past_capture_on_deletion_or_when_gone() {
        let r = rec(true);
        for p in [Finalizing, Completed, SnapshotPhase::Failed] {
            assert_eq!(
                next(Some(&view(p, Some(Held))), Some(&r), 1),
                Next::Release(End::Released)
            );
            // Past capture wins over a deadline that passed meanwhile: the capture was made.
            assert_eq!(
                next(Some(&view(p, Some(Held))), Some(&r), 50_000),
                Next::Release(End::Released)
            );
        }
        let mut d = view(Capturing, Some(Held));
        d.deleting = true;
        assert_eq!(next(Some(&d), Some(&r), 1), Next::Release(End::Released));
        assert_eq!(next(None, Some(&r), 1), Next::Release(End::Released));
        assert_eq!(next(None, Some(&r), 10_000), Next::Release(End::Expired));
        // Same name, another object: the one we held is gone.
        let mut other = view(Preparing, None);
        other.uid = "bbbb-2".into();
        assert_eq!(
            next(Some(&other), Some(&r), 1),
            Next::Release(End::Released)
        );
    }

    #[test]
    fn a_dead_agents_half_done_hold_is_resumed_with_its_deadline() {
        let r = rec(false);
        assert_eq!(
            next(Some(&view(Preparing, None)), Some(&r), 1),
            Next::Prepare
        );
        assert_eq!(
            next(Some(&view(Preparing, None)), Some(&r), 10_000),
            Next::Release(End::Expired)
        );
        // Held recorded but the status write was lost.
        assert_eq!(
            next(Some(&view(Preparing, None)), Some(&rec(true)), 1),
            Next::Prepare
        );
    }

    #[test]
    fn an_undone_record_only_needs_its_status_written() {
        let mut r = rec(true);
        r.undone = Some(Undone {
            end: End::Expired,
            at_ms: 10_000,
            signal_removed: true,
            frozen_millis: None,
            message: None,
        });
        assert_eq!(
            next(Some(&view(Capturing, Some(Held))), Some(&r), 10_001),
            Next::Release(End::Expired)
        );
        assert_eq!(next(None, Some(&r), 1), Next::Release(End::Expired));
    }
}
