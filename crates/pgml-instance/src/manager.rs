//! The loop: observe PostgreSQL and the cluster, decide, act once, report; again on every
//! tick. Carries the little state that is not on disk: when PostgreSQL was last started
//! (restart back-off), and the final LSN of a demotion.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use pgml_api::PgmlCluster;
use pgml_runtime::failpoint;

use pgml_api::instance::ArchiverStats;

use crate::backrest::{Backrest, Schedule};
use crate::decide::{Action, Local, StartAs, View, WalState, decide};
use crate::health::{self, Look};
use crate::metrics::{self, Metrics};
use crate::postgres::{Credentials, Pg, managed_conf};
use crate::report::{self, InstanceReport, Lsn, Role, STATUS_ANNOTATION, slot_name};
use crate::view;

/// A report is written when it changes; WAL positions and archiver counters that moved go
/// out at most this often; an unchanged report is not written again.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A failed attempt at the application database is tried again after this long.
const APP_RETRY: Duration = Duration::from_secs(30);
/// A server that ran this long before it exited starts again without delay.
const STABLE_RUN: Duration = Duration::from_secs(60);

pub struct Manager {
    pub pg: Pg,
    pub pods: Api<Pod>,
    pub clusters: Api<PgmlCluster>,
    pub cluster: String,
    pub me: String,
    pub address: String,
    pub secret_dir: PathBuf,
    pub superuser_secret_dir: PathBuf,
    pub app_secret_dir: PathBuf,
    /// The application database as last made (None: not yet, on this primary), and when
    /// a failed attempt is tried again.
    app: Option<pgml_api::instance::AppReport>,
    app_retry: Option<Instant>,
    demoted_lsn: Option<Lsn>,
    last_start: Option<Instant>,
    crashes: u32,
    was_running: bool,
    /// This process is stopping PostgreSQL (fenced, demotion): its exit is no crash.
    stopping: bool,
    replication_role_ready: bool,
    last_report: Option<(InstanceReport, Instant)>,
    backrest: Backrest,
    /// The backup schedule, from the last full view.
    schedule: Schedule,
    /// `pg_stat_archiver` of the last look, on a primary with pgBackRest.
    archiver: Option<ArchiverStats>,
    /// The last `pg_controldata` error, so that a lasting one is logged once.
    control_data_error: Option<String>,
    /// The ConfigMap's folder (`PGML_CONFIG_DIR`): `pgbackrest.conf`, and the source
    /// repository's `pgbackrest-bootstrap.conf` of a restore.
    config_dir: PathBuf,
    /// Why the restore of the cluster's database failed here; kept (nothing more is
    /// tried) until the process restarts, which tries once more and fails the same way.
    restore_failed: Option<String>,
    /// `pgbackrest restore` attempts that failed in a row, and when the last began (the
    /// next waits as a restart does).
    restore_attempts: u32,
    last_restore: Option<Instant>,
    /// This cluster's own repository was seen to hold no stanza (checked once per process,
    /// before the database is made).
    archive_checked: bool,
    /// The server's log of a restore (started with `-l`), and how much of it was echoed
    /// to this process's output.
    recovery_log: Option<(PathBuf, u64)>,
    /// The ZFS dataset PGDATA must be on (`PGML_EXPECT_DATASET`); None: not checked
    /// (ext4 storage, or run by hand).
    pub expect_dataset: Option<String>,
    /// The ZFS dataset the WAL directory must be on (`PGML_EXPECT_WAL_DATASET`); None:
    /// not checked.
    pub expect_wal_dataset: Option<String>,
    /// The last look, as the probes judge it (shared with the HTTP endpoint).
    pub probes: Arc<Mutex<Option<Look>>>,
    pub metrics: Metrics,
    /// When the catalogue figures were last read.
    catalogue_at: Option<Instant>,
    /// The cluster's configuration as the running server loaded it, and what of it waits
    /// for a restart.
    settings: crate::settings::Follow,
}

