//! What `snapshot`, `restore` and `switchover` create or change, and how they read the
//! outcome: pure functions of the objects, so they are tested without a cluster.

use pgml_api::cluster::InstanceRole;
use pgml_api::common::condition as c;
use pgml_api::snapshot::{
    ClusterSource, EbsSnapshotSpec, EbsSnapshotStatus, SnapshotPhase, SnapshotSource,
};
use pgml_api::zfspool::{Layout, PoolPhase, ReclaimPolicy, RestoreFrom};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool, ZfsPoolSpec, ZfsPoolTemplate};

/// The default name of a snapshot taken at `stamp` (UTC `yyyymmddhhmmss`): `<cluster>-<stamp>`,
/// shortened so it stays a valid object name.
pub fn snapshot_name(cluster: &str, stamp: &str) -> String {
    let mut base = cluster.to_string();
    base.truncate(253 - stamp.len() - 1);
    format!("{}-{stamp}", base.trim_end_matches(['-', '.']))
}

/// An EbsSnapshot of `cluster` (of `instance`, else of whichever the operator picks: a
/// ready replica, the primary only when alone). Made by hand, so no `pgml.io/` label:
/// retention never deletes it, and it counts as the cluster's last snapshot.
pub fn snapshot_of(
    cluster: &str,
    namespace: &str,
    name: &str,
    instance: Option<&str>,
) -> EbsSnapshot {
    let mut s = EbsSnapshot::new(
        name,
        EbsSnapshotSpec {
            source: SnapshotSource {
                cluster: Some(ClusterSource {
                    name: cluster.into(),
                    instance: instance.map(str::to_string),
                }),
                zfs_pool: None,
                persistent_volume_claim: None,
            },
            standby_signal: Default::default(),
            consistency: Default::default(),
            freeze_timeout_seconds: 10,
            deletion_policy: Default::default(),
            tags: Default::default(),
        },
    );
    s.metadata.namespace = Some(namespace.into());
    s
}

/// How waiting on something ends.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Still going; the word says where (a phase).
    Pending(String),
    Done(String),
    Failed(String),
}

/// The Ready condition's `reason: message` (or reason alone).
fn ready_message(conditions: &[pgml_api::common::Condition]) -> Option<String> {
    let k = conditions.iter().find(|k| k.type_ == c::READY)?;
    Some(if k.message.is_empty() {
        k.reason.clone()
    } else {
        format!("{}: {}", k.reason, k.message)
    })
}

/// Where a snapshot is: Completed (with what it captured) or Failed (with why).
pub fn snapshot_outcome(s: &EbsSnapshot) -> Outcome {
    let name = s.metadata.name.clone().unwrap_or_default();
    let st = s.status.clone().unwrap_or_default();
    match st.phase {
        Some(SnapshotPhase::Completed) => Outcome::Done(describe_snapshot(&name, &st)),
        Some(SnapshotPhase::Failed) => Outcome::Failed(format!(
            "EbsSnapshot {name} failed: {}",
            ready_message(&st.conditions).unwrap_or_else(|| "no reason given".into())
        )),
        Some(p) => Outcome::Pending(format!("{p:?}")),
        None => Outcome::Pending("Pending".into()),
    }
}

fn describe_snapshot(name: &str, st: &EbsSnapshotStatus) -> String {
    let mut parts = vec![format!("EbsSnapshot {name} Completed")];
    if let Some(src) = &st.source {
        parts.push(format!("of {src}"));
    }
    if let Some(t) = &st.capture_time {
        parts.push(format!("captured at {}", t.0));
    }
    let mut details = Vec::new();
    if let Some(n) = st.volume_count {
        details.push(format!("{n} volume(s)"));
    }
    if let Some(g) = st.size_gib {
        details.push(format!("{g} GiB"));
    }
    if let Some(l) = &st.lsn {
        details.push(format!("LSN {l}"));
    }
    if let Some(sig) = &st.standby_signal {
        details.push(format!(
            "standby.signal {}",
            if sig.stamped {
                "stamped"
            } else {
                "not stamped"
            }
        ));
    }
    let mut out = parts.join(" ");
    if !details.is_empty() {
        out += &format!(" ({})", details.join(", "));
    }
    out
}

