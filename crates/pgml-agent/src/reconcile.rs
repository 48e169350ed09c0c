//! One pass over one ZfsPool: observe the node, let [`decide`] pick the next step, do it,
//! repeat until there is nothing to do now, then apply the agent's status (only when it
//! changed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, Client, ResourceExt};
use pgml_api::zfspool::{Dataset, Layout, ResilverStatus, ZfsPool};
use pgml_zfs::command::{self, DeviceRef, ImportSpec, ImportTarget, Mount, PoolSpec};
use pgml_zfs::{
    DatasetName, DevicePath, Dialect, Guid, HostPath, PoolName, Property, ScanKind, ScanState,
    map_properties,
};

use crate::decide::{Action, Placement, Wait, decide};
use crate::devices::Discovery;
use crate::exec::{ExecError, Runner};
use crate::observe::{Facts, dialect_name, observe};
use crate::report::{AgentStatus, AgentVolume, FIELD_MANAGER, Verdict, cond, conditions};

/// The mount root `ZfsPool::mount_point` defaults under; the agent mounts every dataset
/// under its own `--mount-root` instead (the pool's altroot), at the same relative path.
pub const API_MOUNT_ROOT: &str = "/var/lib/pgml";

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
}

impl Ctx {
    pub fn sizes_changed(&self, pool: &ZfsPool, sizes: &[(i32, Option<i64>)]) -> bool {
        let uid = pool.uid().unwrap_or_default();
        self.expanded.lock().expect("sizes lock").get(&uid) != Some(&sizes.to_vec())
    }

    fn remember_sizes(&self, pool: &ZfsPool, sizes: &[(i32, Option<i64>)]) {
        let uid = pool.uid().unwrap_or_default();
        self.expanded
            .lock()
            .expect("sizes lock")
            .insert(uid, sizes.to_vec());
    }
}

/// How the last step ended, for the conditions.
#[derive(Clone, Debug, Default)]
struct Outcome {
    refused: Option<(String, String)>,
    failed: Option<String>,
    released: Option<&'static str>,
    wait: Option<Wait>,
}

pub async fn reconcile(pool: Arc<ZfsPool>, ctx: Arc<Ctx>) -> Result<Requeue, Error> {
    let _one_at_a_time = ctx.lock.lock().await;
    let name = match PoolName::new(pool.pool_name()) {
        Ok(n) => n,
        Err(e) => {
            // The schema admits a few names ZFS refuses (`c0…`): say so, wait for a change.
            let mut verdicts = vec![Verdict::new(
                cond::POOL_IMPORTED,
                "False",
                "InvalidPoolName",
                e.to_string(),
            )];
            if pool.metadata.deletion_timestamp.is_some() {
                // No pool can exist under a name ZFS refuses: nothing to release.
                verdicts.push(Verdict::new(
                    cond::POOL_RELEASED,
                    "True",
                    "NotImported",
                    "no pool of this object can exist on the node",
                ));
            }
            let desired = AgentStatus {
                pool_guid: pool.status.as_ref().and_then(|s| s.pool_guid.clone()),
                zfs_dialect: Some(dialect_name(ctx.dialect).to_string()),
                conditions: conditions(&verdicts, &pool, Timestamp::now()),
                ..Default::default()
            }
            .normalized();
            apply_if_changed(&pool, &ctx, desired).await?;
            return Ok(Requeue::await_change());
        }
    };
    let mut outcome = Outcome::default();
    let mut facts = observe(&pool, &ctx, &name).await?;
    // Each step changes what is observed; a handful of steps reach steady state
    // (import or create → datasets → expand).
    for _ in 0..6 {
        let action = decide(&facts.observed);
        tracing::debug!(pool = %name, ?action, "decided");
        let done = match &action {
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
            step => match act(&pool, &ctx, &name, &facts, step).await {
                Ok(()) => {
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
        };
        if done {
            break;
        }
        facts = observe(&pool, &ctx, &name).await?;
        if outcome.released.is_some() && facts.observed.imported.is_none() {
            break;
        }
    }
    if outcome.refused.is_some() && facts.observed.imported.is_some() {
        // A same-named pool that is not ours: report nothing of it.
        facts.observed.imported = None;
        facts.imported_name = None;
        facts.list = None;
        facts.status = None;
    }
    write_status(&pool, &ctx, &facts, &outcome).await?;
    Ok(Requeue::requeue(ctx.resync))
}

pub fn error_policy(pool: Arc<ZfsPool>, e: &Error, _ctx: Arc<Ctx>) -> Requeue {
    tracing::warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), error = %e, "reconcile failed");
    Requeue::requeue(Duration::from_secs(5))
}

