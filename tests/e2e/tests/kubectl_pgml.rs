//! `kubectl pgml`, the plugin, run through kubectl's plugin mechanism (the sandbox's
//! kubectl with the built `kubectl-pgml` first on PATH) against a PgmlCluster of two
//! instances at the object level: the real operator and node agents on the sandbox, kwok
//! Pods, real ZfsPools on zfs-fuse nodes and EBS snapshots in the simulator; the test writes
//! each Pod's `pgml.io/instance-status` annotation as its instance manager would (roles,
//! LSNs), so the status shows roles and lag without PostgreSQL.

mod cluster_common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Instant;

use cluster_common::{ClusterFixture, TIMEOUT, kubectl_pgml, zfs_cluster};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use pgml_testbed::aws::SimAdmin;
use pgml_testbed::wait::{has_condition, wait_gone};
use serde_json::{Value, json};

const CLUSTER: &str = "main";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn run(ns: &str, args: &[&str]) -> Run {
    let out = kubectl_pgml(ns, args)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl pgml {}: {e}", args.join(" ")));
    Run::of(out)
}

/// The words of the first line of `text` that starts (after indentation) with `first`.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
        .unwrap_or_else(|| panic!("no line starting with {first} in:\n{text}"))
}

fn primary(lsn: &str) -> Value {
    json!({"role": "primary", "running": true, "ready": true, "lsn": lsn, "timeline": 1})
}

fn replica(replay: &str) -> Value {
    json!({"role": "replica", "running": true, "ready": true, "lsn": replay, "receiveLsn": replay, "replayLsn": replay, "streaming": true, "timeline": 1})
}

