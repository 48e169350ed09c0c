//! Which of the volumes found for the pool may be its members. The tag search returns every
//! volume tagged with the pool's UID, and volumes status names are looked up by ID; neither
//! makes a volume a member: its own tags do ([`crate::runtime::ownership`]), as for every
//! detach and delete.
//!
//! - **Ours** (the pool's UID, pgml-operator, this installation): sorted into the member
//!   slots, then attached, grown and counted.
//! - **Not ours** (another installation's — a cluster restored from this one's backup has
//!   pools of the same UIDs — or not made by pgml-operator): left alone entirely, as if EC2
//!   did not have it, with a Warning `NotOurs`. The pool makes its own member (its ClientToken
//!   names this installation: EC2 does not answer with theirs); a member whose recorded volume
//!   turns out not ours is lost, like one whose volume is gone, and repaired as the spec says.
//! - **Unadopted** (the pool's UID and pgml-operator, no installation tag: made before the
//!   operator tagged its installation, so most likely this pool's member, but another
//!   installation could have made it as well): not attached or counted, and not made again
//!   either — a second volume for the member would duplicate its storage, and a pool whose
//!   members are uncertain should not change. While one holds a member's slot the pool waits
//!   ([`await_adoption`]: Ready False, reason `InstallationTagMissing`, with the command that
//!   adopts it); one that holds no slot only gets the Warning.
//!
//! A volume status records as replaced is kept whatever its tags: the retire checks it
//! before any detach or delete ([`super::replace::retirements`]) and warns itself.

use pgml_api::zfspool::VolumeStatus;
use pgml_aws::Volume;

use super::Halt;
use crate::runtime::Requeue;
use crate::runtime::ownership::{self, Ownership, reason};
use crate::zfspool::build::{self, Members};

/// The volumes found, sorted by their tags.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    /// What may be sorted into the member slots: ours and the unadopted (which hold their
    /// slot: the pool then waits), and those status records as replaced (for the retire).
    pub kept: Vec<Volume>,
    /// The live volumes left alone, for the Warnings: (volume ID, why).
    pub left_alone: Vec<(String, Ownership)>,
}

impl Found {
    /// Adds what a second look found (the volumes looked up by ID), each volume named
    /// once.
    pub fn extend(&mut self, more: Found) {
        self.kept.extend(more.kept);
        for (id, o) in more.left_alone {
            if !self.left_alone.iter().any(|(seen, _)| *seen == id) {
                self.left_alone.push((id, o));
            }
        }
    }
}

/// Sorts `volumes` by their tags for the pool of `uid` in `installation`; `recorded` is
/// the status's volumes (a volume it records as replaced is kept for the retire). A volume
/// not ours is dropped; one already gone is not warned about.
pub fn sort(
    volumes: Vec<Volume>,
    uid: &str,
    installation: &str,
    recorded: &[VolumeStatus],
) -> Found {
    let replaced = |id: &str| {
        recorded.iter().any(|r| {
            r.replaced_volume_id.as_deref() == Some(id) && r.volume_id.as_deref() != Some(id)
        })
    };
    let mut found = Found::default();
    for v in volumes {
        let o = build::ownership(&v, uid, installation);
        if o == Ownership::Ours || replaced(&v.volume_id) {
            found.kept.push(v);
            continue;
        }
        if !v.state.is_gone() {
            found.left_alone.push((v.volume_id.clone(), o.clone()));
        }
        if o == Ownership::Unadopted {
            found.kept.push(v);
        }
    }
    found
}

/// The members whose slot holds a volume without the installation tag: (member, volume
/// ID). `owner` is [`build::ownership`] for the pool.
pub fn unadopted(members: &Members, owner: impl Fn(&Volume) -> Ownership) -> Vec<(usize, String)> {
    members
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, v.as_ref()?)))
        .filter(|(_, v)| owner(v) == Ownership::Unadopted)
        .map(|(i, v)| (i, v.volume_id.clone()))
        .collect()
}

/// The pool waits while a member's volume has no installation tag: nothing is created,
/// attached or grown, nothing detached; looked at again slowly (an administrator adds the
/// tag).
pub fn await_adoption(
    unadopted: &[(usize, String)],
    installation: &str,
    r: &Requeue,
) -> Option<Halt> {
    if unadopted.is_empty() {
        return None;
    }
    let members: Vec<String> = unadopted
        .iter()
        .map(|(i, id)| format!("member {i} ({id})"))
        .collect();
    let ids: Vec<&str> = unadopted.iter().map(|(_, id)| id.as_str()).collect();
    Some(Halt {
        spec_error: None,
        reason: reason::INSTALLATION_TAG_MISSING,
        message: format!(
            "the volume(s) of {} have no {} tag (made before the operator tagged its \
             installation): the pool neither attaches them nor makes other volumes for \
             those members until an administrator adopts them, if they are this \
             installation's: {}",
            members.join(", "),
            pgml_api::common::keys::INSTALLATION,
            ownership::adopt_command(&ids, installation)
        ),
        requeue: Some(r.ready),
    })
}

