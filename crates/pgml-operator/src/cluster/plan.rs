//! Plan: what a reconcile does, decided from what it observed, as data. Pure: no client,
//! no clock (how long the primary has been lost comes in), no randomness (the apply draws
//! a password only for a Secret it makes).
//!
//! In two halves, applied in turn. The [`Layout`]: the credentials Secrets, the objects
//! every cluster shares, which instances there are (those a scale-down removes, the new
//! ones placed) and whose loss is timed. Then the [`Plan`]: who is primary
//! ([`roles::decide`]) and, instance by instance, its seed, pool, volume, claim and Pod, each
//! once the one before is usable. The failover timer is read between the two, once the
//! layout's writes went through.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use pgml_api::PgmlCluster;
use pgml_api::cluster::{PgmlClusterStatus, SeedFrom};
use pgml_api::snapshot::SnapshotPhase;
use serde_json::{Value, json};

use super::archiving;
use super::build::{Builder, Instance, PodRole};
use super::compare::{covers, to_value, unchanged};
use super::identity;
use super::members::{Rec, donor, instance_statuses, members, pgdata_mount};
use super::names::{self, MARKS_MANAGER, PG_BASEBACKUP, SEED_MANAGER, SecretKind};
use super::observe::{Observed, deleting};
use super::placement;
use super::roles::{self, Member, Roles};
use super::snapshots;
use super::status::{Notice, Summary, reason};
use crate::runtime::{FIELD_MANAGER, Requeue};

/// How soon to look again while the primary is lost or changing.
pub const CHANGING: Duration = Duration::from_secs(2);

/// When an object is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Now: the plan compared the body with the stored object it observed, or none is.
    Always,
    /// Read the stored object first; write unless it has every field of the body.
    Changed,
    /// As `Changed`, and also when the stored ServiceAccount carries IRSA's role
    /// annotation, applied by us, which the body no longer has (pgBackRest's credentials
    /// mode changed): covered, since extra fields are, but only an apply without it
    /// removes it.
    ChangedOrStaleIrsa,
}

/// What a missing credentials Secret gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Missing {
    /// Made with a new password, then said.
    Create(Notice),
    /// Said and shown in status, not made: the cluster has a primary, whose password a new
    /// Secret would not hold (replication and clients would break silently).
    Report(String),
}

/// One thing the apply does, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A credentials Secret, made once: an existing one is never read (only its metadata
    /// is) nor rewritten.
    Secret { kind: SecretKind, missing: Missing },
    /// A server-side apply of `body` as `manager`; `then` said once it wrote.
    Apply {
        body: Value,
        manager: &'static str,
        when: When,
        then: Option<Notice>,
    },
    /// A deletion, already gone being fine; `then` said once it deleted something.
    Delete { body: Value, then: Option<Notice> },
    /// A scale-down: the instance's objects deleted.
    Remove {
        instance: String,
        bodies: Vec<Value>,
    },
    /// Said whatever the writes answer.
    Note(Notice),
}

/// The failover timer's input: the instance whose loss is timed (the primary, or the one
/// being promoted), whether it is lost now, and the instances whose timers stop (one timer
/// at a time: an earlier primary's must not carry over).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    pub watched: Option<String>,
    pub lost: bool,
    pub others: Vec<String>,
}

/// The first half: cluster-wide objects and which instances there are.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub steps: Vec<Step>,
    /// What in the spec could not be built (beyond `validate::check_cluster`).
    pub spec_errors: Vec<String>,
    /// The instances after scaling (recorded, adopted or placed now), by number.
    pub recs: Vec<Rec>,
    /// Why an instance could not be placed.
    pub unplaced: Option<String>,
    pub watch: Watch,
}

/// The second half: the primary and the instances' objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub roles: Roles,
    /// The instances, those fenced now marked so.
    pub recs: Vec<Rec>,
    pub members: Vec<Member>,
    pub steps: Vec<Step>,
    /// Instances whose objects are not all there yet, with why.
    pub building: Vec<String>,
    /// Look again soon ([`CHANGING`]): the watched instance is lost, or the primary changes.
    pub urgent: bool,
}

