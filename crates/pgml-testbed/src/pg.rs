//! PostgreSQL 15 on a simulated node's pool, run the way an instance manager would run it:
//! `initdb`, `pg_ctl` and the data directory inside the node's mount namespace (where the
//! pool's datasets are mounted), as the `postgres` user. Clients (`psql`, `pgbench`,
//! `pg_amcheck`) connect from the host through the Unix socket in `/tmp`, which the nodes
//! share with the host. Everything is an argument vector.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::nodes::{node_command, node_exec, node_exec_ok};
use crate::sandbox::NodeInfo;

/// Where Debian's postgresql-15 puts its programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The folder of every instance's Unix socket (`.s.PGSQL.<port>`).
pub const SOCKET_DIR: &str = "/tmp";

/// A PostgreSQL program by name; fails loudly when postgresql-15 is not installed.
pub fn pg_bin(name: &str) -> PathBuf {
    let p = Path::new(PG_BIN).join(name);
    assert!(
        p.exists(),
        "{} is missing: PostgreSQL 15 is not installed (scripts/deps.sh installs the Debian package postgresql-15)",
        p.display()
    );
    p
}

/// A TCP port nobody listens on right now (for a second instance beside the first), and
/// never one this process handed out before: the kernel may give the port of a socket just
/// closed to the next `bind(0)`, so two calls in a row (PostgreSQL's port and its
/// manager's status port) could otherwise name the same port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free local port");
        if given.insert(port) {
            return port;
        }
    }
}

/// One PostgreSQL instance whose data directory is inside a node.
pub struct Postgres {
    node: NodeInfo,
    /// PGDATA, as the node sees it.
    pub data_dir: String,
    pub port: u16,
    /// The server log (on the host, in /tmp, writable by `postgres`).
    pub log: PathBuf,
    /// The superuser's password: clients then connect over TCP to 127.0.0.1 with it (the
    /// operator's pg_hba asks for scram-sha-256 there and peer on the socket), instead of
    /// the socket with trust.
    password: Option<String>,
    /// Whether dropping this handle stops the server (false for a server someone else
    /// runs, e.g. an instance manager).
    owned: bool,
}

impl Postgres {
    pub fn new(node: &NodeInfo, data_dir: &str, port: u16) -> Postgres {
        Postgres {
            node: node.clone(),
            data_dir: data_dir.to_string(),
            port,
            log: PathBuf::from(format!("/tmp/pgml-test-pg-{port}.log")),
            password: None,
            owned: true,
        }
    }

    /// A client's handle on a server run by someone else (an instance manager): clients
    /// connect over TCP to 127.0.0.1 as `postgres` with `password`, and dropping the handle
    /// leaves the server alone.
    pub fn attach(node: &NodeInfo, data_dir: &str, port: u16, password: &str) -> Postgres {
        let mut pg = Postgres::new(node, data_dir, port);
        pg.password = Some(password.to_string());
        pg.owned = false;
        pg
    }

