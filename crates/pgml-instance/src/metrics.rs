//! PostgreSQL's figures a DBA graphs and alerts on, served on the instance manager's
//! `/metrics` (docs/metrics.md, "Instance metrics"). Read through the manager's own
//! connection at most every [`EVERY`]; the role, timeline, positions and lag come from
//! every look (the same figures the readiness probe judges). Series of things that went
//! away (a replica, a slot, a database) go away with them.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::decide::Sql;
use crate::postgres::Pg;

/// The catalogue queries run at most this often.
pub const EVERY: Duration = Duration::from_secs(10);

type G = Gauge<f64, AtomicU64>;
type Labels = Vec<(String, String)>;
type F = Family<Labels, G>;

#[derive(Default, Clone)]
pub struct Metrics {
    up: G,
    ready: G,
    in_recovery: G,
    timeline: G,
    wal_lsn: G,
    lag_bytes: G,
    lag_seconds: G,
    replication_lag_bytes: F,
    replication_lag_seconds: F,
    slot_retained: F,
    archived: G,
    archive_failed: G,
    last_archived_age: G,
    last_failed_age: G,
    backends: F,
    commits: F,
    rollbacks: F,
    deadlocks: F,
    temp_bytes: F,
    size: F,
    pgml: F,
    scrape_errors: G,
}

/// One row of `pg_stat_replication` as the primary sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Standby {
    pub name: String,
    pub state: String,
    pub sync_state: String,
    pub lag_bytes: f64,
    pub lag_seconds: f64,
}

/// One database of `pg_stat_database`.
#[derive(Clone, Debug, PartialEq)]
pub struct Database {
    pub name: String,
    pub backends: f64,
    pub commits: f64,
    pub rollbacks: f64,
    pub deadlocks: f64,
    pub temp_bytes: f64,
    pub size_bytes: f64,
}

