//! What an instance manager (`pgml-instance`) reports in its own Pod's annotation
//! `pgml.io/instance-status`, read by the cluster controller and by the other instances'
//! managers: one type for both sides, so that the JSON cannot drift between them
//! (docs/design/pgmlcluster.md, "The instance manager's contract"). Also what the report
//! carries of pgBackRest: `pg_stat_archiver` ([`ArchiverStats`], and the
//! `ContinuousArchiving` condition computed from it) and the last scheduled backup
//! ([`LastBackup`]).

use serde::{Deserialize, Serialize};

use crate::common::condition;

/// The Pod annotation an instance manager writes (and only this one).
pub const STATUS_ANNOTATION: &str = "pgml.io/instance-status";
/// Set to `"true"` on an instance's Pod by the controller: stop PostgreSQL, never start it.
pub const FENCED_ANNOTATION: &str = "pgml.io/fenced";
/// The label that selects every Pod of a cluster.
pub const CLUSTER_LABEL: &str = "pgml.io/cluster";

/// What PostgreSQL is doing on an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Running and accepting writes (not in recovery).
    Primary,
    /// Running in recovery (a standby).
    Replica,
    /// Not running, or not answering yet.
    #[default]
    None,
}

/// The annotation's JSON. Every field has a default: a manager that is starting (or an
/// older one) reports little, and the reader takes what is there.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceReport {
    pub role: Role,
    /// A postmaster of this PGDATA runs.
    pub running: bool,
    /// Primary: accepts writes. Replica: streams from the primary.
    pub ready: bool,
    /// `pg_current_wal_lsn()` on a primary, the replay LSN on a replica; once `demoted`,
    /// the final LSN (the shutdown checkpoint) a new primary must have replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// The WAL receiver streams (`pg_stat_wal_receiver.status = streaming`).
    pub streaming: bool,
    /// `host:port` other instances replicate from.
    pub address: String,
    pub standby_signal: bool,
    pub fenced: bool,
    /// Stopped cleanly as a primary (switchover) and will not start as one again.
    pub demoted: bool,
    /// RFC 3339 time of this report.
    pub updated: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `pg_stat_archiver`, read at each look on a running primary with pgBackRest
    /// configured; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiver: Option<ArchiverStats>,
    /// The last scheduled pgBackRest backup this manager ran (while primary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<LastBackup>,
    /// The running server's `pg_control_system().system_identifier` (the same on a
    /// primary and every physical copy of it); absent while it is not running. The
    /// controller records the primary's in `PgmlCluster.status.systemIdentifier`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// While the first instance restores the cluster's database from a pgBackRest
    /// repository (`bootstrap.pgbackrest`, alone or on a snapshot), until it is promoted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreReport>,
    /// A primary: its application database, once the manager made (or found) it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppReport>,
    /// PostgreSQL parameters set in the cluster's configuration that take effect only
    /// after a restart (`pg_settings.pending_restart`): the operator restarts the
    /// instance in a rolling update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
}

/// The application database on the primary.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct AppReport {
    pub database: String,
    /// The `pgml` version installed in it; None when the image does not offer the
    /// extension (`pg_available_extensions`) or it could not be created (`error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgml: Option<String>,
    /// Why the database, its owner or the extension could not be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How the restore of the cluster's database goes on its first instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RestoreReport {
    /// WAL replay paused at `bootstrap.recoveryTarget`: the manager promotes next.
    pub target_reached: bool,
    /// Why the restore cannot complete (the target is never reached, the destination
    /// archive already holds a stanza…): nothing was promoted, and nothing will be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Whether `s` looks like a PostgreSQL system identifier: a 64-bit unsigned integer in
/// decimal, as `pg_control_system()` and `pg_controldata` print it.
pub fn is_system_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 20
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u64>().is_ok()
}

impl InstanceReport {
    /// Parses the annotation; `None` when absent or not the expected JSON.
    pub fn parse(annotation: Option<&str>) -> Option<InstanceReport> {
        serde_json::from_str(annotation?).ok()
    }

    /// The same report but for its time stamp, WAL positions and archiver counters: what
    /// decides whether it must be rewritten now (positions move at every look on a busy
    /// primary, the archiver at every segment; they go out with the periodic rewrite, or
    /// with any other change). A change of the archiving condition's status is a change.
    pub fn same_as(&self, other: &InstanceReport) -> bool {
        let strip = |r: &InstanceReport| InstanceReport {
            updated: String::new(),
            lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            archiver: None,
            ..r.clone()
        };
        let archiving =
            |r: &InstanceReport| r.archiver.as_ref().map(|a| continuous_archiving(a).status);
        strip(self) == strip(other) && archiving(self) == archiving(other)
    }

