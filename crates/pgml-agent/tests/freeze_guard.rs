//! pgml-freeze-guard as a process, with stand-in fsfreeze programs (`true`, `false`) so no
//! file system is frozen: it reports `frozen`, thaws at the deadline by itself or at once
//! on SIGTERM, and reports a freeze it could not make without thawing anything.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GUARD: &str = env!("CARGO_BIN_EXE_pgml-freeze-guard");

fn deadline_in(ms: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_millis() as u64 + ms).to_string()
}

fn guard(fsfreeze: &str, deadline: &str) -> Command {
    let mut c = Command::new(GUARD);
    c.args([
        "--id",
        "u-1",
        "--deadline-unix-ms",
        deadline,
        "--fsfreeze",
        fsfreeze,
        "/mnt/x",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

fn thawed_ms(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("frozen"), "{text}");
    lines
        .next()
        .and_then(|l| l.strip_prefix("thawed "))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no thawed line: {text}"))
}

#[test]
fn thaws_by_itself_at_the_deadline() {
    let start = Instant::now();
    let out = guard("true", &deadline_in(400)).output().unwrap();
    assert!(out.status.success());
    let ms = thawed_ms(&out.stdout);
    assert!((300..1500).contains(&ms), "frozen {ms} ms");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn thaws_at_once_on_sigterm() {
    let start = Instant::now();
    let child = guard("true", &deadline_in(30_000)).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM must not kill the guard");
    let ms = thawed_ms(&out.stdout);
    assert!(ms < 5_000, "thawed after {ms} ms");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Its log lines (the agent's stream) are JSON.
    let log = String::from_utf8_lossy(&out.stderr);
    let messages: Vec<String> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(v["mount"], "/mnt/x");
            v["message"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(messages, ["frozen", "thawed"]);
}

#[test]
fn a_failed_freeze_or_a_passed_deadline_is_an_error() {
    let out = guard("false", &deadline_in(30_000)).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("error "), "{text}");
    assert!(
        !text.contains("frozen") && !text.contains("thawed"),
        "{text}"
    );

    let out = guard("true", "1000").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deadline has passed"));
}
