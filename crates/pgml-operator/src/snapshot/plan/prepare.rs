//! Before the capture: what the source observe found means (Pending), the plan recorded
//! from it, and what to do about the agent's hold (Preparing).

use k8s_openapi::jiff::Timestamp;
use pgml_api::snapshot::{
    EbsSnapshotSpec, EbsSnapshotStatus, HoldState, HoldStatus, SnapshotPhase as P,
};

use super::{Enter, Failure, Filesystem, consistency, needs_hold, reason};
use crate::snapshot::observe::{Source, Unresolved};

/// Whether a snapshot whose source does not exist has waited long enough for it (a source
/// applied in the same batch arrives within moments): `created` and `now` in seconds.
pub fn gave_up_on_source(created: Option<i64>, now: i64, timeout: i64) -> bool {
    created.is_none_or(|c| now - c >= timeout)
}

/// What to do about a source that cannot be captured (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unready {
    /// Stay Pending, saying why, and look again.
    Wait(Enter),
    /// A source that does not exist, waited for long enough: nothing was taken.
    Fail(Failure),
}

/// `created` (the object's creation) and `now` in seconds; `source_timeout` how long a
/// missing source is waited for. A source that exists but is not ready is waited for as
/// long as it takes.
pub fn unready(u: &Unresolved, created: Option<i64>, now: i64, source_timeout: i64) -> Unready {
    if u.reason == reason::SOURCE_NOT_FOUND && gave_up_on_source(created, now, source_timeout) {
        let message = format!(
            "{} (waited {source_timeout}s after the snapshot's creation); no snapshot was taken",
            u.message
        );
        return Unready::Fail(Failure::nothing_taken(u.reason, message));
    }
    Unready::Wait(Enter::new(P::Pending, u.reason, u.message.clone()))
}

/// The plan for a resolved source: whether the agent holds it first, and the phase that
/// follows Pending (Preparing to wait for the hold, else Capturing at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub hold: bool,
    pub enter: Enter,
}

pub fn start(spec: &EbsSnapshotSpec, src: &Source) -> Start {
    let hold = needs_hold(spec, src.filesystem);
    let enter = if hold {
        Enter::new(
            P::Preparing,
            reason::WAITING_FOR_AGENT,
            format!(
                "waiting for the node agent on {} to hold {} (standby.signal, freeze) before the capture",
                src.node_name, src.description
            ),
        )
    } else {
        Enter::new(
            P::Capturing,
            reason::CAPTURING,
            format!(
                "capturing {} (no hold needed: standbySignal Never, nothing to freeze)",
                src.description
            ),
        )
    };
    Start { hold, enter }
}

/// While Pending, `status.source` (the Source column) shows the source as the spec names
/// it, until [`record_source`] replaces it with the resolved one.
pub fn pending_source(s: &mut EbsSnapshotStatus, spec: &EbsSnapshotSpec) {
    if s.source.is_none() {
        s.source = Some(spec.source.describe());
    }
}

/// Records the plan in status: the source, its node, instance and zone, its members (no
/// snapshot yet) and the consistency method.
pub fn record_source(s: &mut EbsSnapshotStatus, spec: &EbsSnapshotSpec, src: &Source) {
    s.source = Some(src.description.clone());
    s.node_name = Some(src.node_name.clone());
    s.instance_id = Some(src.instance_id.clone());
    s.availability_zone = Some(src.availability_zone.clone());
    s.zfs_pool = src.zfs_pool.clone();
    s.layout = src.layout.clone();
    s.pool_guid = src.pool_guid.clone();
    s.volume_count = Some(src.members.len() as i32);
    s.snapshots = src.members.clone();
    s.consistency = Some(consistency(spec, src.filesystem).to_string());
}

/// Whether the plan recorded in `s` asks for a hold (a recorded pool is ZFS, else ext4).
pub fn hold_planned(spec: &EbsSnapshotSpec, s: &EbsSnapshotStatus) -> bool {
    let fs = if s.zfs_pool.is_some() {
        Filesystem::Zfs
    } else {
        Filesystem::Ext4
    };
    needs_hold(spec, fs)
}

/// The hold's deadline as the agent wrote it, in seconds.
pub fn hold_deadline(s: &EbsSnapshotStatus) -> Option<i64> {
    s.hold.as_ref()?.deadline.as_ref().map(|t| t.0.as_second())
}

/// What to do about the agent's hold while Preparing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldStep {
    /// No answer yet: look again within this many seconds.
    Wait(i64),
    /// Held with time left: capture now, done by `deadline`.
    Capture { deadline: i64 },
    /// The capture must not happen: (reason, message).
    Fail(&'static str, String),
}

/// Seconds kept free before the hold's deadline: a capture starts only before
/// `deadline - MARGIN`.
pub const MARGIN: i64 = 1;

