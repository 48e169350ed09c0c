//! The status the controller owns (phase, instances, primaries, conditions), computed from
//! what the reconcile saw; written by server-side apply only when it changed; the Events
//! its change deserves.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Api;
use kube::api::{Patch, PatchParams};
use pgml_api::PgmlCluster;
use pgml_api::cluster::{ClusterPhase, InstanceStatus, PgmlClusterStatus, RestoreStatus};
use pgml_api::common::{Condition, Time, condition as c};

use super::archiving;
use super::identity;
use super::snapshots::LastSnapshot;
use crate::runtime::conditions::{Stamp, set_condition};
use crate::runtime::{Context, Error, FIELD_MANAGER, events};

/// Condition types the cluster controller writes.
pub const OWNED_CONDITIONS: [&str; 8] = [
    c::CONTINUOUS_ARCHIVING,
    c::DEGRADED,
    c::LAST_BACKUP_SUCCEEDED,
    c::LAST_SNAPSHOT_SUCCEEDED,
    c::PGML_EXTENSION,
    c::PROGRESSING,
    c::READY,
    c::SPEC_VALID,
];

/// Condition reasons and Event reasons.
pub mod reason {
    pub const HEALTHY: &str = "Healthy";
    pub const CREATING: &str = "Creating";
    pub const RESTORING: &str = "Restoring";
    /// The restore cannot complete (target never reached, destination archive not empty).
    pub const RESTORE_FAILED: &str = "RestoreFailed";
    pub const SCALING: &str = "Scaling";
    pub const SWITCHOVER: &str = "Switchover";
    pub const FAILOVER: &str = "Failover";
    pub const INSTANCES_NOT_READY: &str = "InstancesNotReady";
    pub const PRIMARY_NOT_READY: &str = "PrimaryNotReady";
    pub const NO_NODE: &str = "NoNodeAvailable";
    pub const FENCED: &str = "InstancesFenced";
    pub const POOL_DEGRADED: &str = "PoolDegraded";
    pub const SPEC_VALID: &str = "Valid";
    pub const SPEC_INVALID: &str = "Invalid";
    pub const STABLE: &str = "Stable";
    // Events only.
    pub const PRIMARY_CHANGED: &str = "PrimaryChanged";
    pub const SWITCHING_OVER: &str = "SwitchingOver";
    pub const FAILING_OVER: &str = "FailingOver";
    pub const INSTANCE_PLACED: &str = "InstancePlaced";
    pub const INSTANCE_REMOVED: &str = "InstanceRemoved";
    pub const FENCED_EVENT: &str = "Fenced";
    pub const IDENTITY_RECORDED: &str = "SystemIdentifierRecorded";
    // Events of the objects the reconcile writes.
    pub const SECRET_CREATED: &str = "SecretCreated";
    pub const SECRET_MISSING: &str = "SecretMissing";
    pub const PGBACKREST_INVALID: &str = "PgBackRestConfigInvalid";
    pub const POOL_CREATED: &str = "PoolCreated";
    pub const VOLUME_BOUND: &str = "VolumeBound";
    pub const SEEDING: &str = "Seeding";
    pub const SEED_FAILED: &str = "SeedFailed";
    pub const SEED_DELETED: &str = "SeedDeleted";
    /// `bootstrap.snapshot` names an EbsSnapshot that is missing, failed, not yet
    /// Completed or not of a ZFS pool: nothing is created until it is usable.
    pub const BOOTSTRAP_SNAPSHOT_NOT_READY: &str = "BootstrapSnapshotNotReady";
    pub const POD_CREATED: &str = "PodCreated";
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    pub const FENCING: &str = "Fencing";
    /// Deletion: the cluster's PersistentVolumes are deleted.
    pub const VOLUMES_DELETED: &str = "VolumesDeleted";
}

/// Instances in numeric order (`main-2` before `main-10`).
pub fn sort_instances(list: &mut [InstanceStatus]) {
    list.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
}

