//! One pass over one ZfsPool: observe the node, let [`decide`] pick the next step, do it,
//! repeat until there is nothing to do now, then apply the agent's status (only when it
//! changed).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use pgml_api::common::condition as c;
use pgml_api::zfspool::{Dataset, Layout, ZfsPool};
use pgml_zfs::command::{self, DeviceRef, ImportSpec, ImportTarget, Mount, PoolSpec};
use pgml_zfs::{
    DatasetName, DevicePath, Dialect, Guid, HostPath, PoolName, Property, map_properties,
};

use crate::decide::{Action, Placement, Wait, decide};
use crate::devices::Discovery;
use crate::exec::{ExecError, Runner};
use crate::judge::{Outcome, agent_status, notices, released_condition};
use crate::observe::{Facts, dialect_name, observe};
use crate::report::{AgentStatus, FIELD_MANAGER, Verdict, cond, conditions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Zfs(#[from] pgml_zfs::ZfsError),
}

/// `(member index, size in GiB)` as the controller reported them.
pub type MemberSizes = Vec<(i32, Option<i64>)>;

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    /// The controller's cache of this node's ZfsPools.
    pub store: Store<ZfsPool>,
    pub runner: Runner,
    pub discovery: Discovery,
    pub mount_root: HostPath,
    pub dialect: Dialect,
    pub resync: Duration,
    /// One pool at a time: zfs-fuse and `zpool import -d` scans do not mix well with
    /// concurrent creates, and a node has few pools.
    pub lock: tokio::sync::Mutex<()>,
    /// Member sizes (GiB) each pool (by UID) was last expanded for.
    pub expanded: Mutex<HashMap<String, MemberSizes>>,
    /// Per pool (by UID): the resourceVersion the agent's last status write was based on,
    /// and what it wrote. Until the cache shows a newer version of the object, that write
    /// is what the agent's fields hold.
    pub written: Mutex<HashMap<String, (String, AgentStatus)>>,
    /// Publishes the agent's Events (about the ZfsPool).
    pub recorder: kube::runtime::events::Recorder,
}

impl Ctx {
    pub fn sizes_changed(&self, pool: &ZfsPool, sizes: &[(i32, Option<i64>)]) -> bool {
        let uid = pool.uid().unwrap_or_default();
        self.expanded.lock().expect("sizes lock").get(&uid) != Some(&sizes.to_vec())
    }

    /// Records a status write; forgets the pools the cache no longer holds.
    fn remember_write(&self, uid: String, based_on: String, status: AgentStatus) {
        let live: std::collections::HashSet<String> =
            self.store.state().iter().filter_map(|p| p.uid()).collect();
        let mut written = self.written.lock().expect("written lock");
        written.retain(|u, _| live.contains(u));
        written.insert(uid, (based_on, status));
        drop(written);
        self.expanded
            .lock()
            .expect("sizes lock")
            .retain(|u, _| live.contains(u));
    }

    fn remember_sizes(&self, pool: &ZfsPool, sizes: &[(i32, Option<i64>)]) {
        let uid = pool.uid().unwrap_or_default();
        self.expanded
            .lock()
            .expect("sizes lock")
            .insert(uid, sizes.to_vec());
    }
}

pub async fn reconcile(pool: Arc<ZfsPool>, ctx: Arc<Ctx>) -> Result<Requeue, Error> {
    let _one_at_a_time = ctx.lock.lock().await;
    // The object was taken from the cache when this reconcile was scheduled, which may be
    // seconds ago behind the lock: work from the cache's latest.
    let pool = match ctx.store.get(&ObjectRef::from_obj(&*pool)) {
        Some(latest) => latest,
        None => return Ok(Requeue::await_change()),
    };
    let name = match PoolName::new(pool.pool_name()) {
        Ok(n) => n,
        Err(e) => {
            // The schema admits a few names ZFS refuses (`c0…`): say so, wait for a change.
            let desired = invalid_name_status(&pool, ctx.dialect, e.to_string());
            apply_if_changed(&pool, &ctx, &desired).await?;
            return Ok(Requeue::await_change());
        }
    };
    let Pass { mut facts, outcome } = settle(&pool, &ctx, &name).await?;
    if outcome.refused.is_some() && facts.observed.imported.is_some() {
        // A same-named pool that is not ours: report nothing of it.
        facts.observed.imported = None;
        facts.imported_name = None;
        facts.list = None;
        facts.status = None;
    }
    if released_before(&pool) && outcome.released == Some("NotImported") {
        // Released and reported: what the node shows while the controller detaches and
        // deletes the volumes concerns no one (and each write would wake the controller).
        return Ok(Requeue::await_change());
    }
    write_status(&pool, &ctx, &facts, &outcome).await?;
    Ok(match outcome.wait {
        // Attached, the by-id link not there yet: udev is seconds away, no event will
        // tell, so look again soon rather than at the next resync.
        Some(Wait::Devices(_)) => Requeue::requeue(DEVICE_POLL.min(ctx.resync)),
        _ => Requeue::requeue(ctx.resync),
    })
}