/// Who this instance is, and where its secrets are.
pub struct Identity {
    pub cluster: String,
    pub instance: String,
    /// `host:port` reported to the other instances.
    pub address: String,
    pub replication_secret: PathBuf,
    pub superuser_secret: PathBuf,
    pub app_secret: PathBuf,
}

/// Delay before the n-th consecutive restart of a server that keeps exiting.
pub fn backoff(crashes: u32) -> Duration {
    match crashes {
        0 => Duration::ZERO,
        n => Duration::from_secs((1u64 << (n - 1).min(5)).min(30)),
    }
}

impl Manager {
    pub fn new(pg: Pg, client: kube::Client, namespace: &str, who: Identity) -> Manager {
        let config_dir = pg
            .config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/pgml/config"));
        Manager {
            backrest: Backrest::new(&config_dir, &who.cluster),
            config_dir,
            restore_failed: None,
            restore_attempts: 0,
            last_restore: None,
            archive_checked: false,
            recovery_log: None,
            schedule: Schedule::default(),
            archiver: None,
            control_data_error: None,
            expect_dataset: None,
            expect_wal_dataset: None,
            probes: Arc::default(),
            metrics: Metrics::default(),
            catalogue_at: None,
            settings: Default::default(),
            pg,
            pods: Api::namespaced(client.clone(), namespace),
            clusters: Api::namespaced(client, namespace),
            cluster: who.cluster,
            me: who.instance,
            address: who.address,
            secret_dir: who.replication_secret,
            superuser_secret_dir: who.superuser_secret,
            app_secret_dir: who.app_secret,
            app: None,
            app_retry: None,
            demoted_lsn: None,
            last_start: None,
            crashes: 0,
            was_running: false,
            stopping: false,
            replication_role_ready: false,
            last_report: None,
        }
    }

    /// At start-up: a data directory that was shut down cleanly as a primary may have been
    /// demoted by an earlier run of this process that died before it reported; say so again
    /// (with the final LSN) so that a switchover can complete.
    pub async fn recover_demotion(&mut self) {
        if !self.pg.initialized() || self.pg.postmaster_running() {
            return;
        }
        match self.pg.control_data().await {
            Ok(cd) if cd.state == "shut down" => self.demoted_lsn = cd.checkpoint,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pg_controldata"),
        }
    }

    async fn observe(&self) -> Local {
        let running = self.pg.postmaster_running();
        let sql = if running {
            self.pg.sql_state().await.ok()
        } else {
            None
        };
        let initialized = self.pg.initialized();
        Local {
            initialized,
            running,
            pid_file: self.pg.has_pid_file(),
            standby_signal: self.pg.has_standby_signal(),
            recovery_signal: self.pg.has_recovery_signal(),
            restore_failed: self.restore_failed.clone(),
            sql,
            demoted_lsn: self.demoted_lsn,
            pgdata_system_identifier: None,
            // Only what a start would use is checked (decide leaves a running server alone):
            // no read of the mount table on every look at a running one.
            storage_problem: self.storage_problem(running),
            // Only before a start, like the storage: pg_wal is PostgreSQL's while it runs.
            wal: if initialized && !running {
                match crate::wal::check(&self.pg.data, self.pg.wal_dir.as_deref()) {
                    crate::wal::Next::Done => WalState::Ready,
                    crate::wal::Next::Step(s) => WalState::Misplaced(format!("{s:?}")),
                    crate::wal::Next::Problem(why) => WalState::Problem(why),
                }
            } else {
                WalState::Ready
            },
        }
    }

    /// Why PGDATA or the WAL directory is not on its dataset, when nothing runs.
    fn storage_problem(&self, running: bool) -> Option<String> {
        if running {
            return None;
        }
        let pgdata = self
            .expect_dataset
            .as_deref()
            .and_then(|d| crate::mounts::check_dataset(&self.pg.data, d));
        pgdata.or_else(|| match (&self.pg.wal_dir, &self.expect_wal_dataset) {
            (Some(w), Some(d)) => crate::mounts::check_folder("the WAL directory", w, d),
            _ => None,
        })
    }