/// The ZfsPool `pool` on `node` restored from `snapshot`. A restore must match the captured
/// pool's layout and volume count, with volumes at least as large as each member; the rest
/// of the shape (volume type and performance, datasets and their properties) is copied
/// from `source_pool`, the pool that was captured, when it still exists, else left to the
/// schema's defaults. Datasets mount at the new pool's default paths (`/<pool>/<dataset>`),
/// never at the source's.
pub fn restore_pool(
    snapshot: &EbsSnapshot,
    source_pool: Option<&ZfsPool>,
    pool: &str,
    namespace: &str,
    node: &str,
    reclaim: ReclaimPolicy,
) -> Result<ZfsPool, String> {
    let name = snapshot.metadata.name.clone().unwrap_or_default();
    let st = snapshot.status.clone().unwrap_or_default();
    if st.phase != Some(SnapshotPhase::Completed) {
        let phase = st
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "not started".into());
        return Err(format!(
            "EbsSnapshot {name} is {phase}: only a Completed snapshot can be restored"
        ));
    }
    if st.zfs_pool.is_none() && st.layout.is_none() {
        return Err(format!(
            "EbsSnapshot {name} is not of a ZfsPool (an ext4 PVC?): restore it with a PersistentVolumeClaim dataSource instead"
        ));
    }
    let members = st.snapshots.len() as i32;
    if members == 0 {
        return Err(format!("EbsSnapshot {name} lists no member snapshots"));
    }
    let largest = st.snapshots.iter().filter_map(|m| m.size_gib).max();
    let mut template: ZfsPoolTemplate = match source_pool {
        Some(p) => p.spec.template.clone(),
        None => serde_json::from_value(serde_json::json!({
            "volumes": {"count": members, "sizeGiB": largest.unwrap_or(1)}
        }))
        .map_err(|e| format!("building the pool template: {e}"))?,
    };
    template.volumes.count = members;
    if let Some(g) = largest {
        template.volumes.size_gib = template.volumes.size_gib.max(g);
    }
    template.layout = match st.layout.as_deref() {
        Some("raidz1") => Layout::Raidz1,
        Some("raid0") => Layout::Raid0,
        Some(other) => {
            return Err(format!(
                "EbsSnapshot {name} has layout {other:?}, which this plugin does not know"
            ));
        }
        None => template.layout,
    };
    for d in &mut template.datasets {
        d.mount_point = None;
    }
    template.reclaim_policy = reclaim;
    let mut p = ZfsPool::new(
        pool,
        ZfsPoolSpec {
            node_name: node.into(),
            pool_name: None,
            template,
            restore_from: Some(RestoreFrom {
                ebs_snapshot_name: name,
                volume_initialization_rate_mibps: None,
            }),
            snapshots: None,
        },
    );
    p.metadata.namespace = Some(namespace.into());
    Ok(p)
}

/// Where a restored pool is: Online (with its health and size) or stuck for a reason that
/// will not pass by itself (Failed, or SpecValid False: the snapshot does not fit).
pub fn pool_outcome(p: &ZfsPool) -> Outcome {
    let name = p.metadata.name.clone().unwrap_or_default();
    let st = p.status.clone().unwrap_or_default();
    let observed = st.observed_generation >= p.metadata.generation;
    if let Some(k) = st
        .conditions
        .iter()
        .find(|k| k.type_ == c::SPEC_VALID && k.status == c::FALSE)
        && observed
    {
        return Outcome::Failed(format!("ZfsPool {name}: {}: {}", k.reason, k.message));
    }
    match st.phase {
        Some(PoolPhase::Online) if st.restored_from.is_some() => Outcome::Done(format!(
            "ZfsPool {name} Online on {} (health {}, size {}), restored from {}",
            p.spec.node_name,
            st.health.as_deref().unwrap_or("unknown"),
            st.size.as_deref().unwrap_or("unknown"),
            st.restored_from.as_deref().unwrap_or_default()
        )),
        Some(PoolPhase::Failed) => Outcome::Failed(format!(
            "ZfsPool {name} failed: {}",
            ready_message(&st.conditions).unwrap_or_else(|| "no reason given".into())
        )),
        Some(ph) => Outcome::Pending(format!("{ph:?}")),
        None => Outcome::Pending("Pending".into()),
    }
}