/// The agent's status for a pool whose name ZFS refuses: PoolImported False (and, while
/// the pool is deleted, PoolReleased True: no pool can exist under that name).
fn invalid_name_status(pool: &ZfsPool, dialect: Dialect, why: String) -> AgentStatus {
    let mut verdicts = vec![Verdict::new(
        cond::POOL_IMPORTED,
        c::FALSE,
        "InvalidPoolName",
        why,
    )];
    if pool.metadata.deletion_timestamp.is_some() {
        // No pool can exist under a name ZFS refuses: nothing to release.
        verdicts.push(Verdict::new(
            cond::POOL_RELEASED,
            c::TRUE,
            "NotImported",
            "no pool of this object can exist on the node",
        ));
    }
    AgentStatus {
        pool_guid: pool.status.as_ref().and_then(|s| s.pool_guid.clone()),
        zfs_dialect: Some(dialect_name(dialect).to_string()),
        conditions: conditions(&verdicts, pool, Timestamp::now()),
        ..Default::default()
    }
    .normalized()
}

/// How a pass over the pool ended: what was last observed, and how its last step went.
struct Pass {
    facts: Facts,
    outcome: Outcome,
}

/// Observes, decides and takes the step, again, until a step leaves nothing to do now.
/// Each step changes what is observed; a handful of steps reach steady state (import or
/// create → datasets → expand), so six at the most.
async fn settle(pool: &ZfsPool, ctx: &Ctx, name: &PoolName) -> Result<Pass, Error> {
    let mut outcome = Outcome::default();
    let mut facts = observe(pool, ctx, name).await?;
    for _ in 0..6 {
        let action = decide(&facts.observed);
        tracing::debug!(pool = %name, ?action, "decided");
        if take_step(pool, ctx, name, &facts, &action, &mut outcome).await {
            break;
        }
        facts = observe(pool, ctx, name).await?;
        if outcome.released.is_some() && facts.observed.imported.is_none() {
            break;
        }
    }
    Ok(Pass { facts, outcome })
}

/// Takes `action` when it is a step on the node, and notes in `outcome` what it says for
/// the status. `true` when the pass ends here: a wait, a refusal, steady state, the
/// release, or a step that failed.
async fn take_step(
    pool: &ZfsPool,
    ctx: &Ctx,
    name: &PoolName,
    facts: &Facts,
    action: &Action,
    outcome: &mut Outcome,
) -> bool {
    match action {
        Action::Wait(w) => {
            outcome.wait = Some(w.clone());
            true
        }
        Action::Refuse { device, reason } => {
            tracing::warn!(pool = %name, device, reason, "refusing to build over existing data");
            outcome.refused = Some((device.clone(), reason.clone()));
            true
        }
        Action::Steady => true,
        Action::Released => {
            outcome.released = Some("NotImported");
            true
        }
        step => match act(pool, ctx, name, facts, step).await {
            Ok(()) => {
                if let Action::Replace { index, old, new } = step {
                    outcome.replaced = Some((*index, old.clone(), new.clone()));
                }
                if matches!(step, Action::Export) {
                    outcome.released = Some("Exported");
                } else if matches!(step, Action::Destroy) {
                    outcome.released = Some("Destroyed");
                }
                false
            }
            Err(e) => {
                tracing::warn!(pool = %name, ?step, error = %e, "step failed");
                outcome.failed = Some(e.to_string());
                true
            }
        },
    }
}

/// How often a pool whose attached volumes have no device link yet is looked at again.
const DEVICE_POLL: Duration = Duration::from_secs(2);

/// The stored status already says the pool was released for deletion.
fn released_before(pool: &ZfsPool) -> bool {
    pool.metadata.deletion_timestamp.is_some() && released_condition(pool).is_some()
}

