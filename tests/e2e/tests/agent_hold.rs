//! The node agent's hold on a ZfsPool source (docs/design/ebssnapshot.md), with the real
//! agent inside a simulated node, a Ready pool built by the real operator and agent, and a
//! fake PostgreSQL data directory on the pool's `pgdata` dataset. The test plays the
//! EbsSnapshot controller (status phase, nodeName, zfsPool, the pgml.io/node label) and
//! checks what the agent does: standby.signal while Held and never after, `status.hold`,
//! the deadline, and an agent killed at every step of the flow.

mod hold_common;

use std::time::{Duration, Instant};

use hold_common::*;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use pgml_api::snapshot::HoldState;
use pgml_api::{EbsSnapshot, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::nodes::{node_exec_ok, node_path_exists};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{has_condition, wait_for, wait_gone};
use serde_json::json;

const POOL_TIMEOUT: Duration = Duration::from_secs(180);

/// A namespace with a Ready single-volume pool on one node, its agent running and the
/// operator stopped (so that only the test writes the controller's EbsSnapshot fields).
struct ZfsBed {
    ns: TestNamespace,
    node: &'static NodeInfo,
    operator: Proc,
    agent: Proc,
    pool: String,
    /// The pool's pgdata dataset mount, holding a fake data directory.
    pgdata: String,
    api: Api<EbsSnapshot>,
    records: Records,
}

impl ZfsBed {
    async fn start(prefix: &str, node: usize, pool: &str) -> ZfsBed {
        let sb = Sandbox::get();
        let client = client().await;
        ensure_crds(&client, pgml_api::crds()).await;
        let ns = TestNamespace::new(&client, prefix).await;
        // ZFS pool names are the node's: one a failed run left behind must not collide.
        let suffix = ns.name().rsplit('-').next().unwrap_or_default();
        let pool = &format!("{pool}-{suffix}");
        let node = &sb.nodes[node];
        let mut operator = procs::operator(sb, ns.name());
        let agent = procs::agent(sb, node, ns.name());
        let pools: Api<ZfsPool> = ns.api();
        let obj: ZfsPool = serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": pool},
            "spec": {"nodeName": node.name, "layout": "raid0", "reclaimPolicy": "Delete",
                     "volumes": {"count": 1, "type": "gp3", "sizeGiB": 1}},
        }))
        .unwrap();
        pools.create(&PostParams::default(), &obj).await.unwrap();
        wait_for(&pools, pool, "Ready", POOL_TIMEOUT, |p: &ZfsPool| {
            has_condition(p, "Ready", "True")
        })
        .await;
        assert!(operator.stop(Duration::from_secs(20)), "operator stops");
        let pgdata = format!("{}/{pool}/pgdata", node.mnt_dir.display());
        let api = ns.api();
        let records = Records::of(node, ns.name());
        ZfsBed {
            ns,
            node,
            operator,
            agent,
            pool: pool.to_string(),
            pgdata,
            api,
            records,
        }
    }

    fn signal(&self) -> String {
        format!("{}/standby.signal", self.pgdata)
    }

    fn signal_exists(&self) -> bool {
        node_path_exists(self.node, &self.signal()).unwrap()
    }

    fn source(&self) -> serde_json::Value {
        json!({"zfsPool": {"name": self.pool}})
    }

    /// The controller's fields for a ZfsPool source (phase set by the caller).
    fn status(&self) -> serde_json::Value {
        json!({"source": format!("ZfsPool/{}", self.pool), "zfsPool": self.pool,
               "consistency": "None", "volumeCount": 1})
    }

    async fn snapshot(&self, name: &str, standby: &str, timeout_s: i32) -> FakeOperator {
        FakeOperator::create(
            &self.api,
            &snapshot(name, self.source(), standby, timeout_s),
            &self.node.name,
            self.status(),
        )
        .await
    }

    /// Snapshots first (no finalizer: the operator never saw them), then the pool with
    /// the operator back to delete its volume.
    async fn teardown(mut self) {
        delete_snapshots(&self.api).await;
        self.operator.start();
        let pools: Api<ZfsPool> = self.ns.api();
        let _ = pools.delete(&self.pool, &DeleteParams::default()).await;
        wait_gone(&pools, &self.pool, POOL_TIMEOUT).await;
        self.operator.stop(Duration::from_secs(20));
        self.agent.stop(Duration::from_secs(20));
        self.ns.cleanup().await;
    }
}

