//! Pure builders: what the pool's volumes should be, how to ask EC2 for them, and which
//! changes to make next. No client, no clock (time comes in as an argument): every decision
//! here is tested without a server.

use std::collections::{BTreeMap, BTreeSet};

use pgml_api::common::keys;
use pgml_api::ebs::VolumeType as ApiVolumeType;
use pgml_api::zfspool::{
    AttachmentState as ApiAttachmentState, ModificationState, VolumeModification, VolumeStatus,
};
use pgml_api::{EbsVolumes, ZfsPool};
use pgml_aws::{
    AttachmentState, CreateVolume, Instance, ModifyVolume, Volume, VolumeState, VolumeType,
};

use crate::runtime::ownership::{self, Ownership};

/// AWS allows this many modifications per volume in a rolling 24 hours.
pub const MODIFICATIONS_PER_DAY: usize = 4;
const DAY_SECONDS: i64 = 24 * 3600;

/// The identity of a pool the builders need: its UID, namespace, name and spec.
pub struct PoolRef<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub volumes: &'a EbsVolumes,
    /// The operator's installation (`pgml.io/installation`).
    pub installation: &'a str,
}

impl<'a> PoolRef<'a> {
    pub fn of(pool: &'a ZfsPool, installation: &'a str) -> Option<PoolRef<'a>> {
        Some(PoolRef {
            uid: pool.metadata.uid.as_deref()?,
            namespace: pool.metadata.namespace.as_deref()?,
            name: pool.metadata.name.as_deref()?,
            volumes: &pool.spec.template.volumes,
            installation,
        })
    }
}

/// The tag filter that finds every volume of the pool, in one DescribeVolumes.
pub fn pool_filter(uid: &str) -> Vec<(String, String)> {
    vec![(keys::POOL_UID.to_string(), uid.to_string())]
}

/// Whose a volume is, by its own tags: made by the operator for the pool of this UID, by
/// this installation. Status is no proof (the agent writes status too): nothing is
/// detached or deleted unless its tags say so ([`crate::runtime::ownership`]).
pub fn ownership(v: &Volume, uid: &str, installation: &str) -> Ownership {
    ownership::ownership(&v.tags, keys::POOL_UID, uid, installation)
}

/// Whether the volume is this pool's and this installation's to detach and delete.
pub fn is_ours(v: &Volume, uid: &str, installation: &str) -> bool {
    ownership(v, uid, installation) == Ownership::Ours
}

/// The tags of member `index`: the contract's `pgml.io/*` set, `Name`, plus the user's
/// (which cannot use the reserved prefixes: the schema refuses them).
pub fn volume_tags(pool: &PoolRef, index: usize) -> BTreeMap<String, String> {
    let mut tags = pool.volumes.tags.clone();
    for (k, v) in [
        (keys::MANAGED_BY, keys::MANAGED_BY_VALUE.to_string()),
        (keys::INSTALLATION, pool.installation.to_string()),
        (keys::NAMESPACE, pool.namespace.to_string()),
        (keys::POOL, pool.name.to_string()),
        (keys::POOL_UID, pool.uid.to_string()),
        (keys::MEMBER_INDEX, index.to_string()),
        (
            keys::NAME,
            format!("{}/{}-{index}", pool.namespace, pool.name),
        ),
    ] {
        tags.insert(k.to_string(), v);
    }
    tags
}

/// The ClientToken of member `index`, generation `member_generation` (0 for the first
/// volume of that index; a replacement gets the next), made by `installation`: EC2 returns
/// the same volume for a repeated create instead of making a second one. The installation
/// is part of it because EC2 remembers tokens per account and region: another
/// installation with a pool of the same UID (a cluster restored from this one's backup)
/// would otherwise be answered with this one's volume, or refused
/// (IdempotentParameterMismatch: the tags differ) instead of making its own.
pub fn volume_token(uid: &str, installation: &str, index: usize, member_generation: u32) -> String {
    pgml_aws::client_token(&[
        uid,
        installation,
        &index.to_string(),
        &member_generation.to_string(),
    ])
}

fn aws_type(t: ApiVolumeType) -> VolumeType {
    match t {
        ApiVolumeType::Gp3 => VolumeType::Gp3,
        ApiVolumeType::Io2 => VolumeType::Io2,
    }
}

