//! Observe: what a pool points at and what EC2 has of it — its Node, the node's EC2
//! instance (from `spec.providerID`) and the instance type's EBS limits (cached per type),
//! the pool's volumes sorted into member slots (those whose tags let them be members:
//! [`adopt`]) — and [`facts`], all of it as the plan and the status read it; for
//! deletion, [`deletion`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use pgml_api::validate;
use pgml_api::zfspool::{VolumeModification, VolumeStatus, ZfsPoolStatus};
use pgml_api::{ZfsPool, condition as c};
use pgml_aws::{AttachmentState, Instance, InstanceTypeLimits, Volume};

use super::build::{self, Members};
use super::plan::adopt;
use super::plan::delete::{self, InstanceState, Seen};
use super::status::{self, AgentView, Facts, RepairView, reason};
use crate::runtime::Context;
use crate::runtime::Error;

/// Where the pool lives, when everything resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub instance: Instance,
    /// When `instance` was described (device names are picked from fresh views only).
    pub described: std::time::Instant,
    /// `None` when DescribeInstanceTypes does not know the type (limits unchecked).
    pub limits: Option<InstanceTypeLimits>,
}

/// Why the pool's node cannot be used yet: (reason, message) for its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

pub async fn node(ctx: &Context, name: &str) -> Result<Option<Node>, Error> {
    Ok(Api::<Node>::all(ctx.client.clone()).get_opt(name).await?)
}

pub async fn resolve(ctx: &Context, node_name: &str) -> Result<Result<Target, Unresolved>, Error> {
    let Some(node) = node(ctx, node_name).await? else {
        return Ok(Err(Unresolved {
            reason: reason::NODE_NOT_FOUND,
            message: format!("node {node_name} does not exist"),
        }));
    };
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.clone());
    let Some((_, instance_id)) = provider_id.as_deref().and_then(pgml_aws::parse_provider_id)
    else {
        return Ok(Err(Unresolved {
            reason: reason::NODE_WITHOUT_PROVIDER_ID,
            message: match provider_id {
                Some(p) => format!(
                    "node {node_name} has providerID {p:?}, not aws:///<zone>/<instance-id>"
                ),
                None => format!(
                    "node {node_name} has no spec.providerID: the operator cannot tell its EC2 instance"
                ),
            },
        }));
    };
    let described = std::time::Instant::now();
    let Some(instance) = ctx.ec2.describe_instance(&instance_id).await? else {
        return Ok(Err(Unresolved {
            reason: reason::INSTANCE_NOT_FOUND,
            message: format!("EC2 does not know instance {instance_id} of node {node_name}"),
        }));
    };
    if matches!(instance.state.as_str(), "shutting-down" | "terminated") {
        return Ok(Err(Unresolved {
            reason: reason::INSTANCE_NOT_FOUND,
            message: format!(
                "instance {instance_id} of node {node_name} is {}",
                instance.state
            ),
        }));
    }
    let limits = ctx.instance_type_limits(&instance.instance_type).await?;
    Ok(Ok(Target {
        instance,
        described,
        limits,
    }))
}

