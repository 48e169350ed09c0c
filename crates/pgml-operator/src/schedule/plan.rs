//! What the scheduler does for one source at one instant (pure): which slot to snapshot,
//! whether an earlier one still running holds it back, and when to look again.

use k8s_openapi::jiff::Timestamp;
use pgml_api::cron::Cron;

/// The decision for one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The slot to create a snapshot for now (the latest one due; earlier missed slots are
    /// skipped).
    pub create: Option<Timestamp>,
    /// A due slot held back because this scheduled snapshot is still being taken (one at a
    /// time per source, as a CronJob with `concurrencyPolicy: Forbid`): it is created when
    /// that one ends, unless a newer slot has come by then.
    pub waiting_for: Option<String>,
    /// The next slot after now: when to look again.
    pub next: Option<Timestamp>,
}

/// `since`: the last slot done (status `lastScheduleTime`), else when the source was
/// created. `running`: the scheduled snapshots of this source still being taken.
/// `name_of`: the EbsSnapshot name of a slot.
pub fn plan(
    cron: &Cron,
    since: Timestamp,
    now: Timestamp,
    running: &[String],
    name_of: impl Fn(Timestamp) -> String,
) -> Plan {
    let next = cron.next_after(now);
    let Some(due) = cron.latest_due(since, now) else {
        return Plan {
            create: None,
            waiting_for: None,
            next,
        };
    };
    // The due slot's own object may exist already (created before a crash, or by another
    // operator): creating it again is harmless (AlreadyExists) and records the slot.
    let own = name_of(due);
    match running.iter().find(|n| **n != own) {
        Some(other) => Plan {
            create: None,
            waiting_for: Some(other.clone()),
            next,
        },
        None => Plan {
            create: Some(due),
            waiting_for: None,
            next,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn name(t: Timestamp) -> String {
        pgml_api::schedule::scheduled_snapshot_name("p", t)
    }

    #[test]
    fn the_due_slot_is_created_and_the_next_one_awaited() {
        let c = Cron::parse("* * * * *").unwrap();
        let p = plan(
            &c,
            ts("2026-11-27T05:00:00Z"),
            ts("2026-11-27T05:01:00.002Z"),
            &[],
            name,
        );
        assert_eq!(p.create, Some(ts("2026-11-27T05:01:00Z")));
        assert_eq!(p.next, Some(ts("2026-11-27T05:02:00Z")));
    }

    #[test]
    fn nothing_is_due_between_slots() {
        let c = Cron::parse("*/5 * * * *").unwrap();
        let p = plan(
            &c,
            ts("2026-11-27T05:00:00Z"),
            ts("2026-11-27T05:04:59Z"),
            &[],
            name,
        );
        assert_eq!(
            p,
            Plan {
                create: None,
                waiting_for: None,
                next: Some(ts("2026-11-27T05:05:00Z"))
            }
        );
    }

    #[test]
    fn after_downtime_only_the_latest_missed_slot_is_made() {
        let c = Cron::parse("*/5 * * * *").unwrap();
        let p = plan(
            &c,
            ts("2026-11-27T01:00:00Z"),
            ts("2026-11-27T05:07:00Z"),
            &[],
            name,
        );
        assert_eq!(p.create, Some(ts("2026-11-27T05:05:00Z")));
        assert_eq!(p.next, Some(ts("2026-11-27T05:10:00Z")));
    }

    #[test]
    fn a_running_snapshot_holds_the_next_slot_back_but_not_its_own() {
        let c = Cron::parse("* * * * *").unwrap();
        let now = ts("2026-11-27T05:02:00Z");
        let since = ts("2026-11-27T05:01:00Z");
        let earlier = name(since);
        let p = plan(&c, since, now, std::slice::from_ref(&earlier), name);
        assert_eq!(p.create, None);
        assert_eq!(p.waiting_for, Some(earlier));
        // The due slot's own object running (created before a crash): re-create, which
        // records it.
        let own = name(ts("2026-11-27T05:02:00Z"));
        let p = plan(&c, since, now, &[own], name);
        assert_eq!(p.create, Some(ts("2026-11-27T05:02:00Z")));
    }
}
