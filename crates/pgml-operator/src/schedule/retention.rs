//! Which scheduled EbsSnapshots of one source to delete (pure).
//!
//! Only objects carrying the source's `pgml.io/scheduled-by` label are considered: a
//! snapshot made by hand is never pruned. Among them:
//! - Completed ones are kept when any rule keeps them: the newest `keepLast`, and the newest
//!   of each of the last `hourly` hours / `daily` days / `weekly` ISO weeks (UTC) that have
//!   a Completed snapshot (restic's and borg's meaning: a bucket without one does not use up
//!   the count, so a stretch of failures or downtime never costs the older backups);
//! - ones still being taken (no phase yet, Pending … Finalizing) are always kept;
//! - Failed ones are deleted once a newer snapshot has completed (until then they are the
//!   latest word on why the schedule is not producing backups);
//! - objects already being deleted are left to their finalizer.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use pgml_api::EbsSnapshot;
use pgml_api::common::keys;
use pgml_api::schedule::SnapshotRetention;
use pgml_api::snapshot::SnapshotPhase;

/// When a snapshot was taken, for ordering and buckets: its capture time, else when the
/// object was created.
pub fn taken_at(s: &EbsSnapshot) -> Option<Timestamp> {
    s.status
        .as_ref()
        .and_then(|st| st.capture_time.as_ref())
        .or(s.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// Whether the snapshot is still being taken (never pruned).
pub fn in_progress(s: &EbsSnapshot) -> bool {
    !matches!(
        s.status.as_ref().and_then(|st| st.phase),
        Some(SnapshotPhase::Completed | SnapshotPhase::Failed)
    )
}

fn phase(s: &EbsSnapshot) -> Option<SnapshotPhase> {
    s.status.as_ref().and_then(|st| st.phase)
}

fn name(s: &EbsSnapshot) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// A calendar bucket in UTC: hours since the epoch, the civil day, the ISO week.
type Bucket = (i32, i32, i32);
/// The bucket of an instant, for one rule.
type BucketOf = fn(Timestamp) -> Bucket;

fn hour(t: Timestamp) -> Bucket {
    (t.as_second().div_euclid(3600) as i32, 0, 0)
}

fn day(t: Timestamp) -> Bucket {
    let d = t.to_zoned(TimeZone::UTC).date();
    (d.year().into(), d.month().into(), d.day().into())
}

fn week(t: Timestamp) -> Bucket {
    let w = t.to_zoned(TimeZone::UTC).date().iso_week_date();
    (w.year().into(), w.week().into(), 0)
}

/// The names of the snapshots to delete, oldest first. `scheduled_by` is the value of the
/// source's `pgml.io/scheduled-by` label; `all` may hold any EbsSnapshots.
pub fn prune(all: &[EbsSnapshot], scheduled_by: &str, r: &SnapshotRetention) -> Vec<String> {
    let mut ours: Vec<(Timestamp, String, &EbsSnapshot)> = all
        .iter()
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::SCHEDULED_BY))
                .is_some_and(|v| v == scheduled_by)
                && s.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|s| Some((taken_at(s)?, name(s), s)))
        .collect();
    // Newest first; the name breaks ties (slots are in the name).
    ours.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    let completed: Vec<&(Timestamp, String, &EbsSnapshot)> = ours
        .iter()
        .filter(|(_, _, s)| phase(s) == Some(SnapshotPhase::Completed))
        .collect();

    let mut keep: BTreeSet<&str> = completed
        .iter()
        .take(r.keep_last.max(0) as usize)
        .map(|(_, n, _)| n.as_str())
        .collect();
    let rules: [(i32, BucketOf); 3] = [(r.hourly, hour), (r.daily, day), (r.weekly, week)];
    for (count, bucket) in rules {
        let mut left = count.max(0);
        let mut last = None;
        for (t, n, _) in &completed {
            if left == 0 {
                break;
            }
            let b = bucket(*t);
            if last != Some(b) {
                keep.insert(n.as_str());
                last = Some(b);
                left -= 1;
            }
        }
    }

    let newest_completed = completed.first().map(|(t, _, _)| *t);
    let mut out: Vec<String> = ours
        .iter()
        .filter(|(t, n, s)| match phase(s) {
            Some(SnapshotPhase::Completed) => !keep.contains(n.as_str()),
            Some(SnapshotPhase::Failed) => newest_completed.is_some_and(|newest| *t < newest),
            _ => false,
        })
        .map(|(_, n, _)| n.clone())
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_api::common::Time;
    use pgml_api::snapshot::EbsSnapshotStatus;

    const BY: &str = "ZfsPool.analytics";

    fn snap(name: &str, at: &str, phase: Option<SnapshotPhase>) -> EbsSnapshot {
        let mut s = EbsSnapshot::new(
            name,
            serde_yaml::from_str("source: {zfsPool: {name: analytics}}").unwrap(),
        );
        s.metadata.labels = Some([(keys::SCHEDULED_BY.to_string(), BY.to_string())].into());
        let at: Timestamp = at.parse().unwrap();
        s.metadata.creation_timestamp = Some(Time(at));
        s.status = Some(EbsSnapshotStatus {
            phase,
            capture_time: phase
                .filter(|p| *p != SnapshotPhase::Failed)
                .map(|_| Time(at)),
            ..Default::default()
        });
        s
    }

    fn done(name: &str, at: &str) -> EbsSnapshot {
        snap(name, at, Some(SnapshotPhase::Completed))
    }

    fn rules(keep_last: i32, hourly: i32, daily: i32, weekly: i32) -> SnapshotRetention {
        SnapshotRetention {
            keep_last,
            hourly,
            daily,
            weekly,
        }
    }

    #[test]
    fn keep_last_only() {
        let all: Vec<EbsSnapshot> = (0..6)
            .map(|m| done(&format!("s{m}"), &format!("2026-11-27T05:0{m}:00Z")))
            .collect();
        assert_eq!(prune(&all, BY, &rules(3, 0, 0, 0)), ["s0", "s1", "s2"]);
        assert_eq!(prune(&all, BY, &rules(6, 0, 0, 0)), Vec::<String>::new());
        assert_eq!(
            prune(&all[..2], BY, &rules(3, 0, 0, 0)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn daily_buckets_skip_days_without_a_snapshot() {
        // Two a day on the 1st, 2nd, 5th and 9th: days 3, 4, 6, 7, 8 are gaps.
        let all = vec![
            done("d1a", "2026-11-01T01:00:00Z"),
            done("d1b", "2026-11-01T13:00:00Z"),
            done("d2a", "2026-11-02T01:00:00Z"),
            done("d2b", "2026-11-02T13:00:00Z"),
            done("d5a", "2026-11-05T01:00:00Z"),
            done("d5b", "2026-11-05T23:59:59Z"),
            done("d9a", "2026-11-09T00:00:00Z"),
            done("d9b", "2026-11-09T13:00:00Z"),
        ];
        // The newest of the last 3 days that have one: the 9th, 5th and 2nd.
        assert_eq!(
            prune(&all, BY, &rules(0, 0, 3, 0)),
            ["d1a", "d1b", "d2a", "d5a", "d9a"]
        );
        assert_eq!(
            prune(&all, BY, &rules(0, 0, 30, 0)),
            ["d1a", "d2a", "d5a", "d9a"]
        );
    }

    #[test]
    fn a_snapshot_kept_by_several_rules_counts_once() {
        let all = vec![
            done("a", "2026-11-25T10:00:00Z"),
            done("b", "2026-11-26T10:00:00Z"),
            done("c", "2026-11-27T09:00:00Z"),
            done("d", "2026-11-27T10:00:00Z"),
        ];
        // keepLast 1 keeps d; daily 2 keeps d (the 27th) and b (the 26th); hourly 2 keeps
        // d and c. Union {b, c, d}: a goes.
        assert_eq!(prune(&all, BY, &rules(1, 2, 2, 0)), ["a"]);
        // Weekly 1 (ISO week of Nov 23-29) adds nothing new: d again.
        assert_eq!(prune(&all, BY, &rules(1, 0, 0, 1)), ["a", "b", "c"]);
    }

    #[test]
    fn iso_weeks_start_on_monday() {
        let all = vec![
            done("sun", "2026-11-22T12:00:00Z"),
            done("mon", "2026-11-23T12:00:00Z"),
            done("fri", "2026-11-27T12:00:00Z"),
        ];
        // Week 48 (Mon 23 – Sun 29) → fri; week 47 → sun.
        assert_eq!(prune(&all, BY, &rules(0, 0, 0, 2)), ["mon"]);
    }

    #[test]
    fn snapshots_in_progress_are_never_pruned() {
        let all = vec![
            snap(
                "old-pending",
                "2026-11-27T01:00:00Z",
                Some(SnapshotPhase::Pending),
            ),
            snap("old-new", "2026-11-27T01:30:00Z", None),
            done("c1", "2026-11-27T02:00:00Z"),
            done("c2", "2026-11-27T03:00:00Z"),
            snap(
                "finalizing",
                "2026-11-27T04:00:00Z",
                Some(SnapshotPhase::Finalizing),
            ),
            snap(
                "capturing",
                "2026-11-27T04:01:00Z",
                Some(SnapshotPhase::Capturing),
            ),
        ];
        assert_eq!(prune(&all, BY, &rules(1, 0, 0, 0)), ["c1"]);
    }

    #[test]
    fn failed_ones_go_once_a_newer_one_completed() {
        let all = vec![
            snap("f1", "2026-11-27T01:00:00Z", Some(SnapshotPhase::Failed)),
            done("c1", "2026-11-27T02:00:00Z"),
            snap("f2", "2026-11-27T03:00:00Z", Some(SnapshotPhase::Failed)),
        ];
        assert_eq!(prune(&all, BY, &rules(3, 0, 0, 0)), ["f1"]);
        // Nothing completed yet: the failures stay, they are all there is to look at.
        let failures = vec![all[0].clone(), all[2].clone()];
        assert_eq!(
            prune(&failures, BY, &rules(3, 0, 0, 0)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn only_this_sources_scheduled_snapshots_are_considered() {
        let mut by_hand = done("by-hand", "2026-11-27T01:00:00Z");
        by_hand.metadata.labels = None;
        let mut other = done("other-pool", "2026-11-27T01:00:00Z");
        other.metadata.labels =
            Some([(keys::SCHEDULED_BY.to_string(), "ZfsPool.ledger".to_string())].into());
        let mut going = done("going", "2026-11-27T01:30:00Z");
        going.metadata.deletion_timestamp = Some(Time("2026-11-27T06:00:00Z".parse().unwrap()));
        let all = vec![
            by_hand,
            other,
            going,
            done("c1", "2026-11-27T02:00:00Z"),
            done("c2", "2026-11-27T03:00:00Z"),
        ];
        assert_eq!(prune(&all, BY, &rules(1, 0, 0, 0)), ["c1"]);
    }
}