/// The pool's volumes as EC2 has them.
#[derive(Debug, Default, PartialEq)]
pub struct Volumes {
    pub members: Members,
    /// Members whose recorded volume EC2 no longer knows, or whose tags say it is not
    /// ours: member → volume ID.
    pub gone: BTreeMap<usize, String>,
    /// Members whose slot holds a volume without the installation tag: (member, volume).
    pub unadopted: Vec<(usize, String)>,
    /// The Warnings (reason, note) for the volumes left alone ([`adopt`]).
    pub left_alone: Vec<(&'static str, String)>,
}

/// Every volume tagged with the pool's UID, then the volumes status records that the tag
/// search did not return, looked up by ID: those whose tags let them be members
/// ([`adopt::sort`]) sorted into its `count` member slots.
pub async fn volumes(
    ctx: &Context,
    uid: &str,
    count: usize,
    observed: &ZfsPoolStatus,
) -> Result<Volumes, Error> {
    let installation = &ctx.settings.installation;
    let tagged = ctx.ec2.find_volumes(&build::pool_filter(uid)).await?;
    let mut found = adopt::sort(tagged, uid, installation, &observed.volumes);
    let mut members = build::sort_members(&found.kept, count, &observed.volumes);
    if !members.extra.is_empty() {
        let ids: Vec<&str> = members.extra.iter().map(|v| v.volume_id.as_str()).collect();
        tracing::warn!(
            ?ids,
            "volumes tagged for this pool that fill no member slot"
        );
    }
    let unlisted = unlisted(observed, &members);
    let mut gone = BTreeMap::new();
    if !unlisted.is_empty() {
        let known = ctx.ec2.describe_volumes(&unlisted.ids()).await?;
        let known = adopt::sort(known, uid, installation, &observed.volumes);
        gone = settle_unlisted(unlisted, &known.kept, &mut members);
        found.extend(known);
    }
    let owner = |v: &Volume| build::ownership(v, uid, installation);
    Ok(Volumes {
        unadopted: adopt::unadopted(&members, owner),
        left_alone: adopt::warnings(&found, installation),
        members,
        gone,
    })
}

/// Volumes status records that the tag search did not return: EC2 may not list a new
/// volume by tag yet (eventual consistency), or its tags were removed. One DescribeVolumes
/// by ID settles them.
#[derive(Debug, Default, PartialEq)]
pub struct Unlisted {
    /// (member, its volume) for members whose slot is empty.
    pub members: Vec<(usize, String)>,
    /// (member, the volume it replaced) for replaced volumes not found.
    pub retired: Vec<(usize, String)>,
}

impl Unlisted {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.retired.is_empty()
    }

    pub fn ids(&self) -> Vec<String> {
        self.members
            .iter()
            .chain(&self.retired)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

pub fn unlisted(observed: &ZfsPoolStatus, members: &Members) -> Unlisted {
    let members_unlisted = observed
        .volumes
        .iter()
        .filter_map(|v| Some((usize::try_from(v.index).ok()?, v.volume_id.clone()?)))
        .filter(|(i, id)| {
            *i < members.slots.len()
                && members.slots[*i].is_none()
                && !members.extra.iter().any(|v| &v.volume_id == id)
        })
        .collect();
    let current = |id: &str| {
        observed
            .volumes
            .iter()
            .any(|v| v.volume_id.as_deref() == Some(id))
    };
    let retired = observed
        .volumes
        .iter()
        .filter_map(|v| {
            Some((
                usize::try_from(v.index).ok()?,
                v.replaced_volume_id.clone()?,
            ))
        })
        .filter(|(_, id)| !members.retired.iter().any(|(_, v)| &v.volume_id == id) && !current(id))
        .collect();
    Unlisted {
        members: members_unlisted,
        retired,
    }
}

/// Puts the unlisted volumes EC2 still has (`known`) in their slots; returns the members
/// whose volume EC2 no longer knows: lost, never silently recreated under the same
/// generation.
pub fn settle_unlisted(
    unlisted: Unlisted,
    known: &[Volume],
    members: &mut Members,
) -> BTreeMap<usize, String> {
    let live = |id: &str| {
        known
            .iter()
            .find(|v| v.volume_id == id && !v.state.is_gone())
    };
    let mut gone = BTreeMap::new();
    for (i, id) in unlisted.members {
        match live(&id) {
            Some(v) => members.slots[i] = Some(v.clone()),
            None => {
                gone.insert(i, id);
            }
        }
    }
    for (i, id) in unlisted.retired {
        if let Some(v) = live(&id) {
            members.retired.push((i, v.clone()));
        }
    }
    gone
}

/// Everything observed, as the plan and the status read it: the pool's spec and
/// identity, the instance, each member's entry (from EC2, keeping what status recorded of
/// it) and what the agent reports. No repair, problem or budget yet: the plan sets those.
pub fn facts(
    pool: &ZfsPool,
    target: &Target,
    observed: &ZfsPoolStatus,
    volumes: &Volumes,
) -> Facts {
    let spec = &pool.spec.template;
    let instance_id = target.instance.instance_id.clone();
    let (iops, throughput) = target.limits.as_ref().map_or((None, None), |l| {
        (l.maximum_iops, l.maximum_throughput_mibps)
    });
    Facts {
        generation: pool.metadata.generation,
        node_name: pool.spec.node_name.clone(),
        pool_name: pool.pool_name(),
        layout: spec.layout,
        count: spec.volumes.count.max(0) as usize,
        volumes: entries(observed, volumes, &instance_id),
        instance_id,
        instance_type: target.instance.instance_type.clone(),
        availability_zone: target.instance.availability_zone.clone(),
        performance: Some(validate::performance_ceiling(
            &spec.volumes,
            spec.layout,
            iops,
            throughput,
        )),
        recent_modifications: observed.recent_modifications.clone(),
        attach_problem: None,
        budget_wait: None,
        agent: AgentView::read(observed),
        repair: RepairView::None,
        restored_from: None,
    }
}

/// Each member's status entry: EC2's view of its volume (a modification in flight settled
/// against it), with the generation and replaced volume status recorded.
fn entries(observed: &ZfsPoolStatus, volumes: &Volumes, instance_id: &str) -> Vec<VolumeStatus> {
    let old_mods: BTreeMap<i32, VolumeModification> = observed
        .volumes
        .iter()
        .filter_map(|v| Some((v.index, v.modification.clone()?)))
        .collect();
    volumes
        .members
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let recorded = observed.volumes.iter().find(|o| o.index == i as i32);
            let (generation, replaced) =
                recorded.map_or((0, None), |o| (o.generation, o.replaced_volume_id.clone()));
            let Some(v) = v.as_ref() else {
                return without_volume(i, volumes.gone.get(&i), generation, replaced);
            };
            let m = old_mods
                .get(&(i as i32))
                .map(|m| build::settle_modification(m, v));
            Some(VolumeStatus {
                generation,
                replaced_volume_id: replaced,
                ..build::volume_status(i, v, instance_id, m)
            })
        })
        .collect()
}

