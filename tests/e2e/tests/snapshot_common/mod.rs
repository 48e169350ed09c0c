//! What the EbsSnapshot and restore tests share: a namespace with the real operator and
//! agents, Ready pools with a fake PostgreSQL data directory on them, snapshots, and
//! checks against moto (through the simulator).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use pgml_api::common::keys;
use pgml_api::snapshot::{HoldState, SnapshotPhase};
use pgml_api::{EbsSnapshot, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::ec2_client;
// Not every test that shares this module uses every helper (as `dead_code` above).
#[allow(unused_imports)]
pub use pgml_testbed::aws::{snapshot_tag as tag, snapshots_tagged};
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::nodes::{node_command, node_exec, node_exec_ok, node_write_random};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{condition, has_condition, try_wait_for, wait_for};

pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A test's namespace with the operator and one agent per node it uses.
pub struct Fixture {
    pub sb: &'static Sandbox,
    pub ns: TestNamespace,
    pub operator: Proc,
    pub agents: Vec<Proc>,
}

impl Fixture {
    pub async fn start(prefix: &str, nodes: &[usize]) -> Fixture {
        let sb = Sandbox::get();
        let client = client().await;
        ensure_crds(&client, pgml_api::crds()).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let operator = procs::operator(sb, ns.name());
        let agents = procs::agents(sb, nodes, ns.name());
        Fixture {
            sb,
            ns,
            operator,
            agents,
        }
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    pub fn pools(&self) -> Api<ZfsPool> {
        self.ns.api()
    }

    pub fn snapshots(&self) -> Api<EbsSnapshot> {
        self.ns.api()
    }

    /// Where the logs are, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- operator log: {}\n", self.operator.log_path().display());
        for a in &self.agents {
            s += &format!("--- agent log: {}\n", a.log_path().display());
        }
        s
    }

    /// A name unique to this test (pool names are per node, shared by all tests).
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.name().rsplit('-').next().unwrap_or("x"))
    }

    /// Creates a pool and waits until it is Ready.
    pub async fn ready_pool(
        &self,
        name: &str,
        node: &NodeInfo,
        layout: &str,
        count: usize,
    ) -> ZfsPool {
        self.create_pool(name, node, layout, count, None).await;
        self.wait_pool_ready(name).await
    }

    /// Creates a pool (see [`pool_manifest`]).
    pub async fn create_pool(
        &self,
        name: &str,
        node: &NodeInfo,
        layout: &str,
        count: usize,
        restore_from: Option<&str>,
    ) {
        self.pools()
            .create(
                &PostParams::default(),
                &pool_manifest(name, node, layout, count, restore_from),
            )
            .await
            .unwrap();
    }

    pub async fn wait_pool_ready(&self, name: &str) -> ZfsPool {
        let logs = self.logs();
        try_wait_for(
            &self.pools(),
            name,
            "Ready",
            READY_TIMEOUT,
            Duration::from_millis(500),
            || logs.clone(),
            |p: &ZfsPool| has_condition(p, "Ready", "True"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub async fn snapshot(&self, name: &str, pool: &str, extra: &str) -> EbsSnapshot {
        // `extra`: more spec fields, one per line, e.g. "standbySignal: Never\n".
        let extra: String = extra.lines().map(|l| format!("  {l}\n")).collect();
        let text = format!(
            "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {{name: {name}}}\nspec:\n  source: {{zfsPool: {{name: {pool}}}}}\n{extra}"
        );
        let obj: EbsSnapshot =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        self.snapshots()
            .create(&PostParams::default(), &obj)
            .await
            .unwrap()
    }

    /// Waits until the snapshot is `what` (`done` says so), failing with the logs' places.
    pub async fn wait_snapshot(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&EbsSnapshot) -> bool,
    ) -> EbsSnapshot {
        let logs = self.logs();
        try_wait_for(
            &self.snapshots(),
            name,
            what,
            timeout,
            Duration::from_millis(250),
            || logs.clone(),
            done,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until the snapshot reaches `phase`.
    pub async fn wait_phase(&self, name: &str, phase: SnapshotPhase) -> EbsSnapshot {
        self.wait_snapshot(name, &format!("{phase:?}"), SNAPSHOT_TIMEOUT, |s| {
            phase_of(s) == Some(phase)
        })
        .await
    }

    /// Waits until the snapshot is Completed or Failed.
    pub async fn wait_settled(&self, name: &str) -> EbsSnapshot {
        self.wait_snapshot(name, "Completed or Failed", SNAPSHOT_TIMEOUT, |s| {
            matches!(
                phase_of(s),
                Some(SnapshotPhase::Completed | SnapshotPhase::Failed)
            )
        })
        .await
    }

    pub async fn delete_snapshot(&self, name: &str) {
        let _ = self
            .snapshots()
            .delete(name, &DeleteParams::default())
            .await;
    }

    /// Deletes every pool and snapshot of the test (volumes and AWS snapshots by their
    /// policies), waits until they are gone, then the namespace.
    pub async fn finish(self) {
        for s in self
            .snapshots()
            .list(&Default::default())
            .await
            .unwrap()
            .items
        {
            let n = s.metadata.name.unwrap();
            self.delete_snapshot(&n).await;
        }
        for p in self.pools().list(&Default::default()).await.unwrap().items {
            let n = p.metadata.name.unwrap();
            let _ = self.pools().delete(&n, &DeleteParams::default()).await;
        }
        for _ in 0..240 {
            let snaps = self
                .snapshots()
                .list(&Default::default())
                .await
                .unwrap()
                .items;
            let pools = self.pools().list(&Default::default()).await.unwrap().items;
            if snaps.is_empty() && pools.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.ns.cleanup().await;
    }
}

pub fn phase_of(s: &EbsSnapshot) -> Option<SnapshotPhase> {
    s.status.as_ref().and_then(|s| s.phase)
}

/// Whether the agent's hold is over, `None` when it never held.
pub fn hold_over(s: &EbsSnapshot) -> Option<bool> {
    let hold = s.status.as_ref()?.hold.as_ref()?;
    Some(matches!(
        hold.state,
        HoldState::Released | HoldState::Expired
    ))
}

/// The Ready condition's reason.
pub fn ready_reason(s: &EbsSnapshot) -> String {
    condition(s, "Ready")
        .and_then(|c| c["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn pool_manifest(
    name: &str,
    node: &NodeInfo,
    layout: &str,
    count: usize,
    restore_from: Option<&str>,
) -> ZfsPool {
    let restore = restore_from
        .map(|s| format!("  restoreFrom: {{ebsSnapshotName: {s}}}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n  layout: {layout}\n  reclaimPolicy: Delete\n  volumes: {{count: {count}, type: gp3, sizeGiB: 1}}\n{restore}",
        node.name
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The pool's `pgdata` dataset as its node sees it.
pub fn pgdata(node: &NodeInfo, pool: &str) -> String {
    node.mnt_dir
        .join(pool)
        .join("pgdata")
        .to_string_lossy()
        .into_owned()
}

/// Writes `text` to `path` inside the node (no shell: `tee` reads it from a pipe).
pub fn node_write(node: &NodeInfo, path: &str, text: &str) {
    let mut child = node_command(node, &["tee", path])
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "writing {path}");
}

/// A fake PostgreSQL data directory on the pool (`PG_VERSION`, `global/pg_control`) with a
/// table file of random data; returns the table file and its checksum.
pub fn fake_pgdata(node: &NodeInfo, pool: &str) -> (String, String) {
    let dir = pgdata(node, pool);
    node_exec_ok(
        node,
        &[
            "mkdir",
            "-p",
            &format!("{dir}/global"),
            &format!("{dir}/base"),
        ],
    )
    .unwrap();
    node_write(node, &format!("{dir}/PG_VERSION"), "15\n");
    node_exec_ok(
        node,
        &[
            "truncate",
            "-s",
            "8192",
            &format!("{dir}/global/pg_control"),
        ],
    )
    .unwrap();
    let table = format!("{dir}/base/16384");
    node_write_random(node, &table, 4).unwrap();
    node_exec_ok(node, &["sync"]).unwrap();
    let sum = sha256(node, &table);
    (table, sum)
}

pub fn sha256(node: &NodeInfo, file: &str) -> String {
    node_exec_ok(node, &["sha256sum", file])
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether `standby.signal` is in the pool's data directory.
pub fn has_standby_signal(node: &NodeInfo, pool: &str) -> bool {
    let f = format!("{}/standby.signal", pgdata(node, pool));
    node_exec(node, &["test", "-e", &f])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The AWS snapshots of the set of EbsSnapshot `uid` that are still there after up to
/// `timeout` of waiting for them to go.
pub async fn set_left_after(
    sb: &Sandbox,
    uid: &str,
    timeout: Duration,
) -> Vec<aws_sdk_ec2::types::Snapshot> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = snapshots_tagged(sb, keys::SNAPSHOT_UID, uid).await;
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The snapshot IDs in the status of every EbsSnapshot of the namespace.
pub async fn ids_in_status(api: &Api<EbsSnapshot>) -> BTreeSet<String> {
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|s| s.status.iter().flat_map(|st| st.snapshots.iter()))
        .filter(|m| m.state.as_deref() != Some("deleted"))
        .filter_map(|m| m.snapshot_id.clone())
        .collect()
}

/// No AWS snapshot of the namespace that no object accounts for.
pub async fn assert_nothing_leaked(f: &Fixture) {
    let listed = ids_in_status(&f.snapshots()).await;
    let in_moto: BTreeSet<String> = snapshots_tagged(f.sb, keys::NAMESPACE, f.name())
        .await
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_string))
        .collect();
    let unaccounted: Vec<_> = in_moto.difference(&listed).collect();
    assert!(
        unaccounted.is_empty(),
        "AWS snapshots no object accounts for: {unaccounted:?} (status lists {listed:?})\n{}",
        f.logs()
    );
}

/// Deletes snapshots left in moto on purpose (Retain).
pub async fn delete_in_moto(sb: &Sandbox, ids: &[String]) {
    let ec2 = ec2_client(sb).await;
    for id in ids {
        let _ = ec2.delete_snapshot().snapshot_id(id).send().await;
    }
}

/// Waits for `snap` to reach `phase` (a plain poll with the default timeout).
pub async fn wait_snapshot(
    api: &Api<EbsSnapshot>,
    name: &str,
    phase: SnapshotPhase,
) -> EbsSnapshot {
    wait_for(
        api,
        name,
        &format!("{phase:?}"),
        SNAPSHOT_TIMEOUT,
        |s: &EbsSnapshot| phase_of(s) == Some(phase),
    )
    .await
}