/// `spec.instances`, at least one.
pub fn desired(cluster: &PgmlCluster) -> usize {
    cluster.spec.instances.max(1) as usize
}

fn note(warning: bool, reason: &str, message: String) -> Notice {
    (warning, reason.into(), message)
}

/// The first half of the plan.
pub fn layout(b: &Builder, o: &Observed) -> Layout {
    let mut steps = secrets(b, o.status.current_primary.is_some());
    let spec_errors = shared(b, &mut steps);
    let (recs, removed) = scale_down(b, o, desired(b.cluster));
    steps.extend(removed.iter().map(|r| remove(b, r)));
    let (recs, unplaced) = place(b, o, recs, desired(b.cluster));
    let watch = watch(&o.status, &recs, &members(&recs, o));
    Layout {
        steps,
        spec_errors,
        recs,
        unplaced,
        watch,
    }
}

/// The credentials Secrets: made while the cluster has never had a primary, reported when
/// missing afterwards (restore it, or create it with the password set in PostgreSQL).
fn secrets(b: &Builder, bootstrapped: bool) -> Vec<Step> {
    let step = |kind: SecretKind| {
        let (name, user) = (b.c.secret(kind), kind.username());
        let missing = if bootstrapped {
            Missing::Report(format!(
                "Secret {name} is missing; the operator does not make a new password for a cluster that exists: restore it, or create it with user {user} and the password PostgreSQL has"
            ))
        } else {
            let said = format!("created Secret {name} (user {user})");
            Missing::Create(note(false, reason::SECRET_CREATED, said))
        };
        Step::Secret { kind, missing }
    };
    SecretKind::ALL.into_iter().map(step).collect()
}

/// ConfigMap, Services and the instances' RBAC, each applied when it differs. A ConfigMap
/// that cannot be rendered (pgBackRest's part) is left as it is: a spec error, never half
/// applied. Returns the spec errors.
fn shared(b: &Builder, steps: &mut Vec<Step>) -> Vec<String> {
    let mut errors = vec![];
    let mut bodies = vec![];
    match b.config_map() {
        Ok(cm) => bodies.push(cm),
        Err(e) => {
            let why = format!(
                "spec.backups.pgbackrest: {e}; ConfigMap {} is left as it was",
                b.c.config()
            );
            steps.push(Step::Note(note(
                true,
                reason::PGBACKREST_INVALID,
                why.clone(),
            )));
            errors.push(why);
        }
    }
    bodies.extend(b.services());
    bodies.extend(b.rbac());
    for body in bodies {
        let when = if body["kind"] == "ServiceAccount" {
            When::ChangedOrStaleIrsa
        } else {
            When::Changed
        };
        let manager = FIELD_MANAGER;
        steps.push(Step::Apply {
            body,
            manager,
            when,
            then: None,
        });
    }
    errors
}

/// The instances recorded in status, plus any whose pool or Pod exists without a record
/// (a status write lost after the objects were made).
pub fn recorded(b: &Builder, o: &Observed) -> Vec<Rec> {
    let c = &b.c;
    let mut recs: Vec<Rec> = o
        .status
        .instances
        .iter()
        .filter_map(|i| {
            Some(Rec {
                n: c.index_of(&i.name)?,
                name: i.name.clone(),
                node: i.node.clone()?,
                zone: i.availability_zone.clone(),
                seeded_from: i.seeded_from.clone(),
                fenced: i.fenced,
            })
        })
        .collect();
    let pools = o
        .pools
        .iter()
        .filter(|(_, p)| !deleting(*p))
        .map(|(name, p)| {
            let seeded = p.spec.restore_from.as_ref();
            let seeded = seeded.map(|r| r.ebs_snapshot_name.clone());
            (name.clone(), p.spec.node_name.clone(), seeded)
        });
    let pods = o.pods.iter().filter(|(_, p)| !deleting(*p));
    let pods = pods.filter_map(|(name, p)| {
        let node = p.spec.as_ref()?.node_name.clone()?;
        Some((name.clone(), node, None))
    });
    for (name, node, seeded_from) in pools.chain(pods).collect::<Vec<_>>() {
        let Some(n) = c.index_of(&name) else { continue };
        if recs.iter().any(|r| r.n == n) {
            continue;
        }
        let zone = o.node(&node).and_then(|f| f.zone.clone());
        recs.push(Rec {
            n,
            name,
            node,
            zone,
            seeded_from,
            fenced: false,
        });
    }
    recs.sort_by_key(|r| r.n);
    recs
}

