//! The status fields the controller owns, its conditions per phase, the server-side apply
//! that writes them (skipped when nothing changed), and the Events a change deserves.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use pgml_api::EbsSnapshot;
use pgml_api::common::{Condition, Time, condition as c, keys};
use pgml_api::snapshot::{EbsSnapshotStatus, SnapshotPhase};

use super::plan::reason;
use crate::runtime::conditions::{Stamp, set_condition};
use crate::runtime::ssa;
use crate::runtime::{Context, Error, events};

/// Condition types the controller writes.
pub const OWNED_CONDITIONS: [&str; 2] = [c::READY, c::PROGRESSING];

/// The controller's part of a status: without the agent's `hold`, `standbySignal`,
/// `frozenMillis` and `lsn`, conditions sorted, members sorted by index.
pub fn owned_view(s: &EbsSnapshotStatus) -> EbsSnapshotStatus {
    let conditions = ssa::owned_conditions(&s.conditions, &OWNED_CONDITIONS);
    let mut snapshots = s.snapshots.clone();
    snapshots.sort_by_key(|m| m.member_index);
    EbsSnapshotStatus {
        hold: None,
        standby_signal: None,
        frozen_millis: None,
        lsn: None,
        conditions,
        snapshots,
        ..s.clone()
    }
}

/// Seconds since the epoch of a time.
pub fn secs(t: &Time) -> i64 {
    t.0.as_second()
}

pub fn time(secs: i64) -> Option<Time> {
    Timestamp::from_second(secs).ok().map(Time)
}

pub fn condition<'a>(s: &'a EbsSnapshotStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// Sets `phase` with its Ready and Progressing conditions: Ready is True only once
/// Completed; Progressing is True while the controller or the agent works toward the set
/// (Preparing, Capturing, Finalizing), False when it waits on the source or is done.
pub fn set_phase(
    s: &mut EbsSnapshotStatus,
    observed: &EbsSnapshotStatus,
    phase: SnapshotPhase,
    why: &str,
    message: &str,
    stamp: Stamp,
) {
    use SnapshotPhase as P;
    s.phase = Some(phase);
    s.observed_generation = stamp.generation;
    let old = owned_view(observed).conditions;
    let ready = phase == P::Completed;
    let progressing = matches!(phase, P::Preparing | P::Capturing | P::Finalizing);
    set_condition(
        &mut s.conditions,
        &old,
        c::READY,
        ready,
        why,
        message,
        stamp,
    );
    set_condition(
        &mut s.conditions,
        &old,
        c::PROGRESSING,
        progressing,
        why,
        message,
        stamp,
    );
}

/// When the current stretch of progress began (Progressing turned True): the start of
/// Preparing, for the agent timeout.
pub fn progressing_since(s: &EbsSnapshotStatus) -> Option<i64> {
    condition(s, c::PROGRESSING)
        .filter(|c| c.status == c::TRUE)
        .map(|c| secs(&c.last_transition_time))
}

/// The controller's status with every generation it reports set to `generation`, when
/// that changes anything: a finished set acknowledging a later edit of its spec.
pub fn acknowledged(
    written: &EbsSnapshotStatus,
    generation: Option<i64>,
) -> Option<EbsSnapshotStatus> {
    if written.observed_generation == generation {
        return None;
    }
    let mut s = owned_view(written);
    s.observed_generation = generation;
    for c in &mut s.conditions {
        c.observed_generation = generation;
    }
    Some(s)
}

/// Writes `new` unless it equals the controller's part of `written`, then publishes the
/// Events its change from `written` deserves. Returns whether it wrote.
pub async fn commit(
    ctx: &Context,
    snap: &EbsSnapshot,
    written: &EbsSnapshotStatus,
    new: &EbsSnapshotStatus,
) -> Result<bool, Error> {
    if owned_view(written) == owned_view(new) {
        return Ok(false);
    }
    ssa::apply_status(&ctx.client, snap, &owned_view(new)).await?;
    for (warning, why, note) in notices(written, new) {
        events::publish(ctx, snap, warning, &why, note).await;
    }
    Ok(true)
}

/// Labels the object `pgml.io/node=<node>` (metadata only, its own apply) so the node's
/// agent, which watches by that label, sees it.
pub async fn label_node(ctx: &Context, snap: &EbsSnapshot, node: &str) -> Result<(), Error> {
    let labelled = snap
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::NODE))
        .is_some_and(|n| n == node);
    if labelled {
        return Ok(());
    }
    let labels = BTreeMap::from([(keys::NODE, node)]);
    ssa::apply_labels(&ctx.client, snap, &labels).await
}

/// An Event a status change deserves: (warning?, reason, note).
pub type Notice = (bool, String, String);

