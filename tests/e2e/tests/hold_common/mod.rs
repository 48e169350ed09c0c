//! What the agent hold tests share. The operator's EbsSnapshot controller is not in these
//! tests: the test plays it, writing the controller's status fields with server-side apply
//! under its own field manager, and watches what the real agent (a real process inside a
//! simulated node) does on the node and in `status.hold`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use pgml_api::EbsSnapshot;
use pgml_api::common::{Time, keys};
use pgml_api::snapshot::HoldState;
use pgml_testbed::failpoint;
use pgml_testbed::nodes::node_exec_ok;
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::try_wait_for;
use serde_json::{Value, json};

/// The field manager the test writes the controller's fields with.
pub const TEST_OPERATOR: &str = "test-operator";

/// How long the agent may take for a step of the hold.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(20);

/// Every agent failpoint of the hold, in flow order (docs/design/ebssnapshot.md).
pub const FAILPOINTS: &[&str] = &[
    "hold.after-record",
    "hold.after-stamp",
    "hold.after-freeze",
    "hold.after-held",
    "hold.before-release",
    "hold.after-thaw",
];

/// An EbsSnapshot as a user writes it.
pub fn snapshot(name: &str, source: Value, standby: &str, timeout_s: i32) -> EbsSnapshot {
    serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "EbsSnapshot",
        "metadata": {"name": name},
        "spec": {
            "source": source,
            "standbySignal": standby,
            "freezeTimeoutSeconds": timeout_s,
        },
    }))
    .expect("EbsSnapshot object")
}

/// The test in the controller's place for one EbsSnapshot: the controller's status fields
/// it last applied (each apply carries all of them, as server-side apply wants).
pub struct FakeOperator {
    pub api: Api<EbsSnapshot>,
    pub name: String,
    pub status: Value,
}

