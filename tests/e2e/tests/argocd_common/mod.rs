//! The Argo CD health harness (tests/argocd, Go on gopher-lua as Argo CD itself) for the e2e
//! tests: built once per test binary into target/argocd-harness, run on an object's JSON.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use pgml_testbed::sandbox::repo_root;
use serde_json::Value;

/// What a health script returned, as Argo CD reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    pub message: String,
}

/// What running the harness gave: its exit status, stdout and stderr.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The health it printed; panics (with stderr) when the script failed.
    pub fn health(&self, what: &str) -> Health {
        assert!(
            self.ok,
            "the health check of {what} failed:\n{}{}",
            self.stderr, self.stdout
        );
        let v: Value = serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: harness printed no JSON ({e}): {}", self.stdout));
        Health {
            status: v["status"].as_str().unwrap_or_default().to_string(),
            message: v["message"].as_str().unwrap_or_default().to_string(),
        }
    }
}

/// The Go toolchain: `go` on PATH, else Go's usual install place.
fn go() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("go"))
            .find(|g| g.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|g| g.is_file()))
        .expect("the Go toolchain (go) is needed to build the Argo CD health harness (tests/argocd): install Go >= 1.26")
}

/// target/argocd-harness, built from tests/argocd (once per test binary; the module cache
/// and the build cache make later builds quick). Built to a temporary name and renamed, so
/// test binaries building at once never run a half-written file.
pub fn harness() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = repo_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        std::fs::create_dir_all(&target).expect("target folder");
        let bin = target.join("argocd-harness");
        let tmp = target.join(format!("argocd-harness.tmp-{}", std::process::id()));
        let out = Command::new(go())
            .args(["build", "-o"])
            .arg(&tmp)
            .arg(".")
            .current_dir(root.join("tests/argocd"))
            .env("GOFLAGS", "-mod=mod -buildvcs=false")
            .output()
            .expect("running go build");
        assert!(
            out.status.success(),
            "go build of tests/argocd failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &bin).expect("moving the harness in place");
        bin
    })
}

/// The health script of `kind` shipped in docs/argocd/health.
pub fn script(kind: &str) -> PathBuf {
    repo_root().join(format!("docs/argocd/health/{kind}.lua"))
}

/// Runs `script` on the object in file `object` (YAML or JSON).
pub fn run_file(script: &Path, object: &Path) -> Run {
    let out = Command::new(harness())
        .arg("-script")
        .arg(script)
        .arg("-object")
        .arg(object)
        .output()
        .expect("running the harness");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `script` on `object` (given on stdin as JSON).
pub fn run_json(script: &Path, object: &Value) -> Run {
    let mut child = Command::new(harness())
        .arg("-script")
        .arg(script)
        .args(["-object", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the harness");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(object.to_string().as_bytes())
        .expect("writing the object");
    let out = child.wait_with_output().expect("harness output");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The health Argo CD would show for a live object (its kind's script).
pub fn health_of(object: &Value) -> Health {
    let kind = object["kind"].as_str().expect("object kind");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    run_json(&script(kind), object).health(&format!("{kind}/{name}"))
}