    /// Whether `self` must be written now, `last` being the report written last and how
    /// long ago: at once when it differs in more than positions and counters
    /// ([`Self::same_as`]); positions and counters that moved at most every `every`; a
    /// report that differs only in its time stamp never (an idle instance writes nothing,
    /// so a thousand idle clusters cost the apiserver no writes and the operator no wakes).
    pub fn needs_write(
        &self,
        last: Option<(&InstanceReport, std::time::Duration)>,
        every: std::time::Duration,
    ) -> bool {
        let Some((last, age)) = last else {
            return true;
        };
        if !last.same_as(self) {
            return true;
        }
        let untimed = |r: &InstanceReport| InstanceReport {
            updated: String::new(),
            ..r.clone()
        };
        age >= every && untimed(last) != untimed(self)
    }

    /// Runs as a primary, as far as its report says (not fenced, not demoted).
    pub fn acting_primary(&self) -> bool {
        self.role == Role::Primary && self.running && !self.fenced && !self.demoted
    }

    pub fn is_primary(&self) -> bool {
        self.role == Role::Primary
    }

    /// The running primary, accepting writes.
    pub fn serves_as_primary(&self) -> bool {
        self.is_primary() && self.running && !self.fenced
    }

    /// The position that matters for this instance: written on a primary, replayed on a
    /// replica.
    pub fn position(&self) -> Option<&str> {
        if self.is_primary() {
            self.lsn.as_deref()
        } else {
            self.replay_lsn.as_deref().or(self.lsn.as_deref())
        }
    }
}

/// What `pg_stat_archiver` says (the instance manager reads it on the primary).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ArchiverStats {
    pub archived_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// `last_archived_time`, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<f64>,
    pub failed_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    /// `last_failed_time`, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failed_time: Option<f64>,
}

impl ArchiverStats {
    /// The query whose one row (`psql -A -t`, `|`-separated) [`ArchiverStats::parse_row`]
    /// reads.
    pub const QUERY: &'static str = "SELECT archived_count, coalesce(last_archived_wal, ''), \
         coalesce(extract(epoch FROM last_archived_time)::text, ''), failed_count, \
         coalesce(last_failed_wal, ''), coalesce(extract(epoch FROM last_failed_time)::text, '') \
         FROM pg_stat_archiver";

    /// Parses a row of [`ArchiverStats::QUERY`] (`|`-separated, empty for NULL).
    pub fn parse_row(row: &str) -> Option<ArchiverStats> {
        let f: Vec<&str> = row.trim().split('|').collect();
        Self::from_fields(&f)
    }

    /// The same from fields already split.
    pub fn from_fields<S: AsRef<str>>(f: &[S]) -> Option<ArchiverStats> {
        if f.len() != 6 {
            return None;
        }
        let f: Vec<&str> = f.iter().map(AsRef::as_ref).collect();
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let time = |s: &str| -> Option<Option<f64>> {
            if s.is_empty() {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        };
        Some(ArchiverStats {
            archived_count: f[0].parse().ok()?,
            last_archived_wal: text(f[1]),
            last_archived_time: time(f[2])?,
            failed_count: f[3].parse().ok()?,
            last_failed_wal: text(f[4]),
            last_failed_time: time(f[5])?,
        })
    }
}

/// The `ContinuousArchiving` condition's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivingCondition {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl ArchivingCondition {
    pub const TYPE: &'static str = condition::CONTINUOUS_ARCHIVING;
}

/// Reasons of the `ContinuousArchiving` condition.
pub mod archiving_reason {
    /// The last archiving attempt succeeded.
    pub const WAL_ARCHIVED: &str = "WalArchived";
    /// The last attempt failed (after the last success, or with none ever).
    pub const ARCHIVING_FAILING: &str = "ArchivingFailing";
    /// Nothing archived nor failed yet (a new server that filled no WAL segment).
    pub const NO_WAL_ARCHIVED_YET: &str = "NoWalArchivedYet";
}