/// What the catalogue queries read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalogue {
    pub standbys: Vec<Standby>,
    /// Slot name, active, WAL bytes it holds back.
    pub slots: Vec<(String, bool, f64)>,
    /// archived count, failed count, seconds since the last archived, since the last
    /// failure.
    pub archiver: Option<(f64, f64, Option<f64>, Option<f64>)>,
    pub databases: Vec<Database>,
    /// A replica: seconds since the last replayed transaction's commit, 0 when it has
    /// replayed all it received.
    pub replay_delay: Option<f64>,
    /// `pgml`: the version the image offers, the version installed in `postgres`.
    pub pgml: Option<(String, Option<String>)>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    pub fn new() -> (Metrics, Arc<Registry>) {
        let m = Metrics::default();
        let mut r = Registry::with_prefix("pgml_postgres");
        let g = |r: &mut Registry, name: &str, help: &str, m: &G| {
            r.register(name, help, m.clone());
        };
        let f = |r: &mut Registry, name: &str, help: &str, m: &F| {
            r.register(name, help, m.clone());
        };
        g(
            &mut r,
            "up",
            "1 when PostgreSQL answered the instance manager's last look.",
            &m.up,
        );
        g(
            &mut r,
            "ready",
            "1 when the instance passes its readiness probe.",
            &m.ready,
        );
        g(
            &mut r,
            "in_recovery",
            "1 on a replica (or a restore), 0 on the primary.",
            &m.in_recovery,
        );
        g(
            &mut r,
            "timeline",
            "The timeline PostgreSQL writes (primary) or replays (replica).",
            &m.timeline,
        );
        g(
            &mut r,
            "wal_lsn_bytes",
            "The WAL position: written (primary) or replayed (replica); its rate is the WAL generation rate.",
            &m.wal_lsn,
        );
        g(
            &mut r,
            "replica_lag_bytes",
            "A replica: WAL received or known to the primary and not replayed yet.",
            &m.lag_bytes,
        );
        g(
            &mut r,
            "replica_lag_seconds",
            "A replica: seconds since the last replayed commit, 0 when all received WAL is replayed.",
            &m.lag_seconds,
        );
        f(
            &mut r,
            "replication_lag_bytes",
            "The primary: WAL each standby has not replayed (pg_stat_replication).",
            &m.replication_lag_bytes,
        );
        f(
            &mut r,
            "replication_lag_seconds",
            "The primary: each standby's replay_lag (pg_stat_replication).",
            &m.replication_lag_seconds,
        );
        f(
            &mut r,
            "slot_retained_wal_bytes",
            "WAL each replication slot holds back.",
            &m.slot_retained,
        );
        g(
            &mut r,
            "archiver_archived_count",
            "WAL files archived (pg_stat_archiver).",
            &m.archived,
        );
        g(
            &mut r,
            "archiver_failed_count",
            "Failed attempts to archive WAL (pg_stat_archiver).",
            &m.archive_failed,
        );
        g(
            &mut r,
            "archiver_last_archived_age_seconds",
            "Seconds since the last WAL file was archived.",
            &m.last_archived_age,
        );
        g(
            &mut r,
            "archiver_last_failed_age_seconds",
            "Seconds since the last failure to archive.",
            &m.last_failed_age,
        );
        f(
            &mut r,
            "database_backends",
            "Connections to each database.",
            &m.backends,
        );
        f(
            &mut r,
            "database_xact_commit",
            "Commits in each database since the statistics were reset.",
            &m.commits,
        );
        f(
            &mut r,
            "database_xact_rollback",
            "Rollbacks in each database.",
            &m.rollbacks,
        );
        f(
            &mut r,
            "database_deadlocks",
            "Deadlocks in each database.",
            &m.deadlocks,
        );
        f(
            &mut r,
            "database_temp_bytes",
            "Bytes written to temporary files by each database's queries.",
            &m.temp_bytes,
        );
        f(
            &mut r,
            "database_size_bytes",
            "Each database's size on disk.",
            &m.size,
        );
        f(
            &mut r,
            "pgml_info",
            "The pgml extension: the version the image offers and the one installed (1).",
            &m.pgml,
        );
        g(
            &mut r,
            "scrape_errors",
            "1 when the last catalogue read failed.",
            &m.scrape_errors,
        );
        (m, Arc::new(r))
    }

    /// The figures of every look.
    pub fn look(&self, sql: Option<&Sql>, lag: Option<u64>, ready: bool) {
        self.up.set(f64::from(u8::from(sql.is_some())));
        self.ready.set(f64::from(u8::from(ready)));
        let Some(s) = sql else {
            return;
        };
        self.in_recovery.set(f64::from(u8::from(s.in_recovery)));
        if let Some(t) = s.timeline {
            self.timeline.set(f64::from(t));
        }
        let pos = if s.in_recovery {
            s.replay_lsn
        } else {
            s.current_lsn
        };
        if let Some(p) = pos {
            self.wal_lsn.set(p.0 as f64);
        }
        self.lag_bytes.set(if s.in_recovery {
            lag.unwrap_or(0) as f64
        } else {
            0.0
        });
    }

    /// The figures of the catalogue, replacing the last ones.
    pub fn catalogue(&self, c: &Catalogue) {
        self.replication_lag_bytes.clear();
        self.replication_lag_seconds.clear();
        for s in &c.standbys {
            let l = labels(&[
                ("application_name", &s.name),
                ("state", &s.state),
                ("sync_state", &s.sync_state),
            ]);
            self.replication_lag_bytes
                .get_or_create(&l)
                .set(s.lag_bytes);
            self.replication_lag_seconds
                .get_or_create(&l)
                .set(s.lag_seconds);
        }
        self.slot_retained.clear();
        for (name, active, bytes) in &c.slots {
            let l = labels(&[
                ("slot_name", name),
                ("active", if *active { "true" } else { "false" }),
            ]);
            self.slot_retained.get_or_create(&l).set(*bytes);
        }
        if let Some((archived, failed, last_ok, last_failed)) = c.archiver {
            self.archived.set(archived);
            self.archive_failed.set(failed);
            // Never: -1 (an alert on age must not fire on a fresh cluster; see the docs).
            self.last_archived_age.set(last_ok.unwrap_or(-1.0));
            self.last_failed_age.set(last_failed.unwrap_or(-1.0));
        }
        for f in [
            &self.backends,
            &self.commits,
            &self.rollbacks,
            &self.deadlocks,
            &self.temp_bytes,
            &self.size,
        ] {
            f.clear();
        }
        for d in &c.databases {
            let l = labels(&[("datname", &d.name)]);
            self.backends.get_or_create(&l).set(d.backends);
            self.commits.get_or_create(&l).set(d.commits);
            self.rollbacks.get_or_create(&l).set(d.rollbacks);
            self.deadlocks.get_or_create(&l).set(d.deadlocks);
            self.temp_bytes.get_or_create(&l).set(d.temp_bytes);
            self.size.get_or_create(&l).set(d.size_bytes);
        }
        self.lag_seconds.set(c.replay_delay.unwrap_or(0.0));
        self.pgml.clear();
        if let Some((available, installed)) = &c.pgml {
            let l = labels(&[
                ("available_version", available),
                ("installed_version", installed.as_deref().unwrap_or("")),
            ]);
            self.pgml.get_or_create(&l).set(1.0);
        }
    }

    pub fn scrape_failed(&self, failed: bool) {
        self.scrape_errors.set(f64::from(u8::from(failed)));
    }
}

