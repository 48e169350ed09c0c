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

mod instances;
mod layout;
#[cfg(test)]
mod tests;

use std::time::Duration;

use pgml_api::PgmlCluster;
use serde_json::Value;

use super::archiving;
use super::build::{Builder, Instance, PodRole};
use super::identity;
use super::members::{Rec, instance_statuses};
use super::names::{PG_BASEBACKUP, SecretKind};
use super::observe::Observed;
use super::roles::{Member, Roles};
use super::snapshots;
use super::status::{Notice, Summary};
use crate::runtime::Requeue;

pub use instances::plan;
pub use layout::{layout, recorded};

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
    /// Said whatever the writes answer; about the object the body (a manifest) names, if
    /// one, so that the same reason for two objects is two Events.
    Note(Notice, Option<Value>),
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
    /// A rolling update (a new Pod spec, parameters waiting for a restart): how far, and
    /// the next step or why it waits.
    pub rollout: Option<String>,
}

/// `spec.instances`, at least one.
pub fn desired(cluster: &PgmlCluster) -> usize {
    cluster.spec.instances.max(1) as usize
}

fn note(warning: bool, reason: &str, message: String) -> Notice {
    (warning, reason.into(), message)
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
        protect: false,
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
        rollout: plan.rollout.clone(),
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
        // Restoring until the database has served (its identifier recorded).
        restore: restore_status(b, o, primary),
        pgbackrest: archiving::Seen {
            configured: b.cluster.spec.backups.pgbackrest.is_some(),
            primary: roles.current.clone(),
            report: primary.and_then(|m| m.reported.clone()),
            image: b.cluster.spec.image.clone(),
        },
    }
}

/// `status.restore` until the database first serves (its identifier recorded): the base,
/// the target, and the first instance's replay as its manager reports it.
fn restore_status(
    b: &Builder,
    o: &Observed,
    primary: Option<&Member>,
) -> Option<pgml_api::cluster::RestoreStatus> {
    let bootstrap = b.cluster.spec.bootstrap.as_ref()?;
    let base = bootstrap
        .base()
        .filter(|_| o.status.system_identifier.is_none())?;
    let report = primary.and_then(|m| m.reported.as_ref());
    let progress = report.and_then(|r| r.restore.clone()).unwrap_or_default();
    Some(pgml_api::cluster::RestoreStatus {
        base,
        target: bootstrap.recovery_target.as_ref().map(|t| t.describe()),
        replayed_lsn: report.and_then(|r| r.replay_lsn.clone()),
        target_reached: progress.target_reached,
        failure: progress.failed,
    })
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