/// Events for a phase change: Preparing, Captured, Completed (Normal), Failed (Warning
/// with the failure's reason), and a source that turned unready (Warning, once).
pub fn notices(old: &EbsSnapshotStatus, new: &EbsSnapshotStatus) -> Vec<Notice> {
    use SnapshotPhase as P;
    let ready = condition(new, c::READY);
    let msg = ready.map(|r| r.message.clone()).unwrap_or_default();
    let why = ready.map(|r| r.reason.clone()).unwrap_or_default();
    if old.phase == new.phase {
        let old_why = condition(old, c::READY).map(|r| r.reason.as_str());
        if new.phase == Some(P::Pending) && old_why != Some(why.as_str()) {
            return vec![(true, why, msg)];
        }
        return vec![];
    }
    match new.phase {
        Some(P::Pending) => vec![(true, why, msg)],
        Some(P::Preparing) => vec![(false, "Preparing".into(), msg)],
        Some(P::Capturing) => vec![],
        Some(P::Finalizing) => vec![(false, "Captured".into(), msg)],
        Some(P::Completed) => vec![(false, reason::COMPLETED.into(), msg)],
        Some(P::Failed) => vec![(true, why, msg)],
        None => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_api::snapshot::{HoldState, HoldStatus, MemberSnapshot};

    fn t(s: i64) -> Time {
        time(s).unwrap()
    }

    #[test]
    fn owned_view_leaves_the_agent_fields_out() {
        let s = EbsSnapshotStatus {
            phase: Some(SnapshotPhase::Preparing),
            hold: Some(HoldStatus {
                state: HoldState::Held,
                held_at: None,
                deadline: None,
                released_at: None,
                frozen: false,
                mount_path: None,
                message: None,
            }),
            lsn: Some("0/1".into()),
            frozen_millis: Some(3),
            snapshots: vec![
                MemberSnapshot {
                    member_index: 1,
                    ..Default::default()
                },
                MemberSnapshot {
                    member_index: 0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let v = owned_view(&s);
        assert!(v.hold.is_none() && v.lsn.is_none() && v.frozen_millis.is_none());
        assert_eq!(v.snapshots[0].member_index, 0);
        let json = serde_json::to_value(&v).unwrap();
        assert!(json.get("hold").is_none());
    }

    #[test]
    fn phases_set_ready_and_progressing_and_keep_transition_times() {
        let observed = EbsSnapshotStatus::default();
        let mut s = observed.clone();
        let now = t(100);
        let st = Stamp {
            generation: Some(1),
            now: &now,
        };
        set_phase(
            &mut s,
            &observed,
            SnapshotPhase::Preparing,
            reason::WAITING_FOR_AGENT,
            "m",
            st,
        );
        assert_eq!(progressing_since(&s), Some(100));
        let mut s2 = s.clone();
        let later = t(130);
        set_phase(
            &mut s2,
            &s,
            SnapshotPhase::Finalizing,
            reason::FINALIZING,
            "m",
            Stamp {
                generation: Some(1),
                now: &later,
            },
        );
        // Still progressing: the transition time stays.
        assert_eq!(progressing_since(&s2), Some(100));
        let ready = condition(&s2, c::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.observed_generation),
            ("False", Some(1))
        );
        let mut s3 = s2.clone();
        set_phase(
            &mut s3,
            &s2,
            SnapshotPhase::Completed,
            reason::COMPLETED,
            "done",
            Stamp {
                generation: Some(1),
                now: &later,
            },
        );
        assert_eq!(condition(&s3, c::READY).unwrap().status, "True");
        assert_eq!(progressing_since(&s3), None);
        let n = notices(&s2, &s3);
        assert_eq!(
            n,
            vec![(false, "Completed".to_string(), "done".to_string())]
        );
        // Recomputing the same phase changes nothing and says nothing.
        let mut s4 = s3.clone();
        set_phase(
            &mut s4,
            &s3,
            SnapshotPhase::Completed,
            reason::COMPLETED,
            "done",
            Stamp {
                generation: Some(1),
                now: &t(500),
            },
        );
        assert_eq!(owned_view(&s4), owned_view(&s3));
        assert!(notices(&s3, &s4).is_empty());
    }

    #[test]
    fn a_failure_is_a_warning_with_its_reason() {
        let mut old = EbsSnapshotStatus::default();
        let now = t(1);
        let st = Stamp {
            generation: Some(1),
            now: &now,
        };
        set_phase(
            &mut old,
            &EbsSnapshotStatus::default(),
            SnapshotPhase::Capturing,
            reason::CAPTURING,
            "c",
            st,
        );
        let mut new = old.clone();
        set_phase(
            &mut new,
            &old,
            SnapshotPhase::Failed,
            reason::HOLD_DEADLINE_EXCEEDED,
            "late",
            st,
        );
        assert_eq!(
            notices(&old, &new),
            vec![(
                true,
                reason::HOLD_DEADLINE_EXCEEDED.to_string(),
                "late".to_string()
            )]
        );
    }
}
