//! What the status says of pgBackRest: the `ContinuousArchiving` condition and
//! `status.archiving` from the current primary's `pg_stat_archiver` (in its instance
//! report), and `LastBackupSucceeded` with `status.lastBackup` from the last scheduled
//! backup its manager ran. Pure: the reconcile gathers [`Seen`], this decides.
//!
//! - Without `spec.backups.pgbackrest`: neither condition, nor `archiving`.
//! - `ContinuousArchiving`: [`continuous_archiving`] of the primary's report; `Unknown`,
//!   `NoReport` while the primary has not reported it (starting, no primary yet).
//! - `LastBackupSucceeded`: absent until a backup finished. A manager keeps its last
//!   backup in memory only (a new primary, a restarted manager report none): the last one
//!   seen stays in the status until a newer one is reported.

use k8s_openapi::jiff::Timestamp;
use pgml_api::cluster::{ArchivingStatus, BackupRef, PgmlClusterStatus};
use pgml_api::common::{Condition, Time, condition as c};
use pgml_api::instance::{ArchiverStats, LastBackup, continuous_archiving};

use super::reported::Reported;
use super::status::Notice;
use crate::runtime::conditions::Stamp;

/// Condition types written here.
pub const CONDITIONS: [&str; 2] = [c::CONTINUOUS_ARCHIVING, c::LAST_BACKUP_SUCCEEDED];

/// Condition and Event reasons.
pub mod reason {
    pub use pgml_api::instance::archiving_reason::*;
    /// The primary has not reported `pg_stat_archiver` (yet).
    pub const NO_REPORT: &str = "NoReport";
    pub const BACKUP_COMPLETED: &str = "BackupCompleted";
    pub const BACKUP_FAILED: &str = "BackupFailed";
    /// Event: archiving works again after failing.
    pub const ARCHIVING_RECOVERED: &str = "ArchivingRecovered";
}

/// What the reconcile saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// `spec.backups.pgbackrest` is set.
    pub configured: bool,
    /// The current primary.
    pub primary: Option<String>,
    /// Its report, when it reports.
    pub report: Option<Reported>,
    /// `spec.image` (what the `PgmlExtension` condition names).
    pub image: String,
}

/// Sets a condition of any status, keeping `lastTransitionTime` while the status stays.
pub(super) fn set(
    conds: &mut Vec<Condition>,
    observed: &[Condition],
    type_: &str,
    (status, reason, message): (&str, &str, String),
    stamp: Stamp,
) {
    let since = observed
        .iter()
        .find(|o| o.type_ == type_ && o.status == status)
        .map(|o| o.last_transition_time.clone())
        .unwrap_or_else(|| stamp.now.clone());
    conds.retain(|o| o.type_ != type_);
    conds.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: stamp.generation,
        last_transition_time: since,
    });
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
}

fn time_of_epoch(secs: Option<f64>) -> Option<Time> {
    Timestamp::from_second(secs? as i64).ok().map(Time)
}

fn archiving_status(a: &ArchiverStats) -> ArchivingStatus {
    ArchivingStatus {
        last_archived_wal: a.last_archived_wal.clone(),
        last_archived_time: time_of_epoch(a.last_archived_time),
        last_failed_wal: a.last_failed_wal.clone(),
        last_failed_time: time_of_epoch(a.last_failed_time),
    }
}

fn backup_ref(b: &LastBackup) -> BackupRef {
    BackupRef {
        label: None,
        backup_type: Some(b.backup_type.as_str().into()),
        completion_time: b.finished.parse::<Timestamp>().ok().map(Time),
        succeeded: b.succeeded,
    }
}

fn backup_condition(b: &LastBackup) -> (&'static str, &'static str, String) {
    if b.succeeded {
        (
            c::TRUE,
            reason::BACKUP_COMPLETED,
            format!(
                "{} backup finished at {}",
                b.backup_type.as_str(),
                b.finished
            ),
        )
    } else {
        (
            c::FALSE,
            reason::BACKUP_FAILED,
            format!(
                "{} backup started at {} failed: {}",
                b.backup_type.as_str(),
                b.started,
                b.message
            ),
        )
    }
}