/// The `ContinuousArchiving` condition from `pg_stat_archiver`: whether archiving works,
/// not whether it is configured. The last event decides: a failure later than the last
/// success (or failures with no success ever) → `False`, naming the WAL that failed and
/// how many attempts failed; a success at least as recent as the last failure → `True`
/// (PostgreSQL retries a failed segment until it is archived, so a success after failures
/// means the archive caught up); nothing yet → `Unknown`.
pub fn continuous_archiving(s: &ArchiverStats) -> ArchivingCondition {
    use archiving_reason as reason;
    let failed_last = s.failed_count > 0
        && match (s.last_failed_time, s.last_archived_time) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            (None, _) => s.archived_count == 0,
        };
    let wal = |w: &Option<String>| w.clone().unwrap_or_else(|| "?".into());
    if failed_last {
        let last_ok = match (&s.last_archived_wal, s.archived_count) {
            (Some(w), n) if n > 0 => format!("; {n} archived before, the last {w}"),
            _ => "; none archived yet".to_string(),
        };
        ArchivingCondition {
            status: condition::FALSE,
            reason: reason::ARCHIVING_FAILING,
            message: format!(
                "archiving WAL {} failed (failed attempts: {}){last_ok}",
                wal(&s.last_failed_wal),
                s.failed_count
            ),
        }
    } else if s.archived_count > 0 {
        ArchivingCondition {
            status: condition::TRUE,
            reason: reason::WAL_ARCHIVED,
            message: format!(
                "{} WAL segments archived, the last {}",
                s.archived_count,
                wal(&s.last_archived_wal)
            ),
        }
    } else {
        ArchivingCondition {
            status: condition::UNKNOWN,
            reason: reason::NO_WAL_ARCHIVED_YET,
            message: "no WAL segment archived or failed yet".to_string(),
        }
    }
}

/// The kind of a pgBackRest backup (`--type`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    #[default]
    Full,
    /// Incremental: what changed since the last backup of any type.
    Incr,
}

impl BackupType {
    /// The value of `pgbackrest backup --type=`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incr => "incr",
        }
    }
}

