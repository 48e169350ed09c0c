//! The first half of the plan: the credentials Secrets, the objects every cluster shares,
//! which instances there are and whose loss is timed.

use std::collections::BTreeMap;

use pgml_api::cluster::{PgmlClusterStatus, SeedFrom};

use super::{Layout, Missing, Step, Watch, When, desired, instance, note};
use crate::cluster::build::{Builder, PodRole};
use crate::cluster::members::{Rec, members};
use crate::cluster::names::{PG_BASEBACKUP, SecretKind};
use crate::cluster::observe::{Observed, deleting};
use crate::cluster::placement;
use crate::cluster::roles::{self, Member};
use crate::cluster::status::reason;
use crate::runtime::FIELD_MANAGER;

/// The first half of the plan.
pub fn layout(b: &Builder, o: &Observed) -> Layout {
    let mut steps = secrets(b, o.status.current_primary.is_some());
    let (recs, removed) = scale_down(b, o, desired(b.cluster));
    let (recs, unplaced) = place(b, o, recs, desired(b.cluster));
    let spec_errors = shared(b, &instance_pods(b, o, &recs, &removed), &mut steps);
    steps.extend(removed.iter().map(|r| remove(b, r)));
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

/// The Pods the instances' Role lets them patch (each patches its own status annotation),
/// by instance number: every instance this plan has — kept, placed now (before its Pod is
/// made, which comes after the Role), removed now — and every Pod of the cluster still
/// there, one shutting down after an earlier scale-down included (it reports until it
/// stops). The Role is applied every reconcile, so a name goes once its Pod is gone and
/// the plan no longer has the instance.
fn instance_pods(b: &Builder, o: &Observed, recs: &[Rec], removed: &[Rec]) -> Vec<String> {
    let planned = recs.iter().chain(removed).map(|r| (r.n, r.name.clone()));
    let present = o
        .pods
        .keys()
        .filter_map(|name| Some((b.c.index_of(name)?, name.clone())));
    let by_number: BTreeMap<u32, String> = planned.chain(present).collect();
    by_number.into_values().collect()
}

/// ConfigMap, Services, PodDisruptionBudgets and the instances' RBAC (`pods`: the Pods they may patch), each
/// applied when it differs. A ConfigMap that cannot be rendered (pgBackRest's part) is
/// left as it is: a spec error, never half applied. Returns the spec errors.
fn shared(b: &Builder, pods: &[String], steps: &mut Vec<Step>) -> Vec<String> {
    let mut errors = vec![];
    let mut bodies = vec![];
    match b.config_map() {
        Ok(cm) => bodies.push(cm),
        Err(e) => {
            let why = format!(
                "spec.backups.pgbackrest: {e}; ConfigMap {} is left as it was",
                b.c.config()
            );
            steps.push(Step::Note(
                note(true, reason::PGBACKREST_INVALID, why.clone()),
                None,
            ));
            errors.push(why);
        }
    }
    bodies.extend(b.services());
    bodies.extend(b.network_policy());
    bodies.extend(b.disruption_budgets());
    bodies.extend(b.rbac(pods));
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
    if b.has_wal() {
        bodies.push(b.wal_pvc(&i));
    }
    bodies.extend(b.pool(&i));
    if b.cluster.spec.storage.zfs.is_some() {
        bodies.push(b.pv(&i, ""));
        if b.has_wal() {
            bodies.push(b.wal_pv(&i, ""));
        }
        bodies.push(b.seed_snapshot(r.n, ""));
    }
    Step::Remove {
        instance: r.name.clone(),
        bodies,
    }
}

/// Places new instances up to `desired`, numbered after any in use. The bootstrap
/// instance (the first of a cluster that never had a primary) starts empty, or restored
/// from `spec.bootstrap.snapshot`; the others are
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
        let mut used: Vec<(String, Option<String>)> = recs
            .iter()
            .map(|r| (r.node.clone(), r.zone.clone()))
            .collect();
        // A pool restored from `bootstrap.snapshot` has the source pool's GUID, and ZFS
        // imports no second pool of a GUID already imported: never on the node the
        // snapshot was taken on.
        if bootstrap
            && recs.is_empty()
            && let Some(node) = spec
                .bootstrap_snapshot()
                .and_then(|s| o.snapshots.get(s))
                .and_then(|s| s.status.as_ref()?.node_name.clone())
        {
            used.push((node, None));
        }
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
        // The bootstrap instance starts empty (initdb) or from `bootstrap.snapshot`.
        let seeded_from = if bootstrap && recs.is_empty() {
            spec.bootstrap_snapshot().map(str::to_string)
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
