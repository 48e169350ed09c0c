//! Scheduled EbsSnapshots and their retention, for ZfsPools (`spec.snapshots`) and
//! PgmlClusters (`spec.backups.snapshots`).
//!
//! For each source with a schedule: at every slot, create the EbsSnapshot named after the
//! source and the slot (so a crashed or doubled operator gets AlreadyExists, never a
//! second set), labelled `pgml.io/scheduled-by`; prune that label's snapshots by the
//! retention rules; requeue at the next slot. The snapshots carry no owner reference: they
//! outlive the source, for disaster recovery. Status fields go through server-side apply
//! with their own field manager, [`FIELD_MANAGER`], so that the ZfsPool controller's
//! applies (manager `pgml-operator`, which owns the rest of the status) and these never
//! remove each other's fields.

pub mod plan;
pub mod retention;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use pgml_api::cluster::SnapshotSourceRole;
use pgml_api::common::{Time, keys};
use pgml_api::cron::Cron;
use pgml_api::schedule::{ScheduleStatus, SnapshotSchedule, scheduled_by, scheduled_snapshot_name};
use pgml_api::snapshot::{ClusterSource, LocalRef, SnapshotSource};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runtime::controller::{self, api};
use crate::runtime::events::publish;
use crate::runtime::{Context, Error};

/// The field manager of the scheduler's status fields.
pub const FIELD_MANAGER: &str = "pgml-operator-schedule";

/// Event reasons.
pub mod reason {
    pub const SNAPSHOT_SCHEDULED: &str = "SnapshotScheduled";
    pub const SNAPSHOT_PRUNED: &str = "SnapshotPruned";
    pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
    pub const SNAPSHOT_NAME_TAKEN: &str = "SnapshotNameTaken";
}

/// What the scheduler needs of a kind that has a snapshot schedule.
pub trait Scheduled:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The schedule and retention, when the spec has them.
    fn schedule(&self) -> Option<&SnapshotSchedule>;
    /// The EbsSnapshot source a slot snapshots.
    fn snapshot_source(&self) -> SnapshotSource;
    /// The scheduler's part of the status, when there is a status.
    fn schedule_field(&self) -> Option<&ScheduleStatus>;
    /// The name of the object of this kind that `s` snapshots, if it snapshots one.
    fn is_source_of(s: &EbsSnapshot) -> Option<String>;
}

impl Scheduled for ZfsPool {
    fn schedule(&self) -> Option<&SnapshotSchedule> {
        self.spec.snapshots.as_ref()
    }

    fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource {
            cluster: None,
            zfs_pool: Some(LocalRef {
                name: self.name_any(),
            }),
            persistent_volume_claim: None,
        }
    }

    fn schedule_field(&self) -> Option<&ScheduleStatus> {
        self.status.as_ref().map(|s| &s.schedule)
    }

    fn is_source_of(s: &EbsSnapshot) -> Option<String> {
        s.spec.source.zfs_pool.as_ref().map(|r| r.name.clone())
    }
}

impl Scheduled for PgmlCluster {
    fn schedule(&self) -> Option<&SnapshotSchedule> {
        self.spec.backups.snapshots.as_ref().map(|b| &b.scheduled)
    }

    /// A cluster source with no instance lets the EbsSnapshot controller pick a ready
    /// replica; `source: Primary` names the current primary when the status knows it.
    fn snapshot_source(&self) -> SnapshotSource {
        let primary = self.spec.backups.snapshots.as_ref().map(|b| b.source)
            == Some(SnapshotSourceRole::Primary);
        let instance = primary
            .then(|| self.status.as_ref()?.current_primary.clone())
            .flatten();
        SnapshotSource {
            cluster: Some(ClusterSource {
                name: self.name_any(),
                instance,
            }),
            zfs_pool: None,
            persistent_volume_claim: None,
        }
    }

    fn schedule_field(&self) -> Option<&ScheduleStatus> {
        self.status.as_ref().map(|s| &s.schedule)
    }

    fn is_source_of(s: &EbsSnapshot) -> Option<String> {
        s.spec.source.cluster.as_ref().map(|c| c.name.clone())
    }
}

/// Runs the snapshot scheduler until `shutdown` resolves.
pub async fn run_until(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let stop = shutdown.boxed().shared();
    tokio::join!(
        run_for::<ZfsPool>(ctx.clone(), stop.clone()),
        run_for::<PgmlCluster>(ctx, stop),
    );
}