/// A scheduled backup the primary's manager ran (`pgbackrest backup`), finished.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct LastBackup {
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339.
    pub finished: String,
    pub succeeded: bool,
    /// Why it failed (the first line of pgBackRest's error), empty on success.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_is_camel_case_and_round_trips() {
        let r = InstanceReport {
            role: Role::Replica,
            running: true,
            replay_lsn: Some("0/5000000".into()),
            standby_signal: true,
            address: "10.0.0.5:5432".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["role"], "replica");
        assert_eq!(v["replayLsn"], "0/5000000");
        assert_eq!(v["standbySignal"], true);
        assert!(v.get("lsn").is_none());
        assert!(v.get("archiver").is_none() && v.get("lastBackup").is_none());
        let back: InstanceReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn archiver_and_last_backup_are_camel_case() {
        let r = InstanceReport {
            role: Role::Primary,
            archiver: Some(ArchiverStats {
                archived_count: 3,
                last_archived_wal: Some("000000010000000000000003".into()),
                last_archived_time: Some(1764220000.5),
                ..Default::default()
            }),
            last_backup: Some(LastBackup {
                backup_type: BackupType::Incr,
                started: "2026-11-27T08:00:00Z".into(),
                finished: "2026-11-27T08:00:09Z".into(),
                succeeded: true,
                message: String::new(),
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["archiver"]["archivedCount"], 3);
        assert_eq!(v["archiver"]["lastArchivedWal"], "000000010000000000000003");
        assert_eq!(v["archiver"]["failedCount"], 0);
        assert_eq!(v["lastBackup"]["type"], "incr");
        assert_eq!(v["lastBackup"]["succeeded"], true);
        assert_eq!(v["lastBackup"]["finished"], "2026-11-27T08:00:09Z");
        assert!(v["lastBackup"].get("message").is_none());
        assert_eq!(serde_json::from_value::<InstanceReport>(v).unwrap(), r);
    }

    #[test]
    fn reports_parse_leniently() {
        let r = InstanceReport::parse(Some(
            r#"{"role":"replica","running":true,"ready":true,"lsn":"0/3000060","replayLsn":"0/3000000","streaming":true,"extra":1}"#,
        ))
        .unwrap();
        assert!(!r.is_primary());
        assert_eq!(r.position(), Some("0/3000000"));
        assert!(r.streaming);
        let p = InstanceReport::parse(Some(r#"{"role":"primary","running":true,"lsn":"0/5"}"#))
            .unwrap();
        assert!(p.serves_as_primary() && p.acting_primary());
        assert_eq!(p.position(), Some("0/5"));
        assert_eq!(InstanceReport::parse(Some("not json")), None);
        assert_eq!(InstanceReport::parse(None), None);
    }

    #[test]
    fn the_system_identifier_is_camel_case_and_checked() {
        let r = InstanceReport::parse(Some(
            r#"{"role":"primary","running":true,"systemIdentifier":"7318791534227411232"}"#,
        ))
        .unwrap();
        assert_eq!(r.system_identifier.as_deref(), Some("7318791534227411232"));
        let absent = serde_json::to_value(InstanceReport::default()).unwrap();
        assert!(absent.get("systemIdentifier").is_none(), "{absent}");
        assert!(is_system_identifier("7318791534227411232"));
        assert!(is_system_identifier("18446744073709551615"));
        for bad in ["", "18446744073709551616", "-1", "12a", " 1", "0x1f"] {
            assert!(!is_system_identifier(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_idle_report_is_never_rewritten_moved_positions_only_periodically() {
        use std::time::Duration;
        let every = Duration::from_secs(10);
        let a = InstanceReport {
            updated: "2026-01-01T00:00:00Z".into(),
            lsn: Some("0/1".into()),
            ..Default::default()
        };
        assert!(a.needs_write(None, every), "the first report");
        let mut idle = a.clone();
        idle.updated = "2026-01-01T00:05:00Z".into();
        assert!(!idle.needs_write(Some((&a, Duration::from_secs(300))), every));
        let mut moved = idle.clone();
        moved.lsn = Some("0/2".into());
        assert!(!moved.needs_write(Some((&a, Duration::from_secs(3))), every));
        assert!(moved.needs_write(Some((&a, Duration::from_secs(10))), every));
        let mut changed = idle.clone();
        changed.ready = !a.ready;
        assert!(changed.needs_write(Some((&a, Duration::from_secs(1))), every));
    }

    #[test]
    fn the_time_stamp_positions_or_archiver_counters_alone_are_no_change() {
        let ok = |n: i64| ArchiverStats {
            archived_count: n,
            last_archived_wal: Some(format!("00000001000000000000000{n}")),
            last_archived_time: Some(n as f64),
            ..Default::default()
        };
        let a = InstanceReport {
            updated: "2026-01-01T00:00:00Z".into(),
            lsn: Some("0/1".into()),
            archiver: Some(ok(1)),
            ..Default::default()
        };
        let mut b = a.clone();
        b.updated = "2026-01-01T00:00:10Z".into();
        b.lsn = Some("0/2".into());
        b.replay_lsn = Some("0/2".into());
        b.archiver = Some(ok(2));
        assert!(a.same_as(&b));
        b.archiver = Some(ArchiverStats {
            failed_count: 1,
            last_failed_time: Some(9.0),
            ..ok(2)
        });
        assert!(!a.same_as(&b), "archiving started failing");
        b.archiver = Some(ok(2));
        b.demoted = true;
        assert!(!a.same_as(&b));
        b.demoted = false;
        b.last_backup = Some(LastBackup::default());
        assert!(!a.same_as(&b));
    }

    #[test]
    fn archiver_row_parses() {
        let s = ArchiverStats::parse_row("3|000000010000000000000003|1764220000.5|0||\n").unwrap();
        assert_eq!(s.archived_count, 3);
        assert_eq!(
            s.last_archived_wal.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(s.last_archived_time, Some(1764220000.5));
        assert_eq!(s.failed_count, 0);
        assert_eq!(s.last_failed_wal, None);
        assert_eq!(s.last_failed_time, None);
        assert!(ArchiverStats::parse_row("1|2").is_none());
        assert!(ArchiverStats::parse_row("x|||0||").is_none());
        assert_eq!(
            ArchiverStats::from_fields(&["1", "", "", "0", "", ""]).map(|s| s.archived_count),
            Some(1)
        );
    }

    #[test]
    fn archiving_condition() {
        use archiving_reason as reason;
        let none = continuous_archiving(&ArchiverStats::default());
        assert_eq!(
            (none.status, none.reason),
            ("Unknown", reason::NO_WAL_ARCHIVED_YET)
        );

        let ok = ArchiverStats {
            archived_count: 4,
            last_archived_wal: Some("000000010000000000000004".into()),
            last_archived_time: Some(100.0),
            ..Default::default()
        };
        let c = continuous_archiving(&ok);
        assert_eq!((c.status, c.reason), ("True", reason::WAL_ARCHIVED));
        assert!(
            c.message.contains("000000010000000000000004"),
            "{}",
            c.message
        );

        // Failing after successes.
        let failing = ArchiverStats {
            failed_count: 3,
            last_failed_wal: Some("000000010000000000000005".into()),
            last_failed_time: Some(130.0),
            ..ok.clone()
        };
        let c = continuous_archiving(&failing);
        assert_eq!((c.status, c.reason), ("False", reason::ARCHIVING_FAILING));
        assert!(
            c.message.contains("000000010000000000000005"),
            "{}",
            c.message
        );
        assert!(c.message.contains("failed attempts: 3"), "{}", c.message);

        // Caught up after failures: the last event is a success.
        let recovered = ArchiverStats {
            archived_count: 5,
            last_archived_time: Some(140.0),
            ..failing.clone()
        };
        assert_eq!(continuous_archiving(&recovered).status, "True");

        // Never archived, failing.
        let never = ArchiverStats {
            failed_count: 1,
            last_failed_wal: Some("000000010000000000000001".into()),
            last_failed_time: Some(10.0),
            ..Default::default()
        };
        let c = continuous_archiving(&never);
        assert_eq!(c.status, "False");
        assert!(c.message.contains("none archived yet"), "{}", c.message);
        assert_eq!(ArchivingCondition::TYPE, "ContinuousArchiving");
    }
}
