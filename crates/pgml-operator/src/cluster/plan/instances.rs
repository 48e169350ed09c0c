//! The second half of the plan: who is primary, and instance by instance its seed, pool,
//! volume, claim and Pod, each once the one before is usable.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use pgml_api::snapshot::SnapshotPhase;
use serde_json::{Value, json};

use super::{Layout, Plan, Step, When, instance, note, pod_role};
use crate::cluster::build::{Builder, Instance};
use crate::cluster::compare::{covers, difference, to_value, unchanged};
use crate::cluster::identity;
use crate::cluster::members::{Rec, dataset_mount, donor, members, pgdata_mount};
use crate::cluster::names::{self, MARKS_MANAGER, SEED_MANAGER};
use crate::cluster::observe::{Observed, deleting};
use crate::cluster::roles::{self, Member, Roles};
use crate::cluster::rollout::{self, Step as RollStep};
use crate::cluster::status::{Notice, reason};
use crate::runtime::FIELD_MANAGER;

/// The second half of the plan, `lost_for` being how long the watched instance has been
/// lost.
pub fn plan(
    b: &Builder,
    o: &Observed,
    layout: &Layout,
    lost_for: Option<Duration>,
    grace: Duration,
) -> Plan {
    let mut recs = layout.recs.clone();
    let mut ms = members(&recs, o);
    let outdated = outdated(b, o, &recs);
    let roll = rollout::decide(&rollout::Input {
        members: &ms,
        outdated: &outdated,
        current: o.status.current_primary.as_deref(),
        target: o.status.target_primary.as_deref(),
        wanted: b.cluster.spec.primary.as_deref(),
        strategy: b.cluster.spec.primary_update_strategy,
    });
    // The roll's switchover is asked for as `spec.primary` would (which, set, wins).
    let switch_to = match &roll.step {
        RollStep::Switchover(t) => Some(t.as_str()),
        _ => None,
    };
    let roles = primary(b, o, &recs, &ms, lost_for, grace, switch_to);
    for f in &roles.fence {
        recs.iter_mut()
            .filter(|r| &r.name == f)
            .for_each(|r| r.fenced = true);
        ms.iter_mut()
            .filter(|m| &m.name == f)
            .for_each(|m| m.fenced = true);
    }
    // A Pod is deleted for the roll only while the primary stays as it is.
    let settled = roles.started.is_none() && roles.current == roles.target;
    let restart = match &roll.step {
        RollStep::Restart { instance, why } if settled => Some((instance.clone(), why.clone())),
        _ => None,
    };
    let mut p = Instances {
        b,
        o,
        roles: &roles,
        members: &ms,
        routable: identity::routable(&o.status),
        restart,
        steps: vec![],
        building: vec![],
    };
    for r in &recs {
        p.instance(r);
    }
    if let (RollStep::Switchover(to), Some((_, from, started_to))) = (&roll.step, &roles.started)
        && to == started_to
    {
        let said = format!(
            "rolling update: every replica is updated; switching over from {from} to {to}, which is updated last, as a replica"
        );
        p.note(false, reason::ROLLING_UPDATE, said, None);
    }
    let (steps, building) = (p.steps, p.building);
    let urgent = lost_for.is_some() || roles.target != roles.current;
    let rollout = roll.progress.map(|progress| match &roll.step {
        RollStep::Restart { instance, .. } => format!("{progress}; restarting {instance}"),
        RollStep::Switchover(to) => format!("{progress}; switching over to {to}"),
        RollStep::Wait(why) => format!("{progress}; {why}"),
        RollStep::Done => progress,
    });
    Plan {
        roles,
        recs,
        members: ms,
        steps,
        building,
        urgent,
        rollout,
    }
}

/// The instances whose live Pod (not being deleted) was made from another spec than the
/// one the cluster's spec makes now, with the first field that differs. Told by the
/// digest the Pod was annotated with when made; a Pod without one (made by an operator
/// before it) by comparing its stored spec.
///
/// Parameters waiting for a restart (`pendingRestart` in the reports) are not rolled yet:
/// each instance reports them only once the kubelet brought it the new configuration, so
/// a primary may report before its replicas, and a switchover restarts the old primary
/// (a demotion) but not the new one, which would be switched away from again.
fn outdated(b: &Builder, o: &Observed, recs: &[Rec]) -> Vec<(String, String)> {
    recs.iter()
        .filter_map(|r| {
            let pod = o.pods.get(&r.name).filter(|p| !deleting(*p))?;
            let desired = b.pod(&instance(r, pod_role(false, false)));
            let stored = to_value(&pod.spec);
            let at = || difference(&stored, &desired["spec"], "spec");
            let made_from = pod.annotations().get(names::POD_SPEC);
            let at = match made_from {
                Some(d) if desired["metadata"]["annotations"][names::POD_SPEC] == d.as_str() => {
                    return None;
                }
                Some(_) => at().unwrap_or_else(|| "spec (its digest)".into()),
                None => at()?,
            };
            Some((r.name.clone(), at))
        })
        .collect()
}