async fn run_for<K: Scheduled>(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Scheduled snapshots changing phase wake their source: a Completed one may let
    // retention prune, an ended one may release a held-back slot.
    let snapshots = watcher::Config::default()
        .labels(keys::SCHEDULED_BY)
        .any_semantic();
    let schedules = Controller::new(api::<K>(&ctx), watcher::Config::default().any_semantic())
        .watches(api::<EbsSnapshot>(&ctx), snapshots, |s: EbsSnapshot| {
            let ns = s.namespace()?;
            let name = K::is_source_of(&s)?;
            Some(ObjectRef::<K>::new(&name).within(&ns))
        });
    controller::drive(
        schedules,
        ctx,
        shutdown,
        "schedules",
        reconcile::<K>,
        error_policy::<K>,
    )
    .await;
}

fn error_policy<K: Scheduled>(_: Arc<K>, e: &Error, _: Arc<Context>) -> Action {
    tracing::info!(error = %e, "schedule reconcile did not finish; retrying");
    Action::requeue(Duration::from_secs(10) + Duration::from_millis(rand::random_range(0..5000)))
}

/// How long from `now` until `at`, never zero (the slot is then due on wake-up).
fn until(now: Timestamp, at: Timestamp) -> Duration {
    let d = at.duration_since(now);
    Duration::try_from(d)
        .unwrap_or_default()
        .max(Duration::from_millis(1))
}