async fn act(
    pool: &ZfsPool,
    ctx: &Ctx,
    name: &PoolName,
    facts: &Facts,
    step: &Action,
) -> Result<(), Error> {
    let d = ctx.dialect;
    let actual = facts.imported_name.clone().unwrap_or_else(|| name.clone());
    match step {
        Action::Create => {
            let c = command::create_pool(d, &pool_spec(pool, ctx, name, facts)?)?;
            tracing::info!(pool = %name, command = %c, "creating pool");
            ctx.runner.ok(&c).await?;
            ctx.remember_sizes(pool, &facts.sizes);
        }
        Action::Import { guid, force } => {
            let dir = HostPath::new(ctx.discovery.dev_dir.to_string_lossy().into_owned())?;
            let from = facts
                .observed
                .importable
                .iter()
                .find(|p| p.guid == Some(*guid))
                .map(|p| p.name.clone());
            let c = command::import_pool(
                d,
                &ImportSpec {
                    target: ImportTarget::Guid(Guid(*guid)),
                    new_name: (from.as_deref() != Some(name.as_str())).then(|| name.clone()),
                    search_dirs: vec![dir],
                    altroot: Some(ctx.mount_root.clone()),
                    mount: true,
                    force: *force,
                },
            )?;
            tracing::info!(pool = %name, command = %c, "importing pool");
            ctx.runner.ok(&c).await?;
        }
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
        Action::Mount(which) => {
            for (name, placement) in which {
                let Some(ds) = pool.spec.template.datasets.iter().find(|d| d.name == *name) else {
                    continue;
                };
                let full = DatasetName::from(actual.clone()).child(&ds.name)?;
                let c = match placement {
                    Placement::Elsewhere => {
                        let prop = Property::new("mountpoint", relative_mount(pool, ds))?;
                        let Some(c) = command::set_property(d, &full, &prop) else {
                            continue;
                        };
                        c
                    }
                    Placement::Unmounted => pgml_zfs::Command::new("zfs", ["mount", full.as_str()]),
                };
                tracing::info!(dataset = %full, command = %c, "mounting where the spec asks");
                ctx.runner.ok(&c).await?;
            }
        }
        Action::Expand => {
            for m in facts.observed.imported.iter().flat_map(|i| &i.members) {
                if m.state == "ONLINE" && m.handle.starts_with('/') {
                    let c = command::online_expand(
                        &actual,
                        &DeviceRef::Path(DevicePath::new(m.handle.clone())?),
                    );
                    tracing::info!(pool = %name, command = %c, "expanding member");
                    ctx.runner.ok(&c).await?;
                }
            }
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

/// The dataset's mount point relative to the agent's mount root (the pool's altroot):
/// the API's default `/var/lib/pgml/<pool>/<name>` becomes `/<pool>/<name>`; an explicit
/// mount point is taken as a path below the mount root.
pub fn relative_mount(pool: &ZfsPool, ds: &Dataset) -> String {
    let m = pool.mount_point(ds);
    match m.strip_prefix(API_MOUNT_ROOT) {
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => m,
    }
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

/// The agent's status from what was observed and how the last step ended.
fn agent_status(pool: &ZfsPool, ctx: &Ctx, facts: &Facts, outcome: &Outcome) -> AgentStatus {
    let o = &facts.observed;
    let existing = pool.status.clone().unwrap_or_default();
    let imported = o.imported.as_ref();
    let index_of = |vol: &str| {
        o.members
            .iter()
            .find(|m| m.volume_id.as_deref() == Some(vol))
            .map(|m| m.index)
    };
    let volumes = o
        .members
        .iter()
        .map(|m| AgentVolume {
            index: m.index,
            device: m.device.clone(),
            member_state: imported.and_then(|i| {
                i.members
                    .iter()
                    .find(|p| p.volume_id.is_some() && p.volume_id == m.volume_id)
                    .map(|p| p.state.clone())
            }),
        })
        .collect();
    let resilver = facts.status.as_ref().and_then(|st| {
        let scan = st.scan.as_ref().filter(|s| s.kind == ScanKind::Resilver)?;
        let member_index = st
            .members()
            .iter()
            .find(|v| v.resilvering)
            .and_then(|v| v.ebs_volume_id())
            .and_then(|v| index_of(&v));
        Some(ResilverStatus {
            in_progress: scan.state == ScanState::InProgress,
            member_index,
            // zfs-fuse prints no percentage once finished ("resilver completed after …").
            percent_done: scan
                .percent_done
                .map(|p| p.round() as i32)
                .or((scan.state == ScanState::Finished).then_some(100)),
            ..Default::default()
        })
    });
    let list = facts.list.as_ref();
    AgentStatus {
        pool_guid: list
            .and_then(|l| l.guid)
            .map(|g| g.to_string())
            .or(existing.pool_guid.clone()),
        zfs_dialect: Some(dialect_name(ctx.dialect).to_string()),
        health: imported.map(|i| i.health.clone()),
        size: list.and_then(|l| l.size).map(crate::report::human_size),
        size_bytes: list.and_then(|l| l.size).map(|b| b as i64),
        allocated_bytes: list.and_then(|l| l.allocated).map(|b| b as i64),
        free_bytes: list.and_then(|l| l.free).map(|b| b as i64),
        volumes,
        resilver,
        conditions: conditions(&verdicts(pool, facts, outcome), pool, Timestamp::now()),
    }
    .normalized()
}

fn verdicts(pool: &ZfsPool, facts: &Facts, outcome: &Outcome) -> Vec<Verdict> {
    let o = &facts.observed;
    let mut v = Vec::new();
    let unknown: Vec<i32> = (0..o.count as i32)
        .filter(|i| {
            !o.members
                .iter()
                .any(|m| m.index == *i && m.volume_id.is_some())
        })
        .collect();
    let absent: Vec<String> = o
        .members
        .iter()
        .filter(|m| m.volume_id.is_some() && m.device.is_none())
        .map(|m| {
            let vol = m.volume_id.clone().unwrap_or_default();
            match facts.stale.iter().find(|(i, _)| *i == m.index) {
                Some((_, serial)) => format!(
                    "{vol} (member {}): its link points at NVMe serial {serial}",
                    m.index
                ),
                None => format!("{vol} (member {})", m.index),
            }
        })
        .collect();
    v.push(if !unknown.is_empty() {
        Verdict::new(
            cond::DEVICES_FOUND,
            "Unknown",
            "WaitingForVolumes",
            format!("no volume ID yet for members {unknown:?}"),
        )
    } else if absent.is_empty() {
        Verdict::new(
            cond::DEVICES_FOUND,
            "True",
            "Found",
            format!("all {} devices found by volume ID", o.count),
        )
    } else {
        Verdict::new(
            cond::DEVICES_FOUND,
            "False",
            "Missing",
            format!("no device for {}", absent.join(", ")),
        )
    });

    let pending: Vec<&str> = o
        .missing_datasets
        .iter()
        .map(String::as_str)
        .chain(o.misplaced_datasets.iter().map(|(n, _)| n.as_str()))
        .collect();
    let imported = match (&o.imported, outcome) {
        // Imported, but not yet as the spec asks: not usable, so not True.
        (Some(_), _) if !pending.is_empty() => Verdict::new(
            cond::POOL_IMPORTED,
            "False",
            "DatasetsPending",
            format!(
                "pool imported; datasets {pending:?} not created or not mounted yet{}",
                outcome
                    .failed
                    .as_ref()
                    .map_or(String::new(), |e| format!(": {e}"))
            ),
        ),
        (Some(i), _) => Verdict::new(
            cond::POOL_IMPORTED,
            "True",
            "Imported",
            format!(
                "pool {} (GUID {}) is imported",
                facts
                    .imported_name
                    .as_ref()
                    .map_or(o.pool_name.as_str(), |n| n.as_str()),
                i.guid.map_or("unknown".into(), |g| g.to_string())
            ),
        ),
        (
            None,
            Outcome {
                refused: Some((device, reason)),
                ..
            },
        ) => Verdict::new(
            cond::POOL_IMPORTED,
            "False",
            "DeviceInUse",
            format!(
                "device {device} {reason}; the agent never creates over existing data (clear the device or restore it)"
            ),
        ),
        (
            None,
            Outcome {
                failed: Some(e), ..
            },
        ) => Verdict::new(cond::POOL_IMPORTED, "False", "CommandFailed", e.clone()),
        (None, _) if o.deleting => Verdict::new(
            cond::POOL_IMPORTED,
            "False",
            "Released",
            "the pool was released for deletion",
        ),
        (None, Outcome { wait: Some(w), .. }) => match w {
            Wait::VolumeIds => Verdict::new(
                cond::POOL_IMPORTED,
                "False",
                "WaitingForVolumes",
                "the controller has not reported every volume yet",
            ),
            Wait::Attachment(i) => Verdict::new(
                cond::POOL_IMPORTED,
                "False",
                "WaitingForAttachment",
                format!("members {i:?} are not attached yet"),
            ),
            Wait::Devices(i) => Verdict::new(
                cond::POOL_IMPORTED,
                "False",
                "WaitingForDevices",
                format!("members {i:?} have no device yet"),
            ),
        },
        (None, _) => Verdict::new(
            cond::POOL_IMPORTED,
            "False",
            "NotImported",
            "the pool is not imported",
        ),
    };
    v.push(imported);

    v.push(match &o.imported {
        Some(i) if i.health == "ONLINE" => {
            Verdict::new(cond::POOL_HEALTHY, "True", "Online", "zpool status: ONLINE")
        }
        Some(i) => Verdict::new(
            cond::POOL_HEALTHY,
            "False",
            &capitalized(&i.health),
            format!(
                "zpool status: {}{}{}",
                i.health,
                not_online(i),
                lost_hint(o.layout, &i.health)
            ),
        ),
        None => Verdict::new(
            cond::POOL_HEALTHY,
            "Unknown",
            "NotImported",
            "the pool is not imported",
        ),
    });

    if o.deleting {
        let prev = pool.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == cond::POOL_RELEASED && c.status == "True")
        });
        v.push(match (prev, outcome.released, &outcome.failed) {
            (Some(p), _, _) => Verdict::new(cond::POOL_RELEASED, "True", &p.reason.clone(), p.message.clone()),
            (None, Some(how), _) => Verdict::new(cond::POOL_RELEASED, "True", how, match how {
                "Exported" => "pool exported (reclaimPolicy Retain); the volumes can be detached",
                "Destroyed" => "pool destroyed (reclaimPolicy Delete); the volumes can be detached and deleted",
                _ => "no pool of this object is imported on the node; the volumes can be detached",
            }),
            (None, None, Some(e)) => Verdict::new(cond::POOL_RELEASED, "False", "ReleaseFailed", e.clone()),
            (None, None, None) => Verdict::new(cond::POOL_RELEASED, "False", "Releasing", "releasing the pool"),
        });
    }
    v
}

fn not_online(i: &crate::decide::Imported) -> String {
    let bad: Vec<String> = i
        .members
        .iter()
        .filter(|m| m.state != "ONLINE")
        .map(|m| {
            format!(
                "{} {}",
                m.volume_id.as_deref().unwrap_or(&m.handle),
                m.state
            )
        })
        .collect();
    if bad.is_empty() {
        String::new()
    } else {
        format!("; members: {}", bad.join(", "))
    }
}

/// What a platform engineer needs to hear when a pool lost more than it can survive.
fn lost_hint(layout: Layout, health: &str) -> &'static str {
    match (layout, health) {
        (_, "ONLINE" | "DEGRADED") => "",
        (Layout::Raid0, _) => {
            "; a raid0 pool does not survive losing a member: its data must come back from an EbsSnapshot (restoreFrom); the agent deleted nothing"
        }
        (Layout::Raidz1, _) => {
            "; more members are lost than raidz1 survives: restore from an EbsSnapshot (restoreFrom); the agent deleted nothing"
        }
    }
}