/// Scales down to `desired`: the highest numbers first, never the primary nor the target.
/// Returns the instances kept and those removed, in the order they go.
fn scale_down(b: &Builder, o: &Observed, desired: usize) -> (Vec<Rec>, Vec<Rec>) {
    let mut recs = recorded(b, o);
    let s = &o.status;
    let keep = |r: &Rec| {
        Some(r.name.as_str()) == s.current_primary.as_deref()
            || Some(r.name.as_str()) == s.target_primary.as_deref()
    };
    let mut removed = vec![];
    while recs.len() > desired {
        let Some(at) = recs.iter().rposition(|r| !keep(r)) else {
            break;
        };
        removed.push(recs.remove(at));
    }
    (recs, removed)
}

/// Deletes an instance's objects: Pod, claim, pool, volume and seed.
fn remove(b: &Builder, r: &Rec) -> Step {
    let i = instance(r, PodRole::Replica);
    let mut bodies = vec![b.pod(&i), b.pvc(&i)];
    bodies.extend(b.pool(&i));
    if b.cluster.spec.storage.zfs.is_some() {
        bodies.push(b.pv(&i, ""));
        bodies.push(b.seed_snapshot(r.n, ""));
    }
    Step::Remove {
        instance: r.name.clone(),
        bodies,
    }
}

/// Places new instances up to `desired`, numbered after any in use. The bootstrap
/// instance (the first of a cluster that never had a primary) starts empty; the others are
/// seeded, from an EBS snapshot on ZFS when `spec.replicas.seedFrom` says so, else by
/// pg_basebackup. Returns the instances and, when a node was missing, why.
fn place(
    b: &Builder,
    o: &Observed,
    mut recs: Vec<Rec>,
    desired: usize,
) -> (Vec<Rec>, Option<String>) {
    let spec = &b.cluster.spec;
    let bootstrap = recs.is_empty() && o.status.current_primary.is_none();
    let mut next = highest_index(b, o, &recs);
    while recs.len() < desired {
        let used: Vec<(String, Option<String>)> = recs
            .iter()
            .map(|r| (r.node.clone(), r.zone.clone()))
            .collect();
        let Some(node) = placement::choose(&o.nodes, &used, &spec.node_selector, &spec.tolerations)
        else {
            let why = format!(
                "no node for another instance: {} needed, {} placed; an instance needs a Ready node matching nodeSelector, tolerating its taints, with no other instance of this cluster",
                desired,
                recs.len()
            );
            return (recs, Some(why));
        };
        next += 1;
        let seeded_from = if bootstrap && recs.is_empty() {
            None
        } else if spec.storage.zfs.is_some() && spec.replicas.seed_from == SeedFrom::Snapshot {
            Some(b.c.seed(next))
        } else {
            Some(PG_BASEBACKUP.to_string())
        };
        recs.push(Rec {
            n: next,
            name: b.c.instance(next),
            node: node.name.clone(),
            zone: node.zone.clone(),
            seeded_from,
            fenced: false,
        });
    }
    (recs, None)
}