/// Fills pgBackRest's conditions, `archiving` and `lastBackup` of `out` (the status being
/// computed) from what was seen and the status observed.
pub fn fill(seen: &Seen, observed: &PgmlClusterStatus, out: &mut PgmlClusterStatus, stamp: Stamp) {
    let old = &observed.conditions;
    let conds = &mut out.conditions;
    conds.retain(|x| !CONDITIONS.contains(&x.type_.as_str()));
    out.last_backup = observed.last_backup.clone();
    if !seen.configured {
        out.archiving = None;
        return;
    }
    let report = seen.report.as_ref().filter(|r| r.is_primary() && r.running);
    match report.and_then(|r| r.archiver.as_ref()) {
        Some(a) => {
            let cond = continuous_archiving(a);
            let value = (cond.status, cond.reason, cond.message);
            set(conds, old, c::CONTINUOUS_ARCHIVING, value, stamp);
            out.archiving = Some(archiving_status(a));
        }
        None => {
            let who = seen.primary.as_deref().unwrap_or("no primary yet");
            let value = (
                c::UNKNOWN,
                reason::NO_REPORT,
                format!("the primary ({who}) has not reported pg_stat_archiver yet"),
            );
            set(conds, old, c::CONTINUOUS_ARCHIVING, value, stamp);
            out.archiving = observed.archiving.clone();
        }
    }
    match seen.report.as_ref().and_then(|r| r.last_backup.as_ref()) {
        Some(b) => {
            set(
                conds,
                old,
                c::LAST_BACKUP_SUCCEEDED,
                backup_condition(b),
                stamp,
            );
            out.last_backup = Some(backup_ref(b));
        }
        None => {
            if let Some(was) = old.iter().find(|x| x.type_ == c::LAST_BACKUP_SUCCEEDED) {
                let value = (
                    was.status.as_str(),
                    was.reason.as_str(),
                    was.message.clone(),
                );
                set(conds, old, c::LAST_BACKUP_SUCCEEDED, value, stamp);
            }
        }
    }
}

pub(super) fn condition<'a>(s: &'a PgmlClusterStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|x| x.type_ == type_)
}