pub fn error_policy(pool: Arc<ZfsPool>, e: &Error, _ctx: Arc<Ctx>) -> Requeue {
    tracing::warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), error = %e, "reconcile failed");
    Requeue::requeue(Duration::from_secs(5))
}

/// Takes one step on the node: the command (or commands) `step` stands for.
async fn act(
    pool: &ZfsPool,
    ctx: &Ctx,
    name: &PoolName,
    facts: &Facts,
    step: &Action,
) -> Result<(), Error> {
    let actual = facts.imported_name.clone().unwrap_or_else(|| name.clone());
    match step {
        Action::Create => {
            let c = command::create_pool(ctx.dialect, &pool_spec(pool, ctx, name, facts)?)?;
            tracing::info!(pool = %name, command = %c, "creating pool");
            ctx.runner.ok(&c).await?;
            ctx.remember_sizes(pool, &facts.sizes);
        }
        Action::Import { guid, force } => import(ctx, name, facts, *guid, *force).await?,
        Action::CreateDatasets(names) => {
            for ds in pool
                .spec
                .template
                .datasets
                .iter()
                .filter(|ds| names.contains(&ds.name))
            {
                create_dataset(pool, ctx, &actual, ds).await?;
            }
        }
        Action::Mount(which) => mount_datasets(pool, ctx, &actual, which).await?,
        Action::Expand => {
            expand_members(ctx, name, &actual, facts).await?;
            ctx.remember_sizes(pool, &facts.sizes);
        }
        Action::Replace { index, old, new } => {
            let old = match Guid::parse(old) {
                Ok(g) => DeviceRef::Guid(g),
                Err(_) => DeviceRef::Path(DevicePath::new(old.clone())?),
            };
            let c = command::replace_device(&actual, &old, &DevicePath::new(new.clone())?);
            tracing::info!(pool = %name, index, command = %c, "replacing member");
            ctx.runner.ok(&c).await?;
        }
        Action::Export => {
            let c = command::export_pool(&actual, false);
            tracing::info!(pool = %name, command = %c, "exporting pool (reclaimPolicy Retain)");
            ctx.runner.ok(&c).await?;
        }
        Action::Destroy => {
            let c = command::destroy_pool(&actual, false);
            tracing::info!(pool = %name, command = %c, "destroying pool (reclaimPolicy Delete)");
            ctx.runner.ok(&c).await?;
        }
        Action::Wait(_) | Action::Refuse { .. } | Action::Steady | Action::Released => {}
    }
    Ok(())
}

/// `zpool import` of the pool `guid` from the devices' folder, under the mount root, renamed
/// to `name` when `zpool import` listed it by another.
async fn import(
    ctx: &Ctx,
    name: &PoolName,
    facts: &Facts,
    guid: u64,
    force: bool,
) -> Result<(), Error> {
    let dir = HostPath::new(ctx.discovery.dev_dir.to_string_lossy().into_owned())?;
    let from = facts
        .observed
        .importable
        .iter()
        .find(|p| p.guid == Some(guid))
        .map(|p| p.name.clone());
    let c = command::import_pool(
        ctx.dialect,
        &ImportSpec {
            target: ImportTarget::Guid(Guid(guid)),
            new_name: (from.as_deref() != Some(name.as_str())).then(|| name.clone()),
            search_dirs: vec![dir],
            altroot: Some(ctx.mount_root.clone()),
            mount: true,
            force,
        },
    )?;
    tracing::info!(pool = %name, command = %c, "importing pool");
    ctx.runner.ok(&c).await?;
    Ok(())
}

/// Each dataset of `which` where the spec asks (of the pool imported as `actual`): its
/// mount point set when it is elsewhere, mounted when it is not.
async fn mount_datasets(
    pool: &ZfsPool,
    ctx: &Ctx,
    actual: &PoolName,
    which: &[(String, Placement)],
) -> Result<(), Error> {
    for (name, placement) in which {
        let Some(ds) = pool.spec.template.datasets.iter().find(|d| d.name == *name) else {
            continue;
        };
        let full = DatasetName::from(actual.clone()).child(&ds.name)?;
        let c = match placement {
            Placement::Elsewhere => {
                let prop = Property::new("mountpoint", relative_mount(pool, ds))?;
                let Some(c) = command::set_property(ctx.dialect, &full, &prop) else {
                    continue;
                };
                c
            }
            Placement::Unmounted => pgml_zfs::Command::new("zfs", ["mount", full.as_str()]),
        };
        tracing::info!(dataset = %full, command = %c, "mounting where the spec asks");
        ctx.runner.ok(&c).await?;
    }
    Ok(())
}

