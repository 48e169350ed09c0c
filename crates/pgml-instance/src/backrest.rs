//! pgBackRest on the primary: `stanza-create` once it serves, `pg_stat_archiver` at every
//! look, and the scheduled backups of `spec.backups.pgbackrest.schedule`.
//!
//! Configured = the cluster's ConfigMap carries `pgbackrest.conf` (mounted in
//! `PGML_CONFIG_DIR`): the controller writes it there with the `archive_command` that uses
//! it, so the file's presence is the one switch, seen at every look. The stanza is the
//! cluster's name.
//!
//! Every pgBackRest command runs in the background (a task the looks poll), as `postgres`,
//! as an argument vector, with this process's environment: the looks go on while a long
//! backup runs, and one command of each kind runs at a time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::jiff::Timestamp;
use pgml_api::cluster::BackupSchedule;
use pgml_api::cron::Cron;
use pgml_api::instance::{ArchiverStats, BackupType, LastBackup};
use tokio::task::JoinHandle;

use crate::postgres::Pg;

/// The file, in the ConfigMap's folder.
pub const CONFIG_FILE: &str = "pgbackrest.conf";
/// The program, on the image's PATH.
pub const PROGRAM: &str = "pgbackrest";
/// The longest wait between two attempts of `stanza-create`.
const STANZA_RETRY_MAX: Duration = Duration::from_secs(60);
/// A backup of a large database takes hours; past this it is stopped as hung.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const STANZA_TIMEOUT: Duration = Duration::from_secs(300);

/// Delay before the next `stanza-create` after `failures` failures in a row: 1, 2, 4 … 60 s.
pub fn stanza_retry(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(6)).min(STANZA_RETRY_MAX),
    }
}

/// The schedules, parsed (the controller refuses a schedule that does not parse; one that
/// does not here is left out and said in the report).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    pub full: Option<Cron>,
    pub incremental: Option<Cron>,
    pub errors: Vec<String>,
}

impl Schedule {
    pub fn parse(s: &BackupSchedule) -> Schedule {
        let mut out = Schedule::default();
        let mut one = |what: &str, expr: &Option<String>| {
            expr.as_deref().and_then(|e| match Cron::parse(e) {
                Ok(c) => Some(c),
                Err(err) => {
                    out.errors.push(format!("schedule.{what} {e:?}: {err}"));
                    None
                }
            })
        };
        let full = one("full", &s.full);
        let incremental = one("incremental", &s.incremental);
        Schedule {
            full,
            incremental,
            ..out
        }
    }
}

/// The backup to start now, and its slot: the latest slot of either schedule after
/// `since` (the last slot run, or when this instance became primary: a slot missed while
/// not primary is not caught up, and of several missed while a backup ran only the
/// latest runs); a full slot wins over an incremental one at the same minute.
pub fn due(s: &Schedule, since: Timestamp, now: Timestamp) -> Option<(BackupType, Timestamp)> {
    let full = s.full.as_ref().and_then(|c| c.latest_due(since, now));
    let incr = s
        .incremental
        .as_ref()
        .and_then(|c| c.latest_due(since, now));
    match (full, incr) {
        (Some(f), Some(i)) if i > f => Some((BackupType::Incr, i)),
        (Some(f), _) => Some((BackupType::Full, f)),
        (None, Some(i)) => Some((BackupType::Incr, i)),
        (None, None) => None,
    }
}

/// The line that says why a pgBackRest command failed: its first `ERROR` line (stderr,
/// then stdout), else the first line of stderr.
pub fn first_error_line(stderr: &str, stdout: &str) -> Option<String> {
    let error = |t: &str| {
        t.lines()
            .find(|l| l.contains("ERROR"))
            .map(|l| l.trim().to_string())
    };
    error(stderr).or_else(|| error(stdout)).or_else(|| {
        stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(String::from)
    })
}