    /// The PID in `postmaster.pid`, when a postmaster of THIS data directory runs (see
    /// [`Postgres::running`]).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pidfile = format!("{}/postmaster.pid", self.data_dir);
        let text = node_exec_ok(&self.node, &["cat", &pidfile]).ok()?;
        let pid = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())?;
        node_exec_ok(&self.node, &["readlink", &format!("/proc/{pid}/cwd")])
            .is_ok_and(|cwd| cwd.trim() == self.data_dir.trim_end_matches('/'))
            .then_some(pid)
    }

    /// Runs a program as `postgres` inside the node; its stdout.
    fn as_postgres(&self, argv: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["runuser", "-u", "postgres", "--"];
        full.extend_from_slice(argv);
        node_exec_ok(&self.node, &full)
    }

    /// Creates PGDATA (owned by `postgres`) and a new cluster in it, with trust
    /// authentication on the socket and on 127.0.0.1 (replication included), and settings
    /// suited to a short test: WAL kept for a replica that starts from a snapshot.
    pub fn initdb(&self) -> anyhow::Result<()> {
        let initdb = pg_bin("initdb");
        node_exec_ok(&self.node, &["mkdir", "-p", &self.data_dir])?;
        node_exec_ok(&self.node, &["chown", "postgres:postgres", &self.data_dir])?;
        node_exec_ok(&self.node, &["chmod", "0700", &self.data_dir])?;
        self.as_postgres(&[
            initdb.to_str().unwrap(),
            "-D",
            &self.data_dir,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ])
        .context("initdb")?;
        self.append_conf(
            "postgresql.conf",
            &[
                "listen_addresses = '127.0.0.1'",
                "wal_keep_size = '1GB'",
                "max_wal_senders = 10",
                "hot_standby = on",
            ],
        )
    }

    /// Appends lines to a file of PGDATA (written inside the node, as `postgres`).
    pub fn append_conf(&self, file: &str, lines: &[&str]) -> anyhow::Result<()> {
        let path = format!("{}/{file}", self.data_dir);
        let mut text = lines.join("\n");
        text.push('\n');
        let mut child = node_command(
            &self.node,
            &["runuser", "-u", "postgres", "--", "tee", "-a", &path],
        )?
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("tee")?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "appending to {path} on {}: {}",
                self.node.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections (as a primary or a hot
    /// standby).
    pub fn start(&self) -> anyhow::Result<()> {
        self.pg_ctl_start(|argv| self.as_postgres(argv))
    }

    /// `pg_ctl start` (waiting up to 120 s) run by `run`, with a fresh server log.
    fn pg_ctl_start(
        &self,
        run: impl FnOnce(&[&str]) -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        // The log is opened by pg_ctl as postgres: make it writable whatever was there.
        let _ = std::fs::remove_file(&self.log);
        let pg_ctl = pg_bin("pg_ctl");
        let opts = format!("-p {} -k {SOCKET_DIR}", self.port);
        run(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            &self.data_dir,
            "-l",
            self.log.to_str().unwrap(),
            "-w",
            "-t",
            "120",
            "-o",
            &opts,
            "start",
        ])
        .with_context(|| format!("pg_ctl start; server log: {}", self.log_tail()))?;
        Ok(())
    }

    /// Like [`Postgres::start`], with the server started through `wrapper` (a command
    /// prefix run inside the node, e.g. `nsenter -t <pid> -n --` to put it in a network
    /// namespace of the test's, see [`crate::aws::NodeImds`]) and these variables added to
    /// its environment (its `archive_command` inherits both, as it would a Pod's).
    pub fn start_with_env(&self, wrapper: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.pg_ctl_start(|argv| self.as_postgres_env(wrapper, argv, env))
    }

    /// Runs a program as `postgres` inside the node, through `wrapper` (a command prefix,
    /// may be empty) and with extra environment variables (`runuser` keeps them); its
    /// output, whatever its exit status.
    pub fn run_as_postgres_env(
        &self,
        wrapper: &[&str],
        argv: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<std::process::Output> {
        let mut full: Vec<&str> = wrapper.to_vec();
        full.extend_from_slice(&["runuser", "-u", "postgres", "--"]);
        full.extend_from_slice(argv);
        node_command(&self.node, &full)?
            .envs(env.iter().copied())
            .output()
            .with_context(|| format!("running {argv:?} on node {}", self.node.name))
    }

    fn as_postgres_env(
        &self,
        wrapper: &[&str],
        argv: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let out = self.run_as_postgres_env(wrapper, argv, env)?;
        if !out.status.success() {
            bail!(
                "{argv:?} on node {} exited {}: {}{}",
                self.node.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (`fast` or `immediate`).
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let pg_ctl = pg_bin("pg_ctl");
        self.as_postgres(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            &self.data_dir,
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "stop",
        ])
        .map(|_| ())
    }

    /// Whether a postmaster of THIS data directory runs: the PID in `postmaster.pid` is
    /// alive and its working directory is PGDATA. `pg_ctl status` is not enough: a copy
    /// restored from a snapshot carries its source's lock file, whose PID (every simulated
    /// node shares the host's PID namespace) is the live source postmaster, and stopping
    /// "it" would stop the source.
    pub fn running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(pg_bin(program));
        let host = match &self.password {
            Some(pw) => {
                c.env("PGPASSWORD", pw);
                "127.0.0.1"
            }
            None => SOCKET_DIR,
        };
        c.args(["-h", host, "-p", &self.port.to_string(), "-U", "postgres"])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null());
        c
    }

    /// Runs one SQL statement with psql and returns its unaligned, tuples-only output.
    pub fn sql(&self, query: &str) -> anyhow::Result<String> {
        let out = self
            .client("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
            ])
            .args(["-c", query])
            .output()
            .context("psql")?;
        if !out.status.success() {
            bail!(
                "psql -p {} -c {query:?}: {}",
                self.port,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `SELECT pg_is_in_recovery()`.
    pub fn in_recovery(&self) -> anyhow::Result<bool> {
        Ok(self.sql("SELECT pg_is_in_recovery()")? == "t")
    }

    /// Removes `postmaster.pid` from a PGDATA restored from a snapshot of a running server,
    /// as an instance manager must before the first start: the copy carries the source's
    /// lock file, and here (every simulated node shares the host's PID namespace) its PID
    /// is the live source postmaster, so PostgreSQL would refuse to start.
    pub fn remove_stale_pid(&self) -> anyhow::Result<()> {
        node_exec_ok(
            &self.node,
            &["rm", "-f", &format!("{}/postmaster.pid", self.data_dir)],
        )
        .map(|_| ())
    }

    /// Whether `standby.signal` is in PGDATA right now.
    pub fn has_standby_signal(&self) -> bool {
        node_exec(
            &self.node,
            &["test", "-e", &format!("{}/standby.signal", self.data_dir)],
        )
        .is_ok_and(|o| o.status.success())
    }

    /// `pgbench -i` at this scale.
    pub fn pgbench_init(&self, scale: u32) -> anyhow::Result<()> {
        let out = self
            .client("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
            .output()
            .context("pgbench -i")?;
        if !out.status.success() {
            bail!("pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Starts pgbench in the background with extra arguments (e.g. `-T 30 -c 2 -P 1`);
    /// stdout and stderr are captured for [`Child::wait_with_output`].
    pub fn pgbench(&self, args: &[&str]) -> anyhow::Result<Child> {
        self.client("pgbench")
            .args(args)
            .arg("postgres")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("pgbench")
    }

    /// `pg_amcheck` over every relation of the `postgres` database (heap and indexes, with
    /// every heap tuple checked against its indexes; no `--parent-check`, whose ShareLock a
    /// hot standby cannot take); returns its report on failure.
    pub fn amcheck(&self) -> anyhow::Result<()> {
        let out = self
            .client("pg_amcheck")
            .args(["--heapallindexed", "postgres"])
            .output()
            .context("pg_amcheck")?;
        if !out.status.success() {
            bail!(
                "pg_amcheck on port {} found problems (exit {}): {}{}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Polls a SQL query until `ok(output)` or the timeout; the last output on failure.
    pub fn wait_sql(
        &self,
        query: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.sql(query) {
                Ok(out) if ok(&out) => return Ok(out),
                Ok(out) => last = out,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "{query:?} on port {} never satisfied the check within {timeout:?}; last: {last}",
            self.port
        )
    }
}

impl Drop for Postgres {
    /// A failing test leaves no server behind (it would keep the pool busy).
    fn drop(&mut self) {
        if self.owned && self.running() {
            let _ = self.stop("immediate");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3000 {
            let p = super::free_port();
            assert!(seen.insert(p), "port {p} handed out twice");
        }
    }
}
