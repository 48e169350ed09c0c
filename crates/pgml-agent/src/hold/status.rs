//! The agent's part of `EbsSnapshot.status` — `hold`, `standbySignal`, `frozenMillis` and
//! nothing else — built from the hold record, applied with server-side apply (field manager
//! `pgml-agent`) so the controller's fields and conditions are never touched.

use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use pgml_api::common::Time;
use pgml_api::snapshot::{HoldState, HoldStatus, StandbySignalStatus};
use serde_json::{Value, json};

use super::record::{End, Record, Stamp};

fn time(ms: i64) -> Option<Time> {
    Timestamp::from_millisecond(ms).ok().map(Time)
}

fn signal(r: &Record, removed: bool) -> Option<StandbySignalStatus> {
    let dir = |p: &str| Path::new(p).parent().map(|d| d.display().to_string());
    match &r.stamp {
        Stamp::None => None,
        Stamp::Ours { path } => Some(StandbySignalStatus {
            stamped: true,
            removed,
            path: dir(path),
            already_present: false,
        }),
        Stamp::AlreadyPresent { path } => Some(StandbySignalStatus {
            stamped: true,
            removed: false,
            path: dir(path),
            already_present: true,
        }),
    }
}

/// The agent's status while the hold is in place.
pub fn held(r: &Record) -> Value {
    body(
        HoldStatus {
            state: HoldState::Held,
            held_at: time(r.held_at_ms),
            deadline: time(r.deadline_ms),
            released_at: None,
            frozen: r.freeze.is_some(),
            mount_path: r.mount_path.clone(),
            message: None,
        },
        signal(r, false),
        None,
    )
}

/// The agent's status once the hold is undone (`r.undone` set).
pub fn ended(r: &Record) -> Value {
    let u = r.undone.as_ref();
    let state = match u.map(|u| u.end) {
        Some(End::Expired) => HoldState::Expired,
        Some(End::Failed) => HoldState::Failed,
        _ => HoldState::Released,
    };
    body(
        HoldStatus {
            state,
            held_at: time(r.held_at_ms),
            deadline: time(r.deadline_ms),
            released_at: u.and_then(|u| time(u.at_ms)),
            frozen: r.freeze.as_ref().is_some_and(|f| f.frozen_at_ms.is_some()),
            mount_path: r.mount_path.clone(),
            message: u.and_then(|u| u.message.clone()),
        },
        signal(r, u.is_some_and(|u| u.signal_removed)),
        u.and_then(|u| u.frozen_millis),
    )
}

fn body(
    hold: HoldStatus,
    signal: Option<StandbySignalStatus>,
    frozen_millis: Option<i64>,
) -> Value {
    let mut status = json!({ "hold": hold });
    if let Some(s) = signal {
        status["standbySignal"] = json!(s);
    }
    if let Some(ms) = frozen_millis {
        status["frozenMillis"] = json!(ms);
    }
    json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "EbsSnapshot",
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::record::{Freeze, Undone};

    fn record() -> Record {
        let mut r = Record::new("u-1", "db", "s", 1_800_000_000_000, 10);
        r.mount_path = Some("/mnt/pv1".into());
        r.stamp = Stamp::Ours {
            path: "/mnt/pv1/pgdata/standby.signal".into(),
        };
        r.freeze = Some(Freeze {
            mount: "/mnt/pv1".into(),
            guard_pid: Some(7),
            frozen_at_ms: Some(1_800_000_000_050),
        });
        r
    }

    #[test]
    fn held_applies_only_agent_fields() {
        let b = held(&record());
        let keys: Vec<&str> = b["status"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["hold", "standbySignal"]);
        assert_eq!(
            b["status"]["hold"],
            json!({"state": "Held", "heldAt": "2027-01-15T08:00:00Z",
                   "deadline": "2027-01-15T08:00:10Z", "frozen": true, "mountPath": "/mnt/pv1"})
        );
        assert_eq!(
            b["status"]["standbySignal"],
            json!({"stamped": true, "removed": false, "path": "/mnt/pv1/pgdata",
                   "alreadyPresent": false})
        );
    }

    #[test]
    fn ended_reports_removal_release_time_and_frozen_millis() {
        let mut r = record();
        r.undone = Some(Undone {
            end: End::Released,
            at_ms: 1_800_000_002_000,
            signal_removed: true,
            frozen_millis: Some(1_950),
            message: None,
        });
        let b = ended(&r);
        assert_eq!(b["status"]["hold"]["state"], "Released");
        assert_eq!(b["status"]["hold"]["releasedAt"], "2027-01-15T08:00:02Z");
        assert_eq!(b["status"]["standbySignal"]["removed"], true);
        assert_eq!(b["status"]["frozenMillis"], 1_950);
        // A standby's own standby.signal: reported, never "removed".
        r.stamp = Stamp::AlreadyPresent {
            path: "/d/standby.signal".into(),
        };
        r.freeze = None;
        r.undone.as_mut().unwrap().end = End::Expired;
        r.undone.as_mut().unwrap().signal_removed = false;
        r.undone.as_mut().unwrap().frozen_millis = None;
        let b = ended(&r);
        assert_eq!(b["status"]["hold"]["state"], "Expired");
        assert_eq!(b["status"]["hold"]["frozen"], false);
        assert_eq!(
            b["status"]["standbySignal"],
            json!({"stamped": true, "removed": false, "path": "/d", "alreadyPresent": true})
        );
        assert!(b["status"].get("frozenMillis").is_none());
    }
}