/// Reads the catalogue figures through the kept connection, in one round trip per view.
pub async fn read(pg: &Pg) -> anyhow::Result<Catalogue> {
    pg.with_client(async |c| {
        let standbys = c
            .query(
                "SELECT application_name, coalesce(state, ''), coalesce(sync_state, ''), \
                 coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8, \
                 coalesce(extract(epoch FROM replay_lag), 0)::float8 \
                 FROM pg_stat_replication WHERE NOT pg_is_in_recovery()",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Standby {
                    name: r.try_get(0)?,
                    state: r.try_get(1)?,
                    sync_state: r.try_get(2)?,
                    lag_bytes: r.try_get(3)?,
                    lag_seconds: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let slots = c
            .query(
                "SELECT slot_name::text, active, coalesce(pg_wal_lsn_diff(\
                   CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                        ELSE pg_current_wal_lsn() END, restart_lsn), 0)::float8 \
                 FROM pg_replication_slots",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let a = c
            .query_one(
                "SELECT archived_count::float8, failed_count::float8, \
                 extract(epoch FROM now() - last_archived_time)::float8, \
                 extract(epoch FROM now() - last_failed_time)::float8 FROM pg_stat_archiver",
                &[],
            )
            .await?;
        let archiver = Some((a.try_get(0)?, a.try_get(1)?, a.try_get(2)?, a.try_get(3)?));
        let databases = c
            .query(
                "SELECT d.datname::text, s.numbackends::float8, s.xact_commit::float8, \
                 s.xact_rollback::float8, s.deadlocks::float8, s.temp_bytes::float8, \
                 pg_database_size(d.oid)::float8 \
                 FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid \
                 WHERE d.datallowconn AND NOT d.datistemplate",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Database {
                    name: r.try_get(0)?,
                    backends: r.try_get(1)?,
                    commits: r.try_get(2)?,
                    rollbacks: r.try_get(3)?,
                    deadlocks: r.try_get(4)?,
                    temp_bytes: r.try_get(5)?,
                    size_bytes: r.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let replay_delay = c
            .query_one(
                "SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL \
                   WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                   ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) \
                 END::float8",
                &[],
            )
            .await?
            .try_get(0)?;
        let pgml = c
            .query_opt(
                "SELECT default_version, installed_version FROM pg_available_extensions \
                 WHERE name = 'pgml'",
                &[],
            )
            .await?
            .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
        Ok(Catalogue {
            standbys,
            slots,
            archiver,
            databases,
            replay_delay,
            pgml,
        })
    })
    .await
}

/// When the catalogue is next read.
pub fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Lsn;

    fn text(r: &Registry) -> String {
        pgml_runtime::http::render(r, false).0
    }

    #[test]
    fn series_of_what_went_away_go_away() {
        let (m, r) = Metrics::new();
        let mut c = Catalogue {
            standbys: vec![Standby {
                name: "main-2".into(),
                state: "streaming".into(),
                sync_state: "async".into(),
                lag_bytes: 4096.0,
                lag_seconds: 0.5,
            }],
            slots: vec![("main_2".into(), true, 8192.0)],
            archiver: Some((3.0, 0.0, Some(12.0), None)),
            databases: vec![],
            replay_delay: None,
            pgml: Some(("2.10.0".into(), None)),
        };
        m.catalogue(&c);
        let t = text(&r);
        assert!(
            t.contains(r#"pgml_postgres_replication_lag_bytes{application_name="main-2",state="streaming",sync_state="async"} 4096.0"#),
            "{t}"
        );
        assert!(
            t.contains(
                r#"pgml_postgres_slot_retained_wal_bytes{slot_name="main_2",active="true"} 8192.0"#
            ),
            "{t}"
        );
        assert!(
            t.contains("pgml_postgres_archiver_last_failed_age_seconds -1.0"),
            "{t}"
        );
        assert!(
            t.contains(
                r#"pgml_postgres_pgml_info{available_version="2.10.0",installed_version=""} 1.0"#
            ),
            "{t}"
        );
        c.standbys.clear();
        c.slots.clear();
        m.catalogue(&c);
        let t = text(&r);
        assert!(!t.contains("main-2") && !t.contains("main_2"), "{t}");
    }

    #[test]
    fn a_look_sets_role_position_and_lag() {
        let (m, r) = Metrics::new();
        let replica = Sql {
            in_recovery: true,
            current_lsn: None,
            receive_lsn: Some(Lsn(5000)),
            replay_lsn: Some(Lsn(3000)),
            timeline: Some(2),
            streaming: true,
            system_identifier: None,
            replay_paused: false,
        };
        m.look(Some(&replica), Some(2000), false);
        let t = text(&r);
        for line in [
            "pgml_postgres_up 1.0",
            "pgml_postgres_ready 0.0",
            "pgml_postgres_in_recovery 1.0",
            "pgml_postgres_timeline 2.0",
            "pgml_postgres_wal_lsn_bytes 3000.0",
            "pgml_postgres_replica_lag_bytes 2000.0",
        ] {
            assert!(t.contains(&format!("{line}\n")), "{line}: {t}");
        }
        m.look(None, None, false);
        assert!(text(&r).contains("pgml_postgres_up 0.0\n"));
    }
}
