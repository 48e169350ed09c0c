//! Chaos runs (issue 7, docs/design/chaos.md): the ZfsPool/EbsSnapshot flow — a RAIDZ1
//! pool created, written to, grown, snapshotted, restored on another node, deleted — with
//! the operator and the agents SIGKILLed at random moments, the apiserver restarted
//! mid-flow, and the EBS simulator injecting throttling, 5xx, latency, attachments stuck in
//! `attaching`, snapshots ending in `error` and a volume that vanishes. After each run the
//! invariants are checked; each check returns violations (never panics), and the test
//! asserts once at the end on the full list.
//!
//! Profiles (`PGML_CHAOS_PROFILE`): `ci` (the default, inside `make test`) and `full`
//! (`make chaos`, which also writes bench/results/chaos.{json,md}). The seed is printed;
//! `PGML_CHAOS_SEED=<n>` replays the same kill moments, fault choices and orders.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use pgml_api::common::keys;
use pgml_api::snapshot::SnapshotPhase;
use pgml_api::{EbsSnapshot, ZfsPool};
use pgml_operator::snapshot::plan::reason as snap_reason;
use pgml_operator::zfspool::status::reason as pool_reason;
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{SimAdmin, ec2_client, snapshots_tagged, volumes_tagged};
use pgml_testbed::nodes::{node_exec, node_write_random};
use pgml_testbed::procs::{Proc, agent_state_dir};
use pgml_testbed::sandbox::{NodeInfo, repo_root};
use pgml_testbed::wait::condition;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use serde_json::{Value, json};

use crate::snapshot_common::{Fixture, fake_pgdata, hold_over, pgdata, phase_of, sha256};

/// The flow's phases; every kill is placed in one of them.
pub const PHASES: [&str; 5] = ["create", "grow", "snapshot", "restore", "delete"];

/// How long an object may take to converge after the faults of its phase.
pub const CONVERGE: Duration = Duration::from_secs(240);

/// What a profile does in total.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub name: String,
    pub runs: usize,
    pub operator_kills: usize,
    pub agent_kills: usize,
    pub apiserver_restarts: usize,
}

impl Profile {
    /// `PGML_CHAOS_PROFILE`: `ci` (default) or `full`; anything else fails loudly.
    pub fn from_env() -> Profile {
        let name = std::env::var("PGML_CHAOS_PROFILE").unwrap_or_else(|_| "ci".into());
        match name.as_str() {
            "ci" => Profile::ci(),
            "full" => Profile {
                name,
                runs: 5,
                operator_kills: 50,
                agent_kills: 50,
                apiserver_restarts: 2,
            },
            other => panic!("PGML_CHAOS_PROFILE={other}: use ci or full"),
        }
    }

    /// The short profile of `make test`.
    pub fn ci() -> Profile {
        Profile {
            name: "ci".into(),
            runs: 1,
            operator_kills: 8,
            agent_kills: 8,
            apiserver_restarts: 1,
        }
    }

    /// Run `run`'s share of `total` (the remainder goes to the first runs).
    pub fn share(&self, total: usize, run: usize) -> usize {
        total / self.runs + usize::from(run < total % self.runs)
    }
}