/// `zpool online -e` of each online member with a device path, so the pool grows into
/// volumes made larger.
async fn expand_members(
    ctx: &Ctx,
    name: &PoolName,
    actual: &PoolName,
    facts: &Facts,
) -> Result<(), Error> {
    for m in facts.observed.imported.iter().flat_map(|i| &i.members) {
        if m.state == "ONLINE" && m.handle.starts_with('/') {
            let c = command::online_expand(
                actual,
                &DeviceRef::Path(DevicePath::new(m.handle.clone())?),
            );
            tracing::info!(pool = %name, command = %c, "expanding member");
            ctx.runner.ok(&c).await?;
        }
    }
    Ok(())
}

fn properties(map: &std::collections::BTreeMap<String, String>) -> Result<Vec<Property>, Error> {
    map.iter()
        .map(|(k, v)| Property::new(k.clone(), v.clone()).map_err(Error::from))
        .collect()
}

fn log_adjustments(d: Dialect, what: &str, props: &[Property]) {
    for a in map_properties(d, props).1 {
        tracing::info!(dialect = %d, on = what, adjustment = ?a, "property adjusted for this ZFS");
    }
}

fn pool_spec(pool: &ZfsPool, ctx: &Ctx, name: &PoolName, facts: &Facts) -> Result<PoolSpec, Error> {
    let fs = properties(&pool.spec.template.filesystem_properties)?;
    log_adjustments(ctx.dialect, name.as_str(), &fs);
    let devices = facts
        .observed
        .members
        .iter()
        .filter_map(|m| m.device.clone())
        .map(DevicePath::new)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PoolSpec {
        name: name.clone(),
        layout: match pool.spec.template.layout {
            Layout::Raid0 => command::Layout::Stripe,
            Layout::Raidz1 => command::Layout::Raidz1,
        },
        devices,
        ashift: Some(12),
        pool_properties: vec![Property::new("autoexpand", "on")?],
        fs_properties: fs,
        mount: Mount::None,
        altroot: Some(ctx.mount_root.clone()),
    })
}

/// The dataset's mount point relative to the agent's mount root (the pool's altroot), as
/// the API defines it.
pub fn relative_mount(pool: &ZfsPool, ds: &Dataset) -> String {
    pool.mount_point(ds)
}

async fn create_dataset(
    pool: &ZfsPool,
    ctx: &Ctx,
    actual: &PoolName,
    ds: &Dataset,
) -> Result<(), Error> {
    let full = DatasetName::from(actual.clone()).child(&ds.name)?;
    let props = properties(&ds.properties)?;
    log_adjustments(ctx.dialect, full.as_str(), &props);
    let mount = Mount::At(HostPath::new(relative_mount(pool, ds))?);
    let c = command::create_dataset(ctx.dialect, &full, &props, Some(&mount), false);
    tracing::info!(dataset = %full, command = %c, "creating dataset");
    ctx.runner.ok(&c).await?;
    Ok(())
}

/// Writes the agent's status when it changed, then publishes the Events the change calls
/// for (after the write: an agent that dies in between says nothing rather than twice).
async fn write_status(
    pool: &ZfsPool,
    ctx: &Ctx,
    facts: &Facts,
    outcome: &Outcome,
) -> Result<(), Error> {
    let desired = agent_status(pool, ctx, facts, outcome);
    let before = apply_if_changed(pool, ctx, &desired).await?;
    let notices = match &before {
        Some(before) => notices(&facts.observed.pool_name, before, &desired, outcome),
        None => notices(&facts.observed.pool_name, &desired, &desired, outcome),
    };
    let regarding = pool.object_ref(&());
    for n in notices {
        tracing::info!(pool = %pool.name_any(), reason = n.reason, note = n.note, "event");
        pgml_runtime::events::publish(
            &ctx.recorder,
            &regarding,
            None,
            n.warning,
            &n.reason,
            n.note,
        )
        .await;
    }
    Ok(())
}