/// Events of a change: archiving starting to fail or working again, a backup finished.
pub fn notices(old: &PgmlClusterStatus, new: &PgmlClusterStatus) -> Vec<Notice> {
    let mut out = vec![];
    let status = |s| condition(s, c::CONTINUOUS_ARCHIVING).map(|x| x.status.as_str());
    if let Some(now) = condition(new, c::CONTINUOUS_ARCHIVING) {
        let was = status(old);
        if now.status == c::FALSE && was != Some(c::FALSE) {
            out.push((true, reason::ARCHIVING_FAILING.into(), now.message.clone()));
        } else if now.status == c::TRUE && was == Some(c::FALSE) {
            out.push((
                false,
                reason::ARCHIVING_RECOVERED.into(),
                now.message.clone(),
            ));
        }
    }
    if new.last_backup.is_some()
        && new.last_backup != old.last_backup
        && let Some(cond) = condition(new, c::LAST_BACKUP_SUCCEEDED)
    {
        let ok = cond.status == c::TRUE;
        out.push((!ok, cond.reason.clone(), cond.message.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_api::instance::{BackupType, Role};

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn stamp(t: &Time) -> Stamp<'_> {
        Stamp {
            generation: Some(4),
            now: t,
        }
    }

    fn primary(archiver: Option<ArchiverStats>, last_backup: Option<LastBackup>) -> Seen {
        Seen {
            configured: true,
            primary: Some("c-1".into()),
            report: Some(Reported {
                role: Role::Primary,
                running: true,
                archiver,
                last_backup,
                ..Default::default()
            }),
            image: String::new(),
        }
    }

    fn archived(n: i64) -> ArchiverStats {
        ArchiverStats {
            archived_count: n,
            last_archived_wal: Some("000000010000000000000007".into()),
            last_archived_time: Some(1_800_000_000.25),
            ..Default::default()
        }
    }

    fn failing() -> ArchiverStats {
        ArchiverStats {
            failed_count: 2,
            last_failed_wal: Some("000000010000000000000008".into()),
            last_failed_time: Some(1_800_000_100.0),
            ..archived(7)
        }
    }

    fn run(seen: &Seen, observed: &PgmlClusterStatus) -> PgmlClusterStatus {
        let t = now();
        let mut out = PgmlClusterStatus::default();
        fill(seen, observed, &mut out, stamp(&t));
        out
    }

    fn cond<'a>(s: &'a PgmlClusterStatus, t: &str) -> Option<(&'a str, &'a str, &'a str)> {
        condition(s, t).map(|x| (x.status.as_str(), x.reason.as_str(), x.message.as_str()))
    }

    #[test]
    fn nothing_without_pgbackrest() {
        let seen = Seen {
            configured: false,
            ..primary(Some(archived(3)), None)
        };
        let s = run(&seen, &PgmlClusterStatus::default());
        assert!(s.conditions.is_empty());
        assert!(s.archiving.is_none() && s.last_backup.is_none());
    }

    #[test]
    fn unknown_until_the_primary_reports() {
        let s = run(&primary(None, None), &PgmlClusterStatus::default());
        let (status, why, msg) = cond(&s, c::CONTINUOUS_ARCHIVING).unwrap();
        assert_eq!((status, why), ("Unknown", reason::NO_REPORT));
        assert!(msg.contains("c-1"), "{msg}");
        assert!(
            cond(&s, c::LAST_BACKUP_SUCCEEDED).is_none(),
            "absent until a backup"
        );
        let nobody = Seen {
            configured: true,
            ..Seen::default()
        };
        let s = run(&nobody, &PgmlClusterStatus::default());
        assert_eq!(cond(&s, c::CONTINUOUS_ARCHIVING).unwrap().0, "Unknown");
        // A replica's report (a primary that is not one yet) says nothing of archiving.
        let mut replica = primary(Some(archived(1)), None);
        replica.report.as_mut().unwrap().role = Role::Replica;
        assert_eq!(
            cond(
                &run(&replica, &PgmlClusterStatus::default()),
                c::CONTINUOUS_ARCHIVING
            )
            .unwrap()
            .1,
            reason::NO_REPORT
        );
    }

    #[test]
    fn archiving_true_then_false_naming_the_wal_with_events() {
        let ok = run(
            &primary(Some(archived(7)), None),
            &PgmlClusterStatus::default(),
        );
        let (status, why, _) = cond(&ok, c::CONTINUOUS_ARCHIVING).unwrap();
        assert_eq!((status, why), ("True", reason::WAL_ARCHIVED));
        let a = ok.archiving.clone().unwrap();
        assert_eq!(
            a.last_archived_wal.as_deref(),
            Some("000000010000000000000007")
        );
        assert_eq!(a.last_archived_time.unwrap().0.as_second(), 1_800_000_000);
        let c0 = condition(&ok, c::CONTINUOUS_ARCHIVING).unwrap();
        assert_eq!(c0.observed_generation, Some(4));

        let bad = run(&primary(Some(failing()), None), &ok);
        let (status, why, msg) = cond(&bad, c::CONTINUOUS_ARCHIVING).unwrap();
        assert_eq!((status, why), ("False", reason::ARCHIVING_FAILING));
        assert!(msg.contains("000000010000000000000008"), "{msg}");
        let ev = notices(&ok, &bad);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].0, ev[0].1.as_str()),
            (true, reason::ARCHIVING_FAILING)
        );
        // Still failing: no second Event.
        assert!(notices(&bad, &run(&primary(Some(failing()), None), &bad)).is_empty());

        let mut caught_up = failing();
        caught_up.archived_count = 9;
        caught_up.last_archived_time = Some(1_800_000_200.0);
        let back = run(&primary(Some(caught_up), None), &bad);
        assert_eq!(cond(&back, c::CONTINUOUS_ARCHIVING).unwrap().0, "True");
        let ev = notices(&bad, &back);
        assert_eq!(
            (ev[0].0, ev[0].1.as_str()),
            (false, reason::ARCHIVING_RECOVERED)
        );
    }

    #[test]
    fn last_backup_from_the_report_and_kept_when_no_longer_reported() {
        let done = LastBackup {
            backup_type: BackupType::Incr,
            started: "2027-01-15T08:00:00Z".into(),
            finished: "2027-01-15T08:00:09Z".into(),
            succeeded: true,
            message: String::new(),
        };
        let s = run(
            &primary(Some(archived(1)), Some(done.clone())),
            &PgmlClusterStatus::default(),
        );
        let (status, why, msg) = cond(&s, c::LAST_BACKUP_SUCCEEDED).unwrap();
        assert_eq!((status, why), ("True", reason::BACKUP_COMPLETED));
        assert!(
            msg.contains("incr") && msg.contains("2027-01-15T08:00:09Z"),
            "{msg}"
        );
        let lb = s.last_backup.clone().unwrap();
        assert_eq!(lb.backup_type.as_deref(), Some("incr"));
        assert!(lb.succeeded);
        assert_eq!(
            lb.completion_time.unwrap().0,
            "2027-01-15T08:00:09Z".parse::<Timestamp>().unwrap()
        );
        let ev = notices(&PgmlClusterStatus::default(), &s);
        assert_eq!(
            (ev[0].0, ev[0].1.as_str()),
            (false, reason::BACKUP_COMPLETED)
        );

        // A new primary (or a restarted manager) reports no backup: the last one stays.
        let later = run(&primary(Some(archived(2)), None), &s);
        assert_eq!(later.last_backup, s.last_backup);
        assert_eq!(
            cond(&later, c::LAST_BACKUP_SUCCEEDED),
            cond(&s, c::LAST_BACKUP_SUCCEEDED)
        );
        assert!(notices(&s, &later).is_empty());

        let failed = LastBackup {
            backup_type: BackupType::Full,
            started: "2027-01-16T02:00:00Z".into(),
            finished: "2027-01-16T02:00:01Z".into(),
            succeeded: false,
            message: "ERROR: [103]: unable to find a valid repository".into(),
        };
        let f = run(&primary(Some(archived(2)), Some(failed)), &later);
        let (status, why, msg) = cond(&f, c::LAST_BACKUP_SUCCEEDED).unwrap();
        assert_eq!((status, why), ("False", reason::BACKUP_FAILED));
        assert!(msg.contains("[103]") && msg.contains("full"), "{msg}");
        assert!(!f.last_backup.as_ref().unwrap().succeeded);
        let ev = notices(&later, &f);
        assert_eq!((ev[0].0, ev[0].1.as_str()), (true, reason::BACKUP_FAILED));
    }

    #[test]
    fn the_same_report_later_gives_the_same_status() {
        let seen = primary(
            Some(failing()),
            Some(LastBackup {
                finished: "2027-01-15T08:00:09Z".into(),
                succeeded: true,
                ..Default::default()
            }),
        );
        let first = run(&seen, &PgmlClusterStatus::default());
        let later = Time(Timestamp::from_second(1_800_000_999).unwrap());
        let mut again = PgmlClusterStatus::default();
        fill(&seen, &first, &mut again, stamp(&later));
        assert_eq!(again, first, "nothing to write");
        // Nor when the primary stops reporting its backup (a restarted manager).
        let mut restarted = seen.clone();
        restarted.report.as_mut().unwrap().last_backup = None;
        let mut kept = PgmlClusterStatus::default();
        fill(&restarted, &first, &mut kept, stamp(&later));
        assert_eq!(kept, first);
    }
}