async fn report(f: &ClusterFixture, pod: &str, status: Value) {
    let body =
        json!({"metadata": {"annotations": {"pgml.io/instance-status": status.to_string()}}});
    f.pods()
        .patch(pod, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap_or_else(|e| panic!("annotating {pod}: {e}"));
}

fn pool_health(c: &PgmlCluster, instance: &str) -> Option<String> {
    c.status
        .as_ref()?
        .instances
        .iter()
        .find(|i| i.name == instance)?
        .pool_health
        .clone()
}

/// Status, snapshot (and its restore), errors and switchover on one cluster.
#[tokio::test]
async fn kubectl_pgml_status_snapshot_restore_and_switchover() {
    let started = Instant::now();
    let f = ClusterFixture::start("kpgml", CLUSTER, &[0, 1], &[]).await;
    let ns = f.ns.name().to_string();
    // One 1 GiB volume per pool (each node's attachment slots are shared by every test);
    // the replica is seeded by pg_basebackup, so no seed snapshot is made.
    let m = zfs_cluster(
        CLUSTER,
        2,
        json!({"count": 1, "sizeGiB": 1}),
        json!({"replicas": {"seedFrom": "PgBasebackup"}}),
    );
    f.apply(&m).await;
    for pod in ["main-1", "main-2"] {
        f.wait_pod(pod, "Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    }
    report(&f, "main-1", primary("0/3000100")).await;
    report(&f, "main-2", replica("0/3000000")).await;
    let c = f
        .wait_cluster("2 ready, pools ONLINE", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.ready_instances == Some(2))
                && pool_health(c, "main-1").as_deref() == Some("ONLINE")
                && pool_health(c, "main-2").as_deref() == Some("ONLINE")
        })
        .await;
    let st = c.status.clone().unwrap();
    let node = |i: &str| {
        st.instances
            .iter()
            .find(|x| x.name == i)
            .and_then(|x| x.node.clone())
            .unwrap()
    };
    eprintln!("cluster ready: {:?}", started.elapsed());

    // status: the cluster, each instance with its role, lag and pool health.
    let out = run(&ns, &["status", CLUSTER]).expect(0, "status");
    eprintln!("kubectl pgml status {CLUSTER}:\n{}", out.stdout);
    let text = out.stdout;
    assert!(!text.contains('\x1b'), "no colours off a terminal");
    assert_eq!(
        row(&text, "PgmlCluster"),
        ["PgmlCluster", &format!("{ns}/{CLUSTER}")]
    );
    assert_eq!(row(&text, "Primary:"), ["Primary:", "main-1"]);
    assert_eq!(row(&text, "Instances:")[1..3], ["2/2", "ready"]);
    let m1 = row(&text, "main-1");
    assert_eq!(
        m1[..4],
        ["main-1", "Primary", "Ready", node("main-1").as_str()]
    );
    assert!(
        m1.contains(&"0/3000100") && m1.contains(&"ONLINE"),
        "{m1:?}"
    );
    let m2 = row(&text, "main-2");
    assert_eq!(
        m2[..4],
        ["main-2", "Replica", "Ready", node("main-2").as_str()]
    );
    assert!(m2.contains(&"ONLINE"), "{m2:?}");
    let lag = m2
        .iter()
        .position(|w| *w == "0/3000000")
        .expect("main-2's LSN")
        + 1;
    assert_eq!(
        m2[lag..lag + 2],
        ["256", "B"],
        "lag 0/3000100 - 0/3000000: {m2:?}"
    );
    assert!(text.contains("not configured (spec.backups.pgbackrest unset)"));
    assert!(text.contains("no EbsSnapshot of this cluster"), "{text}");
    let ready = row(&text, "Ready");
    assert_eq!(ready[1], "True", "the Ready condition: {ready:?}");

    // Errors: a missing cluster (exit 1, one clear line), a usage error (exit 2).
    let missing = run(&ns, &["status", "missing"]).expect(1, "status missing");
    assert_eq!(
        missing.stderr.trim(),
        format!("error: PgmlCluster missing not found in namespace {ns}")
    );
    assert!(missing.stdout.is_empty());
    run(&ns, &["restore", "anything"]).expect(2, "restore without --pool/--node");
    let refused = run(&ns, &["snapshot", "missing", "--wait"]).expect(1, "snapshot missing");
    assert!(
        refused.stderr.contains("PgmlCluster missing not found"),
        "{}",
        refused.stderr
    );

    // snapshot --wait: Completed, of the ready replica, by the plugin's field manager.
    let t = Instant::now();
    let out = run(
        &ns,
        &[
            "snapshot",
            CLUSTER,
            "--name",
            "kp-1",
            "--wait",
            "--timeout",
            "4m",
        ],
    )
    .expect(0, "snapshot --wait");
    eprintln!(
        "snapshot in {:?}:\n{}{}",
        t.elapsed(),
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("ebssnapshot.pgml.io/kp-1 created"),
        "{}",
        out.stdout
    );
    let done = row(&out.stdout, "EbsSnapshot");
    assert_eq!(
        done[..3],
        ["EbsSnapshot", "kp-1", "Completed"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(main-2)"),
        "the replica is captured: {}",
        out.stdout
    );
    let snaps: Api<EbsSnapshot> = f.ns.api();
    let kp1 = snaps.get("kp-1").await.unwrap();
    assert_eq!(
        kp1.status.as_ref().and_then(|s| s.phase),
        Some(SnapshotPhase::Completed)
    );
    assert_eq!(kp1.spec.source.cluster.as_ref().unwrap().name, CLUSTER);
    assert!(
        kp1.managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("kubectl-pgml")),
        "{:?}",
        kp1.managed_fields()
    );
    // The next status lists it (and, once the operator has seen it, as the last completed).
    f.wait_cluster("lastSnapshot kp-1", |c| {
        c.status
            .as_ref()
            .and_then(|s| s.last_snapshot.as_ref())
            .map(|r| r.name.as_str())
            == Some("kp-1")
    })
    .await;
    let text = run(&ns, &["status", CLUSTER]).expect(0, "status").stdout;
    assert_eq!(
        row(&text, "kp-1")[..4],
        ["kp-1", "Completed", "manual", "main-2"],
        "{text}"
    );
    assert_eq!(
        row(&text, "Last")[..3],
        ["Last", "completed:", "kp-1"],
        "{text}"
    );

    // -o json parses and says the same.
    let out = run(&ns, &["status", CLUSTER, "-o", "json"]).expect(0, "status -o json");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status -o json is not JSON ({e}):\n{}", out.stdout));
    assert_eq!(v["name"], CLUSTER);
    assert_eq!(v["namespace"], ns.as_str());
    assert_eq!(v["currentPrimary"], "main-1");
    assert_eq!(v["instancesReady"], 2);
    let roles: Vec<(&str, &str, &str)> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap(),
                i["role"].as_str().unwrap(),
                i["poolHealth"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("main-1", "Primary", "ONLINE"),
            ("main-2", "Replica", "ONLINE")
        ]
    );
    assert_eq!(v["instances"][1]["lagBytes"], 256);
    assert!(v["instances"][0]["poolSizeBytes"].as_i64().unwrap() > 0);
    assert_eq!(v["snapshots"]["recent"][0]["name"], "kp-1");
    assert_eq!(v["snapshots"]["recent"][0]["phase"], "Completed");
    assert_eq!(v["snapshots"]["lastCompleted"], "kp-1");

    // A snapshot AWS fails: --wait exits 1 with the Ready condition's message; the next
    // status lists it Failed with why, the failed LastSnapshotSucceeded, and the cluster's
    // SnapshotFailed Warning, while the last completed one stays kp-1.
    let pools: Api<ZfsPool> = f.ns.api();
    let member = pools.get("main-2").await.unwrap().status.unwrap().volumes[0]
        .volume_id
        .clone()
        .unwrap();
    let fault = SimAdmin::from_sandbox(f.sb)
        .fault(json!({"kind": "snapshot_error", "count": 1, "volume_id": member}))
        .unwrap();
    let failed = run(
        &ns,
        &[
            "snapshot",
            CLUSTER,
            "--name",
            "kp-2",
            "--wait",
            "--timeout",
            "4m",
        ],
    )
    .expect(1, "snapshot --wait of a failing snapshot");
    drop(fault);
    let line = failed.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error: EbsSnapshot kp-2 failed: "),
        "{}",
        failed.stderr
    );
    f.wait_cluster("LastSnapshotSucceeded False", |c| {
        has_condition(c, "LastSnapshotSucceeded", "False")
    })
    .await;
    f.wait_event("a SnapshotFailed Warning", |e| {
        e.reason.as_deref() == Some("SnapshotFailed") && e.type_.as_deref() == Some("Warning")
    })
    .await;
    let text = run(&ns, &["status", CLUSTER]).expect(0, "status").stdout;
    eprintln!("after a failed snapshot:\n{text}");
    assert_eq!(
        row(&text, "kp-2")[..4],
        ["kp-2", "Failed", "manual", "main-2"],
        "{text}"
    );
    assert_eq!(row(&text, "kp-1")[1], "Completed", "{text}");
    assert_eq!(
        row(&text, "Last")[..3],
        ["Last", "completed:", "kp-1"],
        "{text}"
    );
    let last = text
        .lines()
        .find(|l| l.trim_start().starts_with("Last snapshot:"))
        .unwrap_or_else(|| panic!("no failed LastSnapshotSucceeded line:\n{text}"));
    assert!(
        last.contains("SnapshotFailed: EbsSnapshot kp-2 failed") && last.contains("kp-1"),
        "{text}"
    );
    let warnings = text.split("Recent warnings").nth(1).unwrap();
    assert!(
        warnings
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("SnapshotFailed")),
        "{text}"
    );
    snaps
        .delete("kp-2", &DeleteParams::default())
        .await
        .unwrap();

    // restore --wait: a new pool from kp-1 on the primary's node (not the captured pool's,
    // which holds a pool with the same GUID), Online, then removed again.
    let t = Instant::now();
    let target = node("main-1");
    let out = run(
        &ns,
        &[
            "restore",
            "kp-1",
            "--pool",
            "kp-copy",
            "--node",
            &target,
            "--reclaim-policy",
            "delete",
            "--wait",
            "--timeout",
            "4m",
        ],
    )
    .expect(0, "restore --wait");
    eprintln!(
        "restore in {:?}:\n{}{}",
        t.elapsed(),
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("zfspool.pgml.io/kp-copy created"),
        "{}",
        out.stdout
    );
    let online = row(&out.stdout, "ZfsPool");
    assert_eq!(
        online[..3],
        ["ZfsPool", "kp-copy", "Online"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("health ONLINE") && out.stdout.contains("restored from kp-1"));
    let copy = pools.get("kp-copy").await.unwrap();
    assert_eq!(copy.spec.node_name, target);
    assert_eq!(
        copy.spec
            .restore_from
            .as_ref()
            .map(|r| r.ebs_snapshot_name.as_str()),
        Some("kp-1")
    );
    let refused = run(
        &ns,
        &[
            "restore",
            "kp-1",
            "--pool",
            "kp-copy2",
            "--node",
            "no-such-node",
        ],
    )
    .expect(1, "restore on a missing node");
    assert_eq!(refused.stderr.trim(), "error: node no-such-node not found");
    pools
        .delete("kp-copy", &DeleteParams::default())
        .await
        .unwrap();

    // switchover: refused unless to a known ready replica.
    let refused = run(&ns, &["switchover", CLUSTER, "main-9"]).expect(1, "switchover main-9");
    assert_eq!(
        refused.stderr.trim(),
        "error: main-9 is not an instance of PgmlCluster main (its status lists main-1, main-2)"
    );
    let refused = run(&ns, &["switchover", CLUSTER, "main-1"]).expect(1, "switchover main-1");
    assert!(
        refused.stderr.contains("already the primary"),
        "{}",
        refused.stderr
    );
    assert_eq!(f.clusters().get(CLUSTER).await.unwrap().spec.primary, None);

    // A valid one patches spec.primary (manager kubectl-pgml); --wait returns once the
    // status shows main-2 primary, which it does when the instance managers report the
    // promotion (written here, as cluster_objects does).
    let waiting = tokio::process::Command::from(kubectl_pgml(
        &ns,
        &["switchover", CLUSTER, "main-2", "--wait", "--timeout", "3m"],
    ))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("kubectl pgml switchover");
    let c = f
        .wait_cluster("spec.primary main-2", |c| {
            c.spec.primary.as_deref() == Some("main-2")
        })
        .await;
    let ours = c
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("kubectl-pgml"))
        .unwrap_or_else(|| panic!("no kubectl-pgml manager: {:?}", c.managed_fields()));
    let fields = serde_json::to_string(&ours.fields_v1).unwrap();
    assert!(fields.contains("f:primary"), "{fields}");
    assert_eq!(ours.operation.as_deref(), Some("Update"));
    f.wait_cluster("targetPrimary main-2", |c| {
        c.status.as_ref().and_then(|s| s.target_primary.as_deref()) == Some("main-2")
    })
    .await;
    report(
        &f,
        "main-1",
        json!({"role": "replica", "running": false, "ready": false, "demoted": true, "lsn": "0/3000200"}),
    )
    .await;
    report(&f, "main-2", primary("0/3000200")).await;
    let out = tokio::time::timeout(TIMEOUT, waiting.wait_with_output())
        .await
        .expect("switchover --wait returns")
        .unwrap();
    let out = Run::of(out).expect(0, "switchover --wait");
    assert!(out.stdout.contains("spec.primary=main-2"), "{}", out.stdout);
    assert!(
        out.stdout.contains("main-2 is the primary of main"),
        "{}",
        out.stdout
    );
    report(&f, "main-1", replica("0/3000200")).await;
    f.wait_cluster("2 ready after the switchover", |c| {
        c.status.as_ref().is_some_and(|s| {
            s.ready_instances == Some(2) && s.current_primary.as_deref() == Some("main-2")
        })
    })
    .await;
    let text = run(&ns, &["status", CLUSTER]).expect(0, "status").stdout;
    eprintln!("after the switchover:\n{text}");
    assert_eq!(row(&text, "Primary:"), ["Primary:", "main-2"]);
    assert_eq!(row(&text, "main-2")[1], "Primary");
    assert_eq!(row(&text, "main-1")[1], "Replica");

    snaps
        .delete("kp-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&snaps, "kp-1", TIMEOUT).await;
    wait_gone(&snaps, "kp-2", TIMEOUT).await;
    wait_gone(&pools, "kp-copy", TIMEOUT).await;
    eprintln!("kubectl pgml: {:?}", started.elapsed());
    // The pools go with the cluster while the operator and agents still run (their
    // volumes would otherwise stay attached to the shared nodes).
    f.delete_cluster(&DeleteParams::default()).await;
    f.wait_pools_gone(&["main-1", "main-2"]).await;
    f.finish().await;
}

/// The plugin is where `cargo build --workspace --bins` puts it (what `make build` runs).
#[test]
fn the_plugin_is_built_with_the_workspace() {
    let bin: PathBuf = pgml_testbed::sandbox::workspace_bin("kubectl-pgml");
    let out = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for cmd in ["status", "snapshot", "restore", "switchover"] {
        assert!(help.contains(cmd), "{help}");
    }
}
