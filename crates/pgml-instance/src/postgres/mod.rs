//! This instance's PostgreSQL: its files in PGDATA, the programs that drive it (`initdb`,
//! `pg_ctl`, `pg_basebackup`, `pg_controldata`, `psql`), each an argument vector, run as the
//! `postgres` user (through `runuser` when this process is root, as in the test bed).

use std::ffi::CString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

mod conf;
mod files;

pub use conf::{ControlData, Credentials, managed_conf, parse_control_data, split_address};

use crate::decide::Sql;
use crate::report::Lsn;

/// How this instance's PostgreSQL is reached and run.
#[derive(Clone, Debug)]
pub struct Pg {
    pub bin: PathBuf,
    pub data: PathBuf,
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
}

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

    /// Runs SQL (`-c`) through psql on the Unix socket; rows of fields.
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let port = self.port.to_string();
        let mut c = self.command("psql");
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "\u{1f}",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .arg("-h")
        .arg(&self.socket_dir)
        .args([
            "-p",
            &port,
            "-U",
            &self.superuser,
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let out = tokio::time::timeout(Duration::from_secs(30), c.output())
            .await
            .context("psql did not answer in 30 s")?
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\u{1f}').map(str::to_string).collect())
            .collect())
    }

    /// Runs a script given on stdin (so that nothing in it shows in a process list).
    async fn script(&self, sql: &str) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let mut c = self.command("psql");
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &port, "-U", &self.superuser, "-d", "postgres"])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("running psql")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(sql.as_bytes()).await?;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .context("psql did not finish in 30 s")??;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Role, WAL positions, timeline, receiver state and the system identifier, in one
    /// query.
    pub async fn sql_state(&self) -> anyhow::Result<Sql> {
        let rows = self
            .query(
                "SELECT pg_is_in_recovery(), \
                 CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END, \
                 coalesce(pg_last_wal_receive_lsn()::text, ''), \
                 coalesce(pg_last_wal_replay_lsn()::text, ''), \
                 CASE WHEN pg_is_in_recovery() \
                   THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver)::text, \
                                 (SELECT timeline_id FROM pg_control_checkpoint())::text) \
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END, \
                 coalesce((SELECT status FROM pg_stat_wal_receiver), ''), \
                 (SELECT system_identifier FROM pg_control_system())::text, \
                 CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused()::text ELSE 'false' END",
            )
            .await?;
        let row = rows.first().context("no row")?;
        let f = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
        Ok(Sql {
            in_recovery: f(0) == "t",
            current_lsn: Lsn::parse(f(1)),
            receive_lsn: Lsn::parse(f(2)),
            replay_lsn: Lsn::parse(f(3)),
            timeline: f(4).parse().ok(),
            streaming: f(5) == "streaming",
            system_identifier: Some(f(6))
                .filter(|s| pgml_api::instance::is_system_identifier(s))
                .map(str::to_string),
            replay_paused: f(7) == "t" || f(7) == "true",
        })
    }

    /// Creates PGDATA (given to postgres when root) and a new cluster in it.
    pub async fn initdb(&self) -> anyhow::Result<()> {
        self.prepare_dir()?;
        let data = self.data.to_string_lossy().into_owned();
        let local = format!("--auth-local={}", self.local_auth);
        let host = format!("--auth-host={}", self.host_auth);
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                &self.superuser,
                &local,
                &host,
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )
        .await?;
        let hba = format!(
            "\n# pgml-instance: replication and clients from other hosts\nhost replication all all {0}\nhost all all all {0}\n",
            self.host_auth
        );
        self.append(&self.file("pg_hba.conf"), &hba)
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
        if !application_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("{application_name:?} is not an instance name");
        }
        let rows = self
            .query(&format!(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{application_name}' AND state = 'streaming'"
            ))
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .is_some_and(|n| n != "0"))
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
        let rows = self
            .query(
                "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'",
            )
            .await?;
        for name in wanted {
            if !valid_slot(name) {
                bail!("{name:?} is not a valid slot name");
            }
            if !rows.iter().any(|r| r.first() == Some(name)) {
                self.query(&format!(
                    "SELECT pg_create_physical_replication_slot('{name}', true)"
                ))
                .await?;
                tracing::info!(slot = %name, "replication slot created");
            }
        }
        for r in &rows {
            let (Some(name), Some(active)) = (r.first(), r.get(1)) else {
                continue;
            };
            if name.starts_with(prefix)
                && !wanted.contains(name)
                && active == "f"
                && valid_slot(name)
            {
                self.query(&format!("SELECT pg_drop_replication_slot('{name}')"))
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
        self.script(&format!(
            "ALTER ROLE \"{}\" WITH PASSWORD '{}';\n",
            self.superuser,
            scram_verifier(&creds.password)
        ))
        .await
    }

    /// Creates the replication role (or sets its password), from the replication Secret.
    pub async fn ensure_replication_role(&self, creds: &Credentials) -> anyhow::Result<()> {
        let u = &creds.username;
        self.script(&format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{u}') THEN CREATE ROLE \"{u}\" WITH REPLICATION LOGIN; END IF; END$$;\nALTER ROLE \"{u}\" WITH REPLICATION LOGIN PASSWORD '{}';\n",
            scram_verifier(&creds.password)
        ))
        .await
    }
}

/// The SCRAM-SHA-256 verifier of `password` (random salt, 4096 iterations, as PostgreSQL
/// makes it): what `ALTER ROLE … PASSWORD` is sent, so the plaintext never reaches the
/// server, its statement log or `pg_stat_statements`.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
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
        // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, none quoted in SQL.
        let (head, keys) = v.split_once('$').unwrap().1.split_once('$').unwrap();
        assert_eq!(head.split(':').count(), 2);
        assert_eq!(keys.split(':').count(), 2);
        assert!(!v.contains(['\'', '\\']));
        // A fresh salt every time: the same password does not give the same verifier.
        assert_ne!(v, scram_verifier("s3cr3t-_"));
    }
}
