//! The node agent's hold on an ext4 source with `consistency: Fsfreeze`: an EBS volume of
//! the sandbox's EC2, attached to the node's instance (its by-id link points at an image
//! file), on a loop device with ext4, mounted inside the node where the EBS CSI driver
//! stages volumes, with a fake PostgreSQL data directory. The test plays the EbsSnapshot
//! controller; the real agent finds the mount from the volume ID, stamps standby.signal and
//! has pgml-freeze-guard freeze the file system. Frozen is observed as a write that blocks,
//! thawed as the same write completing — also when the agent or the guard is SIGKILLed.

mod hold_common;

use std::process::Child;
use std::time::{Duration, Instant};

use hold_common::*;
use kube::Api;
use pgml_api::EbsSnapshot;
use pgml_api::snapshot::HoldState;
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{attached_volume, ebs_link, ec2_client};
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::nodes::{NodeExt4, node_command, node_exec, node_path_exists};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use serde_json::json;

struct Ext4Bed {
    ns: TestNamespace,
    node: &'static NodeInfo,
    agent: Proc,
    api: Api<EbsSnapshot>,
    ec2: aws_sdk_ec2::Client,
    volume: String,
    fs: NodeExt4,
    pgdata: String,
    writes: u32,
    records: Records,
}

impl Ext4Bed {
    async fn start(prefix: &str, node: usize) -> Ext4Bed {
        let sb = Sandbox::get();
        let client = client().await;
        ensure_crds(&client, pgml_api::crds()).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let node = &sb.nodes[node];
        let ec2 = ec2_client(sb).await;
        let volume = attached_volume(&ec2, node, ns.name()).await;
        let image = std::fs::canonicalize(ebs_link(node, &volume))
            .expect("the volume's by-id link on the node after AttachVolume");
        let mount = format!(
            "{}/kubelet/{}/pv1/globalmount",
            node.root.display(),
            ns.name()
        );
        let fs = NodeExt4::create(node, &image, &mount).expect("ext4 on a loop device");
        let pgdata = format!("{mount}/pgdata");
        fake_pgdata(node, &pgdata);
        let agent = procs::agent(sb, node, ns.name());
        let api = ns.api();
        let records = Records::of(node, ns.name());
        Ext4Bed {
            ns,
            node,
            agent,
            api,
            ec2,
            volume,
            fs,
            pgdata,
            writes: 0,
            records,
        }
    }

    fn signal_exists(&self) -> bool {
        node_path_exists(self.node, &format!("{}/standby.signal", self.pgdata)).unwrap()
    }

    async fn snapshot(&self, name: &str, timeout_s: i32) -> FakeOperator {
        FakeOperator::create(
            &self.api,
            &snapshot(
                name,
                json!({"persistentVolumeClaim": {"name": "pvc1"}}),
                "Auto",
                timeout_s,
            ),
            &self.node.name,
            json!({"source": "PersistentVolumeClaim/pvc1", "consistency": "Fsfreeze",
                   "instanceId": self.node.instance_id, "volumeCount": 1,
                   "snapshots": [{"memberIndex": 0, "volumeId": self.volume, "sizeGiB": 1}]}),
        )
        .await
    }

    /// Starts `timeout <secs> touch <new file>` on the file system: it blocks while the
    /// file system is frozen.
    fn start_write(&mut self, secs: u32) -> Child {
        self.writes += 1;
        let file = format!("{}/write-{}", self.fs.mount, self.writes);
        node_command(self.node, &["timeout", &secs.to_string(), "touch", &file])
            .unwrap()
            .spawn()
            .unwrap()
    }

    /// A write completes within 5 seconds: the file system is not frozen.
    fn assert_writable(&mut self, what: &str) {
        self.writes += 1;
        let file = format!("{}/write-{}", self.fs.mount, self.writes);
        let out = node_exec(self.node, &["timeout", "5", "touch", &file]).unwrap();
        assert!(
            out.status.success(),
            "{what}: the file system is still frozen"
        );
    }

    async fn teardown(mut self) {
        delete_snapshots(&self.api).await;
        self.agent.stop(Duration::from_secs(20));
        self.fs
            .remove()
            .expect("unmounting and detaching the loop device");
        let _ = self
            .ec2
            .detach_volume()
            .volume_id(&self.volume)
            .instance_id(&self.node.instance_id)
            .force(true)
            .send()
            .await;
        let _ = self
            .ec2
            .delete_volume()
            .volume_id(&self.volume)
            .send()
            .await;
        self.ns.cleanup().await;
    }
}