impl FakeOperator {
    /// Creates the object, labels it for `node` and applies `status` (phase excluded).
    pub async fn create(
        api: &Api<EbsSnapshot>,
        obj: &EbsSnapshot,
        node: &str,
        status: Value,
    ) -> FakeOperator {
        let name = obj.metadata.name.clone().expect("name");
        api.create(&PostParams::default(), obj)
            .await
            .unwrap_or_else(|e| panic!("creating EbsSnapshot {name}: {e}"));
        api.patch(
            &name,
            &PatchParams::apply(TEST_OPERATOR).force(),
            &Patch::Apply(json!({
                "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
                "metadata": {"name": name, "labels": {keys::NODE: node}},
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("labelling {name}: {e}"));
        let mut status = status;
        status["nodeName"] = json!(node);
        FakeOperator {
            api: api.clone(),
            name,
            status,
        }
    }

    /// Applies the controller's fields with `phase`.
    pub async fn phase(&mut self, phase: &str) {
        self.status["phase"] = json!(phase);
        self.api
            .patch_status(
                &self.name,
                &PatchParams::apply(TEST_OPERATOR).force(),
                &Patch::Apply(json!({
                    "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
                    "status": self.status,
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("applying phase {phase} to {}: {e}", self.name));
    }

    pub async fn get(&self) -> EbsSnapshot {
        self.api
            .get(&self.name)
            .await
            .expect("reading the snapshot")
    }

    pub async fn delete(&self) {
        let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
    }
}

pub fn hold_state(o: &EbsSnapshot) -> Option<HoldState> {
    o.status.as_ref()?.hold.as_ref().map(|h| h.state)
}

/// The tail of a process's log, for failure messages.
pub fn tail(p: &Proc) -> String {
    let log = p.log();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "--- last lines of {}:\n{}",
        p.log_path().display(),
        lines[from..].join("\n")
    )
}

/// Waits until `status.hold.state` is `state`.
pub async fn wait_hold(
    op: &FakeOperator,
    state: HoldState,
    timeout: Duration,
    agent: &Proc,
) -> EbsSnapshot {
    try_wait_for(
        &op.api,
        &op.name,
        &format!("hold {state:?}"),
        timeout,
        Duration::from_millis(100),
        || tail(agent),
        |o: &EbsSnapshot| hold_state(o) == Some(state),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The hold records the agent of one namespace keeps on a node, one file per snapshot UID.
pub struct Records {
    pub dir: PathBuf,
}

impl Records {
    pub fn of(node: &NodeInfo, namespace: &str) -> Records {
        Records {
            dir: procs::agent_state_dir(node, namespace),
        }
    }

    pub fn path(&self, o: &EbsSnapshot) -> PathBuf {
        let uid = o.metadata.uid.as_deref().expect("uid");
        self.dir.join(format!("{uid}.json"))
    }

    pub fn exists(&self, o: &EbsSnapshot) -> bool {
        self.path(o).exists()
    }

    /// Whether the record is gone, or goes within 3 seconds: the agent deletes it right
    /// after the status write the test saw.
    pub fn gone(&self, o: &EbsSnapshot) -> bool {
        let start = std::time::Instant::now();
        while self.exists(o) {
            if start.elapsed() > Duration::from_secs(3) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Deletes every EbsSnapshot of the test (none has a finalizer: the operator never saw
/// them).
pub async fn delete_snapshots(api: &Api<EbsSnapshot>) {
    for s in api.list(&ListParams::default()).await.unwrap() {
        let _ = api
            .delete(&s.metadata.name.unwrap(), &DeleteParams::default())
            .await;
    }
}

/// Restarts the agent with failpoint `fp` armed.
pub fn arm(agent: &mut Proc, fp: &str) {
    failpoint::restart_armed(agent, Some(fp), Duration::from_secs(20));
}

/// The agent dies at its armed failpoint `fp`; it is disarmed for its next start.
pub fn died_at(agent: &mut Proc, fp: &str) {
    if let Err(e) = failpoint::died_at(agent, fp, HOLD_TIMEOUT) {
        panic!("the agent: {e}\n{}", tail(agent));
    }
}

/// Waits until the agent holds, then until it dies at its armed failpoint `fp` (after the
/// Held write), and starts it again unarmed.
pub async fn killed_while_held(s: &FakeOperator, agent: &mut Proc, fp: &str) {
    wait_hold(s, HoldState::Held, HOLD_TIMEOUT, agent).await;
    died_at(agent, fp);
    agent.start();
}

/// Milliseconds since the epoch of a status time.
pub fn millis(t: &Option<Time>) -> i64 {
    t.as_ref().expect("timestamp").0.as_millisecond()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// PIDs of running freeze guards of snapshot `uid` (found by command line, as the agent
/// finds them).
pub fn guards_of(uid: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args
            .first()
            .is_some_and(|a| a.ends_with("/pgml-freeze-guard"))
            && args.windows(2).any(|w| w[0] == "--id" && w[1] == uid)
        {
            out.push(pid);
        }
    }
    out
}

/// A fake PostgreSQL data directory (PG_VERSION, global/pg_control) owned by 999:999, made
/// inside the node (pool datasets and loop mounts are only visible there).
pub fn fake_pgdata(node: &NodeInfo, dir: &str) {
    let global = format!("{dir}/global");
    node_exec_ok(node, &["mkdir", "-p", &global]).unwrap();
    node_exec_ok(
        node,
        &[
            "touch",
            &format!("{dir}/PG_VERSION"),
            &format!("{global}/pg_control"),
        ],
    )
    .unwrap();
    node_exec_ok(node, &["chown", "-R", "999:999", dir]).unwrap();
}

/// `uid:gid:mode` of a file inside the node.
pub fn owner_and_mode(node: &NodeInfo, path: &str) -> String {
    node_exec_ok(node, &["stat", "-c", "%u:%g:%a", path])
        .unwrap()
        .trim()
        .to_string()
}

/// The agent wrote only its own fields: its managed fields are status.hold,
/// status.standbySignal and status.frozenMillis, on the status subresource.
pub fn assert_agent_fields_only(o: &EbsSnapshot) {
    let entries = o.metadata.managed_fields.clone().unwrap_or_default();
    let agent: Vec<_> = entries
        .iter()
        .filter(|m| m.manager.as_deref() == Some("pgml-agent"))
        .collect();
    assert!(
        !agent.is_empty(),
        "no pgml-agent managed fields: {entries:?}"
    );
    for m in agent {
        assert_eq!(m.subresource.as_deref(), Some("status"), "{m:?}");
        let f = &m.fields_v1.as_ref().expect("fieldsV1").0;
        let top: Vec<&String> = f.as_object().unwrap().keys().collect();
        assert_eq!(top, ["f:status"], "{f}");
        for k in f["f:status"].as_object().unwrap().keys() {
            assert!(
                ["f:hold", "f:standbySignal", "f:frozenMillis"].contains(&k.as_str()),
                "pgml-agent owns {k}: {f}"
            );
        }
    }
    // The controller's fields are still the test operator's.
    let st = o.status.as_ref().expect("status");
    assert!(st.phase.is_some() && st.node_name.is_some(), "{st:?}");
}
