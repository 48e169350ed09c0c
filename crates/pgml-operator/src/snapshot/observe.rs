//! Observe: what an EbsSnapshot and its source are — the object's identity, and the
//! source's node, instance and member volumes in order, as the API server and EC2 tell. A
//! ZfsPool must be Ready with every member's volume recorded; a PVC must be Bound to an EBS
//! CSI volume that is attached; a cluster instance goes through
//! `PgmlCluster.status.instances[].pool`.

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::ListParams;
use pgml_api::cluster::InstanceRole;
use pgml_api::snapshot::{ClusterSource, MemberSnapshot};
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool, condition as c};
use pgml_aws::{AttachmentState, Volume, parse_provider_id};

use super::plan::{Filesystem, SnapRef, reason};
use crate::runtime::{Context, Error};

/// The EBS CSI driver's name in PersistentVolumes.
pub const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";

/// A source resolved to a node, an instance and its member volumes.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// One line for `status.source`, e.g. `ZfsPool/pg-data`.
    pub description: String,
    pub node_name: String,
    pub instance_id: String,
    pub availability_zone: String,
    pub filesystem: Filesystem,
    pub zfs_pool: Option<String>,
    pub layout: Option<String>,
    pub pool_guid: Option<String>,
    /// `memberIndex`, `volumeId`, `sizeGiB` of each member, in member order.
    pub members: Vec<MemberSnapshot>,
}

/// Why the source cannot be captured (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

fn not_ready(message: String) -> Unresolved {
    Unresolved {
        reason: reason::SOURCE_NOT_READY,
        message,
    }
}

fn not_found(message: String) -> Unresolved {
    Unresolved {
        reason: reason::SOURCE_NOT_FOUND,
        message,
    }
}

pub type Resolved = Result<Source, Unresolved>;

/// The namespace, name and UID of the object (the tags name them).
pub fn snap_ref(snap: &EbsSnapshot, installation: &str) -> Result<SnapRef, Error> {
    let meta = &snap.metadata;
    Ok(SnapRef {
        namespace: meta
            .namespace
            .clone()
            .ok_or(Error::Incomplete("namespace"))?,
        name: meta.name.clone().ok_or(Error::Incomplete("name"))?,
        uid: meta.uid.clone().ok_or(Error::Incomplete("uid"))?,
        installation: installation.to_string(),
    })
}

/// Resolves the source the spec names (`Err` inside: why it cannot be captured yet).
pub async fn resolve(ctx: &Context, snap: &EbsSnapshot) -> Result<Resolved, Error> {
    let ns = snap
        .metadata
        .namespace
        .as_deref()
        .ok_or(Error::Incomplete("namespace"))?;
    let src = &snap.spec.source;
    if let Some(p) = &src.zfs_pool {
        return zfs_pool(ctx, ns, &p.name, format!("ZfsPool/{}", p.name)).await;
    }
    if let Some(p) = &src.persistent_volume_claim {
        return pvc(
            ctx,
            ns,
            &p.name,
            format!("PersistentVolumeClaim/{}", p.name),
        )
        .await;
    }
    if let Some(cl) = &src.cluster {
        return cluster(ctx, ns, cl).await;
    }
    Ok(Err(not_found(
        "source names neither a cluster, a zfsPool nor a persistentVolumeClaim".into(),
    )))
}

/// A ZfsPool: Ready, every member's volume recorded.
pub fn of_pool(pool: &ZfsPool, description: String) -> Resolved {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let Some(status) = pool.status.as_ref() else {
        return Err(not_ready(format!("ZfsPool {name} has no status yet")));
    };
    let ready = status
        .conditions
        .iter()
        .any(|x| x.type_ == c::READY && x.status == c::TRUE);
    if !ready {
        return Err(not_ready(format!(
            "ZfsPool {name} is not Ready (phase {}); the snapshot waits for it",
            status
                .phase
                .map_or("unknown".to_string(), |p| format!("{p:?}"))
        )));
    }
    let count = pool.spec.template.volumes.count.max(0);
    let mut members = Vec::new();
    for i in 0..count {
        let Some(v) = status
            .volumes
            .iter()
            .find(|v| v.index == i && v.volume_id.is_some())
        else {
            return Err(not_ready(format!(
                "ZfsPool {name} records no volume for member {i}"
            )));
        };
        members.push(MemberSnapshot {
            member_index: i,
            volume_id: v.volume_id.clone(),
            size_gib: v.size_gib.or(Some(pool.spec.template.volumes.size_gib)),
            ..Default::default()
        });
    }
    let (Some(instance_id), Some(az)) =
        (status.instance_id.clone(), status.availability_zone.clone())
    else {
        return Err(not_ready(format!(
            "ZfsPool {name} records no instance or zone yet"
        )));
    };
    Ok(Source {
        description,
        node_name: pool.spec.node_name.clone(),
        instance_id,
        availability_zone: az,
        filesystem: Filesystem::Zfs,
        zfs_pool: Some(name),
        layout: Some(pool.spec.template.layout.as_str().to_string()),
        pool_guid: status.pool_guid.clone(),
        members,
    })
}