/// The CreateVolume for member `index`, generation `member_generation`, in the instance's
/// zone. IOPS/throughput are sent only when the spec sets them (gp3 defaults to its
/// baseline). A replacement carries the same tags as the volume it replaces.
pub fn create_request(
    pool: &PoolRef,
    index: usize,
    member_generation: u32,
    az: &str,
) -> CreateVolume {
    let v = pool.volumes;
    CreateVolume {
        availability_zone: az.to_string(),
        volume_type: aws_type(v.volume_type),
        size_gib: v.size_gib as i32,
        iops: v.iops.map(|i| i as i32),
        throughput_mibps: match v.volume_type {
            ApiVolumeType::Gp3 => v.throughput_mibps.map(|t| t as i32),
            ApiVolumeType::Io2 => None,
        },
        encrypted: v.encrypted,
        kms_key_id: v.kms_key_id.clone(),
        snapshot_id: None,
        volume_initialization_rate_mibps: None,
        tags: volume_tags(pool, index),
        client_token: volume_token(pool.uid, pool.installation, index, member_generation),
    }
}

/// Member index → the EBS snapshot its volume is created from, for a pool restored from
/// `snapshot` (already checked with `validate::check_restore`). `Err` names a member the
/// set has no snapshot ID for.
pub fn restore_sources(
    snapshot: &pgml_api::EbsSnapshot,
    count: usize,
) -> Result<BTreeMap<usize, String>, String> {
    let members = snapshot
        .status
        .as_ref()
        .map(|s| s.snapshots.as_slice())
        .unwrap_or_default();
    (0..count)
        .map(|i| {
            members
                .iter()
                .find(|m| m.member_index == i as i32)
                .and_then(|m| m.snapshot_id.clone())
                .map(|id| (i, id))
                .ok_or_else(|| {
                    format!(
                        "EbsSnapshot {} has no snapshot for member {i}",
                        snapshot.metadata.name.as_deref().unwrap_or("?")
                    )
                })
        })
        .collect()
}

/// `req` made from `snapshot_id` (the first volume of a restored member; a later
/// generation replaces a lost member and is resilvered, so it starts empty), with EBS's
/// volume initialization rate when the spec asks for one.
pub fn restored(mut req: CreateVolume, snapshot_id: &str, rate_mibps: Option<i32>) -> CreateVolume {
    req.snapshot_id = Some(snapshot_id.to_string());
    req.volume_initialization_rate_mibps = rate_mibps;
    req
}

/// The volumes EC2 found for the pool, sorted into member slots. A volume being deleted
/// does not fill a slot; two live volumes claiming one index, or an index beyond `count`,
/// are `extra` (reported, never deleted by the controller). A volume a member replaced
/// (`replacedVolumeId` in status) is `retired`: detached, then deleted by the controller.
#[derive(Debug, Default, PartialEq)]
pub struct Members {
    pub slots: Vec<Option<Volume>>,
    pub extra: Vec<Volume>,
    /// (member index, the volume it replaced).
    pub retired: Vec<(usize, Volume)>,
}

/// Sorts `found` into slots. The volume status records for a member takes its slot; a
/// member status records no volume for (never created, or a replacement not recorded yet
/// after a crash) takes the first volume tagged with its index that status does not name.
pub fn sort_members(found: &[Volume], count: usize, recorded: &[VolumeStatus]) -> Members {
    let mut m = Members {
        slots: vec![None; count],
        extra: vec![],
        retired: vec![],
    };
    let mut sorted: Vec<&Volume> = found.iter().filter(|v| !v.state.is_gone()).collect();
    sorted.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
    let entry = |i: usize| recorded.iter().find(|r| r.index == i as i32);
    let named = |id: &str| {
        recorded.iter().any(|r| {
            r.volume_id.as_deref() == Some(id) || r.replaced_volume_id.as_deref() == Some(id)
        })
    };
    let mut rest = Vec::new();
    for v in sorted {
        if let Some(r) = recorded
            .iter()
            .find(|r| r.replaced_volume_id.as_deref() == Some(v.volume_id.as_str()))
            .filter(|r| r.volume_id.as_deref() != Some(v.volume_id.as_str()))
        {
            m.retired.push((r.index.max(0) as usize, v.clone()));
            continue;
        }
        match recorded
            .iter()
            .find(|r| r.volume_id.as_deref() == Some(v.volume_id.as_str()))
        {
            Some(r) if (r.index as usize) < count && r.index >= 0 => {
                m.slots[r.index as usize] = Some(v.clone())
            }
            _ => rest.push(v),
        }
    }
    for v in rest {
        let index = v
            .tags
            .get(keys::MEMBER_INDEX)
            .and_then(|i| i.parse::<usize>().ok());
        match index {
            Some(i)
                if i < count
                    && m.slots[i].is_none()
                    && entry(i).is_none_or(|r| r.volume_id.is_none())
                    && !named(&v.volume_id) =>
            {
                m.slots[i] = Some(v.clone())
            }
            _ => m.extra.push(v.clone()),
        }
    }
    m
}

