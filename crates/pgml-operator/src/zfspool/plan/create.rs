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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfspool::fixtures::*;
    use pgml_api::EbsVolumes;
    use pgml_api::common::keys;
    use pgml_aws::VolumeState;

    fn spec() -> EbsVolumes {
        serde_yaml::from_str("{count: 4, sizeGiB: 10}").unwrap()
    }

    fn pool(v: &EbsVolumes) -> PoolRef<'_> {
        PoolRef {
            uid: "uid-1",
            namespace: "db",
            name: "tank",
            volumes: v,
            installation: "prod-a",
        }
    }

    fn recorded(index: i32, generation: i32, replaced: Option<&str>) -> VolumeStatus {
        VolumeStatus {
            index,
            generation,
            replaced_volume_id: replaced.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn empty_slots_are_created_in_order_except_lost_members() {
        let v = spec();
        let m = members(vec![
            Some(vol("vol-0", 0, VolumeState::InUse)),
            None,
            None,
            None,
        ]);
        // Member 2's volume is gone: it waits for its replacement to be recorded.
        let gone = BTreeMap::from([(2, "vol-2".to_string())]);
        // Member 3 is a recorded replacement (generation 2) not created yet.
        let rec = [recorded(3, 2, Some("vol-3"))];
        let c = missing(&pool(&v), &m, &gone, &rec, "us-east-1b", None);
        let made: Vec<(usize, i32, Option<&str>)> = c
            .iter()
            .map(|c| (c.index, c.generation, c.replaced.as_deref()))
            .collect();
        assert_eq!(made, vec![(1, 0, None), (3, 2, Some("vol-3"))]);
        assert_eq!(
            c[0].request,
            build::create_request(&pool(&v), 1, 0, "us-east-1b")
        );
        // The generation's token: a repeat after a crash returns the same volume.
        assert_eq!(
            c[1].request.client_token,
            build::volume_token("uid-1", "prod-a", 3, 2)
        );
        assert_eq!(c[1].request.tags[keys::MEMBER_INDEX], "3");
    }

    #[test]
    fn a_restored_member_comes_from_its_snapshot_and_a_replacement_starts_empty() {
        let v = spec();
        let m = members(vec![None, None]);
        let restore = Restore {
            name: "nightly".into(),
            sources: BTreeMap::from([(0, "snap-a".into()), (1, "snap-b".into())]),
            rate_mibps: Some(200),
        };
        let rec = [recorded(1, 1, Some("vol-1"))];
        let c = missing(&pool(&v), &m, &BTreeMap::new(), &rec, "z", Some(&restore));
        assert_eq!(c[0].request.snapshot_id.as_deref(), Some("snap-a"));
        assert_eq!(c[0].request.volume_initialization_rate_mibps, Some(200));
        assert_eq!(c[1].request.snapshot_id, None);
        assert_eq!(c[1].request.volume_initialization_rate_mibps, None);
    }

    #[test]
    fn an_answer_fills_the_slot_and_keeps_the_members_generation() {
        let v = spec();
        let mut m = members(vec![None, None]);
        let rec = [recorded(1, 1, Some("vol-old"))];
        let mut f = facts(&m);
        f.volumes = rec.to_vec();
        let c = missing(&pool(&v), &m, &BTreeMap::new(), &f.volumes, "z", None);
        for (c, id) in c.iter().zip(["vol-a", "vol-b"]) {
            record(
                &mut f.volumes,
                &mut m,
                INSTANCE,
                c,
                vol(id, c.index, VolumeState::Creating),
            );
        }
        assert_eq!(
            m.slots[1].as_ref().map(|v| v.volume_id.as_str()),
            Some("vol-b")
        );
        let e = entry(&f, 1);
        assert_eq!(
            (
                e.volume_id.as_deref(),
                e.generation,
                e.replaced_volume_id.as_deref()
            ),
            (Some("vol-b"), 1, Some("vol-old"))
        );
        assert_eq!(e.state.as_deref(), Some("creating"));
        assert_eq!(entry(&f, 0).volume_id.as_deref(), Some("vol-a"));
        assert_eq!(
            still_creating(&m, &[0, 1]),
            vec![(0, "vol-a".into()), (1, "vol-b".into())]
        );
        m.slots[0].as_mut().unwrap().state = VolumeState::Available;
        assert_eq!(still_creating(&m, &[0, 1]), vec![(1, "vol-b".into())]);
        assert_eq!(still_creating(&m, &[0]), vec![]);
    }

    #[test]
    fn the_event_names_each_volume_its_source_and_what_it_replaces() {
        let v = spec();
        let m = members(vec![None, None]);
        let rec = [recorded(1, 1, Some("vol-old"))];
        let restore = Restore {
            name: "n".into(),
            sources: BTreeMap::from([(0, "snap-a".into()), (1, "snap-b".into())]),
            rate_mibps: None,
        };
        let c = missing(&pool(&v), &m, &BTreeMap::new(), &rec, "z", Some(&restore));
        let notes = [
            note(&c[0], &vol("vol-a", 0, VolumeState::Creating)),
            note(&c[1], &vol("vol-b", 1, VolumeState::Creating)),
        ];
        assert_eq!(
            notes[0],
            "vol-a (10 GiB gp3) as member 0 from snapshot snap-a"
        );
        assert_eq!(
            notes[1],
            "vol-b (10 GiB gp3) as member 1, replacing vol-old"
        );
        assert_eq!(
            event(&notes, "us-east-1a"),
            "created vol-a (10 GiB gp3) as member 0 from snapshot snap-a, vol-b (10 GiB gp3) as member 1, replacing vol-old in us-east-1a"
        );
    }
}