/// `hold` as the agent wrote it; `deadline` its deadline in seconds; `waiting_since` when
/// Preparing began.
pub fn hold_step(
    hold: Option<&HoldStatus>,
    deadline: Option<i64>,
    now: i64,
    waiting_since: i64,
    agent_timeout: i64,
) -> HoldStep {
    let Some(h) = hold else {
        let waited = now - waiting_since;
        if waited >= agent_timeout {
            return HoldStep::Fail(
                reason::AGENT_NOT_RESPONDING,
                format!(
                    "the node agent did not answer the hold request in {agent_timeout}s; no snapshot was taken"
                ),
            );
        }
        return HoldStep::Wait((agent_timeout - waited).clamp(1, 2));
    };
    let why = h.message.clone().unwrap_or_default();
    match h.state {
        HoldState::Held => match deadline {
            Some(d) if now < d - MARGIN => HoldStep::Capture { deadline: d },
            Some(_) => HoldStep::Fail(
                reason::HOLD_EXPIRED,
                "the hold's deadline passed before the capture could start; no snapshot was taken"
                    .into(),
            ),
            None => HoldStep::Fail(
                reason::HOLD_FAILED,
                "the agent's hold has no deadline; no snapshot was taken".into(),
            ),
        },
        HoldState::Failed => HoldStep::Fail(
            reason::HOLD_FAILED,
            format!("the node agent could not prepare the source: {why}"),
        ),
        HoldState::Expired | HoldState::Released => HoldStep::Fail(
            reason::HOLD_EXPIRED,
            format!(
                "the hold ended before the capture{}; no snapshot was taken",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            ),
        ),
    }
}

/// The Capturing message once the agent holds the source until `deadline` (seconds).
pub fn held_message(deadline: i64) -> String {
    format!(
        "the node agent holds the source until {}; capturing",
        Timestamp::from_second(deadline).map_or("?".into(), |t| t.to_string())
    )
}

#[cfg(test)]
mod tests {
    use pgml_api::common::Time;

    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_missing_source_is_awaited_for_a_while() {
        assert!(!gave_up_on_source(Some(100), 150, 300));
        assert!(gave_up_on_source(Some(100), 400, 300));
        assert!(gave_up_on_source(None, 400, 300));
    }

    fn unresolved(why: &'static str) -> Unresolved {
        Unresolved {
            reason: why,
            message: "ZfsPool tank does not exist".into(),
        }
    }

    #[test]
    fn a_missing_source_waits_pending_then_fails_with_nothing_taken() {
        let u = unresolved(reason::SOURCE_NOT_FOUND);
        assert_eq!(
            unready(&u, Some(100), 150, 300),
            Unready::Wait(Enter::new(
                P::Pending,
                reason::SOURCE_NOT_FOUND,
                u.message.clone()
            ))
        );
        let Unready::Fail(f) = unready(&u, Some(100), 400, 300) else {
            panic!("not given up");
        };
        assert_eq!(f.why, reason::SOURCE_NOT_FOUND);
        assert!(!f.delete);
        assert_eq!(
            f.message,
            "ZfsPool tank does not exist (waited 300s after the snapshot's creation); no snapshot was taken"
        );
        assert!(matches!(unready(&u, None, 0, 300), Unready::Fail(_)));
    }

    /// The Source column is not blank while the snapshot waits for its source.
    #[test]
    fn a_pending_snapshot_shows_its_source_from_the_spec() {
        let mut s = EbsSnapshotStatus::default();
        pending_source(&mut s, &spec("source: {cluster: {name: main}}"));
        assert_eq!(s.source.as_deref(), Some("PgmlCluster/main"));
        let mut s = EbsSnapshotStatus::default();
        let named = spec("source: {cluster: {name: main, instance: main-2}}");
        pending_source(&mut s, &named);
        assert_eq!(s.source.as_deref(), Some("PgmlCluster/main (main-2)"));
        let mut s = EbsSnapshotStatus::default();
        pending_source(
            &mut s,
            &spec("source: {persistentVolumeClaim: {name: data}}"),
        );
        assert_eq!(s.source.as_deref(), Some("PersistentVolumeClaim/data"));
        // A resolved source is kept.
        let mut s = EbsSnapshotStatus {
            source: Some("ZfsPool/main-1".into()),
            ..Default::default()
        };
        pending_source(&mut s, &spec("source: {zfsPool: {name: tank}}"));
        assert_eq!(s.source.as_deref(), Some("ZfsPool/main-1"));
    }

    #[test]
    fn a_source_not_ready_is_waited_for_as_long_as_it_takes() {
        let u = unresolved(reason::SOURCE_NOT_READY);
        assert!(matches!(
            unready(&u, Some(0), 1_000_000, 300),
            Unready::Wait(Enter {
                phase: P::Pending,
                why: reason::SOURCE_NOT_READY,
                ..
            })
        ));
    }