/// The highest instance number in use by any object (a removed instance's objects may
/// still be going away).
fn highest_index(b: &Builder, o: &Observed, recs: &[Rec]) -> u32 {
    let names = o.pools.keys().chain(o.pods.keys()).chain(o.pvcs.keys());
    names
        .filter_map(|n| b.c.index_of(n))
        .chain(recs.iter().map(|r| r.n))
        .max()
        .unwrap_or(0)
}

/// Whose loss is timed: the primary, or the instance being promoted while a change is
/// under way.
fn watch(s: &PgmlClusterStatus, recs: &[Rec], members: &[Member]) -> Watch {
    let current = s.current_primary.as_deref();
    let target = s.target_primary.as_deref();
    let settled = target.is_none_or(|t| Some(t) == current);
    let watched = if settled { current } else { target };
    let lost = watched
        .and_then(|w| members.iter().find(|m| m.name == w))
        .is_some_and(roles::lost);
    let others = recs.iter().map(|r| &r.name);
    let others = others.filter(|n| Some(n.as_str()) != watched);
    Watch {
        watched: watched.map(Into::into),
        lost,
        others: others.cloned().collect(),
    }
}

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
    let roles = primary(b, o, &recs, &ms, lost_for, grace);
    for f in &roles.fence {
        recs.iter_mut()
            .filter(|r| &r.name == f)
            .for_each(|r| r.fenced = true);
        ms.iter_mut()
            .filter(|m| &m.name == f)
            .for_each(|m| m.fenced = true);
    }
    let mut p = Instances {
        b,
        o,
        roles: &roles,
        members: &ms,
        routable: identity::routable(&o.status),
        steps: vec![],
        building: vec![],
    };
    for r in &recs {
        p.instance(r);
    }
    let (steps, building) = (p.steps, p.building);
    let urgent = lost_for.is_some() || roles.target != roles.current;
    Plan {
        roles,
        recs,
        members: ms,
        steps,
        building,
        urgent,
    }
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
        wanted: b.cluster.spec.primary.as_deref(),
        members,
        lost_for,
        grace,
    })
}

/// The `pgml.io/role` of an instance's Pod: the primary is routed only once the stored
/// status records the database's identity ([`identity::routable`]).
pub fn pod_role(primary: bool, routable: bool) -> PodRole {
    match (primary, routable) {
        (true, true) => PodRole::Primary,
        (true, false) => PodRole::Unrouted,
        (false, _) => PodRole::Replica,
    }
}

fn instance(r: &Rec, role: PodRole) -> Instance {
    Instance {
        n: r.n,
        name: r.name.clone(),
        node: r.node.clone(),
        role,
        fenced: r.fenced,
        restore_from: r.seeded_from.clone().filter(|s| s != PG_BASEBACKUP),
    }
}

/// The instances' part of the plan, built instance by instance.
struct Instances<'a> {
    b: &'a Builder<'a>,
    o: &'a Observed,
    roles: &'a Roles,
    members: &'a [Member],
    routable: bool,
    steps: Vec<Step>,
    building: Vec<String>,
}