#[tokio::test]
async fn zfs_hold_stamps_while_held_releases_and_expires() {
    let mut bed = ZfsBed::start("hold", 0, "holdz").await;
    let node = bed.node;

    // standbySignal Always and no data directory yet: the hold fails, nothing is stamped.
    let mut s = bed.snapshot("always", "Always", 30).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Failed, HOLD_TIMEOUT, &bed.agent).await;
    let hold = o.status.as_ref().unwrap().hold.clone().unwrap();
    assert!(
        hold.message
            .as_deref()
            .is_some_and(|m| m.contains("no PostgreSQL data directory")),
        "{hold:?}"
    );
    assert!(bed.records.gone(&o));
    assert!(!bed.signal_exists());

    fake_pgdata(node, &bed.pgdata);

    // Auto with a data directory: stamped while Held, through Capturing.
    let mut s = bed.snapshot("auto", "Auto", 30).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    let st = o.status.clone().unwrap();
    let hold = st.hold.clone().unwrap();
    assert!(!hold.frozen, "ZFS is never frozen: {hold:?}");
    assert_eq!(hold.mount_path.as_deref(), Some(bed.pgdata.as_str()));
    assert_eq!(millis(&hold.deadline) - millis(&hold.held_at), 30_000);
    let sig = st.standby_signal.clone().expect("standbySignal");
    assert!(
        sig.stamped && !sig.removed && !sig.already_present,
        "{sig:?}"
    );
    assert_eq!(sig.path.as_deref(), Some(bed.pgdata.as_str()));
    assert!(bed.signal_exists(), "standby.signal while Held");
    // Owned like PG_VERSION, readable by its owner only.
    assert_eq!(owner_and_mode(node, &bed.signal()), "999:999:600");
    assert!(bed.records.exists(&o), "the hold record while Held");
    assert_agent_fields_only(&o);
    assert_eq!(st.phase, Some(pgml_api::snapshot::SnapshotPhase::Preparing));

    s.phase("Capturing").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hold_state(&s.get().await), Some(HoldState::Held));
    assert!(bed.signal_exists(), "standby.signal stays while Capturing");

    s.phase("Finalizing").await;
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    assert!(!bed.signal_exists(), "standby.signal removed at release");
    let st = o.status.clone().unwrap();
    let sig = st.standby_signal.clone().unwrap();
    assert!(sig.stamped && sig.removed, "{sig:?}");
    let hold = st.hold.clone().unwrap();
    assert!(millis(&hold.released_at) >= millis(&hold.held_at));
    assert!(millis(&hold.released_at) < millis(&hold.deadline));
    assert_eq!(st.frozen_millis, None);
    assert!(
        bed.records.gone(&o),
        "the record is deleted after the release"
    );
    assert_eq!(
        st.phase,
        Some(pgml_api::snapshot::SnapshotPhase::Finalizing)
    );
    assert_agent_fields_only(&o);

    // The source is a standby already: its standby.signal is reported and left alone.
    node_exec_ok(node, &["touch", &bed.signal()]).unwrap();
    let mut s = bed.snapshot("standby", "Auto", 30).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    let sig = o.status.unwrap().standby_signal.unwrap();
    assert!(
        sig.stamped && sig.already_present && !sig.removed,
        "{sig:?}"
    );
    s.phase("Finalizing").await;
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    let sig = o.status.unwrap().standby_signal.unwrap();
    assert!(sig.already_present && !sig.removed, "{sig:?}");
    assert!(
        bed.signal_exists(),
        "a standby's own standby.signal is never removed"
    );
    node_exec_ok(node, &["rm", &bed.signal()]).unwrap();

    // Never: held without a stamp.
    let mut s = bed.snapshot("never", "Never", 30).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    assert_eq!(o.status.unwrap().standby_signal, None);
    assert!(!bed.signal_exists());
    s.phase("Finalizing").await;
    wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;

    // The operator never comes back: the hold expires at its deadline, standby.signal gone.
    let mut s = bed.snapshot("deadline", "Auto", 3).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    let held_at = millis(&o.status.unwrap().hold.unwrap().held_at);
    assert!(bed.signal_exists());
    s.phase("Capturing").await;
    let o = wait_hold(
        &s,
        HoldState::Expired,
        Duration::from_secs(3 + 5),
        &bed.agent,
    )
    .await;
    assert!(
        !bed.signal_exists(),
        "standby.signal removed at the deadline"
    );
    let st = o.status.clone().unwrap();
    let hold = st.hold.unwrap();
    let released = millis(&hold.released_at);
    assert!(
        (held_at + 3_000..held_at + 3_000 + 2_500).contains(&released),
        "released {} ms after heldAt",
        released - held_at
    );
    assert!(hold.message.is_some_and(|m| m.contains("deadline")));
    assert!(st.standby_signal.unwrap().removed);
    assert!(bed.records.gone(&o));

    // Deleted while Held, with the controller's finalizer still on it: released on the
    // deletionTimestamp, reported on the deleting object.
    let mut obj = snapshot("deleting", bed.source(), "Auto", 30);
    obj.metadata.finalizers = Some(vec!["pgml.io/snapshots".into()]);
    let mut s = FakeOperator::create(&bed.api, &obj, &bed.node.name, bed.status()).await;
    s.phase("Preparing").await;
    wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    assert!(bed.signal_exists());
    s.delete().await;
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    assert!(o.metadata.deletion_timestamp.is_some());
    assert!(!bed.signal_exists(), "standby.signal removed on deletion");
    assert!(bed.records.gone(&o));
    bed.api
        .patch(
            "deleting",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();

    // Gone while Held (no finalizer): the sweep finds it gone and releases.
    let mut s = bed.snapshot("gone", "Auto", 30).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    s.delete().await;
    wait_gone(&bed.api, "gone", HOLD_TIMEOUT).await;
    let start = Instant::now();
    while bed.signal_exists() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !bed.signal_exists(),
        "standby.signal left after the object went away"
    );
    assert!(bed.records.gone(&o));

    // Stopped (SIGTERM) while Held: the agent sees the hold through to its end before it
    // exits, rather than leave standby.signal to whoever comes next.
    let mut s = bed.snapshot("shutdown", "Auto", 4).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    let deadline = millis(&o.status.unwrap().hold.unwrap().deadline);
    assert!(
        bed.agent.stop(HOLD_TIMEOUT),
        "a clean exit\n{}",
        tail(&bed.agent)
    );
    let now = now_ms();
    assert!(
        now >= deadline,
        "exited {} ms before the deadline",
        deadline - now
    );
    assert_eq!(hold_state(&s.get().await), Some(HoldState::Expired));
    assert!(!bed.signal_exists());
    bed.agent.start();

    bed.teardown().await;
}

