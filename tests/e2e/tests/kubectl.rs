//! What a user sees with kubectl: `kubectl get` prints the printer columns of each kind (also
//! through the short names and the `pgml` category), and `kubectl explain` prints the Rust
//! doc comments. Uses the kubectl built with the sandbox's control plane.

use std::process::Command;
use std::time::Duration;

use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client};

/// Runs kubectl against the sandbox; returns stdout, panicking with stderr on failure.
fn kubectl(args: &[&str]) -> String {
    try_kubectl(args).unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

fn try_kubectl(args: &[&str]) -> Result<String, String> {
    let sb = Sandbox::get();
    let out = Command::new(sb.kubectl())
        .arg("--kubeconfig")
        .arg(&sb.kube.kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", sb.kubectl().display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// kubectl apply of a manifest given inline.
fn apply(ns: &str, yaml: &str) {
    let dir = std::env::temp_dir().join(format!("pgml-kubectl-{}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.yaml");
    std::fs::write(&file, yaml).unwrap();
    kubectl(&[
        "apply",
        "--validate=strict",
        "-n",
        ns,
        "-f",
        file.to_str().unwrap(),
    ]);
}

/// Retries while the apiserver catches up (new CRDs take a moment to reach discovery and
/// the published OpenAPI).
async fn eventually(args: &[&str], ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        match try_kubectl(args) {
            Ok(out) if ok(&out) => return out,
            Ok(out) => last = out,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "kubectl {} never gave the expected output; last:\n{last}",
        args.join(" ")
    );
}

fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{out}"))
        .split_whitespace()
        .collect()
}

const POOL: &str = "apiVersion: pgml.io/v1alpha1
kind: ZfsPool
metadata:
  name: shown
spec:
  nodeName: kubectl-node
  layout: raidz1
  volumes:
    count: 3
    sizeGiB: 100
";

const SNAPSHOT: &str = "apiVersion: pgml.io/v1alpha1
kind: EbsSnapshot
metadata:
  name: shown
spec:
  source:
    zfsPool:
      name: shown
";

const CLUSTER: &str = "apiVersion: pgml.io/v1alpha1
kind: PgmlCluster
metadata:
  name: shown
spec:
  instances: 3
  storage:
    persistentVolumeClaim:
      size: 10Gi
";

#[tokio::test]
async fn get_prints_the_columns_of_each_kind() {
    let client = client().await;
    pgml_testbed::kube::ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "kubectl-get").await;
    let n = ns.name();
    apply(n, POOL);
    apply(n, SNAPSHOT);
    apply(n, CLUSTER);

    // Status as the agent and operator would write it, through the status subresource, so
    // the status-backed columns have something to show.
    let merge = |obj: &str, status: &str| {
        kubectl(&[
            "patch",
            obj,
            "-n",
            n,
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ]);
    };
    merge(
        "zfspool/shown",
        r#"{"status":{"size":"298G","health":"ONLINE","phase":"Online"}}"#,
    );
    merge(
        "ebssnapshot/shown",
        r#"{"status":{"source":"ZfsPool/shown","phase":"Completed","volumeCount":3}}"#,
    );
    merge(
        "pgmlcluster/shown",
        r#"{"status":{"readyInstances":2,"currentPrimary":"shown-1","phase":"Degraded"}}"#,
    );

    let out = eventually(&["get", "zfspools", "-n", n], |o| o.contains("ONLINE")).await;
    assert_eq!(
        header(&out),
        ["NAME", "NODE", "LAYOUT", "VOLUMES", "SIZE", "HEALTH", "AGE"]
    );
    assert_eq!(
        row(&out, "shown")[..6],
        ["shown", "kubectl-node", "raidz1", "3", "298G", "ONLINE"]
    );

    let out = eventually(&["get", "ebssnapshots", "-n", n], |o| {
        o.contains("Completed")
    })
    .await;
    assert_eq!(header(&out), ["NAME", "SOURCE", "PHASE", "VOLUMES", "AGE"]);
    assert_eq!(
        row(&out, "shown")[..4],
        ["shown", "ZfsPool/shown", "Completed", "3"]
    );

    let out = eventually(&["get", "pgmlclusters", "-n", n], |o| {
        o.contains("Degraded")
    })
    .await;
    assert_eq!(
        header(&out),
        ["NAME", "INSTANCES", "READY", "PRIMARY", "PHASE", "AGE"]
    );
    assert_eq!(
        row(&out, "shown")[..5],
        ["shown", "3", "2", "shown-1", "Degraded"]
    );

    // -o wide adds the priority-1 columns.
    let wide = kubectl(&["get", "zfspools", "-n", n, "-o", "wide"]);
    assert_eq!(
        header(&wide)[..6],
        ["NAME", "NODE", "LAYOUT", "VOLUMES", "TYPE", "SIZE"]
    );
    assert!(header(&wide).contains(&"INSTANCE".to_string()));

    // Short names and the category.
    for short in ["zp", "zpool"] {
        assert!(
            kubectl(&["get", short, "-n", n]).contains("kubectl-node"),
            "short name {short}"
        );
    }
    for short in ["ebss", "ebssnap"] {
        assert!(
            kubectl(&["get", short, "-n", n]).contains("ZfsPool/shown"),
            "short name {short}"
        );
    }
    assert!(kubectl(&["get", "pgmlc", "-n", n]).contains("shown-1"));
    let all = kubectl(&["get", "pgml", "-n", n]);
    for kind in [
        "zfspool.pgml.io/shown",
        "ebssnapshot.pgml.io/shown",
        "pgmlcluster.pgml.io/shown",
    ] {
        assert!(
            all.contains(kind),
            "`kubectl get pgml` does not list {kind}:\n{all}"
        );
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn explain_prints_the_field_docs() {
    let client = client().await;
    pgml_testbed::kube::ensure_crds(&client, pgml_api::crds()).await;
    for (path, sentences) in [
        ("zfspool", vec!["A ZFS pool on one node"]),
        (
            "zfspool.spec",
            vec!["nodeName", "Kubernetes Node the pool lives on", "raidz1"],
        ),
        (
            "zfspool.spec.volumes.iops",
            vec!["Provisioned IOPS of EACH volume", "at most 500 per GiB"],
        ),
        (
            "zfspool.status.volumes",
            vec!["attachmentState", "Member index"],
        ),
        (
            "ebssnapshot.spec",
            vec!["standbySignal", "Stamp `standby.signal`", "deletionPolicy"],
        ),
        (
            "ebssnapshot.spec.consistency",
            vec!["nothing on ZFS, fsfreeze on ext4"],
        ),
        (
            "pgmlcluster.spec",
            vec![
                "instances",
                "Number of PostgreSQL instances",
                "ghcr.io/postgresml/postgresml",
            ],
        ),
        (
            "pgmlcluster.spec.backups.pgbackrest.credentials.mode",
            vec!["the node's EC2 instance profile", "IRSA", "PodIdentity"],
        ),
        (
            "pgmlcluster.spec.storage.zfs.template.volumes",
            vec!["sizeGiB"],
        ),
    ] {
        // The published OpenAPI picks up CRD changes a little after they are applied.
        // explain wraps long lines, so compare with whitespace collapsed.
        let flat = |o: &str| o.split_whitespace().collect::<Vec<_>>().join(" ");
        let out = eventually(&["explain", path], |o| {
            sentences.iter().all(|s| flat(o).contains(s))
        })
        .await;
        assert!(out.contains("pgml.io"), "kubectl explain {path}:\n{out}");
    }
}