async fn zfs_pool(
    ctx: &Context,
    ns: &str,
    name: &str,
    description: String,
) -> Result<Resolved, Error> {
    let api: Api<ZfsPool> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match api.get_opt(name).await? {
        None => Err(not_found(format!("ZfsPool {name} does not exist"))),
        Some(pool) => of_pool(&pool, description),
    })
}

/// Returns what was found, or from the enclosing function with why the source is not
/// there (yet).
macro_rules! found {
    ($e:expr) => {
        match $e {
            Ok(x) => x,
            Err(u) => return Ok(Err(u)),
        }
    };
}

/// A PVC: Bound to an EBS CSI volume attached to a node's instance.
async fn pvc(ctx: &Context, ns: &str, name: &str, description: String) -> Result<Resolved, Error> {
    let volume_id = found!(claimed_volume(ctx, ns, name).await?);
    let (vol, instance_id) = found!(attached_volume(ctx, name, &volume_id).await?);
    let Some(node_name) = node_of(ctx, &instance_id).await? else {
        return Ok(Err(not_ready(format!(
            "no node has instance {instance_id} (volume {volume_id} of claim {name}) as its providerID"
        ))));
    };
    Ok(Ok(Source {
        description,
        node_name,
        instance_id,
        availability_zone: vol.availability_zone.clone(),
        filesystem: Filesystem::Ext4,
        zfs_pool: None,
        layout: None,
        pool_guid: None,
        members: vec![MemberSnapshot {
            member_index: 0,
            volume_id: Some(volume_id),
            size_gib: Some(i64::from(vol.size_gib)),
            ..Default::default()
        }],
    }))
}

/// The EBS volume ID of the PersistentVolume claim `name` is Bound to.
async fn claimed_volume(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<String, Unresolved>, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(claim) = claims.get_opt(name).await? else {
        return Ok(Err(not_found(format!(
            "PersistentVolumeClaim {name} does not exist"
        ))));
    };
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(pv_name) = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| bound)
    else {
        return Ok(Err(not_ready(format!(
            "PersistentVolumeClaim {name} is not Bound yet"
        ))));
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(pv) = pvs.get_opt(&pv_name).await? else {
        return Ok(Err(not_ready(format!(
            "PersistentVolume {pv_name} of claim {name} does not exist"
        ))));
    };
    Ok(ebs_volume_id(&pv).ok_or_else(|| {
        not_found(format!(
            "PersistentVolume {pv_name} of claim {name} is not an EBS CSI volume (driver {EBS_CSI_DRIVER})"
        ))
    }))
}

/// The volume handle of an EBS CSI PersistentVolume.
pub fn ebs_volume_id(pv: &PersistentVolume) -> Option<String> {
    let csi = pv.spec.as_ref().and_then(|s| s.csi.as_ref());
    csi.filter(|c| c.driver == EBS_CSI_DRIVER)
        .map(|c| c.volume_handle.clone())
}

/// Volume `volume_id` of claim `name` as EC2 describes it, and the instance it is attached
/// to.
async fn attached_volume(
    ctx: &Context,
    name: &str,
    volume_id: &str,
) -> Result<Result<(Volume, String), Unresolved>, Error> {
    let described = ctx.ec2.describe_volumes(&[volume_id.to_string()]).await?;
    let Some(vol) = described.into_iter().next() else {
        return Ok(Err(not_found(format!(
            "EC2 does not know volume {volume_id} of claim {name}"
        ))));
    };
    let attached = vol
        .attachments
        .iter()
        .find(|a| a.state == AttachmentState::Attached)
        .map(|a| a.instance_id.clone());
    Ok(match attached {
        Some(instance_id) => Ok((vol, instance_id)),
        None => Err(not_ready(format!(
            "volume {volume_id} of claim {name} is not attached to an instance"
        ))),
    })
}

/// The name of the node whose providerID names `instance_id`.
async fn node_of(ctx: &Context, instance_id: &str) -> Result<Option<String>, Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .and_then(parse_provider_id)
                .is_some_and(|(_, i)| i == instance_id)
        });
    Ok(node.and_then(|n| n.metadata.name))
}