/// The controller's part of a status, in a canonical order.
pub fn owned_view(s: &PgmlClusterStatus) -> PgmlClusterStatus {
    let mut conditions: Vec<Condition> = s
        .conditions
        .iter()
        .filter(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let mut instances = s.instances.clone();
    sort_instances(&mut instances);
    PgmlClusterStatus {
        observed_generation: s.observed_generation,
        phase: s.phase,
        conditions,
        instances,
        current_primary: s.current_primary.clone(),
        target_primary: s.target_primary.clone(),
        ready_instances: s.ready_instances,
        archiving: s.archiving.clone(),
        last_backup: s.last_backup.clone(),
        last_snapshot: s.last_snapshot.clone(),
        system_identifier: s.system_identifier.clone(),
        restore: s.restore.clone(),
        pgml_version: s.pgml_version.clone(),
        ..Default::default()
    }
}

/// What the reconcile found, for the status.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub desired: i32,
    pub instances: Vec<InstanceStatus>,
    pub current: Option<String>,
    pub target: Option<String>,
    /// Instances whose objects are not all there yet, with why (seeding, pool not mounted…).
    pub building: Vec<String>,
    /// Why a needed change of primary waits.
    pub roles_waiting: Option<String>,
    /// A rolling update under way (`Plan::rollout`).
    pub rollout: Option<String>,
    /// Why an instance could not be placed.
    pub unplaced: Option<String>,
    pub spec_errors: Vec<String>,
    /// pgBackRest: configured or not, and the primary's report.
    pub pgbackrest: archiving::Seen,
    /// The cluster's EBS snapshot backups.
    pub snapshots: LastSnapshot,
    /// `status.systemIdentifier` to hold ([`identity::to_record`]).
    pub system_identifier: Option<String>,
    /// The restore of the database (`bootstrap.snapshot` / `bootstrap.pgbackrest`), until
    /// it first serves.
    pub restore: Option<RestoreStatus>,
}

fn phase_of(s: &Summary, observed: Option<ClusterPhase>) -> (ClusterPhase, &'static str, String) {
    use ClusterPhase as P;
    let ready = s.instances.iter().filter(|i| i.ready).count() as i32;
    let primary_ready = s
        .current
        .as_ref()
        .is_some_and(|p| s.instances.iter().any(|i| &i.name == p && i.ready));
    if s.target != s.current
        && let (Some(cur), Some(tgt)) = (&s.current, &s.target)
    {
        let failover = s.instances.iter().any(|i| &i.name == cur && i.fenced);
        return if failover {
            (
                P::Failover,
                reason::FAILOVER,
                format!("failing over from {cur} to {tgt}"),
            )
        } else {
            let why = s.instances.iter().find(|i| &i.name == cur);
            let why = why.and_then(|i| i.node_leaving.as_deref());
            let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
            (
                P::Switchover,
                reason::SWITCHOVER,
                format!("switching over from {cur} to {tgt}{why}"),
            )
        };
    }
    if s.instances.is_empty() {
        let why = s
            .unplaced
            .clone()
            .unwrap_or_else(|| "no instance placed yet".into());
        return (P::Pending, reason::NO_NODE, why);
    }
    let detail = |base: String| {
        let mut m = base;
        for extra in s.building.iter().chain(&s.roles_waiting).chain(&s.unplaced) {
            m.push_str("; ");
            m.push_str(extra);
        }
        m
    };
    let counts = format!("{ready} of {} instances ready", s.desired);
    let ever_served = identity::ever_served(observed);
    if let Some(why) = s.restore.as_ref().and_then(|r| r.failure.clone()) {
        return (P::Failed, reason::RESTORE_FAILED, why);
    }
    if !primary_ready {
        return if ever_served {
            (
                P::Degraded,
                reason::PRIMARY_NOT_READY,
                detail(format!("the primary is not ready; {counts}")),
            )
        } else if let Some(r) = &s.restore {
            let mut base = format!("restoring from {}", r.base);
            if let Some(t) = &r.target {
                base += &format!(" to {t}");
            }
            if let Some(lsn) = &r.replayed_lsn {
                base += &format!(", WAL replayed to {lsn}");
            }
            if r.target_reached {
                base += ", target reached: promoting";
            }
            (
                P::Restoring,
                reason::RESTORING,
                detail(format!("{base}; {counts}")),
            )
        } else {
            (P::Creating, reason::CREATING, detail(counts))
        };
    }
    if let Some(progress) = &s.rollout {
        return (
            P::Upgrading,
            reason::ROLLING_UPDATE,
            detail(format!("rolling update: {progress}; {counts}")),
        );
    }
    if ready == s.desired && s.instances.len() as i32 == s.desired {
        return (P::Healthy, reason::HEALTHY, counts);
    }
    if !s.building.is_empty() || s.instances.len() as i32 != s.desired {
        let why = if ever_served {
            reason::SCALING
        } else {
            reason::CREATING
        };
        let phase = if ever_served { P::Scaling } else { P::Creating };
        return (phase, why, detail(counts));
    }
    (P::Degraded, reason::INSTANCES_NOT_READY, detail(counts))
}

/// A ZFS pool's health when all is well (`zpool status`).
const POOL_ONLINE: &str = "ONLINE";