async fn reconcile<K: Scheduled>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::Incomplete("namespace"))?;
    let name = obj.name_any();
    let observed = obj.schedule_field().cloned().unwrap_or_default();
    let Some(sched) = obj.schedule() else {
        // No schedule: forget the status fields; scheduled snapshots stay as they are.
        if observed != ScheduleStatus::default() {
            write_status(&ctx, &*obj, &ScheduleStatus::default()).await?;
        }
        return Ok(Action::await_change());
    };
    if obj.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let kind = K::kind(&()).to_string();
    let label = scheduled_by(&kind, &name);
    let snaps: Api<EbsSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let ours: Vec<EbsSnapshot> = snaps
        .list(&ListParams::default().labels(&format!("{}={label}", keys::SCHEDULED_BY)))
        .await?
        .items
        .into_iter()
        .filter(|s| K::is_source_of(s).as_deref() == Some(name.as_str()))
        .collect();

    let mut status = observed.clone();
    let mut action = Action::await_change();
    match sched.schedule.as_deref().map(Cron::parse) {
        None => status = ScheduleStatus::default(),
        Some(Err(message)) => {
            status.next_schedule_time = None;
            let note = format!("snapshots.schedule: {message}; no snapshots are scheduled");
            publish(&ctx, &*obj, true, reason::INVALID_SCHEDULE, note).await;
        }
        Some(Ok(cron)) => {
            let now = Timestamp::now();
            let since = observed
                .last_schedule_time
                .as_ref()
                .or(obj.meta().creation_timestamp.as_ref())
                .map_or(now, |t| t.0);
            let running: Vec<String> = ours
                .iter()
                .filter(|s| retention::in_progress(s) && s.metadata.deletion_timestamp.is_none())
                .map(|s| s.name_any())
                .collect();
            let p = plan::plan(&cron, since, now, &running, |slot| {
                scheduled_snapshot_name(&name, slot)
            });
            if let Some(slot) = p.create {
                let made = create(&ctx, &*obj, sched, &label, slot).await?;
                status.last_schedule_time = Some(Time(slot));
                if let Some(made) = made {
                    status.last_scheduled_snapshot = Some(made);
                }
            }
            if let Some(other) = &p.waiting_for {
                tracing::info!(source = %name, running = %other, "a due slot waits for the previous scheduled snapshot to end");
            }
            status.next_schedule_time = p.next.map(Time);
            if let Some(next) = p.next {
                action = Action::requeue(until(now, next));
            }
        }
    }
    if status != observed {
        write_status(&ctx, &*obj, &status).await?;
    }

    for victim in retention::prune(&ours, &label, &sched.retention) {
        match snaps.delete(&victim, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(source = %name, snapshot = %victim, "scheduled snapshot pruned");
                let note = format!("deleted EbsSnapshot {victim} (retention)");
                publish(&ctx, &*obj, false, reason::SNAPSHOT_PRUNED, note).await;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(action)
}

/// Creates the EbsSnapshot of `slot`. Returns its name, or `None` when an object of
/// that name exists that this schedule did not make (reported, left alone).
async fn create<K: Scheduled>(
    ctx: &Context,
    obj: &K,
    sched: &SnapshotSchedule,
    label: &str,
    slot: Timestamp,
) -> Result<Option<String>, Error> {
    let ns = obj.namespace().ok_or(Error::Incomplete("namespace"))?;
    let name = scheduled_snapshot_name(&obj.name_any(), slot);
    let spec = serde_json::from_value(serde_json::json!({
        "source": obj.snapshot_source(),
        "deletionPolicy": sched.deletion_policy,
    }))
    .expect("an EbsSnapshot spec from a source and a policy");
    let mut snap = EbsSnapshot::new(&name, spec);
    snap.metadata.labels = Some(BTreeMap::from([
        (keys::SCHEDULED_BY.to_string(), label.to_string()),
        (
            keys::MANAGED_BY.to_string(),
            keys::MANAGED_BY_VALUE.to_string(),
        ),
    ]));
    snap.metadata.annotations = Some(BTreeMap::from([(
        keys::SCHEDULE_SLOT.to_string(),
        slot.to_string(),
    )]));
    let api: Api<EbsSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &snap).await {
        Ok(_) => {
            // Crash test: the object exists, the status does not say so yet.
            pgml_runtime::failpoint("schedule.after-create");
            tracing::info!(source = %obj.name_any(), snapshot = %name, %slot, "scheduled snapshot created");
            let note = format!("created EbsSnapshot {name} for the {slot} slot");
            publish(ctx, obj, false, reason::SNAPSHOT_SCHEDULED, note).await;
            Ok(Some(name))
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            tracing::info!(source = %obj.name_any(), snapshot = %name, %slot, "scheduled snapshot already exists");
            let existing = api.get(&name).await?;
            let ours = existing
                .labels()
                .get(keys::SCHEDULED_BY)
                .map(String::as_str)
                == Some(label);
            if ours {
                Ok(Some(name))
            } else {
                let note = format!(
                    "EbsSnapshot {name} exists and was not made by this schedule; the {slot} slot is skipped"
                );
                publish(ctx, obj, true, reason::SNAPSHOT_NAME_TAKEN, note).await;
                Ok(None)
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Server-side apply of the scheduler's status fields only.
async fn write_status<K: Scheduled>(
    ctx: &Context,
    obj: &K,
    s: &ScheduleStatus,
) -> Result<(), Error> {
    let ns = obj.namespace().ok_or(Error::Incomplete("namespace"))?;
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": s,
    });
    Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(source: &str, primary: Option<&str>) -> PgmlCluster {
        let mut c: PgmlCluster = serde_yaml::from_str(&format!(
            "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {{name: main}}\nspec:\n  storage: {{persistentVolumeClaim: {{size: 10Gi}}}}\n  backups: {{snapshots: {{schedule: '@daily', source: {source}}}}}\n"
        ))
        .unwrap();
        c.status = Some(pgml_api::PgmlClusterStatus {
            current_primary: primary.map(str::to_string),
            ..Default::default()
        });
        c
    }

    #[test]
    fn cluster_snapshots_name_the_primary_only_when_asked() {
        let replica = cluster("Replica", Some("main-1")).snapshot_source();
        assert_eq!(
            replica.cluster,
            Some(ClusterSource {
                name: "main".into(),
                instance: None
            })
        );
        let primary = cluster("Primary", Some("main-1")).snapshot_source();
        assert_eq!(primary.cluster.unwrap().instance.as_deref(), Some("main-1"));
        // No primary known yet: the EbsSnapshot controller decides.
        let unknown = cluster("Primary", None).snapshot_source();
        assert_eq!(unknown.cluster.unwrap().instance, None);
        assert_eq!(
            cluster("Replica", None)
                .schedule()
                .unwrap()
                .schedule
                .as_deref(),
            Some("@daily")
        );
    }

    #[test]
    fn a_pool_snapshots_itself() {
        let pool: ZfsPool = serde_yaml::from_str(
            "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {name: analytics}\nspec: {nodeName: n, volumes: {sizeGiB: 10}, snapshots: {schedule: '*/5 * * * *'}}",
        )
        .unwrap();
        let src = pool.snapshot_source();
        assert_eq!(src.zfs_pool.unwrap().name, "analytics");
        assert!(src.cluster.is_none() && src.persistent_volume_claim.is_none());
        let sched = pool.schedule().unwrap();
        assert_eq!(sched.retention.keep_last, 3);
        assert_eq!(
            sched.deletion_policy,
            pgml_api::snapshot::DeletionPolicy::Delete
        );
    }
}