/// The seed: `PGML_CHAOS_SEED`, else from the clock.
pub fn seed() -> u64 {
    std::env::var("PGML_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Everything counted over the runs.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub profile: String,
    pub seed: u64,
    pub runs: usize,
    pub operator_kills: BTreeMap<String, usize>,
    pub agent_kills: BTreeMap<String, usize>,
    pub apiserver_restarts: usize,
    /// Faults that took effect, by kind (a rule that never fired is not counted).
    pub faults: BTreeMap<String, u64>,
    /// Fault rules armed that never fired (e.g. a volume attached before its rule came).
    pub faults_missed: BTreeMap<String, u64>,
    /// How each object ended: "Ready", "Completed" or "<reason>: <message>".
    pub outcomes: Vec<String>,
    pub violations: Vec<String>,
    /// Runs whose restored copy was checked against the checksums.
    pub restores_verified: usize,
    pub run_seconds: Vec<u64>,
    pub total_seconds: u64,
}

impl Counts {
    pub fn fault(&mut self, kind: &str, n: u64) {
        *self.faults.entry(kind.into()).or_default() += n;
    }

    pub fn missed(&mut self, kind: &str, n: u64) {
        *self.faults_missed.entry(kind.into()).or_default() += n;
    }

    /// Records how an object ended (printed with the time since `t0`).
    pub fn outcome(&mut self, run: usize, t0: Instant, o: String) {
        eprintln!("chaos: run {run} +{}s: {o}", t0.elapsed().as_secs());
        self.outcomes.push(format!("run {run}: {o}"));
    }

    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }

    pub fn total(m: &BTreeMap<String, usize>) -> usize {
        m.values().sum()
    }

    pub fn violate(&mut self, run: usize, v: impl IntoIterator<Item = String>) {
        for x in v {
            eprintln!("chaos: run {run}: VIOLATION {x}");
            self.violations.push(format!("run {run}: {x}"));
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "profile {} seed {}: {} runs ({} restores verified), {} operator kills {:?}, {} agent kills {:?}, {} apiserver restarts, {} faults injected {:?} (armed but not fired: {:?}), {} invariant violations, {}s",
            self.profile,
            self.seed,
            self.runs,
            self.restores_verified,
            Self::total(&self.operator_kills),
            self.operator_kills,
            Self::total(&self.agent_kills),
            self.agent_kills,
            self.apiserver_restarts,
            self.total_faults(),
            self.faults,
            self.faults_missed,
            self.violations.len(),
            self.total_seconds
        )
    }
}

/// Where a run's kills go: per phase, operator kills and agent kills; and the phase of the
/// apiserver restart, if this run has one.
#[derive(Debug, Default)]
pub struct Plan {
    pub operator: BTreeMap<&'static str, usize>,
    pub agent: BTreeMap<&'static str, usize>,
    pub apiserver: Option<&'static str>,
}

impl Plan {
    pub fn new(rng: &mut StdRng, operator: usize, agent: usize, apiserver: bool) -> Plan {
        let mut p = Plan::default();
        for _ in 0..operator {
            *p.operator
                .entry(PHASES[rng.random_range(0..PHASES.len())])
                .or_default() += 1;
        }
        for _ in 0..agent {
            *p.agent
                .entry(PHASES[rng.random_range(0..PHASES.len())])
                .or_default() += 1;
        }
        if apiserver {
            // Mid-flow: while a snapshot or a restore is in progress.
            p.apiserver = Some(["snapshot", "restore"][rng.random_range(0..2)]);
        }
        p
    }
}

