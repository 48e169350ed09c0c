//! pgml-freeze-guard: freezes one file system and guarantees it is thawed by a deadline.
//!
//! The node agent starts it in its own process group for an ext4 snapshot hold, so that the
//! thaw happens at the deadline even if the agent dies or hangs meanwhile:
//!
//! ```text
//! pgml-freeze-guard --id <snapshot uid> --deadline-unix-ms <ms> [--fsfreeze <program>]
//!                   [--join-cgroups-of <pid>] <mount>
//! ```
//!
//! `--join-cgroups-of 1` (the agent in a DaemonSet, with hostPID) first moves the guard into
//! the node's cgroups (PID 1's, in PID 1's cgroup namespace), out of the agent container's:
//! the container runtime kills every process left in a killed container's cgroup, and the
//! guard must outlive the container to thaw at the deadline. When that move fails, nothing
//! is frozen.
//!
//! It runs `fsfreeze -f <mount>`, prints `frozen`, then waits until the deadline or a
//! SIGTERM/SIGINT/SIGHUP (the agent's "the capture is done"), runs `fsfreeze -u <mount>`,
//! prints `thawed <milliseconds frozen>` and exits 0. A freeze that fails prints
//! `error <message>` and exits 1 without thawing (the file system was not frozen by us).
//! `--id` is not used here: it is how the agent recognises its guard in /proc.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    mount: String,
    deadline_unix_ms: u64,
    fsfreeze: String,
    join_cgroups_of: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut mount = None;
    let mut deadline = None;
    let mut fsfreeze = "fsfreeze".to_string();
    let mut join_cgroups_of = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--id" => {
                it.next().ok_or("--id needs a value")?;
            }
            "--deadline-unix-ms" => {
                let v = it.next().ok_or("--deadline-unix-ms needs a value")?;
                deadline = Some(
                    v.parse::<u64>()
                        .map_err(|e| format!("--deadline-unix-ms {v}: {e}"))?,
                );
            }
            "--fsfreeze" => fsfreeze = it.next().ok_or("--fsfreeze needs a value")?,
            "--join-cgroups-of" => {
                let v = it.next().ok_or("--join-cgroups-of needs a value")?;
                join_cgroups_of = Some(
                    v.parse::<u32>()
                        .map_err(|e| format!("--join-cgroups-of {v}: {e}"))?,
                );
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if mount.replace(s.to_string()).is_some() {
                    return Err("one mount point only".into());
                }
            }
        }
    }
    Ok(Args {
        mount: mount.ok_or("the mount point is missing")?,
        deadline_unix_ms: deadline.ok_or("--deadline-unix-ms is missing")?,
        fsfreeze,
        join_cgroups_of,
    })
}