/// The Warnings for what was left alone, one per reason.
pub fn warnings(found: &Found, installation: &str) -> Vec<(&'static str, String)> {
    ownership::left_alone("volume", &found.left_alone, installation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfspool::fixtures::*;
    use pgml_api::common::keys;
    use pgml_aws::VolumeState;
    use std::time::Duration;

    const R: Requeue = Requeue {
        ready: Duration::from_secs(60),
        progress: Duration::from_secs(5),
    };

    /// Member `index`'s volume `id` tagged for pool `uid-1` by `installation` (`None`:
    /// no installation tag), `state`.
    fn tagged(id: &str, index: usize, installation: Option<&str>, state: VolumeState) -> Volume {
        let mut v = vol(id, index, state);
        v.tags.insert(keys::POOL_UID.into(), "uid-1".into());
        v.tags
            .insert(keys::MANAGED_BY.into(), keys::MANAGED_BY_VALUE.into());
        if let Some(i) = installation {
            v.tags.insert(keys::INSTALLATION.into(), i.into());
        }
        v
    }

    fn ids(vs: &[Volume]) -> Vec<&str> {
        vs.iter().map(|v| v.volume_id.as_str()).collect()
    }

    fn replaced(index: i32, current: &str, old: &str) -> VolumeStatus {
        VolumeStatus {
            index,
            volume_id: Some(current.into()),
            replaced_volume_id: Some(old.into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_ours_and_unadopted_ones_may_fill_a_slot_and_the_rest_are_named() {
        let found = vec![
            tagged("vol-ours", 0, Some("prod-a"), VolumeState::InUse),
            tagged("vol-theirs", 1, Some("prod-b"), VolumeState::Available),
            tagged("vol-old", 2, None, VolumeState::Available),
            // Another installation's, being deleted: dropped without a word.
            tagged("vol-gone", 3, Some("prod-b"), VolumeState::Deleting),
            // Not made by the operator at all.
            vol("vol-user", 3, VolumeState::Available),
        ];
        let f = sort(found, "uid-1", "prod-a", &[]);
        assert_eq!(ids(&f.kept), ["vol-ours", "vol-old"]);
        let named: Vec<(&str, bool)> = f
            .left_alone
            .iter()
            .map(|(id, o)| (id.as_str(), *o == Ownership::Unadopted))
            .collect();
        assert_eq!(
            named,
            [
                ("vol-theirs", false),
                ("vol-old", true),
                ("vol-user", false)
            ]
        );
        let w = warnings(&f, "prod-a");
        let reasons: Vec<&str> = w.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            reasons,
            [
                reason::INSTALLATION_TAG_MISSING,
                ownership::reason::NOT_OURS
            ]
        );
        assert!(w[0].1.contains("vol-old"), "{}", w[0].1);
        assert!(
            w[1].1
                .contains("vol-theirs (tagged pgml.io/installation=prod-b"),
            "{}",
            w[1].1
        );
    }

    #[test]
    fn a_volume_status_records_as_replaced_is_kept_for_the_retire_to_check() {
        let recorded = [replaced(1, "vol-new", "vol-theirs")];
        let found = vec![
            tagged("vol-new", 1, Some("prod-a"), VolumeState::InUse),
            tagged("vol-theirs", 1, Some("prod-b"), VolumeState::InUse),
        ];
        let f = sort(found, "uid-1", "prod-a", &recorded);
        assert_eq!(ids(&f.kept), ["vol-new", "vol-theirs"]);
        assert!(f.left_alone.is_empty(), "the retire warns: {f:?}");
        let m = build::sort_members(&f.kept, 2, &recorded);
        assert_eq!(m.retired.len(), 1);
        assert_eq!(m.retired[0].1.volume_id, "vol-theirs");
    }

    #[test]
    fn a_volume_named_by_both_looks_is_warned_about_once() {
        let theirs = || tagged("vol-theirs", 0, Some("prod-b"), VolumeState::Available);
        let mut f = sort(vec![theirs()], "uid-1", "prod-a", &[]);
        f.extend(sort(
            vec![
                theirs(),
                tagged("vol-x", 1, Some("prod-c"), VolumeState::InUse),
            ],
            "uid-1",
            "prod-a",
            &[],
        ));
        let named: Vec<&str> = f.left_alone.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(named, ["vol-theirs", "vol-x"]);
    }

    #[test]
    fn a_slot_held_by_an_unadopted_volume_makes_the_pool_wait_with_the_command() {
        let found = vec![
            tagged("vol-a", 0, Some("prod-a"), VolumeState::InUse),
            tagged("vol-b", 1, None, VolumeState::InUse),
            // A second volume for member 0, unadopted: in no slot, only warned about.
            tagged("vol-c", 0, None, VolumeState::Available),
        ];
        let f = sort(found, "uid-1", "prod-a", &[]);
        let recorded = [VolumeStatus {
            index: 0,
            volume_id: Some("vol-a".into()),
            ..Default::default()
        }];
        let m = build::sort_members(&f.kept, 3, &recorded);
        let owner = |v: &Volume| build::ownership(v, "uid-1", "prod-a");
        let waiting = unadopted(&m, owner);
        assert_eq!(waiting, [(1, "vol-b".to_string())]);
        assert_eq!(ids(&m.extra), ["vol-c"]);
        let h = await_adoption(&waiting, "prod-a", &R).unwrap();
        assert_eq!(
            (h.spec_error, h.reason, h.requeue),
            (None, reason::INSTALLATION_TAG_MISSING, Some(R.ready))
        );
        assert!(
            h.message
                .starts_with("the volume(s) of member 1 (vol-b) have no pgml.io/installation tag"),
            "{}",
            h.message
        );
        assert!(
            h.message.ends_with(
                "aws ec2 create-tags --resources vol-b --tags Key=pgml.io/installation,Value=prod-a"
            ),
            "{}",
            h.message
        );
        let s = h.status(&Default::default(), Some(1), &t(1));
        assert_eq!(s.phase, Some(pgml_api::zfspool::PoolPhase::Pending));
        // Adopted: nothing to wait for.
        let mut adopted = m;
        adopted.slots[1]
            .as_mut()
            .unwrap()
            .tags
            .insert(keys::INSTALLATION.into(), "prod-a".into());
        assert!(unadopted(&adopted, owner).is_empty());
        assert_eq!(await_adoption(&[], "prod-a", &R), None);
    }
}