    fn source(filesystem: Filesystem) -> Source {
        Source {
            description: "ZfsPool/tank".into(),
            node_name: "node-a".into(),
            instance_id: "i-1".into(),
            availability_zone: "us-east-1a".into(),
            filesystem,
            zfs_pool: (filesystem == Filesystem::Zfs).then(|| "tank".into()),
            layout: Some("raid0".into()),
            pool_guid: Some("42".into()),
            members: members(2),
        }
    }

    #[test]
    fn a_held_source_is_prepared_first_and_one_without_a_hold_captured_at_once() {
        let auto = spec("source: {zfsPool: {name: tank}}");
        let s = start(&auto, &source(Filesystem::Zfs));
        assert!(s.hold);
        assert_eq!(s.enter.phase, P::Preparing);
        assert_eq!(s.enter.why, reason::WAITING_FOR_AGENT);
        assert!(s.enter.message.contains("node-a") && s.enter.message.contains("ZfsPool/tank"));
        let never = spec("source: {zfsPool: {name: tank}}\nstandbySignal: Never");
        let s = start(&never, &source(Filesystem::Zfs));
        assert!(!s.hold);
        assert_eq!(
            (s.enter.phase, s.enter.why),
            (P::Capturing, reason::CAPTURING)
        );
    }

    #[test]
    fn the_recorded_plan_is_what_a_restart_reads_back() {
        let never = spec("source: {zfsPool: {name: tank}}\nstandbySignal: Never");
        let mut s = EbsSnapshotStatus::default();
        record_source(&mut s, &never, &source(Filesystem::Zfs));
        assert_eq!(s.instance_id.as_deref(), Some("i-1"));
        assert_eq!(s.volume_count, Some(2));
        assert_eq!(s.consistency.as_deref(), Some("None"));
        assert_eq!(s.snapshots, members(2));
        assert!(!hold_planned(&never, &s), "ZFS under Never: no hold");
        let mut ext4 = EbsSnapshotStatus::default();
        record_source(&mut ext4, &never, &source(Filesystem::Ext4));
        assert_eq!(ext4.consistency.as_deref(), Some("Fsfreeze"));
        assert!(
            hold_planned(&never, &ext4),
            "no pool recorded: ext4 freezes"
        );
    }

    #[test]
    fn the_hold_deadline_is_read_in_seconds() {
        let mut s = EbsSnapshotStatus::default();
        assert_eq!(hold_deadline(&s), None);
        let mut h = held(HoldState::Held);
        s.hold = Some(h.clone());
        assert_eq!(hold_deadline(&s), None);
        h.deadline = Some(Time(Timestamp::from_second(1_700_000_000).unwrap()));
        s.hold = Some(h);
        assert_eq!(hold_deadline(&s), Some(1_700_000_000));
        assert_eq!(
            held_message(1_700_000_000),
            "the node agent holds the source until 2023-11-14T22:13:20Z; capturing"
        );
    }

    #[test]
    fn hold_steps() {
        // No answer: wait, then give up after the agent timeout.
        assert_eq!(hold_step(None, None, 100, 90, 120), HoldStep::Wait(2));
        assert!(matches!(
            hold_step(None, None, 210, 90, 120),
            HoldStep::Fail(reason::AGENT_NOT_RESPONDING, _)
        ));
        // Held with time left: capture; within the margin of the deadline: too late.
        let h = held(HoldState::Held);
        assert_eq!(
            hold_step(Some(&h), Some(110), 100, 90, 120),
            HoldStep::Capture { deadline: 110 }
        );
        assert!(matches!(
            hold_step(Some(&h), Some(110), 109, 90, 120),
            HoldStep::Fail(reason::HOLD_EXPIRED, _)
        ));
        let f = hold_step(Some(&held(HoldState::Failed)), None, 100, 90, 120);
        assert!(matches!(&f, HoldStep::Fail(reason::HOLD_FAILED, m) if m.contains("why")));
        assert!(matches!(
            hold_step(Some(&held(HoldState::Expired)), Some(99), 100, 90, 120),
            HoldStep::Fail(reason::HOLD_EXPIRED, _)
        ));
    }

    #[test]
    fn every_hold_state_has_its_step() {
        // The last second before the timeout waits one second, not two.
        assert_eq!(hold_step(None, None, 209, 90, 120), HoldStep::Wait(1));
        let h = held(HoldState::Held);
        assert!(matches!(
            hold_step(Some(&h), None, 100, 90, 120),
            HoldStep::Fail(reason::HOLD_FAILED, m) if m.contains("no deadline")
        ));
        let released = hold_step(Some(&held(HoldState::Released)), Some(500), 100, 90, 120);
        assert_eq!(
            released,
            HoldStep::Fail(
                reason::HOLD_EXPIRED,
                "the hold ended before the capture (why); no snapshot was taken".into()
            )
        );
        let mut quiet = held(HoldState::Expired);
        quiet.message = None;
        assert_eq!(
            hold_step(Some(&quiet), Some(500), 100, 90, 120),
            HoldStep::Fail(
                reason::HOLD_EXPIRED,
                "the hold ended before the capture; no snapshot was taken".into()
            )
        );
    }
}