/// The status fields (conditions by type) that differ, for the log.
fn changed_fields(a: &AgentStatus, b: &AgentStatus) -> Vec<String> {
    let flat = |s: &AgentStatus| -> BTreeMap<String, serde_json::Value> {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        let mut out = BTreeMap::new();
        if let Some(conditions) = v.get_mut("conditions").map(serde_json::Value::take) {
            for c in conditions.as_array().into_iter().flatten() {
                let t = c["type"].as_str().unwrap_or("?");
                out.insert(format!("conditions.{t}"), c.clone());
            }
        }
        for (k, v) in v.as_object().into_iter().flatten() {
            if !v.is_null() {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    };
    let (a, b) = (flat(a), flat(b));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Server-side apply of the agent's fields, skipped when they are what is stored already.
/// What they held before, when they were written.
async fn apply_if_changed(
    pool: &ZfsPool,
    ctx: &Ctx,
    desired: &AgentStatus,
) -> Result<Option<AgentStatus>, Error> {
    let uid = pool.uid().unwrap_or_default();
    let version = pool.resource_version().unwrap_or_default();
    let remembered = ctx
        .written
        .lock()
        .expect("written lock")
        .get(&uid)
        .filter(|(based_on, _)| *based_on == version)
        .map(|(_, w)| w.clone());
    // The cache may not show the agent's own last write yet: then that write is current.
    let current = remembered.unwrap_or_else(|| {
        AgentStatus::extract(&pool.status.clone().unwrap_or_default()).normalized()
    });
    if *desired == current {
        return Ok(None);
    }
    let api: Api<ZfsPool> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    api.patch_status(
        &pool.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired.apply_body()),
    )
    .await?;
    ctx.remember_write(uid, version, desired.clone());
    tracing::info!(
        pool = %pool.name_any(),
        health = ?desired.health,
        changed = ?changed_fields(&current, desired),
        "status written"
    );
    Ok(Some(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_names_the_fields_and_condition_types_that_changed() {
        let now = Timestamp::now();
        let pool: ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "tank", "namespace": "db", "generation": 1},
            "spec": {"nodeName": "n1", "volumes": {"count": 2, "sizeGiB": 10}},
        }))
        .unwrap();
        let waiting = Verdict::new(cond::POOL_IMPORTED, "False", "WaitingForVolumes", "w");
        let found = Verdict::new(cond::DEVICES_FOUND, "True", "Found", "all");
        let a = AgentStatus {
            zfs_dialect: Some("openzfs".into()),
            conditions: conditions(&[waiting.clone(), found.clone()], &pool, now),
            ..Default::default()
        };
        let imported = Verdict::new(cond::POOL_IMPORTED, "True", "Imported", "i");
        let b = AgentStatus {
            size: Some("4G".into()),
            conditions: conditions(&[imported, found], &pool, now),
            ..a.clone()
        };
        assert_eq!(
            changed_fields(&a, &b),
            vec!["conditions.PoolImported".to_string(), "size".to_string()]
        );
        assert!(changed_fields(&b, &b).is_empty());
    }

    #[test]
    fn a_name_zfs_refuses_is_reported_and_released_only_when_deleted() {
        let mut pool: ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "c0", "namespace": "db", "generation": 1},
            "spec": {"nodeName": "n1", "volumes": {"count": 2, "sizeGiB": 10}},
            "status": {"poolGuid": "42"},
        }))
        .unwrap();
        let types = |s: &AgentStatus| -> Vec<(String, String, String)> {
            s.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect()
        };
        let s = invalid_name_status(&pool, Dialect::ZfsFuse, "refused".into());
        assert_eq!(
            types(&s),
            [(
                cond::POOL_IMPORTED.to_string(),
                "False".to_string(),
                "InvalidPoolName".to_string()
            )]
        );
        assert_eq!(s.conditions[0].message, "refused");
        assert_eq!(s.pool_guid.as_deref(), Some("42"));
        assert_eq!(s.zfs_dialect.as_deref(), Some("zfs-fuse"));
        pool.metadata.deletion_timestamp = Some(pgml_api::common::Time(Timestamp::now()));
        let s = invalid_name_status(&pool, Dialect::ZfsFuse, "refused".into());
        assert!(
            types(&s).contains(&(
                cond::POOL_RELEASED.to_string(),
                "True".to_string(),
                "NotImported".to_string()
            )),
            "{s:?}"
        );
    }
}