/// Restarts the sandbox's kube-apiserver (SIGKILL, 1 s down, started again with the same
/// flags): `python -m sandbox.restart_apiserver`.
pub async fn restart_apiserver(sb: &Sandbox) -> Result<(), String> {
    let root = repo_root();
    let py = root.join(".venv/bin/python");
    let dir = sb.dir.clone();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&py)
            .args(["-m", "sandbox.restart_apiserver", "--kill", "--down", "1"])
            .env("PYTHONPATH", root.join("tests/testbed"))
            .env("PGML_SANDBOX", &dir)
            .output()
            .map_err(|e| format!("{}: {e}", py.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "restart_apiserver: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Waits (up to `max`) until no other test's namespace is active in the apiserver, so that
/// restarting it does not break a test running beside this one (in `make test`,
/// schedule.rs runs beside the others for five minutes). Namespaces of tests are labelled
/// `pgml.io/test`; those of chaos itself, terminating ones and ones older than 30 minutes
/// (left by a crashed test) do not count. Returns how long it waited.
pub async fn wait_alone(max: Duration) -> Duration {
    use k8s_openapi::api::core::v1::Namespace;
    let client = pgml_testbed::kube::client().await;
    let api: Api<Namespace> = Api::all(client);
    let lp = kube::api::ListParams::default().labels("pgml.io/test");
    let start = Instant::now();
    loop {
        let now = std::time::SystemTime::now();
        let others: Vec<String> = api
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                let label = n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pgml.io/test"));
                let young = n.metadata.creation_timestamp.as_ref().is_some_and(|t| {
                    now.duration_since(std::time::SystemTime::from(t.0))
                        .is_ok_and(|age| age < Duration::from_secs(1800))
                });
                let active = n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Active");
                !label.is_some_and(|l| l.starts_with("chaos")) && young && active
            })
            .filter_map(|n| n.metadata.name)
            .collect();
        if others.is_empty() || start.elapsed() > max {
            if !others.is_empty() {
                eprintln!(
                    "chaos: still beside {others:?} after {max:?}: restarting the apiserver anyway"
                );
            }
            return start.elapsed();
        }
        eprintln!(
            "chaos: waiting for other tests to finish before an apiserver restart: {others:?}"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// SIGKILLs `p` and starts it again.
pub fn crash(p: &mut Proc) {
    p.kill();
    p.start();
}

/// The kills (and the apiserver restart) of `phase` as the plan has them.
pub async fn storm(
    f: &mut Fixture,
    rng: &mut StdRng,
    plan: &Plan,
    phase: &'static str,
    agents: &[usize],
    counts: &mut Counts,
) {
    let op = *plan.operator.get(phase).unwrap_or(&0);
    let ag = *plan.agent.get(phase).unwrap_or(&0);
    storm_n(
        f,
        rng,
        phase,
        (op, ag, plan.apiserver == Some(phase)),
        agents,
        counts,
    )
    .await;
}

/// `n` = (operator kills, agent kills, apiserver restart) in `phase`, in a random order at
/// random moments 100–1500 ms apart; agent kills hit one of `agents` (indexes into
/// `f.agents`) at random.
pub async fn storm_n(
    f: &mut Fixture,
    rng: &mut StdRng,
    phase: &'static str,
    n: (usize, usize, bool),
    agents: &[usize],
    counts: &mut Counts,
) {
    let mut events: Vec<u8> = Vec::new();
    events.extend(std::iter::repeat_n(0u8, n.0));
    events.extend(std::iter::repeat_n(1u8, n.1));
    if n.2 {
        events.push(2);
    }
    events.shuffle(rng);
    for e in events {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        match e {
            0 => {
                crash(&mut f.operator);
                *counts.operator_kills.entry(phase.into()).or_default() += 1;
            }
            1 => {
                let a = agents[rng.random_range(0..agents.len())];
                crash(&mut f.agents[a]);
                *counts.agent_kills.entry(phase.into()).or_default() += 1;
            }
            _ => match restart_apiserver(f.sb).await {
                Ok(()) => counts.apiserver_restarts += 1,
                Err(e) => counts
                    .violations
                    .push(format!("apiserver restart failed: {e}")),
            },
        }
    }
}

/// Polls `name` until `done` (tolerating read errors: the apiserver may be restarting);
/// returns whether it got there and the last object seen.
pub async fn settle<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    done: impl Fn(&K) -> bool,
) -> (bool, Option<K>)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(o) = api.get(name).await {
            if done(&o) {
                return (true, Some(o));
            }
            last = Some(o);
        }
        if start.elapsed() > timeout {
            return (false, last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until none of `names` exists (read errors count as "not yet").
pub async fn settle_gone<K>(api: &Api<K>, names: &[String], timeout: Duration) -> Vec<String>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let start = Instant::now();
    loop {
        let mut left = Vec::new();
        for n in names {
            match api.get_opt(n).await {
                Ok(None) => {}
                _ => left.push(n.clone()),
            }
        }
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes `names`, retrying through apiserver errors.
pub async fn delete_all<K>(api: &Api<K>, names: &[String])
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for n in names {
        for _ in 0..20 {
            match api.delete(n, &DeleteParams::default()).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// Merge-patches `spec.volumes.sizeGiB`, retrying through apiserver errors.
pub async fn grow(api: &Api<ZfsPool>, name: &str, size_gib: i64) -> Result<(), String> {
    let patch = json!({"spec": {"volumes": {"sizeGiB": size_gib}}});
    let mut err = String::new();
    for _ in 0..20 {
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => err = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(err)
}

// ---- faults -------------------------------------------------------------------------------

/// The request faults of a phase, scoped to the run's namespace: only calls that carry the
/// namespace as a parameter value (its tag on CreateVolume/CreateSnapshots) see them, so
/// tests running beside this one are not hit.
pub struct RequestFaults {
    /// (rule id, kind, the count it was armed with).
    rules: Vec<(String, String, u64)>,
}

impl RequestFaults {
    pub fn arm(admin: &SimAdmin, ns: &str, actions: &[&str]) -> RequestFaults {
        let specs = [
            json!({"kind": "throttle", "action": actions, "match": ns, "count": 2}),
            json!({"kind": "error", "status": 500, "when": "after", "action": actions, "match": ns, "count": 1}),
            json!({"kind": "error", "status": 503, "action": actions, "match": ns, "count": 1}),
            json!({"kind": "latency", "ms": 1500, "action": actions, "match": ns, "count": 2}),
        ];
        let rules = specs
            .into_iter()
            .map(|r| {
                let count = r["count"].as_u64().unwrap();
                let kind = r["kind"].as_str().unwrap().to_string();
                let added = admin.add_fault(r).expect("arming a fault rule");
                (added["id"].as_str().unwrap().to_string(), kind, count)
            })
            .collect();
        RequestFaults { rules }
    }

    /// Counts what fired (a count rule is removed once spent) and removes the rest.
    pub fn disarm(self, admin: &SimAdmin, counts: &mut Counts) {
        let live = admin.faults().unwrap_or(Value::Null);
        let live: Vec<Value> = live
            .as_array()
            .cloned()
            .or_else(|| live["rules"].as_array().cloned())
            .unwrap_or_default();
        for (id, kind, armed) in self.rules {
            let fired = match live.iter().find(|r| r["id"] == id.as_str()) {
                Some(r) => r["fired"].as_u64().unwrap_or(0),
                None => armed,
            };
            counts.fault(&kind, fired);
            counts.missed(&kind, armed - fired);
            let _ = admin.clear_fault(&id);
        }
    }
}

/// Arms `attach_stuck` (for `ms`) on the first volume of pool `uid` as soon as it exists;
/// returns the rule id and whether it came before the volume's first attach (only then
/// does it take effect).
pub async fn stick_first_attach(
    sb: &'static Sandbox,
    uid: String,
    ms: u64,
) -> Option<(String, bool)> {
    let admin = SimAdmin::from_sandbox(sb);
    let ec2 = ec2_client(sb).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        let vols = volumes_tagged(sb, keys::POOL_UID, &uid).await;
        if let Some(id) = vols.iter().find_map(|v| v.volume_id()).map(str::to_string) {
            let rule = admin
                .add_fault(json!({"kind": "attach_stuck", "volume_id": id, "duration_ms": ms}))
                .ok()?;
            let rid = rule["id"].as_str()?.to_string();
            let attached_before = ec2
                .describe_volumes()
                .volume_ids(&id)
                .send()
                .await
                .ok()
                .and_then(|o| o.volumes().first().map(|v| !v.attachments().is_empty()))
                .unwrap_or(true);
            return Some((rid, !attached_before));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The IDs of the snapshots a `snapshot_error` (or `snapshot_pending`) rule caught: its
/// `snapshots` map, keyed by snapshot ID. Empty when the rule caught none.
pub fn snapshots_caught(admin: &SimAdmin, id: &str) -> Vec<String> {
    let live = admin.faults().unwrap_or(Value::Null);
    let live: Vec<Value> = live
        .as_array()
        .cloned()
        .or_else(|| live["rules"].as_array().cloned())
        .unwrap_or_default();
    live.iter()
        .find(|r| r["id"] == id)
        .and_then(|r| {
            r["snapshots"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
        })
        .unwrap_or_default()
}

/// The verdict on a set some of whose snapshots a `snapshot_error` rule caught. What must
/// hold is about the set the object *records*: a Completed object whose recorded members
/// include a caught snapshot is a backup that cannot be restored. A caught snapshot outside
/// the recorded set belongs to a CreateSnapshots call that the operator did not keep (an
/// SDK retry after a 500 that had taken effect, or a call a killed process left in flight):
/// it is a stray, which must be deleted (the orphan invariant checks that), and the recorded
/// set may well be Completed.
pub fn judge_caught_set(
    caught: &[String],
    recorded: &[pgml_api::snapshot::MemberSnapshot],
    phase: Option<pgml_api::snapshot::SnapshotPhase>,
) -> Result<String, String> {
    let in_set: Vec<String> = recorded
        .iter()
        .filter(|m| m.snapshot_id.as_ref().is_some_and(|id| caught.contains(id)))
        .map(|m| {
            format!(
                "member {} ({})",
                m.member_index,
                m.snapshot_id.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let completed = phase == Some(pgml_api::snapshot::SnapshotPhase::Completed);
    if completed && !in_set.is_empty() {
        return Err(format!(
            "Completed although its recorded {} ended in error",
            in_set.join(", ")
        ));
    }
    Ok(if in_set.is_empty() {
        format!(
            "the error caught {caught:?}, outside the recorded set (a stray of a call not kept)"
        )
    } else {
        format!("the error caught recorded {}", in_set.join(", "))
    })
}

// ---- convergence ---------------------------------------------------------------------------

/// Every reason the operator documents for ZfsPool and EbsSnapshot conditions.
pub fn documented_reasons() -> BTreeSet<&'static str> {
    use pool_reason as p;
    use snap_reason as s;
    [
        p::SPEC_VALID,
        p::NODE_NOT_FOUND,
        p::NODE_WITHOUT_PROVIDER_ID,
        p::INSTANCE_NOT_FOUND,
        p::CREATING_VOLUMES,
        p::ATTACHING,
        p::ATTACHED,
        p::ATTACHED_ELSEWHERE,
        p::ATTACHMENT_LIMIT,
        p::ATTACHMENT_STUCK,
        p::VOLUME_IN_USE,
        p::WAITING_FOR_AGENT,
        p::POOL_ONLINE,
        p::RESIZING,
        p::MODIFICATION_BUDGET,
        p::HEALTHY,
        p::POOL_DEGRADED,
        p::POOL_FAULTED,
        p::VOLUME_ERROR,
        p::DELETING,
        p::SNAPSHOT_NOT_FOUND,
        p::WAITING_FOR_RELEASE,
        p::AGENT_NOT_RELEASING,
        p::MEMBER_REPLACING,
        p::RESILVERING,
        p::MEMBER_LOST,
        s::SOURCE_NOT_FOUND,
        s::SOURCE_NOT_READY,
        s::HOLD_FAILED,
        s::HOLD_EXPIRED,
        s::HOLD_DEADLINE_EXCEEDED,
        s::AGENT_NOT_RESPONDING,
        s::SNAPSHOT_ERROR,
        s::CAPTURE_FAILED,
        s::WAITING_FOR_AGENT,
        s::CAPTURING,
        s::FINALIZING,
        s::COMPLETED,
        "RestoreMismatch",
        "SnapshotNotCompleted",
    ]
    .into_iter()
    .collect()
}

/// A condition that explains a not-Ready object: `Ready=False` or `Degraded=True` with a
/// documented reason and a non-empty message. `Err` says what is unclear.
pub fn clear_cause(obj: &impl Serialize) -> Result<String, String> {
    let known = documented_reasons();
    let mut seen = Vec::new();
    for (t, bad) in [("Degraded", "True"), ("Ready", "False")] {
        if let Some(c) = condition(obj, t)
            && c["status"] == bad
        {
            let reason = c["reason"].as_str().unwrap_or_default();
            let msg = c["message"].as_str().unwrap_or_default();
            if known.contains(reason) && !msg.trim().is_empty() {
                return Ok(format!("{t}={bad} {reason}: {msg}"));
            }
            seen.push(format!("{t}={bad} reason {reason:?} message {msg:?}"));
        }
    }
    Err(if seen.is_empty() {
        "no Ready=False/Degraded=True condition".into()
    } else {
        seen.join("; ")
    })
}

/// The verdict on an object that did (`reached`) or did not reach its goal: `Ok(outcome)`
/// when Ready/Completed or clearly failed, `Err(violation)` otherwise.
pub fn verdict<K: Serialize>(
    what: &str,
    reached: bool,
    obj: Option<&K>,
    goal: &str,
) -> Result<String, String> {
    if reached {
        return Ok(format!("{what}: {goal}"));
    }
    let Some(o) = obj else {
        return Err(format!("{what}: never readable within {CONVERGE:?}"));
    };
    match clear_cause(o) {
        Ok(c) => Ok(format!("{what}: {c}")),
        Err(e) => Err(format!(
            "{what}: neither {goal} nor a clear condition within {CONVERGE:?}: {e}; status {}",
            serde_json::to_value(o)
                .map(|v| v["status"].clone())
                .unwrap_or_default()
        )),
    }
}

/// A ZfsPool of `count` gp3 volumes of `size_gib` (policy Delete), restored from `from`.
pub fn pool_manifest(
    name: &str,
    node: &NodeInfo,
    count: usize,
    size_gib: i64,
    from: Option<&str>,
) -> ZfsPool {
    let restore = from
        .map(|s| format!("  restoreFrom: {{ebsSnapshotName: {s}}}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n  layout: raidz1\n  reclaimPolicy: Delete\n  volumes: {{count: {count}, type: gp3, sizeGiB: {size_gib}}}\n{restore}",
        node.name
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A pool must end Ready: every fault injected is transient (a lost RAIDZ1 member is
/// replaced), so a clear failure is still a violation — with its cause.
pub fn pool_verdict(what: &str, reached: bool, obj: Option<&ZfsPool>) -> Result<String, String> {
    if reached {
        return Ok(format!("{what}: Ready"));
    }
    Err(match verdict(what, false, obj, "Ready") {
        Ok(cause) => format!("{cause} (not Ready in time)"),
        Err(e) => e,
    })
}

pub fn pool_ready(p: &ZfsPool) -> bool {
    pgml_testbed::wait::has_condition(p, "Ready", "True")
        && p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
}

/// Ready, ONLINE, nothing being replaced, and every volume at `size_gib`.
pub fn pool_whole(p: &ZfsPool, size_gib: i64) -> bool {
    let Some(s) = p.status.as_ref() else {
        return false;
    };
    pool_ready(p)
        && s.health.as_deref() == Some("ONLINE")
        && !pgml_testbed::wait::has_condition(p, "Degraded", "True")
        && s.volumes.len() == p.spec.template.volumes.count as usize
        && s.volumes
            .iter()
            .all(|v| v.replaced_volume_id.is_none() && v.size_gib == Some(size_gib))
}

pub fn snapshot_settled(s: &EbsSnapshot) -> bool {
    matches!(
        phase_of(s),
        Some(SnapshotPhase::Completed | SnapshotPhase::Failed)
    )
}

// ---- data ----------------------------------------------------------------------------------

/// Data written before the faults: the fake PGDATA's table plus a second random file;
/// returns (path relative to the pool's pgdata, sha256).
pub fn write_data(node: &NodeInfo, pool: &str) -> Vec<(String, String)> {
    let (table, sum) = fake_pgdata(node, pool);
    let dir = pgdata(node, pool);
    let extra = format!("{dir}/base/16385");
    node_write_random(node, &extra, 2).unwrap();
    let _ = node_exec(node, &["sync"]);
    let extra_sum = sha256(node, &extra);
    vec![
        (table.trim_start_matches(&dir).to_string(), sum),
        ("/base/16385".to_string(), extra_sum),
    ]
}

/// Checksums of the files of `data` in `pool` on `node`; violations for each difference.
pub fn check_data(
    node: &NodeInfo,
    pool: &str,
    data: &[(String, String)],
    what: &str,
) -> Vec<String> {
    let dir = pgdata(node, pool);
    data.iter()
        .filter_map(|(rel, want)| {
            let got = node_exec(node, &["sha256sum", &format!("{dir}{rel}")])
                .ok()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_default();
            (got != *want)
                .then(|| format!("data lost: {what} {pool}{rel}: sha256 {got:?}, written {want}"))
        })
        .collect()
}

// ---- invariants ----------------------------------------------------------------------------

/// Volume IDs a pool accounts for (members and replaced members not yet deleted).
fn accounted_volumes(pools: &[ZfsPool]) -> BTreeSet<String> {
    pools
        .iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.volumes.iter()))
        .flat_map(|v| [v.volume_id.clone(), v.replaced_volume_id.clone()])
        .flatten()
        .collect()
}

/// No EBS volume or snapshot of namespace `ns` in moto that no object accounts for.
pub async fn no_orphans(
    sb: &Sandbox,
    ns: &str,
    pools: &[ZfsPool],
    snaps: &[EbsSnapshot],
) -> Vec<String> {
    let mut v = Vec::new();
    let accounted = accounted_volumes(pools);
    for vol in volumes_tagged(sb, keys::NAMESPACE, ns).await {
        let id = vol.volume_id().unwrap_or_default();
        if !accounted.contains(id) {
            v.push(format!(
                "orphan volume {id} (state {:?}) in moto: no ZfsPool accounts for it",
                vol.state()
            ));
        }
    }
    let listed: BTreeSet<String> = snaps
        .iter()
        .flat_map(|s| s.status.iter().flat_map(|st| st.snapshots.iter()))
        .filter(|m| m.state.as_deref() != Some("deleted"))
        .filter_map(|m| m.snapshot_id.clone())
        .collect();
    for s in snapshots_tagged(sb, keys::NAMESPACE, ns).await {
        let id = s.snapshot_id().unwrap_or_default();
        if !listed.contains(id) {
            v.push(format!(
                "orphan snapshot {id} (state {:?}) in moto: no EbsSnapshot accounts for it",
                s.state()
            ));
        }
    }
    v
}

/// No pool whose volumes are missing in moto, and no duplicate volumes (two in moto for one
/// member index of a pool, beyond a replacement in progress).
pub async fn no_missing_or_duplicate(sb: &Sandbox, pools: &[ZfsPool]) -> Vec<String> {
    let mut v = Vec::new();
    for p in pools {
        let name = p.metadata.name.clone().unwrap_or_default();
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let in_moto = volumes_tagged(sb, keys::POOL_UID, &uid).await;
        let ids: BTreeSet<String> = in_moto
            .iter()
            .filter_map(|x| x.volume_id().map(str::to_string))
            .collect();
        let Some(s) = p.status.as_ref() else { continue };
        for m in &s.volumes {
            if let Some(id) = &m.volume_id
                && !ids.contains(id)
            {
                v.push(format!(
                    "pool {name}: member {} volume {id} missing in moto",
                    m.index
                ));
            }
        }
        let mut by_index: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for x in &in_moto {
            let idx = x
                .tags()
                .iter()
                .find(|t| t.key() == Some(keys::MEMBER_INDEX))
                .and_then(|t| t.value())
                .unwrap_or("?")
                .to_string();
            by_index
                .entry(idx)
                .or_default()
                .push(x.volume_id().unwrap_or_default().to_string());
        }
        let replacing: BTreeSet<String> = s
            .volumes
            .iter()
            .filter(|m| m.replaced_volume_id.is_some())
            .map(|m| m.index.to_string())
            .collect();
        for (idx, vols) in by_index {
            let allowed = if replacing.contains(&idx) { 2 } else { 1 };
            if vols.len() > allowed {
                v.push(format!(
                    "pool {name}: duplicate volumes for member {idx}: {vols:?}"
                ));
            }
        }
    }
    v
}

/// After the hold: no filesystem left frozen (a write in the pool's PGDATA returns within
/// 10 s), no standby.signal left in the source's PGDATA, no hold record left by the agent.
pub fn no_hold_left(node: &NodeInfo, ns: &str, pool: &str) -> Vec<String> {
    let mut v = Vec::new();
    let dir = pgdata(node, pool);
    let probe = format!("{dir}/.chaos-probe");
    let t = Instant::now();
    let ok = node_exec(node, &["timeout", "10", "touch", &probe])
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        v.push(format!(
            "{pool} on {}: a write in PGDATA did not finish within {:?}: filesystem frozen past the deadline",
            node.name,
            t.elapsed()
        ));
    }
    let _ = node_exec(node, &["rm", "-f", &probe]);
    if node_exec(node, &["test", "-e", &format!("{dir}/standby.signal")])
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        v.push(format!(
            "{pool} on {}: standby.signal left in PGDATA after the hold",
            node.name
        ));
    }
    let records = agent_state_dir(node, ns);
    if let Ok(rd) = std::fs::read_dir(&records) {
        let left: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") || n.ends_with(".guard"))
            .collect();
        if !left.is_empty() {
            v.push(format!(
                "hold records left in {} after the hold: {left:?}",
                records.display()
            ));
        }
    }
    v
}

/// Waits until the snapshot's hold is over (or it never held), up to `timeout`.
pub async fn wait_hold_over(api: &Api<EbsSnapshot>, name: &str, timeout: Duration) -> bool {
    settle(api, name, timeout, |s| hold_over(s).unwrap_or(true))
        .await
        .0
}

/// Lists every object of `api` (retrying through apiserver errors).
pub async fn list_all<K>(api: &Api<K>) -> Vec<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..40 {
        if let Ok(l) = api.list(&Default::default()).await {
            return l.items;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("cannot list objects for 20 s");
}

// ---- report --------------------------------------------------------------------------------

/// bench/results/chaos.json and chaos.md (full profile).
pub fn write_report(profile: &Profile, c: &Counts) {
    let dir = repo_root().join("bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    let json = json!({"profile": profile, "counts": c});
    std::fs::write(
        dir.join("chaos.json"),
        serde_json::to_string_pretty(&json).unwrap() + "\n",
    )
    .unwrap();
    let mut md = String::new();
    md += "# Chaos: the ZfsPool/EbsSnapshot flow under kills and EC2 faults\n\n";
    md += &format!(
        "Profile `{}`, seed `{}` (replay: `PGML_CHAOS_SEED={} make chaos`). Design and invariants: docs/design/chaos.md.\n\n",
        c.profile, c.seed, c.seed
    );
    md += "| | count |\n|---|---:|\n";
    md += &format!(
        "| runs (create → write → grow → snapshot → restore → delete) | {} |\n",
        c.runs
    );
    md += &format!(
        "| operator SIGKILLs | {} |\n",
        Counts::total(&c.operator_kills)
    );
    md += &format!("| agent SIGKILLs | {} |\n", Counts::total(&c.agent_kills));
    md += &format!(
        "| kube-apiserver restarts (SIGKILL, 1 s down) | {} |\n",
        c.apiserver_restarts
    );
    md += &format!("| EC2 faults that took effect | {} |\n", c.total_faults());
    md += &format!(
        "| **invariant violations** | **{}** |\n",
        c.violations.len()
    );
    md += &format!(
        "| wall time | {} s (runs: {:?} s) |\n\n",
        c.total_seconds, c.run_seconds
    );
    md += "Kills by phase (operator / agent):\n\n| phase | operator | agent |\n|---|---:|---:|\n";
    for p in PHASES {
        md += &format!(
            "| {p} | {} | {} |\n",
            c.operator_kills.get(p).unwrap_or(&0),
            c.agent_kills.get(p).unwrap_or(&0)
        );
    }
    md += "\nFaults by kind (took effect / armed but never fired):\n\n| kind | took effect | not fired |\n|---|---:|---:|\n";
    let kinds: BTreeSet<&String> = c.faults.keys().chain(c.faults_missed.keys()).collect();
    for k in kinds {
        md += &format!(
            "| {k} | {} | {} |\n",
            c.faults.get(k).unwrap_or(&0),
            c.faults_missed.get(k).unwrap_or(&0)
        );
    }
    md += "\nHow each object ended:\n\n";
    for o in &c.outcomes {
        md += &format!("- {o}\n");
    }
    md += "\nViolations:\n\n";
    if c.violations.is_empty() {
        md += "- none\n";
    }
    for v in &c.violations {
        md += &format!("- {v}\n");
    }
    md += "\nWhat the simulator does not model: EC2's own eventual consistency beyond what ebssim \
           injects, real NVMe/Nitro attach latencies, fsfreeze on ZFS (zfs-fuse: the hold on a \
           ZfsPool source stamps standby.signal; the write probe checks nothing is left frozen), \
           and apiserver restarts slower than a 1 s outage.\n\n";
    md += "Rerun: `make chaos` (full profile, under `flock /tmp/pgml-heavy.lock`); the CI profile: \
           `cargo test -p pgml-e2e --test chaos`.\n";
    std::fs::write(dir.join("chaos.md"), md).unwrap();
}

#[cfg(test)]
mod judge_tests {
    use super::*;
    use pgml_api::snapshot::{MemberSnapshot, SnapshotPhase};

    fn member(i: i32, id: &str) -> MemberSnapshot {
        MemberSnapshot {
            member_index: i,
            snapshot_id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_completed_set_holding_a_caught_snapshot_is_a_violation() {
        let set = [member(0, "snap-a"), member(1, "snap-b")];
        let e = judge_caught_set(&["snap-a".into()], &set, Some(SnapshotPhase::Completed));
        assert!(e.unwrap_err().contains("member 0 (snap-a)"));
        assert!(judge_caught_set(&["snap-a".into()], &set, Some(SnapshotPhase::Failed)).is_ok());
    }

    #[test]
    fn a_caught_stray_outside_the_recorded_set_leaves_a_completed_set_whole() {
        let set = [member(0, "snap-c"), member(1, "snap-d")];
        let ok = judge_caught_set(&["snap-a".into()], &set, Some(SnapshotPhase::Completed));
        assert!(ok.unwrap().contains("outside the recorded set"));
    }
}
