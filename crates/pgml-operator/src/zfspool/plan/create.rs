//! Creating members: which members get a CreateVolume (side by side, in index order),
//! with which request, and what each answer records. A member's request carries its
//! generation's ClientToken, so a repeat after a crash returns the volume made before.

use std::collections::BTreeMap;

use pgml_api::zfspool::VolumeStatus;
use pgml_aws::{CreateVolume, Volume};

use super::entry_mut;
use crate::zfspool::build::{self, Members, PoolRef};
use crate::zfspool::restore::Restore;

/// One CreateVolume: member `index`, its generation and the volume it replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    pub index: usize,
    pub generation: i32,
    pub replaced: Option<String>,
    pub request: CreateVolume,
}

/// The members to create: those without a volume that are not lost (a lost member is
/// replaced only once its next generation is recorded), in index order, in the instance's
/// zone `az`. A member's first volume comes from its snapshot when the pool is restored;
/// a replacement starts empty (it is resilvered).
pub fn missing(
    pool: &PoolRef,
    members: &Members,
    gone: &BTreeMap<usize, String>,
    recorded: &[VolumeStatus],
    az: &str,
    restore: Option<&Restore>,
) -> Vec<Create> {
    (0..members.slots.len())
        .filter(|i| members.slots[*i].is_none() && !gone.contains_key(i))
        .map(|i| {
            let (generation, replaced) = recorded
                .iter()
                .find(|v| v.index == i as i32)
                .map_or((0, None), |v| (v.generation, v.replaced_volume_id.clone()));
            let mut request = build::create_request(pool, i, generation.max(0) as u32, az);
            if let Some(r) = restore.filter(|_| generation == 0) {
                request = build::restored(request, &r.sources[&i], r.rate_mibps);
            }
            Create {
                index: i,
                generation,
                replaced,
                request,
            }
        })
        .collect()
}

/// Records the volume EC2 answered `c` with: the member's status entry (keeping its
/// generation and replaced volume) and its slot.
pub fn record(
    volumes: &mut Vec<VolumeStatus>,
    members: &mut Members,
    instance_id: &str,
    c: &Create,
    v: Volume,
) {
    *entry_mut(volumes, c.index) = VolumeStatus {
        generation: c.generation,
        replaced_volume_id: c.replaced.clone(),
        ..build::volume_status(c.index, &v, instance_id, None)
    };
    members.slots[c.index] = Some(v);
}

/// One volume of the `VolumeCreated` Event: "vol-… (10 GiB gp3) as member 1 from snapshot
/// snap-…, replacing vol-…".
pub fn note(c: &Create, v: &Volume) -> String {
    let req = &c.request;
    format!(
        "{} ({} GiB {}) as member {}{}{}",
        v.volume_id,
        req.size_gib,
        req.volume_type.as_str(),
        c.index,
        req.snapshot_id
            .as_deref()
            .map_or(String::new(), |s| format!(" from snapshot {s}")),
        c.replaced
            .as_deref()
            .map_or(String::new(), |old| format!(", replacing {old}"))
    )
}

/// The `VolumeCreated` Event.
pub fn event(notes: &[String], az: &str) -> String {
    format!("created {} in {az}", notes.join(", "))
}

/// Of the members just created, those EC2 still shows `creating` (member, volume ID):
/// looked at a few times before they are attached.
pub fn still_creating(members: &Members, created: &[usize]) -> Vec<(usize, String)> {
    created
        .iter()
        .filter_map(|&i| members.slots[i].as_ref().map(|v| (i, v)))
        .filter(|(_, v)| v.state == pgml_aws::VolumeState::Creating)
        .map(|(i, v)| (i, v.volume_id.clone()))
        .collect()
}