/// Kills the agent at `fp` during one snapshot's flow, restarts it unarmed, and checks that
/// the flow still ends with nothing of the hold left.
async fn killed_at(bed: &mut ZfsBed, i: usize, fp: &str) {
    arm(&mut bed.agent, fp);
    let mut s = bed.snapshot(&format!("kill-{i}"), "Auto", 20).await;
    s.phase("Preparing").await;
    match fp {
        "hold.after-record" | "hold.after-stamp" => {
            died_at(&mut bed.agent, fp);
            let o = s.get().await;
            assert!(
                bed.records.exists(&o),
                "the record is written before anything"
            );
            assert_eq!(bed.signal_exists(), fp == "hold.after-stamp");
            bed.agent.start();
            // Carried on, with the deadline it had.
            let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
            let hold = o.status.unwrap().hold.unwrap();
            assert_eq!(millis(&hold.deadline) - millis(&hold.held_at), 20_000);
            assert!(bed.signal_exists());
            s.phase("Finalizing").await;
        }
        "hold.after-held" => {
            killed_while_held(&s, &mut bed.agent, fp).await;
            // The operator may be capturing right now: a restarted agent keeps the stamp.
            s.phase("Capturing").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(
                bed.signal_exists(),
                "standby.signal removed before the deadline"
            );
            assert_eq!(hold_state(&s.get().await), Some(HoldState::Held));
            s.phase("Finalizing").await;
        }
        _ => {
            wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
            s.phase("Finalizing").await;
            died_at(&mut bed.agent, fp);
            assert!(bed.signal_exists(), "died before removing it");
            bed.agent.start();
        }
    }
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    assert!(!bed.signal_exists(), "standby.signal left after {fp}");
    assert!(bed.records.gone(&o), "hold record left after {fp}");
    assert!(o.status.unwrap().standby_signal.unwrap().removed);
}