/// The new status: the controller's fields only.
pub fn compute(
    s: &Summary,
    observed: &PgmlClusterStatus,
    generation: Option<i64>,
    now: &Time,
) -> PgmlClusterStatus {
    let stamp = Stamp { generation, now };
    let old = owned_view(observed).conditions;
    let (phase, why, message) = phase_of(s, observed.phase);
    let mut out = fields(s, observed, generation, phase);
    let (degraded, dwhy, dmsg) = degraded(&out.instances, phase, why, &message);
    let conds = &mut out.conditions;
    let healthy = phase == ClusterPhase::Healthy;
    set_condition(conds, &old, c::READY, healthy, why, &message, stamp);
    let progressing = matches!(
        phase,
        ClusterPhase::Creating
            | ClusterPhase::Restoring
            | ClusterPhase::Scaling
            | ClusterPhase::Switchover
            | ClusterPhase::Failover
            | ClusterPhase::Upgrading
    );
    let (pwhy, pmsg) = progressing_reason(phase, why, &message);
    set_condition(conds, &old, c::PROGRESSING, progressing, pwhy, pmsg, stamp);
    set_condition(conds, &old, c::DEGRADED, degraded, dwhy, dmsg, stamp);
    let valid = s.spec_errors.is_empty();
    let vwhy = if valid {
        reason::SPEC_VALID
    } else {
        reason::SPEC_INVALID
    };
    let vmsg = if valid {
        "the spec passed the operator's checks".to_string()
    } else {
        s.spec_errors.join("; ")
    };
    set_condition(conds, &old, c::SPEC_VALID, valid, vwhy, vmsg, stamp);
    archiving::fill(&s.pgbackrest, observed, &mut out, stamp);
    super::app::fill(&s.pgbackrest, observed, &mut out, stamp);
    out.last_snapshot = s.snapshots.completed.clone();
    if let Some(cond) = &s.snapshots.condition {
        let conds = &mut out.conditions;
        archiving::set(conds, &old, c::LAST_SNAPSHOT_SUCCEEDED, cond.clone(), stamp);
    }
    out
}

/// `Progressing`'s reason and message when the phase is not one of change (for those it
/// is the phase's own). A cluster waiting for a node says so rather than `Stable`.
fn progressing_reason(
    phase: ClusterPhase,
    why: &'static str,
    message: &str,
) -> (&'static str, String) {
    match phase {
        ClusterPhase::Creating
        | ClusterPhase::Restoring
        | ClusterPhase::Scaling
        | ClusterPhase::Switchover
        | ClusterPhase::Failover
        | ClusterPhase::Upgrading => (why, message.to_string()),
        ClusterPhase::Pending => (
            why,
            format!("waiting for a node to place an instance on: {message}"),
        ),
        ClusterPhase::Failed => (why, format!("stopped: {message}")),
        ClusterPhase::Healthy => (reason::STABLE, format!("nothing to change: {message}")),
        ClusterPhase::Degraded => (
            reason::STABLE,
            format!("no change under way (see Degraded): {message}"),
        ),
    }
}

/// The status' fields but the conditions and pgBackRest's.
fn fields(
    s: &Summary,
    observed: &PgmlClusterStatus,
    generation: Option<i64>,
    phase: ClusterPhase,
) -> PgmlClusterStatus {
    let mut instances = s.instances.clone();
    sort_instances(&mut instances);
    PgmlClusterStatus {
        observed_generation: generation,
        phase: Some(phase),
        ready_instances: Some(instances.iter().filter(|i| i.ready).count() as i32),
        current_primary: s.current.clone(),
        target_primary: s.target.clone(),
        instances,
        // Recorded once, kept for ever: the recorded one wins over anything computed.
        system_identifier: observed
            .system_identifier
            .clone()
            .or_else(|| s.system_identifier.clone()),
        restore: s.restore.clone(),
        ..Default::default()
    }
}

/// `Degraded`: the phase's when it is Degraded or Failover; else a pool not ONLINE, else
/// instances fenced (not serving); else not.
fn degraded(
    instances: &[InstanceStatus],
    phase: ClusterPhase,
    why: &'static str,
    message: &str,
) -> (bool, &'static str, String) {
    let fenced: Vec<&str> = instances
        .iter()
        .filter(|i| i.fenced)
        .map(|i| i.name.as_str())
        .collect();
    let unhealthy_pools: Vec<String> = instances
        .iter()
        .filter_map(|i| {
            let h = i.pool_health.as_deref()?;
            (h != POOL_ONLINE).then(|| format!("{} ({h})", i.name))
        })
        .collect();
    if matches!(phase, ClusterPhase::Degraded | ClusterPhase::Failover) {
        (true, why, message.to_string())
    } else if !unhealthy_pools.is_empty() {
        let message = format!(
            "the ZFS pool of {} is not ONLINE: serving with less redundancy (see the ZfsPool)",
            unhealthy_pools.join(", ")
        );
        (true, reason::POOL_DEGRADED, message)
    } else if !fenced.is_empty() {
        let message = format!(
            "fenced after a failover, not serving: {}",
            fenced.join(", ")
        );
        (true, reason::FENCED, message)
    } else {
        let message = "every instance's ZFS pool ONLINE (as far as reported), none fenced";
        (false, reason::HEALTHY, message.to_string())
    }
}