/// The entry of a member EC2 has no volume for. Gone from EC2: kept (state deleted) until
/// the member is replaced. A member still to be created keeps its generation and replaced
/// volume (none: no entry).
fn without_volume(
    i: usize,
    gone: Option<&String>,
    generation: i32,
    replaced: Option<String>,
) -> Option<VolumeStatus> {
    match gone {
        Some(id) => Some(VolumeStatus {
            index: i as i32,
            volume_id: Some(id.clone()),
            state: Some(pgml_api::zfspool::VolumeState::Deleted.as_str().into()),
            attachment_state: Some(pgml_api::zfspool::AttachmentState::Detached.as_str().into()),
            generation,
            replaced_volume_id: replaced,
            ..Default::default()
        }),
        None => (generation != 0 || replaced.is_some()).then(|| VolumeStatus {
            index: i as i32,
            generation,
            replaced_volume_id: replaced,
            ..Default::default()
        }),
    }
}

/// What deletion sees: whether the pool's Node object is gone; every volume of the pool,
/// once they may be touched (released, or the node gone): by tag, plus any the status
/// lists (members and the volumes they replaced) that the tag search missed, so nothing is
/// left unaccounted for, each sorted by its tags; with the node gone, what EC2 says of the
/// instances they are attached to.
pub async fn deletion(ctx: &Context, pool: &ZfsPool, uid: &str) -> Result<Seen, Error> {
    let empty = ZfsPoolStatus::default();
    let observed = pool.status.as_ref().unwrap_or(&empty);
    let node_gone = node(ctx, &pool.spec.node_name).await?.is_none();
    // A pool whose status never recorded a volume has nothing for the agent to release;
    // the tag search below still catches a volume created just before a crash.
    let never_provisioned = observed
        .volumes
        .iter()
        .all(|v| v.volume_id.is_none() && v.replaced_volume_id.is_none());
    let released = status::is_true(observed, c::POOL_RELEASED);
    let mut found = if released || node_gone || never_provisioned {
        ctx.ec2.find_volumes(&build::pool_filter(uid)).await?
    } else {
        vec![]
    };
    if released || node_gone {
        let unlisted: Vec<String> = observed
            .volumes
            .iter()
            .flat_map(|v| [v.volume_id.clone(), v.replaced_volume_id.clone()])
            .flatten()
            .filter(|id| !found.iter().any(|v| &v.volume_id == id))
            .collect();
        if !unlisted.is_empty() {
            found.extend(ctx.ec2.describe_volumes(&unlisted).await?);
        }
    }
    let mut seen = Seen {
        node_gone,
        ..Seen::default()
    };
    delete::sort_owned(found, uid, &ctx.settings.installation, &mut seen);
    seen.released =
        released || (never_provisioned && seen.volumes.is_empty() && seen.unadopted.is_empty());
    if node_gone {
        seen.instances = instance_states(ctx, &seen.volumes).await?;
    }
    Ok(seen)
}