/// Moves this process into `pid`'s cgroups: first into `pid`'s cgroup namespace (a
/// container's own namespace shows only the container's subtree), then, for each line of
/// `/proc/<pid>/cgroup`, into that cgroup under `pid`'s mount of the hierarchy, reached
/// through `/proc/<pid>/root`. Checked afterwards against `/proc/self/cgroup`.
fn join_cgroups_of(pid: u32) -> Result<(), String> {
    use pgml_runtime::cgroups::{parse_cgroup, procs_files, same_cgroups};
    use std::os::fd::AsRawFd;
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let ns = std::fs::File::open(proc.join("ns/cgroup"))
        .map_err(|e| format!("{}/ns/cgroup: {e}", proc.display()))?;
    // SAFETY: setns(2) with a descriptor that stays open for the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWCGROUP) } != 0 {
        return Err(format!(
            "setns into the cgroup namespace of PID {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Read after the setns: paths are relative to the reader's cgroup namespace.
    let want = parse_cgroup(&read(proc.join("cgroup"))?)?;
    let mounts = pgml_runtime::mountinfo::parse_mountinfo(&read(proc.join("mountinfo"))?);
    let me = std::process::id().to_string();
    for file in procs_files(&want, &mounts, &proc.join("root"))? {
        std::fs::write(&file, &me).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let have = parse_cgroup(&read("/proc/self/cgroup".into())?)?;
    if !same_cgroups(&have, &want) {
        return Err(format!(
            "still not in the cgroups of PID {pid} after the move: {have:?}"
        ));
    }
    Ok(())
}

/// Prints one line on stdout; a reader that went away (the agent died) is no reason to stop.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One JSON log line on stderr (the agent's log stream, which log pipelines read as JSON).
fn log(level: &str, message: &str, mount: &str, detail: &str) {
    fn quoted(s: &str) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    eprintln!(
        "{{\"unix_ms\":{unix_ms},\"level\":{},\"message\":{},\"mount\":{},\"detail\":{},\"target\":\"pgml_freeze_guard\"}}",
        quoted(level),
        quoted(message),
        quoted(mount),
        quoted(detail)
    );
}

fn fsfreeze(program: &str, flag: &str, mount: &str) -> Result<(), String> {
    let out = Command::new(program)
        .args([flag, mount])
        // Its messages are matched ("Invalid argument"): untranslated.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {flag} {mount}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// The termination signals, blocked so that they are only ever received by `sigtimedwait`:
/// none of them can kill the guard between the freeze and the thaw.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a zeroed, stack-owned sigset_t; the process is still
    // single-threaded, so the mask applies to the only thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits until `until` or one of `set`'s signals; returns the signal, if one came.
fn wait_signal(set: &libc::sigset_t, until: Instant) -> Option<i32> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `set` and `ts` are valid for the call; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
        if sig > 0 {
            return Some(sig);
        }
        // EAGAIN (timed out) or EINTR: the loop rechecks the clock.
    }
}

fn main() -> ExitCode {
    let set = block_signals();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            say(&format!("error {e}"));
            return ExitCode::from(2);
        }
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let Some(left) = args.deadline_unix_ms.checked_sub(now_ms).filter(|l| *l > 0) else {
        say("error the deadline has passed; not freezing");
        return ExitCode::from(1);
    };
    let until = Instant::now() + Duration::from_millis(left);
    if let Some(pid) = args.join_cgroups_of
        && let Err(e) = join_cgroups_of(pid)
    {
        log(
            "ERROR",
            "not freezing: could not leave the agent's cgroups",
            &args.mount,
            &e,
        );
        say(&format!("error leaving the agent container's cgroups: {e}"));
        return ExitCode::from(1);
    }
    if let Err(e) = fsfreeze(&args.fsfreeze, "-f", &args.mount) {
        log("ERROR", "freeze failed", &args.mount, &e);
        say(&format!("error {e}"));
        return ExitCode::from(1);
    }
    let frozen_at = Instant::now();
    say("frozen");
    log(
        "INFO",
        "frozen",
        &args.mount,
        &format!("thawed in {left} ms at the latest"),
    );
    let why = match wait_signal(&set, until) {
        Some(sig) => format!("signal {sig}"),
        None => "deadline".to_string(),
    };
    // Thawing is the whole point: try again for a few seconds rather than give up at once.
    let mut last = Ok(());
    for attempt in 0..20 {
        last = fsfreeze(&args.fsfreeze, "-u", &args.mount);
        match &last {
            Ok(()) => break,
            // Thawed already (someone ran fsfreeze -u): that is what we wanted.
            Err(e) if e.contains("Invalid argument") => {
                last = Ok(());
                break;
            }
            Err(_) if attempt < 19 => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => {}
        }
    }
    let ms = frozen_at.elapsed().as_millis();
    match last {
        Ok(()) => {
            say(&format!("thawed {ms}"));
            log(
                "INFO",
                "thawed",
                &args.mount,
                &format!("after {ms} ms ({why})"),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            log("ERROR", "thaw failed", &args.mount, &e);
            say(&format!("error {e}"));
            ExitCode::from(1)
        }
    }
}
