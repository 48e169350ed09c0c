//! The project's own scripts, run as a user runs them (no sandbox needed):
//! `scripts/lib/supervise.sh`, the lifecycle of `make dev`, ends on the first Ctrl-C (INT) or
//! TERM, stops its children, runs its teardown exactly once, and finishes the teardown even
//! when its output pipe has closed (`make dev | tee log`, then Ctrl-C).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A script like `make dev`: two children, a teardown that prints many lines (enough to hit
/// a closed pipe) and then records that it ran, and the supervision loop.
fn script(dir: &Path) -> String {
    format!(
        r#"set -euo pipefail
source {lib}
teardown() {{
  for i in $(seq 1 2000); do echo "teardown line $i"; done
  echo ran >> {dir}/teardown
}}
supervise_init fake teardown {dir}/stop.log
sleep 1000 & supervise_add $!
echo $! > {dir}/child1
sleep 1000 & supervise_add $!
echo $! > {dir}/child2
echo ready
supervise_forever
"#,
        lib = repo().join("scripts/lib/supervise.sh").display(),
        dir = dir.display(),
    )
}

fn start(dir: &Path) -> (Child, BufReader<std::process::ChildStdout>) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("bash");
    // A terminal's Ctrl-C reaches `make dev` with INT handled by default; a test runner may
    // have been started with INT ignored, which bash would inherit and could not trap.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd
        .arg("-c")
        .arg(script(dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, out)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Waits up to `limit` for the script to end; its exit code, or None if it still runs.
fn ends_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

fn alive(pid_file: &Path) -> bool {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .unwrap_or_default()
            .contains(") Z ")
}

fn teardowns(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("teardown"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pgml-scripts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn one_term_ends_the_supervised_script_after_one_teardown() {
    let dir = tmp("term");
    let (mut child, mut out) = start(&dir);
    // Read everything it prints, so only the signal can end it.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    signal(&child, "TERM");
    let rc = ends_within(&mut child, Duration::from_secs(15));
    assert_eq!(rc, Some(143), "one TERM must end the script (143)");
    let printed = reader.join().unwrap();
    assert!(printed.contains("fake: stopping"), "{printed}");
    assert_eq!(teardowns(&dir), 1, "the teardown runs exactly once");
    assert!(!alive(&dir.join("child1")) && !alive(&dir.join("child2")));
}

#[test]
fn one_interrupt_with_a_closed_output_pipe_still_finishes_the_teardown() {
    let dir = tmp("int");
    let (mut child, out) = start(&dir);
    // `make dev | tee log`, Ctrl-C: tee is gone before the teardown prints.
    drop(out);
    signal(&child, "INT");
    let rc = ends_within(&mut child, Duration::from_secs(15));
    assert_eq!(rc, Some(130), "one INT must end the script (130)");
    assert_eq!(teardowns(&dir), 1, "the teardown must finish despite EPIPE");
    assert!(!alive(&dir.join("child1")) && !alive(&dir.join("child2")));
    let log = std::fs::read_to_string(dir.join("stop.log")).unwrap();
    assert!(log.contains("fake: stopped"), "{log}");
}

#[test]
fn a_child_that_exits_is_reported_and_the_rest_keep_running() {
    let dir = tmp("exit");
    let (mut child, mut out) = start(&dir);
    let pid = std::fs::read_to_string(dir.join("child1")).unwrap();
    Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    // The loop looks every 10 s.
    let mut line = String::new();
    let t0 = Instant::now();
    while !line.contains("exited") && t0.elapsed() < Duration::from_secs(25) {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
    assert!(
        line.contains(&format!("fake: process {} exited", pid.trim())),
        "{line}"
    );
    assert!(alive(&dir.join("child2")));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "a child's exit does not end it"
    );
    signal(&child, "TERM");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
    });
    assert_eq!(ends_within(&mut child, Duration::from_secs(15)), Some(143));
    reader.join().unwrap();
    assert_eq!(teardowns(&dir), 1);
}