/// Who is primary. Nothing placed yet (no node fits): no primary to name either, so that
/// the first instance placed later is still the bootstrap one.
fn primary(
    b: &Builder,
    o: &Observed,
    recs: &[Rec],
    members: &[Member],
    lost_for: Option<Duration>,
    grace: Duration,
    switch_to: Option<&str>,
) -> Roles {
    let s = &o.status;
    let Some(first) = recs.first() else {
        return Roles {
            current: s.current_primary.clone(),
            target: s.target_primary.clone(),
            ..Roles::default()
        };
    };
    roles::decide(&roles::Input {
        first: &first.name,
        current: s.current_primary.as_deref(),
        target: s.target_primary.as_deref(),
        wanted: b.cluster.spec.primary.as_deref().or(switch_to),
        members,
        lost_for,
        grace,
    })
}

/// The instances' part of the plan, built instance by instance.
struct Instances<'a> {
    b: &'a Builder<'a>,
    o: &'a Observed,
    roles: &'a Roles,
    members: &'a [Member],
    routable: bool,
    /// The instance whose Pod the roll deletes now, with what differs.
    restart: Option<(String, String)>,
    steps: Vec<Step>,
    building: Vec<String>,
}

impl Instances<'_> {
    fn wait(&mut self, r: &Rec, why: impl std::fmt::Display) {
        self.building.push(format!("{}: {why}", r.name));
    }

    fn note(&mut self, warning: bool, reason: &str, message: String, about: Option<Value>) {
        self.steps
            .push(Step::Note(note(warning, reason, message), about));
    }

    /// Applies `body` as the operator unless `stored` (observed) has every field of it.
    fn apply(&mut self, body: Value, stored: Option<Value>, then: Option<Notice>) {
        if unchanged(stored.as_ref(), &body) {
            return;
        }
        self.steps.push(Step::Apply {
            body,
            manager: FIELD_MANAGER,
            when: When::Always,
            then,
        });
    }

    /// An instance's pool, volume, claim and Pod, in that order, each once the one before
    /// is usable; then its seed goes once it streams.
    fn instance(&mut self, r: &Rec) {
        let current = self.roles.current.as_deref();
        let mut i = instance(r, pod_role(current == Some(&r.name), self.routable));
        let changing = self.roles.current != self.roles.target;
        let between = [&self.roles.current, &self.roles.target]
            .into_iter()
            .any(|n| n.as_deref() == Some(r.name.as_str()));
        i.protect = changing && between;
        if let Some(pool) = self.b.pool(&i)
            && !self.storage(r, &i, pool)
        {
            return;
        }
        let pvc = self.o.pvcs.get(&r.name).map(to_value);
        self.apply(self.b.pvc(&i), pvc, None);
        if self.b.has_wal() {
            let pvc = self.o.pvcs.get(&self.b.c.wal_claim(r.n)).map(to_value);
            self.apply(self.b.wal_pvc(&i), pvc, None);
        }
        self.pod(r, &i);
        self.drop_seed(r);
    }

    /// ZFS: the pool (restored from its seed once that is complete), then its volume once
    /// the pool has mounted pgdata (and, when the template has it, the WAL's volume once
    /// pgwal is mounted). Whether the claims may follow.
    fn storage(&mut self, r: &Rec, i: &Instance, body: Value) -> bool {
        let pool = self.o.pools.get(&r.name);
        if pool.is_some_and(deleting) {
            self.wait(r, "its ZfsPool is being deleted");
            return false;
        }
        if pool.is_none()
            && let Some(seed) = &i.restore_from
            && !self.seed_ready(r, seed)
        {
            return false;
        }
        let created = pool.is_none().then(|| {
            let from = i.restore_from.as_ref();
            let from = from.map(|s| format!(", restored from EbsSnapshot {s}"));
            let said = format!(
                "created ZfsPool {} on node {}{}",
                r.name,
                r.node,
                from.unwrap_or_default()
            );
            note(false, reason::POOL_CREATED, said)
        });
        self.apply(body, pool.map(to_value), created);
        let Some(path) = pool.and_then(pgdata_mount) else {
            self.wait(r, format!("waiting for ZfsPool {} to mount pgdata", r.name));
            return false;
        };
        let pv = self.b.c.pv_name(r.n);
        let said = format!(
            "PersistentVolume {pv} at {path} on {} for {}",
            r.node, r.name
        );
        let wal = match self.b.has_wal() {
            false => None,
            true => match pool.and_then(|p| dataset_mount(p, names::WAL_DATASET)) {
                Some(wal) => Some(wal),
                None => {
                    self.wait(r, format!("waiting for ZfsPool {} to mount pgwal", r.name));
                    return false;
                }
            },
        };
        self.steps.push(Step::Apply {
            body: self.b.pv(i, &path),
            manager: FIELD_MANAGER,
            when: When::Changed,
            then: Some(note(false, reason::VOLUME_BOUND, said)),
        });
        if let Some(wal) = wal {
            let pv = self.b.c.wal_pv_name(r.n);
            let said = format!(
                "PersistentVolume {pv} at {wal} on {} for {}'s WAL",
                r.node, r.name
            );
            self.steps.push(Step::Apply {
                body: self.b.wal_pv(i, &wal),
                manager: FIELD_MANAGER,
                when: When::Changed,
                then: Some(note(false, reason::VOLUME_BOUND, said)),
            });
        }
        true
    }

    /// The seed snapshot of a new instance: made of a donor, awaited until Completed, made
    /// again when it failed. True once the pool may be restored from it. The user's
    /// `bootstrap.snapshot` is only ever read.
    fn seed_ready(&mut self, r: &Rec, seed: &str) -> bool {
        if self.is_bootstrap_snapshot(seed) {
            return self.bootstrap_snapshot_ready(r, seed);
        }
        let snapshot = self.o.snapshots.get(seed);
        match snapshot.map(|s| s.status.as_ref().and_then(|st| st.phase)) {
            Some(Some(SnapshotPhase::Completed)) => return true,
            Some(Some(SnapshotPhase::Failed)) => {
                let body = self.b.seed_snapshot(r.n, "");
                self.steps.push(Step::Delete {
                    body: body.clone(),
                    then: None,
                });
                let said = format!(
                    "EbsSnapshot {seed} to seed {} failed; it is deleted and a new one will be taken",
                    r.name
                );
                self.note(true, reason::SEED_FAILED, said, Some(body));
                self.wait(r, "its seed snapshot failed, taking another");
            }
            Some(phase) => {
                let phase = phase.map(|p| format!("{p:?}"));
                let phase = phase.unwrap_or_else(|| "Pending".into());
                self.wait(r, format!("seed snapshot {seed} is {phase}"));
            }
            None => self.take_seed(r, seed),
        }
        false
    }

    /// Whether `name` is the user's `bootstrap.snapshot` (by the spec, not by its name's
    /// shape: a user's snapshot may be called like one of the operator's seeds).
    fn is_bootstrap_snapshot(&self, name: &str) -> bool {
        self.b.cluster.spec.bootstrap_snapshot() == Some(name)
    }

    /// `bootstrap.snapshot`: usable once Completed and of a ZFS pool (a set the pool can
    /// be restored from); else the cluster waits and says why, creating nothing.
    fn bootstrap_snapshot_ready(&mut self, r: &Rec, name: &str) -> bool {
        let problem = match self.o.snapshots.get(name) {
            None => format!(
                "EbsSnapshot {name} (spec.bootstrap.snapshot) does not exist in this namespace"
            ),
            Some(s) if deleting(s) => {
                format!("EbsSnapshot {name} (spec.bootstrap.snapshot) is being deleted")
            }
            Some(s) => {
                let st = s.status.as_ref();
                match st.and_then(|st| st.phase) {
                    Some(SnapshotPhase::Completed)
                        if st.is_some_and(|st| st.zfs_pool.is_some()) =>
                    {
                        return true;
                    }
                    Some(SnapshotPhase::Completed) => format!(
                        "EbsSnapshot {name} (spec.bootstrap.snapshot) is not of a ZFS pool ({}): only a ZFS set restores into this cluster's pools",
                        st.and_then(|st| st.source.clone())
                            .unwrap_or_else(|| "source unknown".into())
                    ),
                    Some(SnapshotPhase::Failed) => format!(
                        "EbsSnapshot {name} (spec.bootstrap.snapshot) failed: nothing can be restored from it; create the cluster again from another snapshot"
                    ),
                    phase => format!(
                        "EbsSnapshot {name} (spec.bootstrap.snapshot) is {}, not Completed",
                        phase.map_or("Pending".to_string(), |p| format!("{p:?}"))
                    ),
                }
            }
        };
        self.note(
            true,
            reason::BOOTSTRAP_SNAPSHOT_NOT_READY,
            problem.clone(),
            None,
        );
        self.wait(r, problem);
        false
    }

    fn take_seed(&mut self, r: &Rec, seed: &str) {
        let Some(d) = donor(self.members, self.roles.current.as_deref(), &r.name) else {
            self.wait(r, "waiting for a ready instance to snapshot");
            return;
        };
        let said = format!("taking EbsSnapshot {seed} of {d} to seed {}", r.name);
        self.steps.push(Step::Apply {
            body: self.b.seed_snapshot(r.n, &d),
            manager: SEED_MANAGER,
            when: When::Always,
            then: Some(note(false, reason::SEEDING, said)),
        });
        self.wait(r, format!("seed snapshot {seed} of {d} requested"));
    }

    /// The Pod: made when absent, else its marks (role label, fence) kept as decided, or
    /// deleted when the roll restarts it now (a Pod's spec cannot change in place: a new
    /// image or resources reach it when it is made again).
    fn pod(&mut self, r: &Rec, i: &Instance) {
        let Some(pod) = self.o.pods.get(&r.name) else {
            self.create_pod(r, i);
            return;
        };
        if deleting(pod) {
            self.wait(r, "its Pod is being deleted");
            return;
        }
        if let Some((_, at)) = self.restart.as_ref().filter(|(n, _)| *n == r.name) {
            let said = format!(
                "deleted Pod {} to roll out the cluster's changes ({at}); it is made again on {}",
                r.name, r.node
            );
            let mut body = self.b.pod_marks(i);
            body["uid"] = json!(pod.uid());
            let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": body});
            self.steps.push(Step::Delete {
                body,
                then: Some(note(false, reason::ROLLING_UPDATE, said)),
            });
            self.wait(r, "restarting for the rolling update");
            return;
        }
        self.mark(r, i, pod);
    }

    /// No Pod is made on a leaving node (a drain would only evict it again; Karpenter
    /// would never see the node empty). The primary's Pod is gone: recreating it now would
    /// hide the loss. When a replica can take over, the failover grace decides first.
    fn create_pod(&mut self, r: &Rec, i: &Instance) {
        let member = self.members.iter().find(|m| m.name == r.name);
        if let Some(why) = member.and_then(|m| m.leaving.as_deref()) {
            self.wait(
                r,
                format!("{why}: its Pod is made again there once the node is back"),
            );
            return;
        }
        let current = self.roles.current.as_deref() == Some(r.name.as_str());
        let settled = self.roles.current == self.roles.target;
        if current
            && settled
            && !r.fenced
            && roles::failover_candidate(self.members, &r.name).is_some()
        {
            self.wait(
                r,
                "the primary's Pod is gone; failing over after the grace period",
            );
            return;
        }
        let fenced = if r.fenced { " (fenced)" } else { "" };
        let said = format!("created Pod {} on node {}{fenced}", r.name, r.node);
        self.steps.push(Step::Apply {
            body: self.b.pod(i),
            manager: FIELD_MANAGER,
            when: When::Always,
            then: Some(note(false, reason::POD_CREATED, said)),
        });
    }

    /// The role label and the fence of a live Pod, applied by their own field manager.
    fn mark(&mut self, r: &Rec, i: &Instance, pod: &Pod) {
        let marks = self.b.pod_marks(i);
        if covers(&to_value(&pod.metadata), &marks) {
            return;
        }
        let fenced_now = pod.annotations().get(names::FENCED).map(String::as_str) != Some("true");
        let then = (r.fenced && fenced_now).then(|| {
            let said = format!(
                "annotated Pod {} {}=true: its PostgreSQL stops and stays stopped",
                r.name,
                names::FENCED
            );
            note(true, reason::FENCING, said)
        });
        self.steps.push(Step::Apply {
            body: json!({"apiVersion": "v1", "kind": "Pod", "metadata": marks}),
            manager: MARKS_MANAGER,
            when: When::Always,
            then,
        });
    }

    /// Deletes the seed snapshot once its instance streams from the primary.
    fn drop_seed(&mut self, r: &Rec) {
        // Only the operator's own seed: never `bootstrap.snapshot`, the user's.
        let own = self.b.c.seed(r.n);
        let Some(seed) = r
            .seeded_from
            .as_deref()
            .filter(|s| *s == own && !self.is_bootstrap_snapshot(s))
        else {
            return;
        };
        if self.o.snapshots.get(seed).is_none_or(deleting) {
            return;
        }
        let member = self.members.iter().find(|m| m.name == r.name);
        let streaming = member
            .and_then(|m| m.reported.as_ref())
            .is_some_and(|rep| rep.streaming);
        if streaming {
            let said = format!(
                "{} streams from the primary; deleted its seed EbsSnapshot {seed}",
                r.name
            );
            self.steps.push(Step::Delete {
                body: self.b.seed_snapshot(r.n, ""),
                then: Some(note(false, reason::SEED_DELETED, said)),
            });
        }
    }
}