#[tokio::test]
async fn zfs_hold_agent_killed_at_each_failpoint() {
    let mut bed = ZfsBed::start("holdkill", 1, "holdk").await;
    fake_pgdata(bed.node, &bed.pgdata);
    // hold.after-freeze is on the ext4 path only (agent_hold_ext4.rs).
    for (i, fp) in FAILPOINTS
        .iter()
        .filter(|f| **f != "hold.after-freeze")
        .enumerate()
    {
        let start = Instant::now();
        killed_at(&mut bed, i, fp).await;
        eprintln!("{fp}: {:?}", start.elapsed());
    }

    // Dead across the deadline with nobody releasing: the restarted agent expires the hold
    // at once (start-up pass) and removes standby.signal.
    arm(&mut bed.agent, "hold.after-held");
    let mut s = bed.snapshot("dead-past-deadline", "Auto", 3).await;
    s.phase("Preparing").await;
    wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    assert!(bed.agent.wait_exit(HOLD_TIMEOUT), "{}", tail(&bed.agent));
    s.phase("Capturing").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    bed.agent.unset_env("PGML_FAILPOINTS");
    bed.agent.start();
    let o = wait_hold(&s, HoldState::Expired, Duration::from_secs(10), &bed.agent).await;
    assert!(
        !bed.signal_exists(),
        "standby.signal left past the deadline"
    );
    assert!(bed.records.gone(&o));

    // Restarted while the API server does not answer it: the sweep still ends the hold on
    // the node at its deadline; the status follows once the API server answers again.
    let mut s = bed.snapshot("api-down", "Auto", 4).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    let deadline = millis(&o.status.as_ref().unwrap().hold.as_ref().unwrap().deadline);
    bed.agent.kill();
    let sb = Sandbox::get();
    let good = sb.kube.kubeconfig.display().to_string();
    let bad = std::env::temp_dir().join(format!("kubeconfig-unreachable-{}", bed.ns.name()));
    let text = std::fs::read_to_string(&sb.kube.kubeconfig).unwrap();
    assert!(
        text.contains(&sb.kube.server),
        "the kubeconfig names its server"
    );
    std::fs::write(&bad, text.replace(&sb.kube.server, "https://127.0.0.1:1")).unwrap();
    bed.agent.set_env("KUBECONFIG", &bad.display().to_string());
    bed.agent.start();
    let now = now_ms();
    tokio::time::sleep(Duration::from_millis(
        (deadline - now).max(0) as u64 + 2_500,
    ))
    .await;
    assert!(
        !bed.signal_exists(),
        "standby.signal left past the deadline with the API server away\n{}",
        tail(&bed.agent)
    );
    let record = std::fs::read_to_string(bed.records.path(&o))
        .expect("the record stays until the status is written");
    assert!(record.contains("\"undone\""), "{record}");
    assert_eq!(hold_state(&s.get().await), Some(HoldState::Held));
    bed.agent.kill();
    bed.agent.set_env("KUBECONFIG", &good);
    bed.agent.start();
    let o = wait_hold(&s, HoldState::Expired, HOLD_TIMEOUT, &bed.agent).await;
    assert!(bed.records.gone(&o));
    let _ = std::fs::remove_file(&bad);

    bed.teardown().await;
}