/// What to do about one member's attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachStep {
    /// Attached to our instance.
    Attached,
    /// Attaching (or detaching) on our instance: wait and look again.
    InProgress(AttachmentState),
    /// Available: attach it.
    Attach,
    /// Still `creating`, or in `error`: nothing to do now.
    NotReady(VolumeState),
    /// Attached to another instance: never steal it.
    Elsewhere(String),
}

pub fn attach_step(v: &Volume, instance_id: &str) -> AttachStep {
    let live = v
        .attachments
        .iter()
        .find(|a| a.state != AttachmentState::Detached);
    match live {
        Some(a) if a.instance_id != instance_id => AttachStep::Elsewhere(a.instance_id.clone()),
        Some(a) if a.state == AttachmentState::Attached => AttachStep::Attached,
        Some(a) => AttachStep::InProgress(a.state),
        None if v.state == VolumeState::Available => AttachStep::Attach,
        None => AttachStep::NotReady(v.state.clone()),
    }
}

/// Device names taken on the instance: its block-device mappings and our members'
/// attachments (which a fresh DescribeInstances may not show yet).
pub fn used_devices(instance: &Instance, members: &Members) -> BTreeSet<String> {
    let mut used: BTreeSet<String> = instance.block_devices.keys().cloned().collect();
    let retired = members.retired.iter().map(|(_, v)| v);
    for v in members.slots.iter().flatten().chain(retired) {
        for a in &v.attachments {
            if a.instance_id == instance.instance_id && a.state != AttachmentState::Detached {
                used.insert(a.device.clone());
            }
        }
    }
    used
}

/// Attachment slots free for this pool: the type's limit minus what is attached that is not
/// ours (root volume, other pools). `None` when the limit is unknown.
pub fn free_attachments(
    max_attachments: Option<i64>,
    instance: &Instance,
    members: &Members,
) -> Option<i32> {
    let ours: BTreeSet<&str> = members
        .slots
        .iter()
        .flatten()
        .chain(members.retired.iter().map(|(_, v)| v))
        .map(|v| v.volume_id.as_str())
        .collect();
    let others = instance
        .block_devices
        .values()
        .filter(|id| !ours.contains(id.as_str()))
        .count() as i64;
    max_attachments.map(|m| (m - others).max(0) as i32)
}

/// The ModifyVolume that brings a member up to the spec, if it is below it. Only growth:
/// shrinking is refused at admission, and a value above the spec is left alone.
pub fn growth(v: &Volume, spec: &EbsVolumes) -> Option<ModifyVolume> {
    let size = (i64::from(v.size_gib) < spec.size_gib).then_some(spec.size_gib as i32);
    let iops = spec
        .iops
        .filter(|want| v.iops.is_none_or(|have| i64::from(have) < *want))
        .map(|i| i as i32);
    let throughput = match spec.volume_type {
        ApiVolumeType::Gp3 => spec
            .throughput_mibps
            .filter(|want| {
                v.throughput_mibps
                    .is_none_or(|have| i64::from(have) < *want)
            })
            .map(|t| t as i32),
        ApiVolumeType::Io2 => None,
    };
    (size.is_some() || iops.is_some() || throughput.is_some()).then(|| ModifyVolume {
        volume_id: v.volume_id.clone(),
        size_gib: size,
        iops,
        throughput_mibps: throughput,
    })
}

/// Whether another round of modifications may start now (`recent`: epoch seconds of the
/// pool's modification rounds; each round modifies every member once, so a round spends one
/// of each volume's 4 per rolling 24 hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Available {
        left: usize,
    },
    /// Spent: the next round may start at this epoch second.
    SpentUntil(i64),
}

