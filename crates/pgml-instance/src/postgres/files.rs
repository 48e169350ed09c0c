//! PGDATA's files: what is there (a cluster, a pid file and whether its postmaster runs,
//! standby.signal), and writing them safely (temporary file, fsync, rename, fsync of the
//! folder), owned by postgres.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Pg;
use super::conf::{Credentials, MANAGED_CONF, MANAGED_KEYS, strip_keys};

impl Pg {
    pub fn initialized(&self) -> bool {
        self.file("PG_VERSION").exists()
    }

    pub fn has_pid_file(&self) -> bool {
        self.file("postmaster.pid").exists()
    }

    pub fn has_standby_signal(&self) -> bool {
        self.file("standby.signal").exists()
    }

    pub fn has_recovery_signal(&self) -> bool {
        self.file("recovery.signal").exists()
    }

    /// Whether a postmaster of THIS data directory runs: the PID in `postmaster.pid` is
    /// alive and its working directory (a postmaster works in its PGDATA) is this very
    /// directory, by device and inode. `pg_ctl status` checks the PID only, which a copy
    /// restored from a snapshot fools: the PID it carries is its source's postmaster, alive
    /// wherever PIDs are shared (on one host, or a PID reused in the Pod).
    ///
    /// Reading another user's `/proc/<pid>/cwd` needs ptrace access, which root in a
    /// container does not have (no CAP_SYS_PTRACE): the postmaster runs as `postgres`.
    /// Then the process is identified by what anyone may read: its name is `postgres` and it
    /// started when `postmaster.pid` says its postmaster started (line 3, to the second).
    /// PIDs are the Pod's own there, so a copy's PID can only be this Pod's process, and
    /// one started at that second is that postmaster.
    pub fn postmaster_running(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.file("postmaster.pid")) else {
            return false;
        };
        let Some(pid) = pid_file_field::<u32>(&text, 0) else {
            return false;
        };
        match std::fs::metadata(format!("/proc/{pid}/cwd")) {
            Ok(cwd) => std::fs::metadata(&self.data)
                .is_ok_and(|data| cwd.dev() == data.dev() && cwd.ino() == data.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let started = pid_file_field::<u64>(&text, 2);
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
                let boot = std::fs::read_to_string("/proc/stat");
                match (started, comm, stat, boot) {
                    (Some(started), Ok(comm), Ok(stat), Ok(boot)) => {
                        comm.trim() == "postgres"
                            && process_start(&stat, &boot, clock_ticks())
                                .is_some_and(|at| at.abs_diff(started) <= 1)
                    }
                    _ => false,
                }
            }
            Err(_) => false,
        }
    }

    pub(super) fn prepare_dir(&self) -> anyhow::Result<()> {
        self.prepare(&self.data)
    }

    /// Creates a data folder (given to postgres, mode 0700).
    pub(super) fn prepare(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.give(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(())
    }

    /// `.<PGDATA's name>.pgml-basebackup` beside PGDATA, where a copy is made.
    pub(super) fn staging_dir(&self) -> Option<PathBuf> {
        let name = self.data.file_name()?.to_string_lossy().into_owned();
        Some(self.data.parent()?.join(format!(".{name}.pgml-basebackup")))
    }

    /// Removes a copy left half-made (a process killed during pg_basebackup).
    pub(super) fn remove_staging(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.staging_dir()
            && dir.exists()
        {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    /// PGDATA is the root of a file system (its folder is on another device).
    pub(super) fn is_mount_point(&self) -> bool {
        let (Ok(d), Some(Ok(p))) = (
            std::fs::metadata(&self.data),
            self.data.parent().map(std::fs::metadata),
        ) else {
            return false;
        };
        d.dev() != p.dev()
    }

    pub(super) fn sync_parent(&self) -> anyhow::Result<()> {
        if let Some(parent) = self.data.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    /// The replication passfile: in [`Pg::run_dir`], never in PGDATA.
    pub fn passfile(&self) -> PathBuf {
        self.run_dir.join("replication.pgpass")
    }

    /// Writes the replication credentials as a passfile (mode 0600, PostgreSQL's user's) and
    /// returns its path. Refused when the run folder is inside PGDATA: the password would
    /// travel with every snapshot and backup of the data.
    pub fn write_passfile(&self, creds: &Credentials) -> anyhow::Result<PathBuf> {
        if self.run_dir.starts_with(&self.data) {
            bail!(
                "the run folder {} is inside PGDATA {}: the replication password would be in its snapshots",
                self.run_dir.display(),
                self.data.display()
            );
        }
        let path = self.passfile();
        // Any host, port and database (replication connections name the database
        // `replication`); the Secret's characters need no escaping (Credentials::read).
        let line = format!("*:*:*:{}:{}\n", creds.username, creds.password);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == line) {
            return Ok(path);
        }
        let tmp = self.run_dir.join(".replication.pgpass.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
        self.give(&tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A new, empty file `name` in the run folder (out of PGDATA), given to postgres: the
    /// server's log of a restore's replay.
    pub fn fresh_run_file(&self, name: &str) -> anyhow::Result<std::path::PathBuf> {
        let path = self.run_dir.join(name);
        std::fs::write(&path, "").with_context(|| format!("creating {}", path.display()))?;
        self.give(&path)?;
        Ok(path)
    }

    pub(super) fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.drop_to {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    pub(super) fn append(&self, path: &Path, text: &str) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// Writes a file of PGDATA atomically (temporary file, fsync, rename, fsync of the
    /// folder), owned by postgres, mode 0600.
    pub(super) fn write_file(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.file(name);
        let tmp = self.file(&format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        self.give(&tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> anyhow::Result<()> {
        std::fs::File::open(&self.data)?.sync_all()?;
        Ok(())
    }

    fn remove(&self, name: &str) -> anyhow::Result<bool> {
        match std::fs::remove_file(self.file(name)) {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {name}")),
        }
    }

    pub fn remove_pid_file(&self) -> anyhow::Result<bool> {
        self.remove("postmaster.pid")
    }

    pub fn remove_standby_signal(&self) -> anyhow::Result<bool> {
        self.remove("standby.signal")
    }

    /// Removes the replication slots a restored copy brought along (`pg_replslot/*`, read
    /// at start) that are not named `<ours>…`: they are the source cluster's, and would keep
    /// WAL here for ever (this cluster's own are kept by the primary's slot sync). Returns
    /// the slots removed.
    pub fn remove_copied_slots(&self, ours: &str) -> anyhow::Result<Vec<String>> {
        let dir = self.file("pg_replslot");
        let mut gone = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(gone),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for e in entries {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_dir() && !name.starts_with(ours) {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                gone.push(name);
            }
        }
        if !gone.is_empty() {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", dir.display()))?;
        }
        gone.sort();
        Ok(gone)
    }

    /// Archive recovery (a restore's replay) instead of a standby: `recovery.signal`,
    /// and no `standby.signal` (which would win over it).
    pub fn write_recovery_signal(&self) -> anyhow::Result<()> {
        self.remove("standby.signal")?;
        if !self.has_recovery_signal() {
            self.write_file("recovery.signal", "")?;
        }
        Ok(())
    }

    pub fn write_standby_signal(&self) -> anyhow::Result<()> {
        if !self.has_standby_signal() {
            self.write_file("standby.signal", "")?;
        }
        Ok(())
    }

    /// Writes [`MANAGED_CONF`] (returns whether it changed), makes sure postgresql.conf
    /// includes it, and takes the same keys out of postgresql.auto.conf.
    pub fn write_conf(&self, text: &str) -> anyhow::Result<bool> {
        let conf = self.file("postgresql.conf");
        let main = std::fs::read_to_string(&conf)
            .with_context(|| format!("reading {}", conf.display()))?;
        let include = format!("include_if_exists = '{MANAGED_CONF}'");
        if !main.lines().any(|l| l.trim() == include) {
            self.append(
                &conf,
                &format!("\n# pgml-instance: managed settings, read last\n{include}\n"),
            )?;
        }
        let auto = self.file("postgresql.auto.conf");
        if let Ok(text) = std::fs::read_to_string(&auto) {
            let kept = strip_keys(&text, MANAGED_KEYS);
            if kept != text {
                self.write_file("postgresql.auto.conf", &kept)?;
            }
        }
        if std::fs::read_to_string(self.file(MANAGED_CONF)).is_ok_and(|t| t == text) {
            return Ok(false);
        }
        self.write_file(MANAGED_CONF, text)?;
        Ok(true)
    }
}

/// Field `n` (0-based line) of `postmaster.pid`: 0 the PID, 2 the start time (epoch seconds).
fn pid_file_field<T: std::str::FromStr>(text: &str, n: usize) -> Option<T> {
    text.lines().nth(n).and_then(|l| l.trim().parse().ok())
}

/// Clock ticks per second (`/proc/<pid>/stat`'s unit).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// When a process started, in epoch seconds: its `/proc/<pid>/stat` start time (field 22,
/// ticks since boot) plus the boot time (`btime` in `/proc/stat`). None when either is
/// unreadable. The command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`.
pub(crate) fn process_start(stat: &str, proc_stat: &str, ticks: u64) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime + start_ticks / ticks.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(data: &str) -> Pg {
        Pg {
            bin: "/b".into(),
            data: data.into(),
            wal_dir: None,
            port: 5432,
            socket_dir: "/tmp".into(),
            listen_addresses: "*".into(),
            superuser: "postgres".into(),
            local_auth: "peer".into(),
            host_auth: "trust".into(),
            config_dir: None,
            drop_to: None,
            run_dir: "/run/pgml".into(),
            db: Default::default(),
        }
    }

    #[test]
    fn a_process_start_is_its_stat_start_ticks_after_boot() {
        // A real line's shape, with a command name that holds a space and a parenthesis.
        let stat = "1199 (postgres: a) x) S 1 1199 1199 0 -1 4194560 4185 0 0 0 3 5 0 0 20 0 1 0 254000 220700672 7000 18446744073709551615 1 1 0 0 0 0 0 4096 16904 0 0 0 17 1 0 0 0 0 0";
        let proc_stat = "cpu  1 2 3\nintr 5\nbtime 1733560000\nprocesses 9\n";
        assert_eq!(process_start(stat, proc_stat, 100), Some(1733560000 + 2540));
        assert_eq!(process_start(stat, "cpu 1\n", 100), None, "no btime");
        assert_eq!(process_start("1 (x) S 1", proc_stat, 100), None, "cut off");
    }

    #[test]
    fn this_process_started_before_now_after_boot() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let boot = std::fs::read_to_string("/proc/stat").unwrap();
        let at = process_start(&stat, &boot, clock_ticks()).unwrap();
        assert!(
            at <= now + 1 && now - at < 3600,
            "started at {at}, now {now}"
        );
    }

    #[test]
    fn a_restored_copy_loses_the_sources_slots_and_keeps_ours() {
        let d = std::env::temp_dir().join(format!("pgml-slots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for s in ["src_1", "src_2", "new_2"] {
            std::fs::create_dir_all(d.join("pg_replslot").join(s)).unwrap();
            std::fs::write(d.join("pg_replslot").join(s).join("state"), b"x").unwrap();
        }
        let copy = pg(&d.to_string_lossy());
        assert_eq!(
            copy.remove_copied_slots("new_").unwrap(),
            ["src_1", "src_2"]
        );
        let left: Vec<_> = std::fs::read_dir(d.join("pg_replslot"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["new_2"]);
        assert!(copy.remove_copied_slots("new_").unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
        let empty = pg(&d.join("none").to_string_lossy());
        assert!(empty.remove_copied_slots("new_").unwrap().is_empty());
    }

    #[test]
    fn pid_file_fields_are_lines() {
        let t = "1199\n/var/lib/postgresql/data/pgdata\n1765103143\n5432\n/tmp\n";
        assert_eq!(pid_file_field::<u32>(t, 0), Some(1199));
        assert_eq!(pid_file_field::<u64>(t, 2), Some(1765103143));
        assert_eq!(pid_file_field::<u64>("1199\n", 2), None);
    }

    #[test]
    fn a_copy_is_staged_beside_pgdata() {
        assert_eq!(
            pg("/var/lib/postgresql/data/pgdata").staging_dir(),
            Some(PathBuf::from(
                "/var/lib/postgresql/data/.pgdata.pgml-basebackup"
            ))
        );
        assert_eq!(pg("/").staging_dir(), None);
    }

    #[test]
    fn mount_points_are_told_apart() {
        assert!(pg("/proc").is_mount_point());
        let dir = std::env::temp_dir().join(format!("pgml-inst-mnt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!pg(&dir.to_string_lossy()).is_mount_point());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_replication_password_goes_to_a_private_passfile_outside_pgdata() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("pgml-inst-pass-{}", std::process::id()));
        let data = base.join("pgdata");
        let run = base.join("run");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let creds = Credentials {
            username: "streaming_replica".into(),
            password: "s3cr3t-_".into(),
        };
        let mut pg = pg(&data.to_string_lossy());
        pg.run_dir = run.clone();
        let path = pg.write_passfile(&creds).unwrap();
        assert_eq!(path, run.join("replication.pgpass"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "*:*:*:streaming_replica:s3cr3t-_\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "libpq ignores a passfile others can read");
        // A new password replaces the old one; the same one is not rewritten.
        let changed = Credentials {
            password: "n3w".into(),
            ..creds.clone()
        };
        pg.write_passfile(&changed).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "*:*:*:streaming_replica:n3w\n"
        );
        // A run folder inside PGDATA is refused: the password would be in every snapshot.
        pg.run_dir = data.join("run");
        let e = pg.write_passfile(&creds).unwrap_err().to_string();
        assert!(e.contains("inside PGDATA"), "{e}");
        assert!(!data.join("run/replication.pgpass").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