/// An Event: (warning?, reason, note).
pub type Notice = (bool, String, String);

/// Events a status change deserves: the phase, the primary, instances placed, removed
/// and fenced.
pub fn notices(old: &PgmlClusterStatus, new: &PgmlClusterStatus) -> Vec<Notice> {
    notices_about(old, new)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// [`notices`], each with the instance it is about, if one: its Pod (named after the
/// instance) is the Event's related object, so that `InstancePlaced` for three instances
/// are three Events, not one folded by the recorder.
pub fn notices_about(
    old: &PgmlClusterStatus,
    new: &PgmlClusterStatus,
) -> Vec<(Notice, Option<String>)> {
    let mut out: Vec<(Notice, Option<String>)> = instance_notices(old, new)
        .into_iter()
        .map(|(n, i)| (n, Some(i)))
        .collect();
    out.extend(cluster_notices(old, new).into_iter().map(|n| (n, None)));
    out
}

fn cluster_notices(old: &PgmlClusterStatus, new: &PgmlClusterStatus) -> Vec<Notice> {
    let mut out = primary_notices(old, new);
    if new.phase != old.phase
        && let Some(p) = new.phase
    {
        let ready = new.conditions.iter().find(|x| x.type_ == c::READY);
        let msg = ready.map(|r| r.message.clone()).unwrap_or_default();
        let warn = matches!(p, ClusterPhase::Degraded | ClusterPhase::Failed);
        out.push((warn, format!("{p:?}"), msg));
    }
    if old.system_identifier.is_none()
        && let Some(id) = &new.system_identifier
    {
        out.push((
            false,
            reason::IDENTITY_RECORDED.into(),
            format!("recorded the database's system identifier {id}: from now on an instance never runs initdb on an empty data directory, and the primary is routed by the -rw Service"),
        ));
    }
    out.extend(archiving::notices(old, new));
    out.extend(snapshot_notice(old, new));
    out
}

fn find(s: &PgmlClusterStatus, name: &str) -> Option<InstanceStatus> {
    s.instances.iter().find(|i| i.name == name).cloned()
}

/// Instances placed, fenced, removed, each with the instance's name.
fn instance_notices(old: &PgmlClusterStatus, new: &PgmlClusterStatus) -> Vec<(Notice, String)> {
    let mut out = vec![];
    for i in &new.instances {
        let about = |n: Notice| (n, i.name.clone());
        match find(old, &i.name) {
            None => out.push(about((
                false,
                reason::INSTANCE_PLACED.into(),
                format!(
                    "{} placed on node {} ({}){}",
                    i.name,
                    i.node.as_deref().unwrap_or("?"),
                    i.availability_zone.as_deref().unwrap_or("no zone"),
                    i.seeded_from
                        .as_ref()
                        .map(|s| format!(", seeded from {s}"))
                        .unwrap_or_default()
                ),
            ))),
            Some(o) if i.fenced && !o.fenced => out.push(about((
                true,
                reason::FENCED_EVENT.into(),
                format!("{} fenced: its PostgreSQL must stay stopped so it cannot come back as a second primary", i.name),
            ))),
            _ => {}
        }
    }
    for o in &old.instances {
        if find(new, &o.name).is_none() {
            let removed = (
                false,
                reason::INSTANCE_REMOVED.into(),
                format!("{} removed", o.name),
            );
            out.push((removed, o.name.clone()));
        }
    }
    out
}

/// A change of primary started (a Warning when it is a failover: the old one is fenced),
/// and a new primary.
fn primary_notices(old: &PgmlClusterStatus, new: &PgmlClusterStatus) -> Vec<Notice> {
    let mut out = vec![];
    if new.target_primary != old.target_primary
        && new.target_primary != new.current_primary
        && let (Some(cur), Some(tgt)) = (&new.current_primary, &new.target_primary)
    {
        let failover = find(new, cur).is_some_and(|i| i.fenced);
        out.push(if failover {
            (
                true,
                reason::FAILING_OVER.into(),
                format!("primary {cur} is lost: fenced it and promoting {tgt}, the most advanced ready replica"),
            )
        } else {
            let why = find(new, cur).and_then(|i| i.node_leaving);
            let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
            (false, reason::SWITCHING_OVER.into(), format!("switching over from {cur} to {tgt}{why}"))
        });
    }
    if new.current_primary != old.current_primary
        && let Some(cur) = &new.current_primary
    {
        let note = match &old.current_primary {
            Some(was) => format!("{cur} is the primary (was {was}); the -rw Service follows"),
            None => format!("{cur} is the primary"),
        };
        out.push((false, reason::PRIMARY_CHANGED.into(), note));
    }
    out
}

/// An Event when the newest snapshot's outcome changes: a Warning when one failed, a
/// Normal one when a snapshot succeeds again after a failure.
fn snapshot_notice(old: &PgmlClusterStatus, new: &PgmlClusterStatus) -> Option<Notice> {
    let type_ = c::LAST_SNAPSHOT_SUCCEEDED;
    let now = archiving::condition(new, type_)?;
    let changed = match archiving::condition(old, type_) {
        None => now.status == c::FALSE,
        Some(w) => w.status != now.status || (now.status == c::FALSE && w.message != now.message),
    };
    changed.then(|| {
        (
            now.status == c::FALSE,
            now.reason.clone(),
            now.message.clone(),
        )
    })
}

/// Writes `new` unless it equals the controller's part of `observed`, then publishes the
/// Events of the change. Returns whether it wrote.
pub async fn commit(
    ctx: &Context,
    cluster: &PgmlCluster,
    observed: &PgmlClusterStatus,
    new: &PgmlClusterStatus,
) -> Result<bool, Error> {
    if owned_view(observed) == owned_view(new) {
        return Ok(false);
    }
    let ns = cluster
        .metadata
        .namespace
        .as_deref()
        .ok_or(Error::Incomplete("namespace"))?;
    let name = cluster
        .metadata
        .name
        .as_deref()
        .ok_or(Error::Incomplete("name"))?;
    let api = Api::<PgmlCluster>::namespaced(ctx.client.clone(), ns);
    let mut new = new.clone();
    if new.system_identifier.is_none() {
        // This apply owns systemIdentifier: leaving it out would remove it. The copy the
        // reconcile started from may be older than this controller's own last write, so
        // the stored one is read again (only until one is recorded).
        let stored = api.get(name).await?;
        new.system_identifier = stored.status.and_then(|s| s.system_identifier);
    }
    let body = serde_json::json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "PgmlCluster",
        "status": owned_view(&new),
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    let ns = cluster.metadata.namespace.as_deref();
    for ((warning, why, note), instance) in notices_about(observed, &new) {
        let pod = instance.map(|i| pod_ref(ns, &i));
        events::publish_related(ctx, cluster, pod, warning, &why, note).await;
    }
    Ok(true)
}

/// The Pod of an instance (named after it), as an Event's related object.
fn pod_ref(namespace: Option<&str>, instance: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(instance.into()),
        namespace: namespace.map(str::to_string),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn inst(name: &str, ready: bool) -> InstanceStatus {
        InstanceStatus {
            name: name.into(),
            node: Some("n".into()),
            availability_zone: Some("z".into()),
            pool: Some(name.into()),
            role: None,
            ready,
            lsn: None,
            lag_bytes: None,
            seeded_from: None,
            fenced: false,
            pool_health: None,
            node_leaving: None,
        }
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn summary(ready: &[bool]) -> Summary {
        Summary {
            desired: ready.len() as i32,
            instances: ready
                .iter()
                .enumerate()
                .map(|(i, r)| inst(&format!("c-{}", i + 1), *r))
                .collect(),
            current: Some("c-1".into()),
            target: Some("c-1".into()),
            ..Summary::default()
        }
    }

    fn cond<'a>(s: &'a PgmlClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    /// `bootstrap.snapshot`: Restoring (Progressing, naming the snapshot) until the
    /// restored primary is ready, then as any cluster.
    #[test]
    fn a_restore_is_restoring_until_its_primary_is_ready() {
        let empty = PgmlClusterStatus::default();
        let mut s = summary(&[false]);
        s.restore = Some(RestoreStatus {
            base: "EbsSnapshot nightly".into(),
            ..Default::default()
        });
        let st = compute(&s, &empty, Some(1), &now());
        assert_eq!(st.phase, Some(ClusterPhase::Restoring));
        let p = cond(&st, c::PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", reason::RESTORING)
        );
        assert!(
            p.message.contains("restoring from EbsSnapshot nightly"),
            "{}",
            p.message
        );
        assert_eq!(cond(&st, c::READY).status, "False");
        let mut done = summary(&[true]);
        done.restore = s.restore.clone();
        assert_eq!(
            compute(&done, &st, Some(1), &now()).phase,
            Some(ClusterPhase::Healthy)
        );
    }

    /// `bootstrap.pgbackrest` to a target: the replay's progress in the message and in
    /// `status.restore`; a failure the manager reports is phase Failed (a Warning Event),
    /// never Healthy, even with a primary that answers.
    #[test]
    fn a_point_in_time_restore_shows_its_replay_and_fails_with_the_reason() {
        let empty = PgmlClusterStatus::default();
        let mut s = summary(&[false]);
        s.restore = Some(RestoreStatus {
            base: "pgBackRest stanza src".into(),
            target: Some("time 2026-12-07T10:15:00Z".into()),
            replayed_lsn: Some("0/5000060".into()),
            ..Default::default()
        });
        let st = compute(&s, &empty, Some(1), &now());
        assert_eq!(st.phase, Some(ClusterPhase::Restoring));
        let m = &cond(&st, c::PROGRESSING).message;
        assert!(
            m.contains("restoring from pgBackRest stanza src to time 2026-12-07T10:15:00Z, WAL replayed to 0/5000060"),
            "{m}"
        );
        assert_eq!(st.restore, s.restore);
        let mut failed = s.clone();
        if let Some(r) = failed.restore.as_mut() {
            r.failure = Some("the restore cannot reach bootstrap.recoveryTarget".into());
        }
        let f = compute(&failed, &st, Some(1), &now());
        assert_eq!(f.phase, Some(ClusterPhase::Failed));
        let ready = cond(&f, c::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::RESTORE_FAILED)
        );
        let events = notices(&st, &f);
        assert!(
            events.iter().any(|(warn, why, note)| *warn
                && why == "Failed"
                && note.contains("recoveryTarget")),
            "{events:?}"
        );
    }

    /// A planned roll is Progressing, not Degraded, while the instance it restarts is down;
    /// a not-ready primary is still Degraded.
    #[test]
    fn a_roll_is_upgrading_and_not_degraded() {
        let empty = PgmlClusterStatus::default();
        let mut s = summary(&[true, false, true]);
        s.rollout = Some("1 of 3 instances updated; restarting c-2".into());
        let st = compute(&s, &empty, Some(1), &now());
        assert_eq!(st.phase, Some(ClusterPhase::Upgrading));
        let p = cond(&st, c::PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "RollingUpdate")
        );
        assert!(
            p.message.contains("restarting c-2") && p.message.contains("2 of 3"),
            "{}",
            p.message
        );
        assert_eq!(cond(&st, c::DEGRADED).status, "False");
        assert_eq!(cond(&st, c::READY).status, "False");

        let mut s = summary(&[false, true, true]);
        s.rollout = Some("0 of 3 instances updated; waiting for c-1 to be ready".into());
        let st = compute(&s, &st, Some(1), &now());
        assert_eq!(st.phase, Some(ClusterPhase::Degraded), "served before");
    }

    #[test]
    fn phases_follow_readiness() {
        let empty = PgmlClusterStatus::default();
        let s = compute(&summary(&[false, false]), &empty, Some(1), &now());
        assert_eq!(s.phase, Some(ClusterPhase::Creating));
        assert_eq!(cond(&s, c::PROGRESSING).status, "True");
        let healthy = compute(&summary(&[true, true]), &s, Some(1), &now());
        assert_eq!(healthy.phase, Some(ClusterPhase::Healthy));
        assert_eq!(cond(&healthy, c::READY).status, "True");
        assert_eq!(cond(&healthy, c::READY).observed_generation, Some(1));
        assert_eq!(healthy.ready_instances, Some(2));
        let degraded = compute(&summary(&[true, false]), &healthy, Some(1), &now());
        assert_eq!(degraded.phase, Some(ClusterPhase::Degraded));
        assert_eq!(cond(&degraded, c::DEGRADED).status, "True");
        let primary_down = compute(&summary(&[false, true]), &healthy, Some(1), &now());
        assert_eq!(primary_down.phase, Some(ClusterPhase::Degraded));
        assert_eq!(
            cond(&primary_down, c::READY).reason,
            reason::PRIMARY_NOT_READY
        );
    }

    /// Each instance placed is its own Event (its Pod the related object), not folded
    /// into one by the recorder.
    #[test]
    fn instance_events_name_their_instance() {
        let first = compute(
            &summary(&[true, true]),
            &PgmlClusterStatus::default(),
            Some(1),
            &now(),
        );
        let about: Vec<(String, Option<String>)> =
            notices_about(&PgmlClusterStatus::default(), &first)
                .into_iter()
                .map(|((_, r, _), i)| (r, i))
                .collect();
        assert_eq!(
            about[..2],
            [
                (reason::INSTANCE_PLACED.to_string(), Some("c-1".to_string())),
                (reason::INSTANCE_PLACED.to_string(), Some("c-2".to_string())),
            ]
        );
        assert!(about[2..].iter().all(|(_, i)| i.is_none()), "{about:?}");
        let pod = pod_ref(Some("db"), "c-1");
        assert_eq!(
            (pod.kind.as_deref(), pod.name.as_deref()),
            (Some("Pod"), Some("c-1"))
        );
    }

    /// `kubectl describe` shows a message under every condition, whatever the phase.
    #[test]
    fn every_condition_has_a_message() {
        let empty = PgmlClusterStatus::default();
        let mut pending = Summary {
            desired: 2,
            unplaced: Some("no Ready node in a zone of us-east-1".into()),
            ..Summary::default()
        };
        let mut invalid = summary(&[true, true]);
        invalid.spec_errors = vec!["storage.zfs.volumes.count: 0".into()];
        for s in [
            summary(&[true, true]),
            summary(&[true, false]),
            summary(&[false, false]),
            pending.clone(),
            invalid,
        ] {
            let st = compute(&s, &empty, Some(1), &now());
            for t in [c::READY, c::PROGRESSING, c::DEGRADED, c::SPEC_VALID] {
                let cd = cond(&st, t);
                assert!(!cd.message.is_empty(), "{:?}: {t} {cd:?}", st.phase);
            }
        }
        let healthy = compute(&summary(&[true, true]), &empty, Some(1), &now());
        assert_eq!(
            cond(&healthy, c::PROGRESSING).message,
            "nothing to change: 2 of 2 instances ready"
        );
        assert_eq!(
            cond(&healthy, c::SPEC_VALID).message,
            "the spec passed the operator's checks"
        );
        // Pending for want of a node: Progressing says it waits, and why.
        pending.unplaced = Some("no Ready node in a zone of us-east-1".into());
        let st = compute(&pending, &empty, Some(1), &now());
        assert_eq!(st.phase, Some(ClusterPhase::Pending));
        let p = cond(&st, c::PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("False", reason::NO_NODE)
        );
        assert_eq!(
            p.message,
            "waiting for a node to place an instance on: no Ready node in a zone of us-east-1"
        );
    }

    #[test]
    fn an_unchanged_summary_gives_an_equal_status_even_later() {
        let first = compute(
            &summary(&[true, true]),
            &PgmlClusterStatus::default(),
            Some(2),
            &now(),
        );
        let later = Time(Timestamp::from_second(1_800_000_999).unwrap());
        let again = compute(&summary(&[true, true]), &first, Some(2), &later);
        assert_eq!(owned_view(&first), owned_view(&again));
    }

    #[test]
    fn failover_is_a_warning_naming_both() {
        let healthy = compute(
            &summary(&[true, true, true]),
            &PgmlClusterStatus::default(),
            Some(1),
            &now(),
        );
        let mut s = summary(&[false, true, true]);
        s.instances[0].fenced = true;
        s.target = Some("c-3".into());
        let fo = compute(&s, &healthy, Some(1), &now());
        assert_eq!(fo.phase, Some(ClusterPhase::Failover));
        let n = notices(&healthy, &fo);
        let ev = n
            .iter()
            .find(|(_, r, _)| r == reason::FAILING_OVER)
            .unwrap();
        assert!(ev.0);
        assert!(ev.2.contains("c-1") && ev.2.contains("c-3"), "{}", ev.2);
        assert!(n.iter().any(|(w, r, _)| *w && r == reason::FENCED_EVENT));
        s.current = Some("c-3".into());
        let done = compute(&s, &fo, Some(1), &now());
        assert!(
            notices(&fo, &done)
                .iter()
                .any(|(_, r, n)| r == reason::PRIMARY_CHANGED && n.contains("was c-1"))
        );
        assert_eq!(
            cond(&done, c::DEGRADED).status,
            "True",
            "a fenced instance degrades the cluster"
        );
    }

    #[test]
    fn a_pool_not_online_degrades_a_healthy_cluster() {
        let mut s = summary(&[true, true]);
        s.instances[1].pool_health = Some("DEGRADED".into());
        let st = compute(&s, &PgmlClusterStatus::default(), Some(1), &now());
        assert_eq!(st.phase, Some(ClusterPhase::Healthy), "still serving");
        let d = cond(&st, c::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", reason::POOL_DEGRADED)
        );
        assert!(d.message.contains("c-2 (DEGRADED)"), "{}", d.message);
        s.instances[1].pool_health = Some("ONLINE".into());
        let st = compute(&s, &st, Some(1), &now());
        assert_eq!(cond(&st, c::DEGRADED).status, "False");
    }

    #[test]
    fn a_fenced_instance_degrades_a_cluster_that_is_otherwise_only_scaling() {
        let healthy = compute(
            &summary(&[true, true]),
            &PgmlClusterStatus::default(),
            Some(1),
            &now(),
        );
        let mut s = summary(&[true, true, false]);
        s.desired = 2;
        s.instances[2].fenced = true;
        let st = compute(&s, &healthy, Some(1), &now());
        assert_eq!(st.phase, Some(ClusterPhase::Scaling));
        let d = cond(&st, c::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", reason::FENCED)
        );
        assert_eq!(d.message, "fenced after a failover, not serving: c-3");
    }

    #[test]
    fn the_last_snapshot_condition_and_its_events() {
        use crate::cluster::snapshots::{LastSnapshot, reason as snap};
        use pgml_api::cluster::SnapshotRef;
        let mut s = summary(&[true]);
        let none = compute(&s, &PgmlClusterStatus::default(), Some(1), &now());
        assert!(
            none.conditions
                .iter()
                .all(|x| x.type_ != c::LAST_SNAPSHOT_SUCCEEDED)
        );
        let good = SnapshotRef {
            name: "nightly-1".into(),
            capture_time: None,
        };
        s.snapshots = LastSnapshot {
            completed: Some(good.clone()),
            condition: Some((
                c::TRUE,
                snap::SNAPSHOT_COMPLETED,
                "nightly-1 captured".into(),
            )),
        };
        let ok = compute(&s, &none, Some(1), &now());
        assert_eq!(ok.last_snapshot, Some(good.clone()));
        assert_eq!(cond(&ok, c::LAST_SNAPSHOT_SUCCEEDED).status, "True");
        assert!(
            notices(&none, &ok)
                .iter()
                .all(|(_, r, _)| r != snap::SNAPSHOT_COMPLETED)
        );
        s.snapshots.condition = Some((c::FALSE, snap::SNAPSHOT_FAILED, "nightly-2 failed".into()));
        let failed = compute(&s, &ok, Some(1), &now());
        assert_eq!(failed.last_snapshot, Some(good), "the restorable one stays");
        assert_eq!(
            cond(&failed, c::LAST_SNAPSHOT_SUCCEEDED).reason,
            snap::SNAPSHOT_FAILED
        );
        let n = notices(&ok, &failed);
        assert!(
            n.iter()
                .any(|(w, r, m)| *w && r == snap::SNAPSHOT_FAILED && m.contains("nightly-2"))
        );
        assert!(
            notices(&failed, &compute(&s, &failed, Some(1), &now())).is_empty(),
            "once per change"
        );
        assert_eq!(
            owned_view(&failed),
            failed,
            "the owned view keeps lastSnapshot"
        );
    }

    #[test]
    fn the_system_identifier_is_written_once_and_carried_by_every_status() {
        let id = "7318791534227411232";
        let empty = PgmlClusterStatus::default();
        let none = compute(&summary(&[true]), &empty, Some(1), &now());
        assert_eq!(none.system_identifier, None);
        let mut s = summary(&[true]);
        s.system_identifier = Some(id.into());
        let first = compute(&s, &none, Some(1), &now());
        assert_eq!(first.system_identifier.as_deref(), Some(id));
        assert_eq!(owned_view(&first), first, "the owned view keeps it");
        let n = notices(&none, &first);
        assert!(
            n.iter()
                .any(|(w, r, m)| !*w && r == reason::IDENTITY_RECORDED && m.contains(id)),
            "{n:?}"
        );
        // Later statuses keep it, whatever the reconcile computed (a stopped primary
        // reports none; a wrong one never replaces it).
        let later = compute(&summary(&[false]), &first, Some(2), &now());
        assert_eq!(later.system_identifier.as_deref(), Some(id));
        s.system_identifier = Some("7318791534227411999".into());
        let other = compute(&s, &later, Some(2), &now());
        assert_eq!(other.system_identifier.as_deref(), Some(id));
        assert!(
            notices(&later, &other)
                .iter()
                .all(|(_, r, _)| r != reason::IDENTITY_RECORDED),
            "once"
        );
    }

    #[test]
    fn instances_sort_numerically() {
        let mut l = vec![inst("c-10", true), inst("c-2", true), inst("c-1", true)];
        sort_instances(&mut l);
        let names: Vec<&str> = l.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["c-1", "c-2", "c-10"]);
    }
}