/// Refuses a switchover to anything but a known, ready, unfenced replica of `cluster`.
pub fn check_switchover(cluster: &PgmlCluster, target: &str) -> Result<(), String> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let st = cluster.status.clone().unwrap_or_default();
    let Some(i) = st.instances.iter().find(|i| i.name == target) else {
        let known: Vec<&str> = st.instances.iter().map(|i| i.name.as_str()).collect();
        return Err(format!(
            "{target} is not an instance of PgmlCluster {name} (its status lists {})",
            if known.is_empty() {
                "none yet".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    if st.current_primary.as_deref() == Some(target) || i.role == Some(InstanceRole::Primary) {
        return Err(format!("{target} is already the primary of {name}"));
    }
    if i.fenced {
        return Err(format!(
            "{target} is fenced (a former primary): rebuild it before promoting it"
        ));
    }
    if let Some(why) = &i.node_leaving {
        return Err(format!(
            "{target} is on a node that is going away ({why}): switch over to a replica on another node"
        ));
    }
    if i.role != Some(InstanceRole::Replica) {
        return Err(format!(
            "{target} has not reported itself as a replica yet: a switchover needs a ready replica"
        ));
    }
    if !i.ready {
        return Err(format!(
            "{target} is not ready (not streaming from the primary): a switchover needs a ready replica"
        ));
    }
    if let Some(t) = &st.target_primary
        && st.current_primary.as_ref() != Some(t)
    {
        return Err(format!(
            "PgmlCluster {name} is already switching over to {t}: wait for it to finish"
        ));
    }
    Ok(())
}

/// The JSON merge patch that asks for the switchover.
pub fn switchover_patch(target: &str) -> serde_json::Value {
    serde_json::json!({"spec": {"primary": target}})
}

/// Whether `target` is the primary now, per the status.
pub fn switchover_outcome(cluster: &PgmlCluster, target: &str) -> Outcome {
    let st = cluster.status.clone().unwrap_or_default();
    if st.current_primary.as_deref() == Some(target) {
        let ready = st
            .instances
            .iter()
            .find(|i| i.name == target)
            .is_some_and(|i| i.ready);
        return Outcome::Done(format!(
            "{target} is the primary of {}{}",
            cluster.metadata.name.as_deref().unwrap_or_default(),
            if ready { "" } else { " (not ready yet)" }
        ));
    }
    Outcome::Pending(format!(
        "{} (primary {})",
        st.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
        st.current_primary.as_deref().unwrap_or("none")
    ))
}

/// What a cluster restore starts from: a Completed EbsSnapshot set, the source's pgBackRest
/// repository, or both (the snapshot as the base, the repository's WAL replayed on it).
pub struct ClusterRestore<'a> {
    pub snapshot: Option<&'a EbsSnapshot>,
    /// Replay the source repository's WAL (implied without a snapshot, or with a target).
    pub wal: bool,
    pub target: Option<pgml_api::cluster::RecoveryTarget>,
}

/// PgmlCluster `name`, made from `source`'s backups: the source's spec (instances, image,
/// storage, PostgreSQL settings, backups) with `bootstrap` set to the snapshot and/or the
/// source's repository, `spec.primary` dropped, and its own repository at its default path
/// (`/pgbackrest/<namespace>/<name>`): a restored cluster never archives into its
/// source's. Refused when what is asked cannot be had (a snapshot not Completed or not of
/// ZFS storage, WAL or a target without a repository on the source).
pub fn restore_cluster(
    source: &PgmlCluster,
    name: &str,
    namespace: &str,
    from: &ClusterRestore,
) -> Result<PgmlCluster, String> {
    use pgml_api::cluster::{Bootstrap, PgBackRestSource, SnapshotBootstrap};
    let src = source.metadata.name.clone().unwrap_or_default();
    if name == src {
        return Err(format!(
            "the restored cluster needs a name of its own: {name} is the source's"
        ));
    }
    let mut spec = source.spec.clone();
    spec.primary = None;
    let snapshot = match from.snapshot {
        Some(s) => {
            let sname = s.metadata.name.clone().unwrap_or_default();
            let st = s.status.clone().unwrap_or_default();
            if st.phase != Some(SnapshotPhase::Completed) {
                return Err(format!(
                    "EbsSnapshot {sname} is {}: only a Completed snapshot can be restored",
                    st.phase.map_or("not started".into(), |p| format!("{p:?}"))
                ));
            }
            if st.zfs_pool.is_none() || spec.storage.zfs.is_none() {
                return Err(format!(
                    "EbsSnapshot {sname} restores into ZFS storage only (a set of a ZfsPool, into a cluster on storage.zfs)"
                ));
            }
            Some(SnapshotBootstrap { name: sname })
        }
        None => None,
    };
    let wal = from.wal || from.snapshot.is_none() || from.target.is_some();
    let pgbackrest = if wal {
        let Some(repo) = &source.spec.backups.pgbackrest else {
            return Err(format!(
                "PgmlCluster {src} has no pgBackRest repository (spec.backups.pgbackrest): nothing to restore WAL or a backup from; restore from an EbsSnapshot without a target"
            ));
        };
        let mut s3 = repo.s3.clone();
        // Its default path is named after it: say it, the restored cluster's differs.
        s3.path = Some(
            s3.path
                .unwrap_or_else(|| format!("/pgbackrest/{namespace}/{src}")),
        );
        Some(PgBackRestSource {
            stanza: src.clone(),
            s3,
            credentials: repo.credentials.clone(),
            backup_set: None,
        })
    } else {
        None
    };
    if let Some(own) = spec.backups.pgbackrest.as_mut() {
        own.s3.path = None;
    }
    spec.bootstrap = Some(Bootstrap {
        initdb: None,
        snapshot,
        pgbackrest,
        recovery_target: from.target.clone(),
    });
    let mut c = PgmlCluster::new(name, spec);
    c.metadata.namespace = Some(namespace.into());
    Ok(c)
}

/// Where a restored cluster is: Healthy (done), Failed (with why), else its phase.
pub fn cluster_outcome(c: &PgmlCluster) -> Outcome {
    let st = c.status.clone().unwrap_or_default();
    let name = c.metadata.name.clone().unwrap_or_default();
    match st.phase {
        Some(pgml_api::cluster::ClusterPhase::Healthy) => {
            Outcome::Done(format!("PgmlCluster {name} Healthy"))
        }
        Some(pgml_api::cluster::ClusterPhase::Failed) => Outcome::Failed(format!(
            "PgmlCluster {name} failed: {}",
            ready_message(&st.conditions).unwrap_or_else(|| "no reason given".into())
        )),
        Some(p) => Outcome::Pending(format!("{p:?}")),
        None => Outcome::Pending("Pending".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(phase: &str, layout: Option<&str>, members: &[i64]) -> EbsSnapshot {
        let snapshots: Vec<_> = members
            .iter()
            .enumerate()
            .map(
                |(i, g)| json!({"memberIndex": i, "snapshotId": format!("snap-{i}"), "sizeGiB": g}),
            )
            .collect();
        let mut status = json!({"phase": phase, "zfsPool": "main-2", "snapshots": snapshots,
                                "source": "PgmlCluster/main (main-2)", "volumeCount": members.len(),
                                "sizeGiB": members.iter().sum::<i64>(), "lsn": "0/5000000",
                                "captureTime": "2026-11-27T11:00:00Z",
                                "conditions": [{"type": "Ready", "status": "False", "reason": "SnapshotError",
                                                "message": "AWS said error", "lastTransitionTime": "2026-11-27T11:00:00Z"}]});
        if let Some(l) = layout {
            status["layout"] = json!(l);
        }
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
            "metadata": {"name": "s1", "namespace": "db"},
            "spec": {"source": {"cluster": {"name": "main"}}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_manual_snapshot_names_the_cluster_and_carries_no_operator_label() {
        assert_eq!(
            snapshot_name("main", "20261127120000"),
            "main-20261127120000"
        );
        let long = "a".repeat(300);
        assert!(snapshot_name(&long, "20261127120000").len() <= 253);
        let s = snapshot_of("main", "db", "main-1", None);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["spec"]["source"], json!({"cluster": {"name": "main"}}));
        assert_eq!(v["metadata"]["namespace"], "db");
        assert!(v["metadata"].get("labels").is_none());
        let s = snapshot_of("main", "db", "x", Some("main-2"));
        assert_eq!(
            s.spec.source.cluster.unwrap().instance.as_deref(),
            Some("main-2")
        );
    }

    #[test]
    fn snapshot_outcomes() {
        let done = snapshot_outcome(&snap("Completed", Some("raid0"), &[10, 10]));
        let Outcome::Done(text) = done else {
            panic!("{done:?}")
        };
        assert!(text.contains("s1 Completed") && text.contains("PgmlCluster/main (main-2)"));
        assert!(
            text.contains("2 volume(s)") && text.contains("LSN 0/5000000"),
            "{text}"
        );
        assert_eq!(
            snapshot_outcome(&snap("Failed", None, &[])),
            Outcome::Failed("EbsSnapshot s1 failed: SnapshotError: AWS said error".into())
        );
        assert_eq!(
            snapshot_outcome(&snap("Capturing", None, &[])),
            Outcome::Pending("Capturing".into())
        );
    }

    fn source_pool() -> ZfsPool {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "main-2"},
            "spec": {"nodeName": "n2", "volumes": {"count": 2, "sizeGiB": 5, "type": "io2", "iops": 1000},
                     "layout": "raid0", "reclaimPolicy": "Delete",
                     "datasets": [{"name": "pgdata", "mountPoint": "/db/pgdata", "properties": {"recordsize": "8K"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn restore_copies_the_source_pools_shape_and_fits_the_snapshot() {
        let s = snap("Completed", Some("raid0"), &[8, 8]);
        let p = restore_pool(
            &s,
            Some(&source_pool()),
            "copy",
            "db",
            "n3",
            ReclaimPolicy::Retain,
        )
        .unwrap();
        assert_eq!(p.spec.node_name, "n3");
        assert_eq!(p.metadata.namespace.as_deref(), Some("db"));
        assert_eq!(
            p.spec.restore_from.as_ref().unwrap().ebs_snapshot_name,
            "s1"
        );
        let t = &p.spec.template;
        assert_eq!(t.volumes.count, 2);
        assert_eq!(t.volumes.size_gib, 8, "never smaller than a member");
        assert_eq!(t.volumes.iops, Some(1000), "copied from the source pool");
        assert_eq!(t.datasets[0].properties["recordsize"], "8K");
        assert_eq!(t.datasets[0].mount_point, None, "the new pool's own paths");
        assert_eq!(t.reclaim_policy, ReclaimPolicy::Retain);
        // The CEL-free checks the operator will make agree.
        pgml_api::validate::check_restore(&p.spec, &s).unwrap();
    }

    #[test]
    fn restore_without_the_source_pool_uses_the_snapshot_alone() {
        let s = snap("Completed", Some("raidz1"), &[4, 6, 6]);
        let p = restore_pool(&s, None, "copy", "db", "n3", ReclaimPolicy::Delete).unwrap();
        let t = &p.spec.template;
        assert_eq!((t.volumes.count, t.volumes.size_gib), (3, 6));
        assert_eq!(t.layout, Layout::Raidz1);
        assert_eq!(t.datasets.len(), 2, "the schema's default datasets");
        pgml_api::validate::check_restore(&p.spec, &s).unwrap();
    }

    #[test]
    fn restore_refuses_what_cannot_be_restored() {
        let e = restore_pool(
            &snap("Finalizing", Some("raid0"), &[1]),
            None,
            "c",
            "db",
            "n",
            ReclaimPolicy::Retain,
        )
        .unwrap_err();
        assert!(e.contains("Finalizing") && e.contains("Completed"), "{e}");
        let e = restore_pool(
            &snap("Completed", Some("raid0"), &[]),
            None,
            "c",
            "db",
            "n",
            ReclaimPolicy::Retain,
        )
        .unwrap_err();
        assert!(e.contains("no member"), "{e}");
    }

    fn cluster() -> PgmlCluster {
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
            "metadata": {"name": "main"},
            "spec": {"instances": 4, "storage": {"zfs": {"template": {"volumes": {"sizeGiB": 1}}}}},
            "status": {"currentPrimary": "main-1", "targetPrimary": "main-1", "instances": [
                {"name": "main-1", "role": "Primary", "ready": true},
                {"name": "main-2", "role": "Replica", "ready": true},
                {"name": "main-3", "role": "Replica", "ready": false},
                {"name": "main-4", "role": "Replica", "ready": true, "fenced": true}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn switchover_only_to_a_ready_replica() {
        let c = cluster();
        assert_eq!(check_switchover(&c, "main-2"), Ok(()));
        let e = check_switchover(&c, "main-9").unwrap_err();
        assert!(
            e.contains("not an instance") && e.contains("main-1, main-2"),
            "{e}"
        );
        assert!(
            check_switchover(&c, "main-1")
                .unwrap_err()
                .contains("already the primary")
        );
        assert!(
            check_switchover(&c, "main-3")
                .unwrap_err()
                .contains("not ready")
        );
        assert!(
            check_switchover(&c, "main-4")
                .unwrap_err()
                .contains("fenced")
        );
        let mut leaving = c.clone();
        leaving.status.as_mut().unwrap().instances[1].node_leaving =
            Some("node n-2 is cordoned".into());
        let e = check_switchover(&leaving, "main-2").unwrap_err();
        assert!(e.contains("node n-2 is cordoned"), "{e}");
        let mut busy = c.clone();
        busy.status.as_mut().unwrap().target_primary = Some("main-3".into());
        assert!(
            check_switchover(&busy, "main-2")
                .unwrap_err()
                .contains("already switching")
        );
        assert_eq!(
            switchover_patch("main-2"),
            json!({"spec": {"primary": "main-2"}})
        );
        assert!(matches!(
            switchover_outcome(&c, "main-2"),
            Outcome::Pending(_)
        ));
        assert!(matches!(switchover_outcome(&c, "main-1"), Outcome::Done(_)));
    }

    fn source_cluster(pgbackrest: bool) -> PgmlCluster {
        let backups = if pgbackrest {
            "  backups: {pgbackrest: {s3: {bucket: b, region: us-east-1, path: /keep/here}, schedule: {full: '@daily'}}}\n"
        } else {
            ""
        };
        serde_yaml::from_str(&format!(
            "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {{name: main, namespace: db}}\nspec:\n  instances: 3\n  primary: main-2\n  storage: {{zfs: {{template: {{volumes: {{count: 2, sizeGiB: 10}}}}}}}}\n{backups}"
        ))
        .unwrap()
    }

    #[test]
    fn a_cluster_restore_takes_the_sources_shape_and_a_repository_of_its_own() {
        let target = pgml_api::cluster::RecoveryTarget {
            time: Some("2026-12-07T10:15:00Z".into()),
            ..Default::default()
        };
        let from = ClusterRestore {
            snapshot: None,
            wal: false,
            target: Some(target.clone()),
        };
        let c = restore_cluster(&source_cluster(true), "copy", "db", &from).unwrap();
        assert_eq!(c.spec.instances, 3);
        assert_eq!(
            c.spec.primary, None,
            "the source's spec.primary names its instances"
        );
        let b = c.spec.bootstrap.clone().unwrap();
        let repo = b.pgbackrest.unwrap();
        assert_eq!(repo.stanza, "main");
        assert_eq!(repo.s3.path.as_deref(), Some("/keep/here"));
        assert_eq!(b.recovery_target, Some(target));
        assert!(b.snapshot.is_none());
        let own = c.spec.backups.pgbackrest.unwrap();
        assert_eq!(
            own.s3.path, None,
            "its own default path, never the source's"
        );
        // A source without a repository: only a snapshot, without a target.
        let none = source_cluster(false);
        assert!(
            restore_cluster(&none, "copy", "db", &from)
                .unwrap_err()
                .contains("no pgBackRest repository")
        );
        let s = snap("Completed", Some("raid0"), &[10, 10]);
        let only = ClusterRestore {
            snapshot: Some(&s),
            wal: false,
            target: None,
        };
        let c = restore_cluster(&none, "copy", "db", &only).unwrap();
        let b = c.spec.bootstrap.unwrap();
        assert_eq!(b.snapshot.unwrap().name, "s1");
        assert!(b.pgbackrest.is_none());
        // Refusals: the same name, a snapshot not Completed.
        assert!(restore_cluster(&none, "main", "db", &only).is_err());
        let pending = snap("Pending", None, &[]);
        let p = ClusterRestore {
            snapshot: Some(&pending),
            wal: false,
            target: None,
        };
        assert!(
            restore_cluster(&none, "copy", "db", &p)
                .unwrap_err()
                .contains("Completed")
        );
    }
}