pub fn modification_budget(recent: &[i64], now: i64) -> Budget {
    let mut within: Vec<i64> = recent
        .iter()
        .copied()
        .filter(|t| now - t < DAY_SECONDS)
        .collect();
    within.sort_unstable();
    if within.len() < MODIFICATIONS_PER_DAY {
        return Budget::Available {
            left: MODIFICATIONS_PER_DAY - within.len(),
        };
    }
    // The round that frees a slot is the one that makes the window hold one fewer than 4.
    let oldest_that_matters = within[within.len() - MODIFICATIONS_PER_DAY];
    Budget::SpentUntil(oldest_that_matters + DAY_SECONDS)
}

/// `recentModifications` with the ones older than 24 hours dropped (and `now` added when a
/// round starts), at most 16 kept as the schema allows.
pub fn prune_recent(recent: &[i64], now: i64, started: bool) -> Vec<i64> {
    let mut out: Vec<i64> = recent
        .iter()
        .copied()
        .filter(|t| now - t < DAY_SECONDS)
        .collect();
    if started {
        out.push(now);
    }
    out.sort_unstable();
    let skip = out.len().saturating_sub(16);
    out.split_off(skip)
}

/// The controller's fields of `status.volumes[index]` from what EC2 reports (the member's
/// generation and replaced volume are the caller's to fill in).
pub fn volume_status(
    index: usize,
    v: &Volume,
    instance_id: &str,
    modification: Option<VolumeModification>,
) -> VolumeStatus {
    let ours = v
        .attachments
        .iter()
        .find(|a| a.instance_id == instance_id && a.state != AttachmentState::Detached);
    VolumeStatus {
        index: index as i32,
        volume_id: Some(v.volume_id.clone()),
        availability_zone: Some(v.availability_zone.clone()).filter(|s| !s.is_empty()),
        state: Some(v.state.as_str().to_string()).filter(|s| !s.is_empty()),
        attachment_state: Some(
            ours.map_or(ApiAttachmentState::Detached, |a| attachment(a.state))
                .as_str()
                .to_string(),
        ),
        volume_type: Some(v.volume_type.clone()).filter(|s| !s.is_empty()),
        size_gib: Some(i64::from(v.size_gib)),
        iops: v.iops.map(i64::from),
        throughput_mibps: v.throughput_mibps.map(i64::from),
        modification,
        device: None,
        member_state: None,
        member_volume_id: None,
        generation: 0,
        replaced_volume_id: None,
    }
}

/// EC2's attachment state as the status says it.
pub fn attachment(s: AttachmentState) -> ApiAttachmentState {
    match s {
        AttachmentState::Attaching => ApiAttachmentState::Attaching,
        AttachmentState::Attached => ApiAttachmentState::Attached,
        AttachmentState::Detaching => ApiAttachmentState::Detaching,
        AttachmentState::Detached => ApiAttachmentState::Detached,
        AttachmentState::Busy => ApiAttachmentState::Busy,
        AttachmentState::Unknown => ApiAttachmentState::Unknown,
    }
}