    /// PGDATA's own system identifier, when it is initialized and nothing runs on it (what
    /// a start would bring up), for the comparison with the cluster's; None otherwise or
    /// when `pg_controldata` fails (said once per new error).
    async fn pgdata_identifier(&mut self, local: &Local) -> Option<String> {
        if !local.initialized || local.running {
            return None;
        }
        match self.pg.control_data().await {
            Ok(cd) => {
                self.control_data_error = None;
                cd.system_identifier
            }
            Err(e) => {
                let e = format!("{e:#}");
                if self.control_data_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "pg_controldata: PGDATA's system identifier is unknown");
                    self.control_data_error = Some(e);
                }
                None
            }
        }
    }

    /// One look: observe, decide, act, report.
    pub async fn tick(&mut self) {
        let mut local = self.observe().await;
        let promoted = local.sql.as_ref().is_some_and(|s| !s.in_recovery);
        // Stopped by itself: the replay's last words say whether the target can be
        // reached at all.
        self.read_recovery_log(!local.running, promoted);
        local.restore_failed = self.restore_failed.clone();
        local.pgdata_system_identifier = self.pgdata_identifier(&local).await;
        self.seen(local.running);
        let fetched = view::fetch(&self.clusters, &self.pods, &self.cluster, &self.me).await;
        let (fenced, message) = match &fetched {
            Ok(v) => {
                {
                    let mut probes = self.probes.lock().expect("probes lock");
                    if probes.is_none() {
                        // The first view read: the start-up probe passes from here on,
                        // even when this look's action (a restore, a base backup) takes
                        // hours.
                        *probes = Some(Self::look_of(
                            &local,
                            Some(v),
                            v.fenced,
                            v.restores().is_some(),
                        ));
                    }
                }
                let action = decide(v, &local);
                tracing::debug!(?action, "decided");
                (v.fenced, self.act(action, v).await)
            }
            // No decision on a partial view: what runs keeps running, nothing starts.
            Err(e) => (false, format!("{e:#}")),
        };
        let after = self.observe().await;
        self.seen(after.running);
        self.stopping = false;
        if after.sql.is_some() {
            if let Err(e) = self.settings.look(&self.pg, &self.config_dir).await {
                tracing::warn!(error = %format!("{e:#}"), "following the configuration");
            }
        } else if !after.running {
            self.settings.stopped();
        }
        let restoring = fetched.as_ref().is_ok_and(|v| v.restores().is_some());
        if let Ok(v) = &fetched {
            self.schedule = Schedule::parse(&v.backup_schedule);
        }
        // pgBackRest on a running primary: never waits for a command (they run apart).
        let primary = after.running && after.sql.as_ref().is_some_and(|s| !s.in_recovery);
        let seen = self.backrest.look(&self.pg, primary, &self.schedule).await;
        let message = match seen.message {
            Some(m) if message.is_empty() => m,
            Some(m) => format!("{message}; {m}"),
            None => message,
        };
        self.archiver = seen.archiver;
        self.report(&after, fenced, message, restoring).await;
        self.judged(&after, fetched.as_ref().ok(), fenced, restoring)
            .await;
    }

    /// What the probes see of a look.
    fn look_of(local: &Local, view: Option<&View>, fenced: bool, restoring: bool) -> Look {
        let sql = local.sql.as_ref();
        let primary_lsn = view.and_then(View::primary_lsn);
        Look {
            at: Instant::now(),
            answered: sql.is_some(),
            primary: sql.is_some_and(|s| !s.in_recovery),
            streaming: sql.is_some_and(|s| s.streaming),
            lag_bytes: sql
                .filter(|s| s.in_recovery)
                .and_then(|s| health::replica_lag(primary_lsn, s.receive_lsn, s.replay_lsn)),
            restoring,
            fenced,
            maximum_lag_bytes: view.and_then(|v| v.maximum_lag_bytes),
        }
    }

    /// What the probes and the metrics see of this look.
    async fn judged(&mut self, after: &Local, view: Option<&View>, fenced: bool, restoring: bool) {
        let sql = after.sql.as_ref();
        let look = Self::look_of(after, view, fenced, restoring);
        let (now, lag) = (look.at, look.lag_bytes);
        let ready = health::judge(pgml_runtime::http::Probe::Ready, Some(&look), now).is_ok();
        *self.probes.lock().expect("probes lock") = Some(look);
        self.metrics.look(sql, lag, ready);
        if sql.is_some() && metrics::due(self.catalogue_at, now) {
            self.catalogue_at = Some(now);
            match metrics::read(&self.pg).await {
                Ok(c) => {
                    self.metrics.catalogue(&c);
                    self.metrics.scrape_failed(false);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reading PostgreSQL's statistics");
                    self.metrics.scrape_failed(true);
                }
            }
        }
    }

    /// Echoes what the server wrote to its replay log since the last look. `ended`: the
    /// server stopped, so the whole log is read for why (and forgotten). `promoted`: the
    /// replay is over, the file is emptied (the server appends to it for its life: a
    /// long-lived one must not fill the run folder); during the replay it is kept whole,
    /// so that no line of its end is lost.
    fn read_recovery_log(&mut self, ended: bool, promoted: bool) {
        let Some((path, offset)) = self.recovery_log.as_mut() else {
            return;
        };
        let text = std::fs::read(&*path).unwrap_or_default();
        let start = (*offset as usize).min(text.len());
        for line in String::from_utf8_lossy(&text[start..]).lines() {
            tracing::info!(target: "postgres", "{line}");
        }
        *offset = text.len() as u64;
        if ended {
            if let Some(why) = crate::restore::target_failure(&String::from_utf8_lossy(&text)) {
                tracing::error!(%why, "the restore failed");
                self.restore_failed = Some(why);
            }
            self.recovery_log = None;
        } else if promoted && *offset > 0 {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&*path)
                .and_then(|f| f.set_len(0));
            *offset = 0;
        }
    }

    /// Before this cluster's database is made (initdb, a restore): its own pgBackRest
    /// repository, when it has one, must hold no stanza yet. `Some`: why not to go on
    /// (a refusal is also kept in [`Self::restore_failed`]).
    async fn own_archive_refusal(&mut self) -> Option<String> {
        if self.archive_checked || !self.backrest.configured() {
            return None;
        }
        match self.backrest.existing_stanzas(&self.pg).await {
            Ok(None) => {
                self.archive_checked = true;
                None
            }
            Ok(Some(held)) => {
                let why = format!(
                    "refusing to make this cluster's database: its own pgBackRest repository (backups.pgbackrest) is not empty: {held}. A new cluster never archives into another's WAL; give it a path of its own (backups.pgbackrest.s3.path)"
                );
                tracing::error!(%why, "destination archive not empty");
                self.restore_failed = Some(why.clone());
                Some(why)
            }
            // Unreadable (S3 down, a bucket not there yet): the database is made anyway, as
            // a failing repository blocks nothing else; pgBackRest itself then refuses to
            // archive into a stanza of another database (its system identifier is checked).
            Err(e) => {
                tracing::warn!(error = %e, "this cluster's pgBackRest repository could not be read before making the database; going on");
                self.archive_checked = true;
                None
            }
        }
    }

    /// Counts a postmaster that went away without being stopped by this process (for the
    /// restart back-off), and forgets the count once one has run long enough.
    fn seen(&mut self, running: bool) {
        if self.was_running && !running && !self.stopping {
            let short = self.last_start.is_none_or(|t| t.elapsed() < STABLE_RUN);
            self.crashes = if short { self.crashes + 1 } else { 1 };
            tracing::warn!(crashes = self.crashes, "PostgreSQL exited by itself");
        }
        if running && self.last_start.is_some_and(|t| t.elapsed() >= STABLE_RUN) {
            self.crashes = 0;
        }
        self.was_running = running;
    }

    /// Carries out one action; what to say about it in the report.
    async fn act(&mut self, action: Action, view: &View) -> String {
        let result = match action {
            Action::Wait(why) => return why,
            Action::StopImmediate => {
                tracing::warn!("fenced: stopping PostgreSQL immediately");
                self.stopping = true;
                self.pg
                    .stop("immediate")
                    .await
                    .map(|_| "fenced: stopped".to_string())
            }
            Action::Initdb | Action::RestoreBackup
                if let Some(why) = self.own_archive_refusal().await =>
            {
                return why;
            }
            Action::RestoreBackup => {
                let Some(r) = view.restore.clone() else {
                    return "no bootstrap.pgbackrest".into();
                };
                tracing::info!(stanza = %r.stanza, set = ?r.backup_set, "empty PGDATA: pgbackrest restore of bootstrap.pgbackrest");
                failpoint("instance.before-restore");
                let dir = self.config_dir.clone();
                let wait = backoff(self.restore_attempts);
                if let Some(t) = self.last_restore
                    && t.elapsed() < wait
                {
                    return format!(
                        "pgbackrest restore failed {} times in a row; next attempt {wait:?} after the last",
                        self.restore_attempts
                    );
                }
                self.last_restore = Some(Instant::now());
                let mut r = r;
                if r.backup_set.is_none() {
                    let config = dir.join(crate::restore::SOURCE_CONFIG_FILE);
                    let info = match Backrest::info_of(&self.pg, &config, &r.stanza).await {
                        Ok(i) => i,
                        Err(e) => {
                            self.restore_attempts += 1;
                            return format!("reading the backups of stanza {}: {e}", r.stanza);
                        }
                    };
                    match crate::restore::pick_set(&info, &r.stanza, r.target.as_ref()) {
                        Ok(set) => r.backup_set = set,
                        Err(e) => {
                            let why = format!("{e:#}; nothing was restored");
                            self.restore_failed = Some(why.clone());
                            return why;
                        }
                    }
                }
                let done = self
                    .pg
                    .restore_backup(|into| crate::restore::restore_args(&dir, &r, into))
                    .await;
                match &done {
                    Ok(()) => self.restore_attempts = 0,
                    Err(e) => {
                        self.restore_attempts += 1;
                        self.restore_failed = crate::restore::no_base(&format!("{e:#}"));
                    }
                }
                done.map(|_| format!("restored a backup of stanza {}", r.stanza))
            }
            Action::Initdb => {
                tracing::info!("empty PGDATA and bootstrap primary: initdb");
                failpoint("instance.before-initdb");
                self.pg.initdb().await.map(|_| "initialized".to_string())
            }
            Action::PlaceWal => self.place_wal().await,
            Action::Basebackup { from } => {
                tracing::info!(%from, "empty PGDATA: pg_basebackup");
                let creds = self.credentials();
                self.pg
                    .basebackup(&from, creds.as_ref())
                    .await
                    .map(|_| format!("copied from {from}"))
            }
            Action::Start {
                remove_stale_pid,
                remove_standby_signal,
                start_as,
            } => {
                let primary = matches!(start_as, StartAs::Primary);
                if matches!(start_as, StartAs::Restored | StartAs::Recovery)
                    && let Some(why) = self.own_archive_refusal().await
                {
                    return why;
                }
                match self
                    .start(remove_stale_pid, remove_standby_signal, start_as, view)
                    .await
                {
                    // The Secrets' roles and passwords at once, as after a promotion.
                    Ok(note) if primary => self.keep_primary(view).await.map(|_| note),
                    other => other,
                }
            }
            Action::Promote => {
                tracing::info!("promoting");
                failpoint("instance.before-promote");
                match self.pg.promote().await {
                    // The slots at once: the old primary follows as soon as this reports,
                    // and a missing slot costs its WAL receiver a 5 s retry.
                    Ok(()) => self
                        .keep_primary(view)
                        .await
                        .map(|_| "promoted".to_string()),
                    Err(e) => Err(e),
                }
            }
            Action::Demote => self.demote(view).await,
            Action::Follow { primary, note } => self
                .follow(primary.as_deref())
                .await
                .map(|_| note.unwrap_or_default()),
            Action::Primary => self.keep_primary(view).await,
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "action failed");
            format!("{e:#}")
        })
    }

    /// `PGDATA/pg_wal` made the link to the WAL directory, its files moved there
    /// ([`crate::wal::converge`]; crash-safe: the next run carries on).
    async fn place_wal(&mut self) -> anyhow::Result<String> {
        let wal_dir = self
            .pg
            .wal_dir
            .clone()
            .context("no WAL directory (PGML_WAL_DIR) to place pg_wal on")?;
        let (pgdata, owner) = (self.pg.data.clone(), self.pg.drop_to);
        tracing::info!(wal_dir = %wal_dir.display(), "making PGDATA/pg_wal a link to the WAL directory (its files moved there)");
        let steps = tokio::task::spawn_blocking(move || {
            let place = crate::wal::Place {
                pgdata: &pgdata,
                wal_dir: &wal_dir,
                owner,
                exchange: true,
            };
            crate::wal::converge(&place, usize::MAX)
        })
        .await
        .context("the pg_wal move stopped")??;
        let wal_dir = self
            .pg
            .wal_dir
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        tracing::info!(steps, wal_dir = %wal_dir.display(), "PGDATA/pg_wal links to the WAL directory");
        Ok(format!("PGDATA/pg_wal now links to {}", wal_dir.display()))
    }

    /// The replication credentials, with their passfile (which `primary_conninfo` names)
    /// written out of PGDATA.
    fn credentials(&self) -> Option<Credentials> {
        let creds = Credentials::read(&self.secret_dir).unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "replication secret ignored");
            None
        })?;
        if let Err(e) = self.pg.write_passfile(&creds) {
            tracing::warn!(error = %format!("{e:#}"), "the replication passfile could not be written");
        }
        Some(creds)
    }

    async fn start(
        &mut self,
        remove_stale_pid: bool,
        remove_standby_signal: bool,
        start_as: StartAs,
        view: &View,
    ) -> anyhow::Result<String> {
        let wait = backoff(self.crashes);
        if let Some(t) = self.last_start
            && t.elapsed() < wait
        {
            // No countdown in the message: the report would change at every look.
            return Ok(format!(
                "PostgreSQL exited {} times in a row; next start {wait:?} after the last",
                self.crashes
            ));
        }
        if remove_stale_pid && self.pg.remove_pid_file()? {
            tracing::info!("removed a stale postmaster.pid (no postmaster of this PGDATA runs)");
        }
        let creds = self.credentials();
        let primary = match &start_as {
            StartAs::Primary => {
                if remove_standby_signal && self.pg.remove_standby_signal()? {
                    tracing::warn!(
                        "removed a stray standby.signal: this instance is meant to be primary"
                    );
                }
                None
            }
            StartAs::Replica { primary } => {
                self.pg.write_standby_signal()?;
                primary.clone()
            }
            StartAs::Restored | StartAs::Recovery => {
                if start_as == StartAs::Restored {
                    self.pg.write_standby_signal()?;
                } else {
                    self.pg.write_recovery_signal()?;
                }
                let ours = format!("{}_", slot_name(&self.cluster));
                let gone = self.pg.remove_copied_slots(&ours)?;
                if !gone.is_empty() {
                    tracing::info!(slots = ?gone, "removed the replication slots of the restored copy's source");
                }
                None
            }
        };
        let mut conf = managed_conf(&self.pg, &self.me, primary.as_deref(), creds.as_ref())?;
        let log = if start_as == StartAs::Recovery {
            let r = view.restore.as_ref().context("no bootstrap.pgbackrest")?;
            conf += &crate::restore::recovery_conf(&self.config_dir, r)?;
            // A fresh log per start: what is read back is this run's.
            Some(self.pg.fresh_run_file("recovery.log")?)
        } else {
            None
        };
        self.pg.write_conf(&conf)?;
        failpoint("instance.before-start");
        tracing::info!(as_ = ?start_as, "starting PostgreSQL");
        self.last_start = Some(Instant::now());
        if let Some(log) = &log {
            self.recovery_log = Some((log.clone(), 0));
        }
        // pg_ctl waits a little (and sees a postmaster that exits at once); a server still
        // recovering after that is left to the next looks.
        let started = self.pg.start(log.as_deref()).await;
        if !self.pg.postmaster_running() {
            self.crashes += 1;
            started?;
            anyhow::bail!("PostgreSQL did not start (its log is this process's output)");
        }
        self.demoted_lsn = None;
        Ok(match start_as {
            StartAs::Primary => "started as primary".into(),
            StartAs::Replica { primary: Some(p) } => format!("started as a replica of {p}"),
            StartAs::Replica { primary: None } => "started as a replica (no primary yet)".into(),
            StartAs::Restored => {
                "started the restored database as a standby, to promote once it answers".into()
            }
            StartAs::Recovery => match view.restore.as_ref().and_then(|r| r.target.as_ref()) {
                Some(t) => format!(
                    "started the restored database replaying the archive's WAL to {}",
                    t.describe()
                ),
                None => {
                    "started the restored database replaying the archive's WAL to its end".into()
                }
            },
        })
    }

    async fn demote(&mut self, view: &View) -> anyhow::Result<String> {
        tracing::info!(new_primary = ?view.target_primary, "demoting: checkpoint, fast stop");
        // The target's report may be a moment old: ask the server who streams from it.
        if let Some(target) = view.target_primary.as_deref()
            && !self.pg.streams_to(target).await?
        {
            return Ok(format!(
                "{target} is to be primary: waiting for it to stream from here before demoting"
            ));
        }
        self.pg.checkpoint().await?;
        self.stopping = true;
        failpoint("instance.before-demote-stop");
        self.pg.stop("fast").await?;
        failpoint("instance.after-demote-stop");
        let cd = self.pg.control_data().await?;
        self.demoted_lsn = cd.checkpoint;
        self.pg.write_standby_signal()?;
        let creds = self.credentials();
        self.pg.write_conf(&managed_conf(
            &self.pg,
            &self.me,
            view.primary_address().as_deref(),
            creds.as_ref(),
        )?)?;
        tracing::info!(final_lsn = ?cd.checkpoint.map(|l| l.to_string()), "demoted");
        Ok(format!(
            "demoted at {}",
            cd.checkpoint.map(|l| l.to_string()).unwrap_or_default()
        ))
    }

    /// A running replica streams from the primary that reports; a change is a reload. With
    /// no primary reporting, the last one stays configured (its WAL may still be arriving).
    async fn follow(&mut self, primary: Option<&str>) -> anyhow::Result<()> {
        if let Some(p) = primary {
            let creds = self.credentials();
            let conf = managed_conf(&self.pg, &self.me, Some(p), creds.as_ref())?;
            if self.pg.write_conf(&conf)? {
                tracing::info!(primary = %p, "following a new primary: reloading");
                self.pg.reload().await?;
            }
        }
        // Slots copied from a primary (a snapshot, a demotion) would hold WAL here forever.
        self.pg
            .sync_slots(&format!("{}_", slot_name(&self.cluster)), &[])
            .await
    }

    async fn keep_primary(&mut self, view: &View) -> anyhow::Result<String> {
        if !self.replication_role_ready {
            if let Some(creds) = self.credentials() {
                self.pg.ensure_replication_role(&creds).await?;
            }
            match Credentials::read(&self.superuser_secret_dir) {
                Ok(Some(su)) => self.pg.set_superuser_password(&su).await?,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "superuser secret ignored"),
            }
            self.replication_role_ready = true;
        }
        self.ensure_app(view).await;
        let wanted: Vec<String> = view.slot_holders().iter().map(|i| slot_name(i)).collect();
        self.pg
            .sync_slots(&format!("{}_", slot_name(&self.cluster)), &wanted)
            .await?;
        Ok(String::new())
    }

    /// The application database, its owner and `pgml` (once per primary; a failure is
    /// reported and tried again after [`APP_RETRY`]).
    async fn ensure_app(&mut self, view: &View) {
        let done = self.app.as_ref().is_some_and(|a| a.error.is_none());
        if done || self.app_retry.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let database = view.app_database.clone();
        let outcome = match Credentials::read(&self.app_secret_dir) {
            Ok(Some(owner)) => self.pg.ensure_app(&owner, &database).await,
            Ok(None) => Err(anyhow::anyhow!(
                "the application Secret is not mounted at {}",
                self.app_secret_dir.display()
            )),
            Err(e) => Err(e),
        };
        let report = match outcome {
            Ok(pgml) => {
                tracing::info!(%database, pgml = pgml.as_deref().unwrap_or("not offered by the image"), "application database ready");
                pgml_api::instance::AppReport {
                    database,
                    pgml,
                    error: None,
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(%database, %error, "application database");
                self.app_retry = Some(Instant::now() + APP_RETRY);
                pgml_api::instance::AppReport {
                    database,
                    pgml: None,
                    error: Some(error),
                }
            }
        };
        self.app = Some(report);
    }

    async fn report(&mut self, local: &Local, fenced: bool, message: String, restoring: bool) {
        let mut r = report::build(
            local,
            &self.address,
            fenced,
            message,
            Timestamp::now().to_string(),
        );
        r.archiver = self.archiver.clone();
        r.app = self.app.clone().filter(|_| r.role == Role::Primary);
        r.last_backup = self.backrest.last_backup.clone();
        r.pending_restart = self.settings.pending_restart.clone();
        if restoring || self.restore_failed.is_some() {
            r.restore = Some(pgml_api::instance::RestoreReport {
                target_reached: local
                    .sql
                    .as_ref()
                    .is_some_and(|s| s.in_recovery && s.replay_paused),
                failed: self.restore_failed.clone(),
            });
        }
        // A primary whose roles and passwords are not yet those of the Secrets would refuse
        // the clients and replicas that use them: not ready until they are.
        r.ready &= r.role != Role::Primary || self.replication_role_ready;
        let last = self.last_report.as_ref().map(|(l, at)| (l, at.elapsed()));
        if !r.needs_write(last, REPORT_EVERY) {
            return;
        }
        let json = match serde_json::to_string(&r) {
            Ok(j) => j,
            Err(e) => return tracing::error!(error = %e, "report not serializable"),
        };
        let patch = serde_json::json!({"metadata": {"annotations": {STATUS_ANNOTATION: json}}});
        match self
            .pods
            .patch(&self.me, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if self
                    .last_report
                    .as_ref()
                    .is_none_or(|(l, _)| !l.same_as(&r))
                {
                    tracing::info!(role = ?r.role, running = r.running, ready = r.ready, demoted = r.demoted, fenced = r.fenced, message = %r.message, "status");
                }
                self.last_report = Some((r, Instant::now()));
            }
            Err(e) => tracing::warn!(error = %e, "writing the instance status"),
        }
    }

    /// SIGTERM: stop PostgreSQL fast, say so, and let the process exit.
    pub async fn shutdown(&mut self) {
        if self.pg.postmaster_running() {
            tracing::info!("stopping PostgreSQL (fast)");
            if let Err(e) = self.pg.stop("fast").await {
                tracing::error!(error = %format!("{e:#}"), "pg_ctl stop -m fast");
            }
        }
        let local = self.observe().await;
        let fenced = self.last_report.as_ref().is_some_and(|(r, _)| r.fenced);
        self.last_report = None;
        self.archiver = None;
        self.report(&local, fenced, "instance manager stopped".into(), false)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let s: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
