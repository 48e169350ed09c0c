//! This instance's PostgreSQL: its files in PGDATA, the programs that drive it (`initdb`,
//! `pg_ctl`, `pg_basebackup`, `pg_controldata`, `pgbackrest`), each an argument vector, run
//! as the `postgres` user (through `runuser` when this process is root, as in the test bed),
//! and its SQL through one kept connection of the tokio-postgres driver ([`db`]).

use std::ffi::CString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

mod conf;
mod db;
mod files;

pub use conf::{ControlData, Credentials, managed_conf, parse_control_data, split_address};

use crate::decide::Sql;
use crate::report::Lsn;

/// How this instance's PostgreSQL is reached and run.
#[derive(Clone, Debug)]
pub struct Pg {
    pub bin: PathBuf,
    pub data: PathBuf,
    /// Where WAL lives, outside PGDATA (a folder on the pool's `pgwal` dataset):
    /// `initdb --waldir`, and `PGDATA/pg_wal` a link to it ([`crate::wal`]). None: WAL
    /// stays in PGDATA.
    pub wal_dir: Option<PathBuf>,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub listen_addresses: String,
    pub superuser: String,
    pub local_auth: String,
    pub host_auth: String,
    /// The cluster's ConfigMap (`postgresql.conf`, `pg_hba.conf`), when mounted.
    pub config_dir: Option<PathBuf>,
    /// The `postgres` user's uid/gid when this process is root (programs are run through
    /// `runuser`, files written are given to it); None when already unprivileged.
    pub drop_to: Option<(u32, u32)>,
    /// Where runtime files that must not be in PGDATA go (so not in snapshots or backups):
    /// the replication passfile. In the Pod, the instance manager's own emptyDir.
    pub run_dir: PathBuf,
    /// The kept connection (shared by clones).
    pub db: db::Db,
}

/// The pg_ident.conf map of socket connections (the operator's pg_hba.conf uses the same).
const LOCAL_MAP: &str = "pgml-local";

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The `postgres` user's uid and gid when this process runs as root.
pub fn drop_to_postgres() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam reads a static buffer; it is copied out at once, before any other
    // call could reuse it (this runs once at start-up, before any thread calls it again).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, but there is no postgres user to run PostgreSQL as");
    }
    // SAFETY: pw is non-null and points at a valid passwd entry.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

impl Pg {
    fn file(&self, name: &str) -> PathBuf {
        self.data.join(name)
    }

    /// A PostgreSQL program, as `postgres`.
    pub fn command(&self, program: &str) -> Command {
        self.as_postgres(&self.bin.join(program))
    }

    /// Any program (found on PATH when not a path, e.g. `pgbackrest`), as `postgres`,
    /// with this process's environment (the Pod's: pgBackRest's variables reach it).
    pub fn as_postgres(&self, path: &std::path::Path) -> Command {
        let mut c = if self.drop_to.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        self.run_with(program, args, &[]).await
    }

    async fn run_with(
        &self,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let mut c = self.command(program);
        c.args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = tokio::time::timeout(COMMAND_TIMEOUT, c.output())
            .await
            .with_context(|| format!("{program} did not finish in {COMMAND_TIMEOUT:?}"))?
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn target(&self) -> db::Target<'_> {
        self.target_in("postgres")
    }

    fn target_in<'a>(&'a self, dbname: &'a str) -> db::Target<'a> {
        db::Target {
            socket_dir: &self.socket_dir,
            port: self.port,
            user: &self.superuser,
            dbname,
        }
    }

