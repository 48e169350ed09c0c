//! The loop: observe PostgreSQL and the cluster, decide, act once, report; again on every
//! tick. Carries the little state that is not on disk: when PostgreSQL was last started
//! (restart back-off), and the final LSN of a demotion.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use pgml_api::PgmlCluster;
use pgml_runtime::failpoint;

use pgml_api::instance::ArchiverStats;

use crate::backrest::{Backrest, Schedule};
use crate::decide::{Action, Local, StartAs, View, decide};
use crate::postgres::{Credentials, Pg, managed_conf};
use crate::report::{self, InstanceReport, Lsn, Role, STATUS_ANNOTATION, slot_name};
use crate::view;

/// A report is written when it changes; WAL positions and archiver counters that moved go
/// out at most this often; an unchanged report is not written again.
const REPORT_EVERY: Duration = Duration::from_secs(10);
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
    /// The ZFS dataset PGDATA must be on (`PGML_EXPECT_DATASET`); None: not checked
    /// (ext4 storage, or run by hand).
    pub expect_dataset: Option<String>,
}

/// Who this instance is, and where its secrets are.
pub struct Identity {
    pub cluster: String,
    pub instance: String,
    /// `host:port` reported to the other instances.
    pub address: String,
    pub replication_secret: PathBuf,
    pub superuser_secret: PathBuf,
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
            schedule: Schedule::default(),
            archiver: None,
            control_data_error: None,
            expect_dataset: None,
            pg,
            pods: Api::namespaced(client.clone(), namespace),
            clusters: Api::namespaced(client, namespace),
            cluster: who.cluster,
            me: who.instance,
            address: who.address,
            secret_dir: who.replication_secret,
            superuser_secret_dir: who.superuser_secret,
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
        Local {
            initialized: self.pg.initialized(),
            running,
            pid_file: self.pg.has_pid_file(),
            standby_signal: self.pg.has_standby_signal(),
            sql,
            demoted_lsn: self.demoted_lsn,
            pgdata_system_identifier: None,
            // Only what a start would use is checked (decide leaves a running server alone):
            // no read of the mount table on every look at a running one.
            storage_problem: self
                .expect_dataset
                .as_deref()
                .filter(|_| !running)
                .and_then(|d| crate::mounts::check_dataset(&self.pg.data, d)),
        }
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
        local.pgdata_system_identifier = self.pgdata_identifier(&local).await;
        self.seen(local.running);
        let fetched = view::fetch(&self.clusters, &self.pods, &self.cluster, &self.me).await;
        let (fenced, message) = match &fetched {
            Ok(v) => {
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
        self.report(&after, fenced, message).await;
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
            Action::Initdb => {
                tracing::info!("empty PGDATA and bootstrap primary: initdb");
                failpoint("instance.before-initdb");
                self.pg.initdb().await.map(|_| "initialized".to_string())
            }
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
                match self
                    .start(remove_stale_pid, remove_standby_signal, start_as)
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
            StartAs::Restored => {
                self.pg.write_standby_signal()?;
                let ours = format!("{}_", slot_name(&self.cluster));
                let gone = self.pg.remove_copied_slots(&ours)?;
                if !gone.is_empty() {
                    tracing::info!(slots = ?gone, "removed the replication slots of the restored copy's source");
                }
                None
            }
        };
        self.pg.write_conf(&managed_conf(
            &self.pg,
            &self.me,
            primary.as_deref(),
            creds.as_ref(),
        )?)?;
        failpoint("instance.before-start");
        tracing::info!(as_ = ?start_as, "starting PostgreSQL");
        self.last_start = Some(Instant::now());
        // pg_ctl waits a little (and sees a postmaster that exits at once); a server still
        // recovering after that is left to the next looks.
        let started = self.pg.start().await;
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
        let wanted: Vec<String> = view.slot_holders().iter().map(|i| slot_name(i)).collect();
        self.pg
            .sync_slots(&format!("{}_", slot_name(&self.cluster)), &wanted)
            .await?;
        Ok(String::new())
    }

    async fn report(&mut self, local: &Local, fenced: bool, message: String) {
        let mut r = report::build(
            local,
            &self.address,
            fenced,
            message,
            Timestamp::now().to_string(),
        );
        r.archiver = self.archiver.clone();
        r.last_backup = self.backrest.last_backup.clone();
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
        self.report(&local, fenced, "instance manager stopped".into())
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
