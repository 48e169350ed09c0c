//! Both binaries start, take --help, read their configuration from flags and environment,
//! log structured (JSON) lines, and stop cleanly on SIGTERM — against the real apiserver.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgml_testbed::{Sandbox, workspace_bin};

fn help(bin: &str) -> String {
    let out = Command::new(workspace_bin(bin))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{bin} --help failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn operator_help_documents_its_configuration() {
    let h = help("pgml-operator");
    assert!(h.contains("EBS"), "{h}");
    for flag in ["--namespace", "--log-format", "--log-level"] {
        assert!(h.contains(flag), "missing {flag} in:\n{h}");
    }
    assert!(
        h.contains("PGML_WATCH_NAMESPACE"),
        "env var not documented:\n{h}"
    );
}

#[test]
fn agent_help_documents_its_configuration() {
    let h = help("pgml-agent");
    for flag in [
        "--node-name",
        "--dev-dir",
        "--mount-root",
        "--zpool",
        "--zfs",
    ] {
        assert!(h.contains(flag), "missing {flag} in:\n{h}");
    }
    assert!(h.contains("NODE_NAME"), "env var not documented:\n{h}");
}

/// Log lines of a child's stderr, parsed as JSON, delivered as they come.
fn json_lines(child: &mut Child) -> mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_message(rx: &mpsc::Receiver<serde_json::Value>, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = vec![];
    while Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
            if v["message"] == message {
                return v;
            }
            seen.push(v);
        }
    }
    panic!("no log line {message:?} within 30s; saw {seen:#?}");
}

fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 10s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn operator_starts_from_env_logs_json_and_stops_on_sigterm() {
    let sb = Sandbox::get();
    let mut child = Command::new(workspace_bin("pgml-operator"))
        .env_clear()
        .env("KUBECONFIG", &sb.kube.kubeconfig)
        .env("PGML_WATCH_NAMESPACE", "some-namespace")
        .env("PGML_LOG_FORMAT", "json")
        // Leader election on a Lease of its own; the metrics endpoint on a free port.
        .env("PGML_LEASE_NAMESPACE", "default")
        .env(
            "PGML_LEASE_NAME",
            format!("binaries-{}", std::process::id()),
        )
        .env("PGML_METRICS_ADDR", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = json_lines(&mut child);
    let start = wait_for_message(&rx, "starting pgml-operator");
    assert_eq!(start["level"], "INFO");
    assert!(
        start["namespace"]
            .as_str()
            .unwrap()
            .contains("some-namespace"),
        "{start}"
    );
    wait_for_message(&rx, "custom resources are served; waiting for work");
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "exit status {status}");
    wait_for_message(&rx, "stopped");
}

#[test]
fn agent_starts_for_its_node_and_stops_on_sigterm() {
    let sb = Sandbox::get();
    let node = &sb.nodes[0];
    let mut child = Command::new(workspace_bin("pgml-agent"))
        .env_clear()
        .env("KUBECONFIG", &sb.kube.kubeconfig)
        .env("NODE_NAME", &node.name)
        .env("PGML_METRICS_ADDR", "127.0.0.1:0")
        .args(["--dev-dir".as_ref(), node.dev_dir.as_os_str()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = json_lines(&mut child);
    let start = wait_for_message(&rx, "starting pgml-agent");
    assert_eq!(start["node"], node.name.as_str());
    assert_eq!(start["dev_dir"], node.dev_dir.display().to_string());
    wait_for_message(&rx, "node found; waiting for work");
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "exit status {status}");
}

#[test]
fn agent_refuses_a_node_that_does_not_exist() {
    let sb = Sandbox::get();
    let out = Command::new(workspace_bin("pgml-agent"))
        .env_clear()
        .env("KUBECONFIG", &sb.kube.kubeconfig)
        .env("NODE_NAME", "no-such-node")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node no-such-node does not exist"), "{err}");
}