impl Instances<'_> {
    fn wait(&mut self, r: &Rec, why: impl std::fmt::Display) {
        self.building.push(format!("{}: {why}", r.name));
    }

    fn note(&mut self, warning: bool, reason: &str, message: String) {
        self.steps.push(Step::Note(note(warning, reason, message)));
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
        let i = instance(r, pod_role(current == Some(&r.name), self.routable));
        if let Some(pool) = self.b.pool(&i)
            && !self.storage(r, &i, pool)
        {
            return;
        }
        let pvc = self.o.pvcs.get(&r.name).map(to_value);
        self.apply(self.b.pvc(&i), pvc, None);
        self.pod(r, &i);
        self.drop_seed(r);
    }

    /// ZFS: the pool (restored from its seed once that is complete), then its volume once
    /// the pool has mounted pgdata. Whether the claim may follow.
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
        self.steps.push(Step::Apply {
            body: self.b.pv(i, &path),
            manager: FIELD_MANAGER,
            when: When::Changed,
            then: Some(note(false, reason::VOLUME_BOUND, said)),
        });
        true
    }

    /// The seed snapshot of a new instance: made of a donor, awaited until Completed, made
    /// again when it failed. True once the pool may be restored from it.
    fn seed_ready(&mut self, r: &Rec, seed: &str) -> bool {
        let snapshot = self.o.snapshots.get(seed);
        match snapshot.map(|s| s.status.as_ref().and_then(|st| st.phase)) {
            Some(Some(SnapshotPhase::Completed)) => return true,
            Some(Some(SnapshotPhase::Failed)) => {
                let body = self.b.seed_snapshot(r.n, "");
                self.steps.push(Step::Delete { body, then: None });
                let said = format!(
                    "EbsSnapshot {seed} to seed {} failed; it is deleted and a new one will be taken",
                    r.name
                );
                self.note(true, reason::SEED_FAILED, said);
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

    /// The Pod: made when absent, else its marks (role label, fence) kept as decided. A
    /// Pod's spec cannot change in place: a new image or resources reach it only when it
    /// is made again, which is said, not done (restarting instances is the user's call).
    fn pod(&mut self, r: &Rec, i: &Instance) {
        let Some(pod) = self.o.pods.get(&r.name) else {
            self.create_pod(r, i);
            return;
        };
        if deleting(pod) {
            self.wait(r, "its Pod is being deleted");
            return;
        }
        if !covers(&to_value(&pod.spec), &self.b.pod(i)["spec"]) {
            let said = format!(
                "Pod {} runs an older spec than the cluster's (image, resources, scheduling): delete it to have it made again (replicas first, then switch over)",
                r.name
            );
            self.note(true, reason::POD_OUTDATED, said);
        }
        self.mark(r, i, pod);
    }

    /// The primary's Pod is gone: recreating it now would hide the loss. When a replica
    /// can take over, the failover grace decides first.
    fn create_pod(&mut self, r: &Rec, i: &Instance) {
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
        let Some(seed) = r.seeded_from.as_deref().filter(|s| *s != PG_BASEBACKUP) else {
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

/// What the status is computed from: the plan, and what only the apply could find out
/// (`found`: missing Secrets), which comes first.
pub fn summary(
    b: &Builder,
    o: &Observed,
    layout: &Layout,
    plan: &Plan,
    found: Vec<String>,
) -> Summary {
    let roles = &plan.roles;
    let current = roles.current.as_deref();
    let primary = current.and_then(|p| plan.members.iter().find(|m| m.name == p));
    let checked = pgml_api::validate::check_cluster(b.cluster);
    Summary {
        desired: desired(b.cluster) as i32,
        instances: instance_statuses(&plan.recs, &plan.members, current, &o.pools),
        current: roles.current.clone(),
        target: roles.target.clone(),
        building: found.into_iter().chain(plan.building.clone()).collect(),
        roles_waiting: roles.waiting.clone(),
        unplaced: layout.unplaced.clone(),
        spec_errors: checked
            .iter()
            .map(ToString::to_string)
            .chain(layout.spec_errors.iter().cloned())
            .collect(),
        snapshots: snapshots::last_snapshot(&b.c.name, &o.backups),
        // Recorded in this status write; the Pod is labelled primary in a later reconcile
        // (the plan's `routable` is the stored status's).
        system_identifier: identity::to_record(
            o.status.system_identifier.as_deref(),
            current,
            &plan.members,
        ),
        pgbackrest: archiving::Seen {
            configured: b.cluster.spec.backups.pgbackrest.is_some(),
            primary: roles.current.clone(),
            report: primary.and_then(|m| m.reported.clone()),
        },
    }
}

/// When to look again: soon while the primary is lost or changing, at the progress pace
/// while instances are built or cannot be placed, else at the ready pace.
pub fn requeue(plan: &Plan, s: &Summary, pace: &Requeue) -> Duration {
    if plan.urgent {
        CHANGING
    } else if !s.building.is_empty() || s.unplaced.is_some() {
        pace.progress
    } else {
        pace.ready
    }
}