/// A modification in flight is `completed` once EC2 reports the targets it asked for.
pub fn settle_modification(m: &VolumeModification, v: &Volume) -> VolumeModification {
    if !m.is_modifying() {
        return m.clone();
    }
    let reached = m.target_size_gib.is_none_or(|t| i64::from(v.size_gib) >= t)
        && m.target_iops
            .is_none_or(|t| v.iops.is_some_and(|i| i64::from(i) >= t))
        && m.target_throughput_mibps
            .is_none_or(|t| v.throughput_mibps.is_some_and(|i| i64::from(i) >= t));
    let mut out = m.clone();
    if reached {
        out.state = ModificationState::Completed.as_str().into();
        out.progress = Some(100);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::zfspool::fixtures::vol;
    use pgml_aws::Attachment;

    fn spec(yaml: &str) -> EbsVolumes {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn pool_ref(v: &EbsVolumes) -> PoolRef<'_> {
        PoolRef {
            uid: "uid-1",
            namespace: "db",
            name: "tank",
            volumes: v,
            installation: "prod-a",
        }
    }

    #[test]
    fn only_a_volume_tagged_for_this_pool_by_the_operator_of_this_installation_is_ours() {
        let v = spec("sizeGiB: 10");
        let tagged = |tags: BTreeMap<String, String>| Volume {
            tags,
            ..crate::zfspool::fixtures::vol("vol-1", 0, "available")
        };
        let ours = tagged(volume_tags(&pool_ref(&v), 0));
        assert!(is_ours(&ours, "uid-1", "prod-a"));
        assert!(!is_ours(&ours, "uid-2", "prod-a"), "another pool's");
        assert!(
            !is_ours(&ours, "uid-1", "prod-b"),
            "another installation's, of the same pool UID"
        );
        let mut unmanaged = ours.tags.clone();
        unmanaged.remove(keys::MANAGED_BY);
        assert!(
            !is_ours(&tagged(unmanaged), "uid-1", "prod-a"),
            "not made by the operator"
        );
        let mut old = ours.tags.clone();
        old.remove(keys::INSTALLATION);
        assert_eq!(
            ownership(&tagged(old), "uid-1", "prod-a"),
            Ownership::Unadopted,
            "made before installation tagging: not ours until adopted"
        );
        assert!(
            !is_ours(&tagged(BTreeMap::new()), "uid-1", "prod-a"),
            "no tags"
        );
    }

    #[test]
    fn tags_follow_the_contract_and_keep_user_tags() {
        let v = spec("sizeGiB: 10\ntags: {team: data}");
        let tags = volume_tags(&pool_ref(&v), 2);
        let want: BTreeMap<String, String> = [
            ("pgml.io/managed-by", "pgml-operator"),
            ("pgml.io/installation", "prod-a"),
            ("pgml.io/namespace", "db"),
            ("pgml.io/pool", "tank"),
            ("pgml.io/pool-uid", "uid-1"),
            ("pgml.io/member-index", "2"),
            ("Name", "db/tank-2"),
            ("team", "data"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(tags, want);
        assert_eq!(
            pool_filter("uid-1"),
            vec![("pgml.io/pool-uid".to_string(), "uid-1".to_string())]
        );
    }

    #[test]
    fn tokens_are_per_uid_installation_index_and_member_generation() {
        let a = volume_token("uid-1", "prod-a", 0, 0);
        assert_eq!(a, volume_token("uid-1", "prod-a", 0, 0));
        assert_eq!(a, pgml_aws::client_token(&["uid-1", "prod-a", "0", "0"]));
        assert_ne!(a, volume_token("uid-1", "prod-a", 1, 0));
        assert_ne!(a, volume_token("uid-1", "prod-a", 0, 1));
        assert_ne!(a, volume_token("uid-2", "prod-a", 0, 0));
        // Another installation's pool of the same UID makes its own volume.
        assert_ne!(a, volume_token("uid-1", "prod-b", 0, 0));
    }

    #[test]
    fn create_requests_carry_spec_zone_token_and_tags() {
        let gp3 = spec("sizeGiB: 50\niops: 6000\nthroughputMiBps: 250");
        let r = create_request(&pool_ref(&gp3), 3, 0, "us-east-1b");
        assert_eq!(r.availability_zone, "us-east-1b");
        assert_eq!(r.volume_type, VolumeType::Gp3);
        assert_eq!(
            (r.size_gib, r.iops, r.throughput_mibps),
            (50, Some(6000), Some(250))
        );
        assert!(r.encrypted);
        assert_eq!(r.client_token, volume_token("uid-1", "prod-a", 3, 0));
        assert_eq!(r.tags["pgml.io/member-index"], "3");

        let baseline = create_request(&pool_ref(&spec("sizeGiB: 10")), 0, 0, "z");
        // A replacement: the next generation's token, the same tags.
        let second = create_request(&pool_ref(&gp3), 3, 1, "us-east-1b");
        assert_eq!(second.client_token, volume_token("uid-1", "prod-a", 3, 1));
        assert_eq!(second.tags, r.tags);
        assert_eq!((baseline.iops, baseline.throughput_mibps), (None, None));

        let io2 = create_request(
            &pool_ref(&spec("type: io2\nsizeGiB: 100\niops: 20000")),
            0,
            0,
            "z",
        );
        assert_eq!(io2.volume_type, VolumeType::Io2);
        assert_eq!((io2.iops, io2.throughput_mibps), (Some(20000), None));
    }

    #[test]
    fn members_are_sorted_by_index_tag_and_duplicates_are_extra() {
        let found = vec![
            vol("vol-b", Some(1), "available"),
            vol("vol-a", Some(0), "in-use"),
            vol("vol-c", Some(1), "available"),
            vol("vol-d", Some(7), "available"),
            vol("vol-e", Some(2), "deleting"),
            vol("vol-f", None, "available"),
        ];
        let m = sort_members(&found, 3, &[]);
        let ids: Vec<Option<&str>> = m
            .slots
            .iter()
            .map(|s| s.as_ref().map(|v| v.volume_id.as_str()))
            .collect();
        assert_eq!(ids, vec![Some("vol-a"), Some("vol-b"), None]);
        let extra: Vec<&str> = m.extra.iter().map(|v| v.volume_id.as_str()).collect();
        assert_eq!(extra, vec!["vol-c", "vol-d", "vol-f"]);
    }

    fn recorded(i: i32, id: Option<&str>, replaced: Option<&str>) -> VolumeStatus {
        VolumeStatus {
            index: i,
            volume_id: id.map(str::to_string),
            replaced_volume_id: replaced.map(str::to_string),
            generation: i32::from(replaced.is_some()),
            ..Default::default()
        }
    }

    #[test]
    fn recorded_volumes_keep_their_slot_and_replaced_ones_retire() {
        // Member 1 was replaced: vol-a (failed) retired, vol-z recorded; both carry index 1.
        let found = vec![
            vol("vol-a", Some(1), "error"),
            vol("vol-b", Some(0), "in-use"),
            vol("vol-z", Some(1), "available"),
        ];
        let rec = [
            recorded(0, Some("vol-b"), None),
            recorded(1, Some("vol-z"), Some("vol-a")),
        ];
        let m = sort_members(&found, 2, &rec);
        let ids: Vec<Option<&str>> = m
            .slots
            .iter()
            .map(|s| s.as_ref().map(|v| v.volume_id.as_str()))
            .collect();
        assert_eq!(ids, vec![Some("vol-b"), Some("vol-z")]);
        assert_eq!(m.retired.len(), 1);
        assert_eq!(
            (m.retired[0].0, m.retired[0].1.volume_id.as_str()),
            (1, "vol-a")
        );
        assert!(m.extra.is_empty());

        // A crash between CreateVolume and recording it: status names no volume for member
        // 1, so the replacement found by its tag takes the slot (its token would return it).
        let rec = [
            recorded(0, Some("vol-b"), None),
            recorded(1, None, Some("vol-a")),
        ];
        let m = sort_members(&found, 2, &rec);
        assert_eq!(
            m.slots[1].as_ref().map(|v| v.volume_id.as_str()),
            Some("vol-z")
        );
        assert_eq!(m.retired.len(), 1);

        // Status names vol-a as member 1 (before any replacement): vol-z is extra.
        let rec = [
            recorded(0, Some("vol-b"), None),
            recorded(1, Some("vol-a"), None),
        ];
        let m = sort_members(&found, 2, &rec);
        assert_eq!(
            m.slots[1].as_ref().map(|v| v.volume_id.as_str()),
            Some("vol-a")
        );
        assert_eq!(m.extra.len(), 1);
    }

    #[test]
    fn attach_steps() {
        let mut v = vol("vol-a", Some(0), "available");
        assert_eq!(attach_step(&v, "i-1"), AttachStep::Attach);
        v.state = "creating".into();
        assert_eq!(
            attach_step(&v, "i-1"),
            AttachStep::NotReady("creating".into())
        );
        v.state = "in-use".into();
        v.attachments = vec![Attachment {
            instance_id: "i-1".into(),
            device: "/dev/xvdba".into(),
            state: AttachmentState::Attaching,
        }];
        assert_eq!(
            attach_step(&v, "i-1"),
            AttachStep::InProgress(AttachmentState::Attaching)
        );
        v.attachments[0].state = AttachmentState::Attached;
        assert_eq!(attach_step(&v, "i-1"), AttachStep::Attached);
        assert_eq!(attach_step(&v, "i-2"), AttachStep::Elsewhere("i-1".into()));
    }

    #[test]
    fn free_attachments_exclude_our_members() {
        let instance = Instance {
            instance_id: "i-1".into(),
            availability_zone: "us-east-1a".into(),
            instance_type: "m7i.large".into(),
            state: "running".into(),
            block_devices: [("/dev/xvda", "vol-root"), ("/dev/xvdba", "vol-a")]
                .iter()
                .map(|(d, v)| (d.to_string(), v.to_string()))
                .collect(),
            root_device_name: Some("/dev/xvda".into()),
        };
        let m = sort_members(&[vol("vol-a", Some(0), "in-use")], 4, &[]);
        assert_eq!(free_attachments(Some(32), &instance, &m), Some(31));
        assert_eq!(free_attachments(None, &instance, &m), None);
    }

    #[test]
    fn growth_only_raises_what_is_below_spec() {
        let v = vol("vol-a", Some(0), "in-use");
        assert_eq!(growth(&v, &spec("sizeGiB: 100")), None);
        assert_eq!(
            growth(&v, &spec("sizeGiB: 200\niops: 3000")),
            Some(ModifyVolume {
                volume_id: "vol-a".into(),
                size_gib: Some(200),
                iops: None,
                throughput_mibps: None
            })
        );
        assert_eq!(
            growth(&v, &spec("sizeGiB: 100\niops: 6000\nthroughputMiBps: 500")),
            Some(ModifyVolume {
                volume_id: "vol-a".into(),
                size_gib: None,
                iops: Some(6000),
                throughput_mibps: Some(500)
            })
        );
        // Larger than the spec (grown by hand): left alone.
        assert_eq!(growth(&v, &spec("sizeGiB: 50")), None);
    }

    #[test]
    fn budget_allows_four_rounds_per_rolling_day() {
        let now = 100 * DAY_SECONDS;
        assert_eq!(modification_budget(&[], now), Budget::Available { left: 4 });
        let three = [now - 3600, now - 7200, now - 10_000];
        assert_eq!(
            modification_budget(&three, now),
            Budget::Available { left: 1 }
        );
        let four = [now - 3600, now - 7200, now - 10_000, now - 20_000];
        assert_eq!(
            modification_budget(&four, now),
            Budget::SpentUntil(now - 20_000 + DAY_SECONDS)
        );
        // Rounds older than a day no longer count.
        let old = [now - DAY_SECONDS - 1, now - 1, now - 2, now - 3];
        assert_eq!(
            modification_budget(&old, now),
            Budget::Available { left: 1 }
        );
        assert_eq!(
            prune_recent(&old, now, true),
            vec![now - 3, now - 2, now - 1, now]
        );
    }

    #[test]
    fn volume_status_reports_our_attachment_and_settles_modifications() {
        let mut v = vol("vol-a", Some(0), "in-use");
        v.attachments = vec![Attachment {
            instance_id: "i-1".into(),
            device: "/dev/xvdba".into(),
            state: AttachmentState::Attached,
        }];
        let s = volume_status(0, &v, "i-1", None);
        assert_eq!(s.attachment_state.as_deref(), Some("attached"));
        assert_eq!(s.volume_id.as_deref(), Some("vol-a"));
        assert_eq!((s.size_gib, s.iops), (Some(100), Some(3000)));
        assert_eq!(
            volume_status(0, &v, "i-2", None)
                .attachment_state
                .as_deref(),
            Some("detached")
        );

        let m = VolumeModification {
            state: "modifying".into(),
            target_size_gib: Some(200),
            ..Default::default()
        };
        assert_eq!(settle_modification(&m, &v).state, "modifying");
        v.size_gib = 200;
        assert_eq!(settle_modification(&m, &v).state, "completed");
    }

    #[test]
    fn restored_members_come_from_their_own_snapshot() {
        let snap: pgml_api::EbsSnapshot = serde_yaml::from_str(
            r#"
apiVersion: pgml.io/v1alpha1
kind: EbsSnapshot
metadata: {name: nightly}
spec: {source: {zfsPool: {name: tank}}}
status:
  phase: Completed
  snapshots:
  - {memberIndex: 1, snapshotId: snap-b}
  - {memberIndex: 0, snapshotId: snap-a}
"#,
        )
        .unwrap();
        let m = restore_sources(&snap, 2).unwrap();
        assert_eq!(m[&0], "snap-a");
        assert_eq!(m[&1], "snap-b");
        let e = restore_sources(&snap, 3).unwrap_err();
        assert!(e.contains("member 2"), "{e}");

        let v = spec("{count: 2, type: gp3, sizeGiB: 10}");
        let req = restored(
            create_request(&pool_ref(&v), 1, 0, "us-east-1c"),
            &m[&1],
            Some(200),
        );
        assert_eq!(req.snapshot_id.as_deref(), Some("snap-b"));
        assert_eq!(req.volume_initialization_rate_mibps, Some(200));
        assert_eq!(req.availability_zone, "us-east-1c");
        // Same token as any first volume of that member: a repeated create is the same one.
        assert_eq!(req.client_token, volume_token("uid-1", "prod-a", 1, 0));
        assert_eq!(req.tags[keys::MEMBER_INDEX], "1");
    }
}