/// EC2's state of each instance the volumes are attached to (DescribeInstances: an
/// idempotent read, through the rate limiter like every describe); one EC2 does not know
/// is [`InstanceState::Unknown`].
pub async fn instance_states(
    ctx: &Context,
    volumes: &[Volume],
) -> Result<BTreeMap<String, InstanceState>, Error> {
    let mut states = BTreeMap::new();
    for v in volumes.iter().filter(|v| !v.state.is_gone()) {
        for a in &v.attachments {
            if a.state == AttachmentState::Detached || states.contains_key(&a.instance_id) {
                continue;
            }
            let state = match ctx.ec2.describe_instance(&a.instance_id).await? {
                Some(i) => InstanceState::Is(i.state),
                None => InstanceState::Unknown,
            };
            states.insert(a.instance_id.clone(), state);
        }
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_aws::VolumeState;

    fn vol(id: &str, state: VolumeState) -> Volume {
        crate::zfspool::fixtures::vol(id, None, state)
    }

    fn recorded(i: i32, id: Option<&str>, replaced: Option<&str>) -> VolumeStatus {
        VolumeStatus {
            index: i,
            volume_id: id.map(str::to_string),
            replaced_volume_id: replaced.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn recorded_volumes_the_tag_search_missed_are_looked_up_and_the_unknown_ones_are_gone() {
        let observed = ZfsPoolStatus {
            volumes: vec![
                recorded(0, Some("vol-a"), None),
                recorded(1, Some("vol-b"), Some("vol-old")),
                recorded(2, Some("vol-c"), None),
            ],
            ..Default::default()
        };
        // The tag search found member 2 only.
        let mut members =
            build::sort_members(&[vol("vol-c", VolumeState::InUse)], 3, &observed.volumes);
        let u = unlisted(&observed, &members);
        assert_eq!(
            u,
            Unlisted {
                members: vec![(0, "vol-a".into()), (1, "vol-b".into())],
                retired: vec![(1, "vol-old".into())],
            }
        );
        assert_eq!(u.ids(), ["vol-a", "vol-b", "vol-old"]);
        // EC2 knows vol-a and the replaced volume; vol-b is being deleted: gone.
        let known = [
            vol("vol-a", VolumeState::InUse),
            vol("vol-b", VolumeState::Deleting),
            vol("vol-old", VolumeState::Error),
        ];
        let gone = settle_unlisted(u, &known, &mut members);
        assert_eq!(gone, BTreeMap::from([(1, "vol-b".to_string())]));
        assert_eq!(
            members.slots[0].as_ref().map(|v| v.volume_id.as_str()),
            Some("vol-a")
        );
        assert!(members.slots[1].is_none());
        assert_eq!(members.retired.len(), 1);
        assert_eq!(members.retired[0].1.volume_id, "vol-old");

        // Everything found: nothing to look up.
        let all = build::sort_members(&known[..1], 1, &observed.volumes[..1]);
        assert!(unlisted(&observed, &all).members.is_empty());
    }

    #[test]
    fn a_member_without_volume_keeps_its_generation_or_its_lost_volume() {
        let gone = "vol-x".to_string();
        let e = without_volume(2, Some(&gone), 1, Some("vol-w".into())).unwrap();
        assert_eq!(e.volume_id.as_deref(), Some("vol-x"));
        assert_eq!(
            (e.state.as_deref(), e.attachment_state.as_deref()),
            (Some("deleted"), Some("detached"))
        );
        assert_eq!(
            (e.generation, e.replaced_volume_id.as_deref()),
            (1, Some("vol-w"))
        );
        // Never created: no entry, unless a replacement is recorded for it.
        assert_eq!(without_volume(0, None, 0, None), None);
        let r = without_volume(0, None, 2, Some("vol-w".into())).unwrap();
        assert_eq!((r.volume_id, r.generation), (None, 2));
    }
}