fn capitalized(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut c = lower.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphabetic() => f.to_ascii_uppercase().to_string() + c.as_str(),
        _ => "Unknown".into(),
    }
}

async fn write_status(
    pool: &ZfsPool,
    ctx: &Ctx,
    facts: &Facts,
    outcome: &Outcome,
) -> Result<(), Error> {
    apply_if_changed(pool, ctx, agent_status(pool, ctx, facts, outcome)).await
}

/// Server-side apply of the agent's fields, skipped when they are what is stored already.
async fn apply_if_changed(pool: &ZfsPool, ctx: &Ctx, desired: AgentStatus) -> Result<(), Error> {
    let current = AgentStatus::extract(&pool.status.clone().unwrap_or_default()).normalized();
    if desired == current {
        return Ok(());
    }
    let api: Api<ZfsPool> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    api.patch_status(
        &pool.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired.apply_body()),
    )
    .await?;
    tracing::info!(pool = %pool.name_any(), health = ?desired.health, "status written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Imported, Member, Observed, PoolMember};
    use pgml_api::common::Time;
    use pgml_api::zfspool::{MemberReplacement, ReclaimPolicy};

    fn pool(deleting: bool) -> ZfsPool {
        let mut p: ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "tank", "namespace": "db", "generation": 2},
            "spec": {"nodeName": "n1", "volumes": {"count": 2, "sizeGiB": 10}},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        p
    }

    fn facts(imported: Option<Imported>) -> Facts {
        Facts {
            observed: Observed {
                pool_name: "tank".into(),
                layout: Layout::Raid0,
                deleting: false,
                reclaim: ReclaimPolicy::Retain,
                replacement: MemberReplacement::Automatic,
                restore: false,
                count: 2,
                members: (0..2)
                    .map(|i| Member {
                        index: i,
                        volume_id: Some(format!("vol-0{i}")),
                        attached: true,
                        device: Some(format!("/d/vol0{i}")),
                        signature: None,
                    })
                    .collect(),
                recorded_guid: None,
                imported,
                importable: vec![],
                missing_datasets: vec![],
                misplaced_datasets: vec![],
                grown: false,
            },
            imported_name: None,
            list: None,
            status: None,
            stale: vec![],
            sizes: vec![],
        }
    }

    fn find<'a>(v: &'a [Verdict], t: &str) -> &'a Verdict {
        v.iter().find(|v| v.type_ == t).unwrap()
    }

    #[test]
    fn refusal_names_the_device_and_no_release_before_deletion() {
        let out = Outcome {
            refused: Some(("/d/vol01".into(), "carries a ext4 file system".into())),
            ..Default::default()
        };
        let v = verdicts(&pool(false), &facts(None), &out);
        let imported = find(&v, cond::POOL_IMPORTED);
        assert_eq!(
            (imported.status, imported.reason.as_str()),
            ("False", "DeviceInUse")
        );
        assert!(imported.message.contains("/d/vol01") && imported.message.contains("ext4"));
        assert_eq!(find(&v, cond::POOL_HEALTHY).status, "Unknown");
        assert_eq!(find(&v, cond::DEVICES_FOUND).status, "True");
        assert!(!v.iter().any(|v| v.type_ == cond::POOL_RELEASED));
    }

    #[test]
    fn lost_raid0_member_is_reported_with_what_to_do() {
        let mut f = facts(Some(Imported {
            guid: Some(1),
            health: "UNAVAIL".into(),
            members: vec![
                PoolMember {
                    volume_id: Some("vol-00".into()),
                    handle: "/d/vol00".into(),
                    state: "ONLINE".into(),
                },
                PoolMember {
                    volume_id: Some("vol-01".into()),
                    handle: "/d/vol01".into(),
                    state: "UNAVAIL".into(),
                },
            ],
            resilvering: false,
        }));
        f.observed.members[1].device = None;
        let v = verdicts(&pool(false), &f, &Outcome::default());
        let healthy = find(&v, cond::POOL_HEALTHY);
        assert_eq!(
            (healthy.status, healthy.reason.as_str()),
            ("False", "Unavail")
        );
        assert!(
            healthy.message.contains("vol-01 UNAVAIL"),
            "{}",
            healthy.message
        );
        assert!(
            healthy.message.contains("EbsSnapshot"),
            "{}",
            healthy.message
        );
        let devices = find(&v, cond::DEVICES_FOUND);
        assert_eq!(devices.status, "False");
        assert!(devices.message.contains("vol-01 (member 1)"));
        assert_eq!(find(&v, cond::POOL_IMPORTED).status, "True");
    }

    #[test]
    fn release_is_reported_once_and_kept() {
        let mut f = facts(None);
        f.observed.deleting = true;
        let out = Outcome {
            released: Some("Exported"),
            ..Default::default()
        };
        let p = pool(true);
        let v = verdicts(&p, &f, &out);
        let r = find(&v, cond::POOL_RELEASED);
        assert_eq!((r.status, r.reason.as_str()), ("True", "Exported"));
        // The next resync finds nothing imported; the reason stays Exported.
        let mut p2 = p.clone();
        p2.status = Some(pgml_api::zfspool::ZfsPoolStatus {
            conditions: conditions(&v, &p, Timestamp::now()),
            ..Default::default()
        });
        let out = Outcome {
            released: Some("NotImported"),
            ..Default::default()
        };
        let v2 = verdicts(&p2, &f, &out);
        assert_eq!(find(&v2, cond::POOL_RELEASED).reason, "Exported");
        // A failed export is not a release.
        let out = Outcome {
            failed: Some("pool is busy".into()),
            ..Default::default()
        };
        let r = verdicts(&p, &f, &out);
        let r = find(&r, cond::POOL_RELEASED);
        assert_eq!((r.status, r.reason.as_str()), ("False", "ReleaseFailed"));
    }

    #[test]
    fn imported_with_datasets_pending_is_not_imported_yet() {
        let mut f = facts(Some(Imported {
            guid: Some(1),
            health: "ONLINE".into(),
            members: vec![],
            resilvering: false,
        }));
        f.observed.misplaced_datasets = vec![("pgwal".into(), Placement::Unmounted)];
        let out = Outcome {
            failed: Some("dataset is busy".into()),
            ..Default::default()
        };
        let v = verdicts(&pool(false), &f, &out);
        let i = find(&v, cond::POOL_IMPORTED);
        assert_eq!((i.status, i.reason.as_str()), ("False", "DatasetsPending"));
        assert!(i.message.contains("pgwal") && i.message.contains("busy"));
    }

    #[test]
    fn mount_points_relative_to_the_mount_root() {
        let mut p = pool(false);
        let ds = p.spec.template.datasets[0].clone();
        assert_eq!(relative_mount(&p, &ds), "/tank/pgdata");
        let mut explicit = ds.clone();
        explicit.mount_point = Some("/data/pg".into());
        assert_eq!(relative_mount(&p, &explicit), "/data/pg");
        p.spec.pool_name = Some("other".into());
        assert_eq!(relative_mount(&p, &ds), "/other/pgdata");
    }
}