/// An RFC 3339 time stamp, whole seconds.
fn stamp(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// Runs `pgbackrest --config=… --stanza=… <args>` as postgres; `Err` carries the line
/// that says why.
async fn pgbackrest(
    pg: Pg,
    config: PathBuf,
    stanza: String,
    args: Vec<String>,
    timeout: Duration,
) -> Result<String, String> {
    let mut c = pg.as_postgres(Path::new(PROGRAM));
    c.envs(pg.pgbackrest_env())
        .arg(format!("--config={}", config.display()));
    // `info` of the whole repository names no stanza.
    if !stanza.is_empty() {
        c.arg(format!("--stanza={stanza}"));
    }
    c.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(timeout, c.output())
        .await
        .map_err(|_| {
            format!(
                "pgbackrest {} did not finish in {timeout:?}",
                args.join(" ")
            )
        })?
        .context("running pgbackrest")
        .map_err(|e| format!("{e:#}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    tracing::warn!(command = %args.join(" "), status = %out.status, stderr = %stderr.trim(), "pgbackrest failed");
    Err(first_error_line(&stderr, &stdout)
        .unwrap_or_else(|| format!("pgbackrest {} exited {}", args.join(" "), out.status)))
}

struct Running {
    backup_type: BackupType,
    started: Timestamp,
    job: JoinHandle<Result<String, String>>,
}

/// pgBackRest's state in this manager (memory only: a new manager creates the stanza
/// again, idempotent, and reports no backup until it runs one).
pub struct Backrest {
    config: PathBuf,
    stanza: String,
    stanza_ready: bool,
    stanza_failures: u32,
    stanza_next: Option<Instant>,
    stanza_error: Option<String>,
    stanza_job: Option<JoinHandle<Result<String, String>>>,
    backup: Option<Running>,
    /// Slots up to this one are not run.
    since: Timestamp,
    pub last_backup: Option<LastBackup>,
}

/// What a look found, for the report.
#[derive(Default)]
pub struct Seen {
    pub archiver: Option<ArchiverStats>,
    /// A problem to report (stanza-create failing, a schedule refused).
    pub message: Option<String>,
}

impl Backrest {
    pub fn new(config_dir: &Path, cluster: &str) -> Backrest {
        Backrest {
            config: config_dir.join(CONFIG_FILE),
            stanza: cluster.to_string(),
            stanza_ready: false,
            stanza_failures: 0,
            stanza_next: None,
            stanza_error: None,
            stanza_job: None,
            backup: None,
            since: Timestamp::now(),
            last_backup: None,
        }
    }

    pub fn configured(&self) -> bool {
        self.config.is_file()
    }

    /// `pgbackrest info --output=json` of a stanza through another configuration file (the
    /// source repository of a restore).
    pub async fn info_of(pg: &Pg, config: &Path, stanza: &str) -> Result<String, String> {
        pgbackrest(
            pg.clone(),
            config.to_path_buf(),
            stanza.to_string(),
            vec!["--output=json".into(), "info".into()],
            STANZA_TIMEOUT,
        )
        .await
    }

    /// Before this cluster's database is made: the stanzas its own repository path
    /// already holds, any of them (`Ok(None)`: none, the repository is this cluster's to
    /// fill). `Err`: the repository could not be read (retried at the next look).
    pub async fn existing_stanzas(&self, pg: &Pg) -> Result<Option<String>, String> {
        let out = pgbackrest(
            pg.clone(),
            self.config.clone(),
            String::new(),
            vec!["--output=json".into(), "info".into()],
            STANZA_TIMEOUT,
        )
        .await?;
        crate::restore::stanzas_in_repository(&out).map_err(|e| format!("{e:#}"))
    }

    /// One look. `primary`: PostgreSQL runs here as a primary. Never waits for a
    /// pgBackRest command.
    pub async fn look(&mut self, pg: &Pg, primary: bool, schedule: &Schedule) -> Seen {
        self.reap_backup();
        if !primary || !self.configured() {
            // Slots missed while not primary are not caught up; a new primary checks the
            // stanza again (idempotent).
            self.since = Timestamp::now();
            self.stanza_ready = false;
            self.stanza_failures = 0;
            self.stanza_next = None;
            self.stanza_error = None;
            return Seen::default();
        }
        let archiver = match pg.query(ArchiverStats::QUERY).await {
            Ok(rows) => rows.first().and_then(|r| ArchiverStats::from_fields(r)),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading pg_stat_archiver");
                None
            }
        };
        self.stanza(pg);
        let mut problems: Vec<String> = schedule.errors.clone();
        if let Some(e) = &self.stanza_error {
            problems.push(format!("pgBackRest stanza-create failed: {e}"));
        }
        if self.stanza_ready {
            self.schedule(pg, schedule);
        }
        Seen {
            archiver,
            message: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }

    /// `stanza-create` until it succeeds, retried with a back-off.
    fn stanza(&mut self, pg: &Pg) {
        if self.stanza_ready {
            return;
        }
        if let Some(job) = &self.stanza_job {
            if !job.is_finished() {
                return;
            }
            let result = self.stanza_job.take().map(futures::FutureExt::now_or_never);
            match result.flatten() {
                Some(Ok(Ok(_))) => {
                    tracing::info!(stanza = %self.stanza, "pgBackRest stanza ready");
                    self.stanza_ready = true;
                    self.stanza_failures = 0;
                    self.stanza_error = None;
                    return;
                }
                Some(Ok(Err(e))) => self.stanza_error = Some(e),
                Some(Err(e)) => self.stanza_error = Some(format!("stanza-create task: {e}")),
                None => {}
            }
            self.stanza_failures += 1;
            self.stanza_next = Some(Instant::now() + stanza_retry(self.stanza_failures));
            tracing::warn!(failures = self.stanza_failures, error = ?self.stanza_error, "pgBackRest stanza-create failed");
            return;
        }
        if self.stanza_next.is_some_and(|t| Instant::now() < t) {
            return;
        }
        tracing::info!(stanza = %self.stanza, "pgBackRest stanza-create");
        self.stanza_job = Some(tokio::spawn(pgbackrest(
            pg.clone(),
            self.config.clone(),
            self.stanza.clone(),
            vec!["stanza-create".into()],
            STANZA_TIMEOUT,
        )));
    }

    /// Starts the backup whose slot came, unless one runs.
    fn schedule(&mut self, pg: &Pg, schedule: &Schedule) {
        if self.backup.is_some() {
            return;
        }
        let now = Timestamp::now();
        let Some((backup_type, slot)) = due(schedule, self.since, now) else {
            return;
        };
        self.since = slot;
        tracing::info!(r#type = backup_type.as_str(), %slot, "pgBackRest backup");
        let job = tokio::spawn(pgbackrest(
            pg.clone(),
            self.config.clone(),
            self.stanza.clone(),
            vec!["backup".into(), format!("--type={}", backup_type.as_str())],
            BACKUP_TIMEOUT,
        ));
        self.backup = Some(Running {
            backup_type,
            started: now,
            job,
        });
    }

    /// Records a backup that finished.
    fn reap_backup(&mut self) {
        if !self.backup.as_ref().is_some_and(|b| b.job.is_finished()) {
            return;
        }
        let Some(run) = self.backup.take() else {
            return;
        };
        let result = futures::FutureExt::now_or_never(run.job)
            .unwrap_or_else(|| Ok(Err("backup task lost".into())))
            .unwrap_or_else(|e| Err(format!("backup task: {e}")));
        let b = LastBackup {
            backup_type: run.backup_type,
            started: stamp(run.started),
            finished: stamp(Timestamp::now()),
            succeeded: result.is_ok(),
            message: result.err().unwrap_or_default(),
        };
        if b.succeeded {
            tracing::info!(r#type = b.backup_type.as_str(), started = %b.started, "pgBackRest backup completed");
        } else {
            tracing::warn!(r#type = b.backup_type.as_str(), error = %b.message, "pgBackRest backup failed");
        }
        self.last_backup = Some(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sched(full: Option<&str>, incr: Option<&str>) -> Schedule {
        Schedule::parse(&BackupSchedule {
            full: full.map(Into::into),
            incremental: incr.map(Into::into),
        })
    }

    #[test]
    fn a_full_slot_wins_over_an_incremental_one_at_the_same_minute() {
        let s = sched(Some("0 2 * * 0"), Some("0 * * * *"));
        // Sunday 2027-01-17 02:00: both fire.
        let since = t("2027-01-17T01:59:30Z");
        let now = t("2027-01-17T02:00:01Z");
        assert_eq!(
            due(&s, since, now),
            Some((BackupType::Full, t("2027-01-17T02:00:00Z")))
        );
        // An hour later only the incremental one.
        assert_eq!(
            due(&s, t("2027-01-17T02:00:00Z"), t("2027-01-17T03:00:05Z")),
            Some((BackupType::Incr, t("2027-01-17T03:00:00Z")))
        );
        // Nothing between slots.
        assert_eq!(
            due(&s, t("2027-01-17T03:00:00Z"), t("2027-01-17T03:30:00Z")),
            None
        );
    }

    #[test]
    fn missed_slots_are_not_caught_up_only_the_latest_runs() {
        let s = sched(Some("0 2 * * *"), Some("*/10 * * * *"));
        // A backup ran from 01:55 to 02:35: the full slot at 02:00 and the incremental ones
        // at 02:10 … 02:30 passed; the latest (02:30, incremental) runs, once.
        let since = t("2027-01-17T01:50:00Z");
        let now = t("2027-01-17T02:35:00Z");
        assert_eq!(
            due(&s, since, now),
            Some((BackupType::Incr, t("2027-01-17T02:30:00Z")))
        );
        assert_eq!(due(&s, t("2027-01-17T02:30:00Z"), now), None);
        // Only one schedule set.
        let full_only = sched(Some("@daily"), None);
        assert_eq!(
            due(
                &full_only,
                t("2027-01-16T23:00:00Z"),
                t("2027-01-17T00:00:02Z")
            ),
            Some((BackupType::Full, t("2027-01-17T00:00:00Z")))
        );
        assert_eq!(due(&sched(None, None), since, now), None);
    }

    #[test]
    fn every_minute_fires_each_minute() {
        let s = sched(None, Some("* * * * *"));
        let (ty, slot) = due(&s, t("2027-01-17T10:00:30Z"), t("2027-01-17T10:01:00Z")).unwrap();
        assert_eq!((ty, slot), (BackupType::Incr, t("2027-01-17T10:01:00Z")));
        assert_eq!(due(&s, slot, t("2027-01-17T10:01:59Z")), None);
    }

    #[test]
    fn a_bad_schedule_is_left_out_and_said() {
        let s = sched(Some("61 * * * *"), Some("@hourly"));
        assert!(s.full.is_none() && s.incremental.is_some());
        assert!(s.errors[0].contains("schedule.full"), "{:?}", s.errors);
    }

    #[test]
    fn stanza_retries_back_off_to_a_minute() {
        let d: Vec<u64> = (0..10).map(|n| stanza_retry(n).as_secs()).collect();
        assert_eq!(d, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(stanza_retry(u32::MAX), STANZA_RETRY_MAX);
    }

    #[test]
    fn the_error_line_of_pgbackrest() {
        let stderr = "WARN: something\nERROR: [103]: unable to find a valid repository:\n       repo1: [FileMissingError] unable to load info file\n";
        assert_eq!(
            first_error_line(stderr, "").as_deref(),
            Some("ERROR: [103]: unable to find a valid repository:")
        );
        let stdout = "2026-11-27 INFO: stanza-create command begin\nP00  ERROR: [056]: unable to find primary cluster\n";
        assert_eq!(
            first_error_line("", stdout).as_deref(),
            Some("P00  ERROR: [056]: unable to find primary cluster")
        );
        assert_eq!(first_error_line("\n oops \n", "").as_deref(), Some("oops"));
        assert_eq!(first_error_line("", ""), None);
    }
}