    /// Runs SQL (one statement or several, the simple protocol) on the kept connection;
    /// the rows as text fields, NULL as "".
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        self.db
            .run(&self.target(), async |c| c.simple_query(sql).await)
            .await
            .map(db::text_rows)
    }

    /// Runs `f` on the kept connection (typed statements with parameters).
    pub async fn with_client<T>(
        &self,
        f: impl AsyncFn(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> anyhow::Result<T> {
        self.db.run(&self.target(), f).await
    }

    /// Forgets the kept connection (the server is being stopped).
    pub async fn disconnect(&self) {
        self.db.close().await;
    }

    /// Role, WAL positions, timeline, receiver state and the system identifier, in one
    /// query.
    pub async fn sql_state(&self) -> anyhow::Result<Sql> {
        let row = self
            .with_client(async |c| {
                c.query_one(
                    "SELECT pg_is_in_recovery(), \
                     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
                     pg_last_wal_receive_lsn()::text, \
                     pg_last_wal_replay_lsn()::text, \
                     CASE WHEN pg_is_in_recovery() \
                       THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                                     (SELECT timeline_id FROM pg_control_checkpoint())) \
                       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
                     (SELECT status FROM pg_stat_wal_receiver), \
                     (SELECT system_identifier FROM pg_control_system())::text, \
                     CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END",
                    &[],
                )
                .await
            })
            .await?;
        let lsn = |i: usize| -> Result<Option<Lsn>, tokio_postgres::Error> {
            Ok(row.try_get::<_, Option<&str>>(i)?.and_then(Lsn::parse))
        };
        Ok(Sql {
            in_recovery: row.try_get(0)?,
            current_lsn: lsn(1)?,
            receive_lsn: lsn(2)?,
            replay_lsn: lsn(3)?,
            timeline: row
                .try_get::<_, Option<i32>>(4)?
                .and_then(|t| u32::try_from(t).ok()),
            streaming: row.try_get::<_, Option<&str>>(5)? == Some("streaming"),
            system_identifier: row
                .try_get::<_, Option<&str>>(6)?
                .filter(|s| pgml_api::instance::is_system_identifier(s))
                .map(str::to_string),
            replay_paused: row.try_get(7)?,
        })
    }

    /// Creates PGDATA (given to postgres when root) and a new cluster in it; with a WAL
    /// directory, its WAL there (`--waldir`, which must be empty: a folder of the pgwal
    /// dataset, as PGDATA is one of pgdata, never the mount point itself).
    pub async fn initdb(&self) -> anyhow::Result<()> {
        self.prepare_dir()?;
        let data = self.data.to_string_lossy().into_owned();
        let local = format!("--auth-local={}", self.local_auth);
        let host = format!("--auth-host={}", self.host_auth);
        let mut args = vec![
            "-D".to_string(),
            data,
            "-U".into(),
            self.superuser.clone(),
            local,
            host,
            "-E".into(),
            "UTF8".into(),
            "--no-instructions".into(),
        ];
        if let Some(wal) = &self.wal_dir {
            self.prepare(wal)?;
            if std::fs::read_dir(wal)?.next().is_some() {
                bail!(
                    "the WAL directory {} is not empty while PGDATA is: not running initdb over WAL of another database (an interrupted initdb leaves it so; remove what is there by hand once sure)",
                    wal.display()
                );
            }
            args.push(format!("--waldir={}", wal.display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run("initdb", &args).await?;
        let hba = format!(
            "\n# pgml-instance: replication and clients from other hosts\nhost replication all all {0}\nhost all all all {0}\n",
            self.host_auth
        );
        self.append(&self.file("pg_hba.conf"), &hba)?;
        if self.drop_to.is_some() && self.local_auth == "peer" {
            // This process connects on the socket as root: initdb's peer lines get the map
            // the operator's pg_hba.conf has (used when there is no ConfigMap).
            let path = self.file("pg_hba.conf");
            let text = std::fs::read_to_string(&path)?;
            self.write_file("pg_hba.conf", &conf::peer_mapped(&text, LOCAL_MAP))?;
            self.append(
                &self.file("pg_ident.conf"),
                &format!(
                    "{LOCAL_MAP} /^(.*)$ \\1\n{LOCAL_MAP} root {}\n",
                    self.superuser
                ),
            )?;
        }
        Ok(())
    }

    /// Restores a pgBackRest backup into the empty PGDATA: `pgbackrest <args>` (made by
    /// [`crate::restore::restore_args`] for the folder given) into a folder beside PGDATA,
    /// renamed onto it once complete, as a base backup is: a restore cut short never looks
    /// like a data directory.
    pub async fn restore_backup(
        &self,
        args: impl FnOnce(&std::path::Path) -> anyhow::Result<Vec<String>>,
    ) -> anyhow::Result<()> {
        self.prepare_dir()?;
        if self.is_mount_point() {
            bail!(
                "PGDATA {} is a mount point: a restore is made in a folder beside it and renamed, which a mount point cannot be",
                self.data.display()
            );
        }
        let dir = self.staging_dir().context("PGDATA has no parent folder")?;
        self.remove_staging()?;
        self.prepare(&dir)?;
        let args = args(&dir)?;
        let mut c = self.as_postgres(std::path::Path::new("pgbackrest"));
        c.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = c.output().await.context("running pgbackrest restore")?;
        if !out.status.success() {
            let _ = self.remove_staging();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            bail!(
                "pgbackrest restore: {}",
                crate::backrest::first_error_line(&stderr, &stdout)
                    .unwrap_or_else(|| format!("exited {}", out.status))
            );
        }
        std::fs::rename(&dir, &self.data)
            .with_context(|| format!("renaming {} to PGDATA", dir.display()))?;
        self.sync_parent()
    }

    /// Copies the primary at `from` (`host:port`) into an empty PGDATA.
    pub async fn basebackup(&self, from: &str, creds: Option<&Credentials>) -> anyhow::Result<()> {
        self.prepare_dir()?;
        // Into a folder beside PGDATA, renamed onto it once complete: a copy cut short (the
        // Pod killed) must not look like a data directory. PGDATA as a mount point cannot
        // be replaced: copied in place then.
        let staging = self.staging_dir().filter(|_| !self.is_mount_point());
        let target = match &staging {
            Some(dir) => {
                self.remove_staging()?;
                self.prepare(dir)?;
                dir.clone()
            }
            None => self.data.clone(),
        };
        let (host, port) = split_address(from)?;
        let dir = target.to_string_lossy().into_owned();
        let user = creds.map_or(self.superuser.as_str(), |c| c.username.as_str());
        let mut c = self.command("pg_basebackup");
        c.args([
            "-D", &dir, "-h", host, "-p", port, "-U", user, "-X", "stream", "-c", "fast", "-w",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(creds) = creds {
            c.env("PGPASSFILE", self.write_passfile(creds)?);
        }
        let out = c.output().await.context("running pg_basebackup")?;
        if !out.status.success() {
            let _ = self.remove_staging();
            bail!(
                "pg_basebackup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if let Some(dir) = staging {
            // PGDATA is an empty folder (prepare_dir): rename replaces it.
            std::fs::rename(&dir, &self.data)
                .with_context(|| format!("renaming {} to PGDATA", dir.display()))?;
            self.sync_parent()?;
        }
        Ok(())
    }

    /// Where pgBackRest finds this PostgreSQL, as pgBackRest's environment options
    /// (`pg1-path`, `pg1-port`, `pg1-socket-path`), which win over the file's: the server
    /// this process runs is the one backed up and archived, whatever the file says. Given
    /// to the `pgbackrest` commands this process runs and to the server (its
    /// `archive_command` inherits them).
    pub fn pgbackrest_env(&self) -> [(&'static str, String); 3] {
        [
            (
                "PGBACKREST_PG1_PATH",
                self.data.to_string_lossy().into_owned(),
            ),
            ("PGBACKREST_PG1_PORT", self.port.to_string()),
            (
                "PGBACKREST_PG1_SOCKET_PATH",
                self.socket_dir.to_string_lossy().into_owned(),
            ),
        ]
    }

    /// `pg_ctl start`, waiting at most 5 s (a standby replaying a long way is not ready
    /// by then: the caller checks whether the postmaster runs instead). The server's
    /// output goes to this process's own (the container log); its environment is this
    /// process's (the Pod's: pgBackRest's credentials variables) plus where pgBackRest
    /// finds it. With `log`, the output goes to that file instead (a restore's replay:
    /// read back when it stops by itself, and echoed by the caller).
    pub async fn start(&self, log: Option<&std::path::Path>) -> anyhow::Result<()> {
        let data = self.data.to_string_lossy().into_owned();
        let mut c = self.command("pg_ctl");
        c.envs(self.pgbackrest_env())
            .args(["-D", &data, "-w", "-t", "5", "start"]);
        if let Some(log) = log {
            c.arg("-l").arg(log);
        }
        c.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        let st = c.status().await.context("running pg_ctl start")?;
        if !st.success() {
            bail!("pg_ctl start exited {st}");
        }
        Ok(())
    }

    pub async fn stop(&self, mode: &str) -> anyhow::Result<()> {
        self.disconnect().await;
        let data = self.data.to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "-t", "90", "stop"],
        )
        .await
        .map(|_| ())
    }

    pub async fn promote(&self) -> anyhow::Result<()> {
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "-w", "-t", "60", "promote"])
            .await
            .map(|_| ())
    }

    pub async fn reload(&self) -> anyhow::Result<()> {
        self.query("SELECT pg_reload_conf()").await.map(|_| ())
    }

    /// Whether a standby named `application_name` streams from this server right now.
    pub async fn streams_to(&self, application_name: &str) -> anyhow::Result<bool> {
        let n: i64 = self
            .with_client(async |c| {
                c.query_one(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name = $1 AND state = 'streaming'",
                    &[&application_name],
                )
                .await?
                .try_get(0)
            })
            .await?;
        Ok(n > 0)
    }

    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        self.query("CHECKPOINT").await.map(|_| ())
    }

    /// `pg_controldata`, in the C locale: its field names are what is parsed, and a
    /// translated one would read as absent.
    pub async fn control_data(&self) -> anyhow::Result<ControlData> {
        let data = self.data.to_string_lossy().into_owned();
        let out = self
            .run_with("pg_controldata", &["-D", &data], &[("LC_ALL", "C")])
            .await?;
        Ok(parse_control_data(&out))
    }

    /// Keeps exactly the physical slots `wanted` among those named `<prefix>…` (this
    /// cluster's); others are left alone. A slot in use is never dropped.
    pub async fn sync_slots(&self, prefix: &str, wanted: &[String]) -> anyhow::Result<()> {
        let slots: Vec<(String, bool)> = self
            .with_client(async |c| {
                c.query(
                    "SELECT slot_name::text, active FROM pg_replication_slots \
                     WHERE slot_type = 'physical'",
                    &[],
                )
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
            })
            .await?;
        for name in wanted {
            if !valid_slot(name) {
                bail!("{name:?} is not a valid slot name");
            }
            if !slots.iter().any(|(n, _)| n == name) {
                self.with_client(async |c| {
                    c.execute(
                        "SELECT pg_create_physical_replication_slot($1, true)",
                        &[name],
                    )
                    .await
                })
                .await?;
                tracing::info!(slot = %name, "replication slot created");
            }
        }
        for (name, active) in &slots {
            if name.starts_with(prefix) && !wanted.contains(name) && !active {
                self.with_client(async |c| {
                    c.execute("SELECT pg_drop_replication_slot($1)", &[name])
                        .await
                })
                .await?;
                tracing::info!(slot = %name, "replication slot dropped");
            }
        }
        Ok(())
    }

    /// Sets the superuser's password (from the superuser Secret), for password access over
    /// TCP.
    pub async fn set_superuser_password(&self, creds: &Credentials) -> anyhow::Result<()> {
        if creds.username != self.superuser {
            bail!(
                "the superuser Secret names {:?}, PostgreSQL's superuser is {:?}",
                creds.username,
                self.superuser
            );
        }
        let sql = format!(
            "ALTER ROLE {} WITH PASSWORD {}",
            quote_ident(&self.superuser),
            quote_literal(&scram_verifier(&creds.password))
        );
        self.with_client(async |c| c.batch_execute(&sql).await)
            .await
    }

    /// The application database `db` owned by the Secret's user (the role made when
    /// missing, its password set from the Secret, the database made when missing), and the
    /// `pgml` extension in it when the image offers it. Returns pgml's installed version,
    /// None when the image has no `pgml`.
    pub async fn ensure_app(
        &self,
        owner: &Credentials,
        db: &str,
    ) -> anyhow::Result<Option<String>> {
        self.ensure_login_role(owner, "LOGIN").await?;
        let create_db = format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(db),
            quote_ident(&owner.username)
        );
        self.with_client(async |c| {
            let made = c
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
                .await?
                .is_some();
            if !made {
                // One statement, outside any transaction block, as CREATE DATABASE must be.
                c.batch_execute(&create_db).await?;
                tracing::info!(database = %db, owner = %owner.username, "application database created");
            }
            Ok(())
        })
        .await?;
        self.target_in(db)
            .once(async |c| {
                let offered = c
                    .query_opt(
                        "SELECT 1 FROM pg_available_extensions WHERE name = 'pgml'",
                        &[],
                    )
                    .await?;
                if offered.is_none() {
                    return Ok(None);
                }
                c.batch_execute("CREATE EXTENSION IF NOT EXISTS pgml")
                    .await?;
                c.query_opt(
                    "SELECT extversion FROM pg_extension WHERE extname = 'pgml'",
                    &[],
                )
                .await?
                .map(|r| r.try_get(0))
                .transpose()
            })
            .await
    }

    /// Creates the replication role (or sets its password), from the replication Secret.
    pub async fn ensure_replication_role(&self, creds: &Credentials) -> anyhow::Result<()> {
        self.ensure_login_role(creds, "REPLICATION LOGIN").await
    }

    /// The role `creds.username` with these `attributes` (made when missing), its password
    /// set from `creds` as a SCRAM verifier.
    async fn ensure_login_role(&self, creds: &Credentials, attributes: &str) -> anyhow::Result<()> {
        let role = quote_ident(&creds.username);
        let alter = format!(
            "ALTER ROLE {role} WITH {attributes} PASSWORD {}",
            quote_literal(&scram_verifier(&creds.password))
        );
        self.with_client(async |c| {
            let exists = c
                .query_opt(
                    "SELECT 1 FROM pg_roles WHERE rolname = $1",
                    &[&creds.username],
                )
                .await?
                .is_some();
            if !exists {
                c.batch_execute(&format!("CREATE ROLE {role} WITH {attributes}"))
                    .await?;
            }
            c.batch_execute(&alter).await
        })
        .await
    }
}

/// The SCRAM-SHA-256 verifier of `password` (random salt, 4096 iterations, as PostgreSQL
/// makes it): what `ALTER ROLE … PASSWORD` is sent, so the plaintext never reaches the
/// server, its statement log or `pg_stat_statements`.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// `name` as an SQL identifier: double-quoted, inner quotes doubled (any text is safe).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal: quotes doubled, and as an escape string (`E'…'`, its
/// backslashes doubled) when it has any, so `standard_conforming_strings` does not matter.
pub fn quote_literal(text: &str) -> String {
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

fn valid_slot(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_sent_as_scram_verifiers() {
        let v = scram_verifier("s3cr3t-_");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("s3cr3t"), "{v}");
        // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, nothing to escape.
        let (head, keys) = v.split_once('$').unwrap().1.split_once('$').unwrap();
        assert_eq!(head.split(':').count(), 2);
        assert_eq!(keys.split(':').count(), 2);
        assert!(!v.contains(['\'', '\\']));
        // A fresh salt every time: the same password does not give the same verifier.
        assert_ne!(v, scram_verifier("s3cr3t-_"));
    }

    #[test]
    fn identifiers_and_literals_are_quoted_whatever_they_hold() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }
}