/// Whether the write is still running after `wait` (blocked by the freeze).
fn still_blocked(c: &mut Child, wait: Duration) -> bool {
    std::thread::sleep(wait);
    c.try_wait().unwrap().is_none()
}

/// Waits for the write to end; returns its exit code and how long that took.
fn finish(c: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = c.try_wait().unwrap() {
            return (st.code(), start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    panic!("the write did not finish within {limit:?}: the file system stayed frozen");
}

#[tokio::test]
async fn ext4_frozen_while_held_thawed_at_release_or_deadline() {
    let mut bed = Ext4Bed::start("holdext4", 2).await;

    // Frozen while Held, thawed at Finalizing.
    let mut s = bed.snapshot("freeze", 20).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    let st = o.status.clone().unwrap();
    let hold = st.hold.clone().unwrap();
    assert!(hold.frozen, "{hold:?}");
    assert_eq!(hold.mount_path.as_deref(), Some(bed.fs.mount.as_str()));
    let sig = st.standby_signal.clone().unwrap();
    assert_eq!(sig.path.as_deref(), Some(bed.pgdata.as_str()));
    assert!(sig.stamped && !sig.removed && !sig.already_present);
    let uid = o.metadata.uid.clone().unwrap();
    assert_eq!(guards_of(&uid).len(), 1, "one freeze guard");
    assert!(bed.records.exists(&o), "the hold record while Held");
    let mut w = bed.start_write(30);
    assert!(
        still_blocked(&mut w, Duration::from_millis(1500)),
        "a write went through while Held: not frozen"
    );
    assert!(bed.signal_exists(), "standby.signal while Held");
    s.phase("Finalizing").await;
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    let (code, _) = finish(&mut w, Duration::from_secs(5));
    assert_eq!(code, Some(0), "the blocked write completes after the thaw");
    bed.assert_writable("after the release");
    let st = o.status.clone().unwrap();
    let frozen = st.frozen_millis.expect("frozenMillis");
    assert!((1500..20_000).contains(&frozen), "frozenMillis {frozen}");
    assert!(st.standby_signal.unwrap().removed);
    assert!(!bed.signal_exists(), "standby.signal removed at release");
    assert!(guards_of(&uid).is_empty(), "the guard exited");
    assert!(bed.records.gone(&o));
    assert_agent_fields_only(&o);

    // The "operator" dies and the agent is SIGKILLed while frozen: the guard thaws at the
    // deadline by itself.
    let mut s = bed.snapshot("agent-killed", 3).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    bed.agent.kill();
    let uid = o.metadata.uid.clone().unwrap();
    let deadline = millis(&o.status.unwrap().hold.unwrap().deadline);
    assert_eq!(guards_of(&uid).len(), 1, "the guard outlives the agent");
    let mut w = bed.start_write(30);
    assert!(
        still_blocked(&mut w, Duration::from_millis(500)),
        "not frozen"
    );
    let (code, _) = finish(&mut w, Duration::from_secs(10));
    let thawed_at = now_ms();
    assert_eq!(code, Some(0));
    assert!(
        (deadline - 200..deadline + 3_000).contains(&thawed_at),
        "thawed {} ms from the deadline",
        thawed_at - deadline
    );
    assert!(
        guards_of(&uid).is_empty(),
        "the guard exited after the thaw"
    );
    assert!(
        bed.signal_exists(),
        "nobody alive removed standby.signal yet"
    );
    // The agent comes back: the hold is over (Expired), standby.signal goes.
    bed.agent.start();
    let o = wait_hold(&s, HoldState::Expired, HOLD_TIMEOUT, &bed.agent).await;
    assert!(!bed.signal_exists());
    let st = o.status.clone().unwrap();
    let frozen = st
        .frozen_millis
        .expect("frozenMillis from the guard's output");
    assert!((2_000..4_500).contains(&frozen), "frozenMillis {frozen}");
    assert!(bed.records.gone(&o));

    // The guard is SIGKILLed while frozen: the agent thaws with fsfreeze -u itself.
    let mut s = bed.snapshot("guard-killed", 20).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    let uid = o.metadata.uid.clone().unwrap();
    let guards = guards_of(&uid);
    assert_eq!(guards.len(), 1);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &guards[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut w = bed.start_write(30);
    assert!(
        still_blocked(&mut w, Duration::from_millis(1000)),
        "still frozen without its guard"
    );
    s.phase("Finalizing").await;
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    let (code, _) = finish(&mut w, Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(!bed.signal_exists());
    assert!(o.status.unwrap().frozen_millis.is_some_and(|ms| ms >= 1000));

    bed.teardown().await;
}

/// The agent killed at `fp` in one snapshot's flow, restarted unarmed: the flow ends with
/// the file system thawed, no guard, no standby.signal of ours and no record.
async fn killed_at(bed: &mut Ext4Bed, i: usize, fp: &str) {
    arm(&mut bed.agent, fp);
    let mut s = bed.snapshot(&format!("kill-{i}"), 20).await;
    s.phase("Preparing").await;
    match fp {
        "hold.after-record" | "hold.after-stamp" | "hold.after-freeze" => {
            died_at(&mut bed.agent, fp);
            if fp == "hold.after-freeze" {
                let mut w = bed.start_write(30);
                assert!(still_blocked(&mut w, Duration::from_millis(500)));
                bed.agent.start();
                let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
                let uid = o.metadata.uid.clone().unwrap();
                assert_eq!(guards_of(&uid).len(), 1, "the dead agent's guard is kept");
                s.phase("Finalizing").await;
                wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
                finish(&mut w, Duration::from_secs(5));
            } else {
                bed.agent.start();
                let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
                assert!(o.status.unwrap().hold.unwrap().frozen);
                s.phase("Finalizing").await;
            }
        }
        "hold.after-held" => {
            killed_while_held(&s, &mut bed.agent, fp).await;
            s.phase("Capturing").await;
            let mut w = bed.start_write(30);
            assert!(
                still_blocked(&mut w, Duration::from_millis(1500)),
                "a restarted agent thawed before the capture was over"
            );
            assert!(bed.signal_exists());
            s.phase("Finalizing").await;
            finish(&mut w, Duration::from_secs(5));
        }
        _ => {
            wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
            s.phase("Finalizing").await;
            died_at(&mut bed.agent, fp);
            bed.agent.start();
        }
    }
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    let uid = o.metadata.uid.clone().unwrap();
    bed.assert_writable(fp);
    assert!(guards_of(&uid).is_empty(), "a guard left after {fp}");
    assert!(!bed.signal_exists(), "standby.signal left after {fp}");
    assert!(bed.records.gone(&o), "hold record left after {fp}");
    let st = o.status.unwrap();
    assert!(st.standby_signal.unwrap().removed);
    assert!(st.frozen_millis.is_some(), "{fp}: frozenMillis");
}

#[tokio::test]
async fn ext4_hold_agent_killed_at_each_failpoint() {
    let mut bed = Ext4Bed::start("holdext4kill", 0).await;
    for (i, fp) in FAILPOINTS.iter().enumerate() {
        let start = Instant::now();
        killed_at(&mut bed, i, fp).await;
        eprintln!("{fp}: {:?}", start.elapsed());
    }

    // Killed while frozen, and its state directory wiped: the restarted agent rebuilds the
    // record from status.hold, finds the guard by its command line and undoes everything.
    bed.agent.stop(Duration::from_secs(20));
    bed.agent.start();
    let mut s = bed.snapshot("wiped", 20).await;
    s.phase("Preparing").await;
    let o = wait_hold(&s, HoldState::Held, HOLD_TIMEOUT, &bed.agent).await;
    bed.agent.kill();
    std::fs::remove_dir_all(&bed.records.dir).unwrap();
    assert!(!bed.records.exists(&o));
    bed.agent.start();
    s.phase("Capturing").await;
    let mut w = bed.start_write(30);
    assert!(
        still_blocked(&mut w, Duration::from_millis(1500)),
        "thawed too early"
    );
    assert!(bed.signal_exists());
    s.phase("Finalizing").await;
    let o = wait_hold(&s, HoldState::Released, HOLD_TIMEOUT, &bed.agent).await;
    finish(&mut w, Duration::from_secs(5));
    bed.assert_writable("after a release from a rebuilt record");
    assert!(
        !bed.signal_exists(),
        "standby.signal left with the record lost"
    );
    let uid = o.metadata.uid.clone().unwrap();
    assert!(guards_of(&uid).is_empty());
    assert!(bed.records.gone(&o));
    assert!(o.status.unwrap().standby_signal.unwrap().removed);

    bed.teardown().await;
}
