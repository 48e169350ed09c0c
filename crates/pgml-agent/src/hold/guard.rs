//! The agent's side of `pgml-freeze-guard`: start it (its own process group, so it outlives
//! the agent), read what it printed (its stdout is a file in the state directory, so a
//! restarted agent reads it too), tell it to thaw, and thaw by itself if the guard is gone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub const GUARD_BIN: &str = "pgml-freeze-guard";

/// What the guard printed so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardOutput {
    pub frozen: bool,
    pub thawed_ms: Option<i64>,
    pub error: Option<String>,
}

pub fn parse_output(text: &str) -> GuardOutput {
    let mut o = GuardOutput::default();
    for line in text.lines() {
        let line = line.trim();
        if line == "frozen" {
            o.frozen = true;
        } else if let Some(ms) = line.strip_prefix("thawed ") {
            o.thawed_ms = ms.trim().parse().ok();
        } else if let Some(e) = line.strip_prefix("error ") {
            o.error = Some(e.to_string());
        }
    }
    o
}

pub fn read_output(path: &Path) -> GuardOutput {
    parse_output(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Whether a command line (NUL-separated, as /proc/<pid>/cmdline) is the guard of `uid`.
pub fn is_guard_cmdline(cmdline: &[u8], uid: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Some(argv0) = args.first() else {
        return false;
    };
    let argv0 = String::from_utf8_lossy(argv0);
    Path::new(argv0.as_ref())
        .file_name()
        .and_then(|n| n.to_str())
        == Some(GUARD_BIN)
        && args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == uid.as_bytes())
}

fn guard_alive(proc_dir: &Path, pid: u32, uid: &str) -> bool {
    // A zombie (exited, not yet reaped) has an empty cmdline: not alive.
    std::fs::read(proc_dir.join(pid.to_string()).join("cmdline"))
        .is_ok_and(|c| is_guard_cmdline(&c, uid))
}

/// The running guard of `uid`: the recorded PID if it still is that guard, else any process
/// whose command line says so (the agent may have died between the start and the record).
pub fn find_guard(proc_dir: &Path, recorded: Option<u32>, uid: &str) -> Option<u32> {
    if let Some(pid) = recorded.filter(|p| guard_alive(proc_dir, *p, uid)) {
        return Some(pid);
    }
    std::fs::read_dir(proc_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| guard_alive(proc_dir, *pid, uid))
}

/// How to run the guard and fsfreeze.
#[derive(Clone, Debug)]
pub struct Freezer {
    pub guard: PathBuf,
    pub fsfreeze: PathBuf,
    pub proc_dir: PathBuf,
    /// `--join-cgroups-of` for the guard: the PID whose cgroups it moves into first.
    pub join_cgroups_of: Option<u32>,
}

impl Freezer {
    /// The guard next to the agent's own executable.
    pub fn beside_agent(fsfreeze: PathBuf) -> std::io::Result<Freezer> {
        Ok(Freezer {
            guard: std::env::current_exe()?.with_file_name(GUARD_BIN),
            fsfreeze,
            proc_dir: PathBuf::from("/proc"),
            join_cgroups_of: None,
        })
    }

    /// Starts the guard for `mount`, its stdout going to `output`. Returns its PID; it is
    /// reaped in the background when it exits while the agent lives.
    pub fn spawn(
        &self,
        uid: &str,
        mount: &str,
        deadline_ms: i64,
        output: &Path,
    ) -> std::io::Result<u32> {
        let out = std::fs::File::create(output)?;
        let mut child = tokio::process::Command::new(&self.guard)
            .args(["--id", uid, "--deadline-unix-ms", &deadline_ms.to_string()])
            .arg("--fsfreeze")
            .arg(&self.fsfreeze)
            .args(
                self.join_cgroups_of
                    .map(|pid| ["--join-cgroups-of".to_string(), pid.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .arg(mount)
            .stdin(Stdio::null())
            .stdout(out)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        let pid = child.id().unwrap_or_default();
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    /// Waits until the guard says `frozen` (Ok), fails, exits or `limit` passes (Err).
    pub async fn wait_frozen(
        &self,
        uid: &str,
        pid: u32,
        output: &Path,
        limit: Duration,
    ) -> Result<(), String> {
        let start = tokio::time::Instant::now();
        loop {
            let o = read_output(output);
            if let Some(e) = o.error {
                return Err(format!("fsfreeze failed: {e}"));
            }
            if o.frozen {
                return Ok(());
            }
            if !guard_alive(&self.proc_dir, pid, uid) {
                // It may have printed its last line right before exiting.
                let o = read_output(output);
                if o.frozen {
                    return Ok(());
                }
                return Err("the freeze guard exited without freezing".into());
            }
            if start.elapsed() >= limit {
                return Err(format!("the file system did not freeze within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Thaws: SIGTERM to the guard (waiting for its `thawed`), and `fsfreeze -u` ourselves
    /// when it is gone without having thawed. Returns the milliseconds the guard reported,
    /// if it did.
    pub async fn thaw(
        &self,
        uid: &str,
        recorded: Option<u32>,
        mount: &str,
        output: &Path,
    ) -> Result<Option<i64>, String> {
        if let Some(pid) = find_guard(&self.proc_dir, recorded, uid) {
            tracing::info!(uid, pid, mount, "telling the freeze guard to thaw");
            // SAFETY: kill(2) with a PID just checked to be our guard (by its cmdline).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            let start = tokio::time::Instant::now();
            while guard_alive(&self.proc_dir, pid, uid) && start.elapsed() < Duration::from_secs(5)
            {
                if read_output(output).thawed_ms.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let o = read_output(output);
        if o.thawed_ms.is_some() {
            return Ok(o.thawed_ms);
        }
        if o.error.is_some() && !o.frozen {
            // Its freeze failed (e.g. the file system was frozen by someone else): nothing
            // of ours to thaw, and someone else's freeze is not ours to end.
            return Ok(None);
        }
        // The guard is gone (killed, or it never ran) and did not say it thawed: the file
        // system may still be frozen.
        let out = tokio::process::Command::new(&self.fsfreeze)
            .args(["-u", mount])
            // Its messages are matched below: untranslated.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.fsfreeze.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            tracing::warn!(uid, mount, "the guard was gone; thawed with fsfreeze -u");
        } else if !stderr.contains("Invalid argument") && !stderr.contains("No such file") {
            // "Invalid argument" is "not frozen"; a mount point that is gone (unmounted,
            // the node rebooted) holds no frozen file system: nothing to do.
            return Err(format!("fsfreeze -u {mount}: {}", stderr.trim()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_output_lines() {
        assert_eq!(parse_output(""), GuardOutput::default());
        assert_eq!(
            parse_output("frozen\nthawed 1234\n"),
            GuardOutput {
                frozen: true,
                thawed_ms: Some(1234),
                error: None
            }
        );
        let e = parse_output("error fsfreeze -f /m: Device or resource busy\n");
        assert!(!e.frozen);
        assert_eq!(
            e.error.as_deref(),
            Some("fsfreeze -f /m: Device or resource busy")
        );
    }

    /// As /proc/<pid>/cmdline: each argument followed by a NUL.
    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn guard_recognised_by_its_command_line() {
        let uid = "0b6f7c1e-3c1a";
        let ours = cmdline(&[
            "/opt/pgml/pgml-freeze-guard",
            "--id",
            uid,
            "--deadline-unix-ms",
            "1",
            "/m",
        ]);
        assert!(is_guard_cmdline(&ours, uid));
        assert!(!is_guard_cmdline(&ours, "0b6f7c1e-3c1b"));
        // Another program with the same arguments, or the uid as a mount path.
        assert!(!is_guard_cmdline(
            &cmdline(&["/bin/sleep", "--id", uid]),
            uid
        ));
        assert!(!is_guard_cmdline(
            &cmdline(&["pgml-freeze-guard", "/0b6f7c1e-3c1a"]),
            uid
        ));
        assert!(!is_guard_cmdline(b"", uid));
    }

    /// A freezer with no guard running (an empty /proc) and `fsfreeze` standing in.
    fn freezer(dir: &Path, fsfreeze: &str) -> Freezer {
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        Freezer {
            guard: dir.join(GUARD_BIN),
            fsfreeze: PathBuf::from(fsfreeze),
            proc_dir: dir.join("proc"),
            join_cgroups_of: None,
        }
    }

    #[tokio::test]
    async fn thaw_without_a_guard_uses_what_it_printed() {
        let d = std::env::temp_dir().join(format!("pgml-guard-thaw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let out = d.join("u.guard");
        let failing = freezer(&d, "false");
        // It thawed and said so: nothing else to do (fsfreeze, failing, is not run).
        std::fs::write(&out, "frozen\nthawed 1234\n").unwrap();
        assert_eq!(failing.thaw("u", None, "/m", &out).await, Ok(Some(1234)));
        // Its freeze failed: someone else's freeze is not ours to end.
        std::fs::write(&out, "error fsfreeze -f /m: Device or resource busy\n").unwrap();
        assert_eq!(failing.thaw("u", None, "/m", &out).await, Ok(None));
        // Frozen and gone without a word: fsfreeze -u is run, and its failure reported.
        std::fs::write(&out, "frozen\n").unwrap();
        assert!(failing.thaw("u", None, "/m", &out).await.is_err());
        assert_eq!(
            freezer(&d, "true").thaw("u", None, "/m", &out).await,
            Ok(None)
        );
        // Killed before it printed anything (maybe mid-freeze): thawed too.
        std::fs::write(&out, "").unwrap();
        assert!(failing.thaw("u", None, "/m", &out).await.is_err());
        // The mount point is gone (a reboot, an unmount): nothing can be frozen there.
        // (`ls -u <missing>` answers as fsfreeze does: "No such file or directory".)
        let missing = d.join("not-mounted").display().to_string();
        assert_eq!(
            freezer(&d, "ls").thaw("u", None, &missing, &out).await,
            Ok(None)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn find_guard_checks_the_recorded_pid_then_scans() {
        let d = std::env::temp_dir().join(format!("pgml-guard-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let uid = "abc-1";
        for (pid, cmd) in [
            (
                "10",
                cmdline(&["/x/pgml-freeze-guard", "--id", "abc-2", "/m"]),
            ),
            (
                "11",
                cmdline(&["/x/pgml-freeze-guard", "--id", "abc-1", "/m"]),
            ),
            ("12", Vec::new()),
        ] {
            std::fs::create_dir_all(d.join(pid)).unwrap();
            std::fs::write(d.join(pid).join("cmdline"), cmd).unwrap();
        }
        std::fs::create_dir_all(d.join("self")).unwrap();
        // A recorded PID reused by another process is not trusted.
        assert_eq!(find_guard(&d, Some(10), uid), Some(11));
        assert_eq!(find_guard(&d, Some(11), uid), Some(11));
        assert_eq!(find_guard(&d, None, "abc-3"), None);
        // A zombie (empty cmdline) is gone.
        assert_eq!(find_guard(&d, Some(12), "abc-9"), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