/// The instance a cluster source names, or (unset) a ready replica; the primary only when
/// the cluster has a single instance. `Err` says why none is chosen.
pub fn pick_instance(
    cluster: &PgmlCluster,
    wanted: Option<&str>,
) -> Result<(String, String), String> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let Some(status) = cluster.status.as_ref().filter(|s| !s.instances.is_empty()) else {
        return Err(format!(
            "PgmlCluster {name} reports no instances in its status yet"
        ));
    };
    let with_pool =
        |i: &pgml_api::cluster::InstanceStatus| i.pool.clone().map(|p| (i.name.clone(), p));
    match wanted {
        Some(w) => {
            let Some(i) = status.instances.iter().find(|i| i.name == w) else {
                return Err(format!("PgmlCluster {name} reports no instance {w}"));
            };
            with_pool(i)
                .ok_or_else(|| format!("instance {w} of PgmlCluster {name} has no pool yet"))
        }
        None => {
            let replica = status
                .instances
                .iter()
                .filter(|i| i.role == Some(InstanceRole::Replica) && i.ready)
                .find_map(with_pool);
            if let Some(r) = replica {
                return Ok(r);
            }
            if cluster.spec.instances == 1 && status.instances.len() == 1 {
                return with_pool(&status.instances[0])
                    .ok_or_else(|| format!("the instance of PgmlCluster {name} has no pool yet"));
            }
            Err(format!(
                "PgmlCluster {name} has no ready replica to snapshot (the primary is only snapshotted in a single-instance cluster)"
            ))
        }
    }
}

async fn cluster(ctx: &Context, ns: &str, src: &ClusterSource) -> Result<Resolved, Error> {
    let api: Api<PgmlCluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cl) = api.get_opt(&src.name).await? else {
        return Ok(Err(not_found(format!(
            "PgmlCluster {} does not exist",
            src.name
        ))));
    };
    let (instance, pool) = match pick_instance(&cl, src.instance.as_deref()) {
        Ok(x) => x,
        Err(m) => return Ok(Err(not_ready(m))),
    };
    let description = format!("PgmlCluster/{} ({instance})", src.name);
    let pools: Api<ZfsPool> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(p) = pools.get_opt(&pool).await? {
        return Ok(of_pool(&p, description));
    }
    pvc(ctx, ns, &pool, description).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ready: bool) -> ZfsPool {
        let yaml = format!(
            r#"
apiVersion: pgml.io/v1alpha1
kind: ZfsPool
metadata: {{name: tank, namespace: ns}}
spec:
  nodeName: node-a
  layout: raid0
  volumes: {{count: 2, type: gp3, sizeGiB: 10}}
status:
  instanceId: i-1
  availabilityZone: us-east-1a
  poolGuid: "42"
  conditions:
  - {{type: Ready, status: "{}", reason: x, message: x, lastTransitionTime: "2026-01-01T00:00:00Z"}}
  volumes:
  - {{index: 1, volumeId: vol-b, sizeGiB: 12}}
  - {{index: 0, volumeId: vol-a}}
"#,
            if ready { "True" } else { "False" }
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn a_ready_pool_gives_its_members_in_order() {
        let s = of_pool(&pool(true), "ZfsPool/tank".into()).unwrap();
        assert_eq!(s.node_name, "node-a");
        assert_eq!(s.instance_id, "i-1");
        assert_eq!(s.layout.as_deref(), Some("raid0"));
        assert_eq!(s.pool_guid.as_deref(), Some("42"));
        let ids: Vec<_> = s
            .members
            .iter()
            .map(|m| (m.member_index, m.volume_id.clone().unwrap(), m.size_gib))
            .collect();
        assert_eq!(
            ids,
            [(0, "vol-a".into(), Some(10)), (1, "vol-b".into(), Some(12))]
        );
    }

    #[test]
    fn a_pool_not_ready_waits() {
        let e = of_pool(&pool(false), "ZfsPool/tank".into()).unwrap_err();
        assert_eq!(e.reason, reason::SOURCE_NOT_READY);
    }

    fn cluster(instances: &str, count: i32) -> PgmlCluster {
        let yaml = format!(
            r#"
apiVersion: pgml.io/v1alpha1
kind: PgmlCluster
metadata: {{name: main, namespace: ns}}
spec:
  instances: {count}
  storage: {{zfs: {{template: {{volumes: {{count: 1, type: gp3, sizeGiB: 10}}}}}}}}
status:
  instances: {instances}
"#
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
    }

    #[test]
    fn a_cluster_source_picks_a_ready_replica_by_default() {
        let c = cluster(
            "[{name: main-1, pool: main-1, role: Primary, ready: true}, {name: main-2, pool: main-2, role: Replica, ready: true}]",
            2,
        );
        assert_eq!(
            pick_instance(&c, None),
            Ok(("main-2".into(), "main-2".into()))
        );
        assert_eq!(
            pick_instance(&c, Some("main-1")),
            Ok(("main-1".into(), "main-1".into()))
        );
        assert!(pick_instance(&c, Some("main-9")).is_err());
        let lone = cluster(
            "[{name: main-1, pool: main-1, role: Primary, ready: true}]",
            1,
        );
        assert_eq!(
            pick_instance(&lone, None),
            Ok(("main-1".into(), "main-1".into()))
        );
        let no_replica = cluster(
            "[{name: main-1, pool: main-1, role: Primary, ready: true}, {name: main-2, pool: main-2, role: Replica, ready: false}]",
            2,
        );
        assert!(pick_instance(&no_replica, None).is_err());
        let empty = cluster("[]", 2);
        assert!(
            pick_instance(&empty, None)
                .unwrap_err()
                .contains("no instances")
        );
    }
}
