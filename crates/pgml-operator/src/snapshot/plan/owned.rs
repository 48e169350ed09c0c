//! Which EBS snapshots are the object's to delete: each one's own tags must name the
//! object's UID, pgml-operator and this installation ([`crate::runtime::ownership`]). A
//! snapshot status names but the tag search did not return is looked up by ID and checked
//! the same way: nothing is deleted on the word of status alone.

use std::collections::BTreeSet;

use pgml_api::common::keys;
use pgml_api::snapshot::MemberSnapshot;
use pgml_aws::Snapshot;

use super::{SnapRef, state};
use crate::runtime::ownership::{self, Ownership};

/// What EC2 has of the object, sorted by each snapshot's own tags.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// The operator's to delete.
    pub ours: Vec<Snapshot>,
    /// The object's UID and made by pgml-operator, but no installation tag (made before
    /// the operator wrote one): left alone until an administrator adopts them.
    pub unadopted: Vec<String>,
    /// The Warning (reason, note) of each snapshot left alone.
    pub left_alone: Vec<(&'static str, String)>,
}

/// Sorts `found` by its tags. A snapshot already deleted is neither ours nor reported.
pub fn sort_owned(found: Vec<Snapshot>, id: &SnapRef) -> Owned {
    let mut out = Owned::default();
    let mut left = Vec::new();
    for s in found {
        let o = ownership::ownership(&s.tags, keys::SNAPSHOT_UID, &id.uid, &id.installation);
        if o == Ownership::Ours {
            out.ours.push(s);
        } else if s.state != state::DELETED {
            if o == Ownership::Unadopted {
                out.unadopted.push(s.snapshot_id.clone());
            }
            left.push((s.snapshot_id, o));
        }
    }
    out.left_alone = ownership::left_alone("snapshot", &left, &id.installation);
    out
}

/// The snapshot IDs status records that the tag search did not return (a new one EC2 does
/// not list by tag yet, or one whose tags were changed): to look up by ID and check.
pub fn unlisted(found: &[Snapshot], members: &[MemberSnapshot]) -> Vec<String> {
    let listed: BTreeSet<&str> = found.iter().map(|s| s.snapshot_id.as_str()).collect();
    let mut ids: Vec<String> = members
        .iter()
        .filter_map(|m| m.snapshot_id.clone())
        .filter(|id| !listed.contains(id.as_str()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Everything of the object's to delete: each of `ours` once, sorted.
pub fn to_delete(ours: &[Snapshot]) -> Vec<String> {
    let mut ids: Vec<String> = ours.iter().map(|s| s.snapshot_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// What deletion waits for while snapshots of the object have no installation tag.
pub fn waiting_for_adoption(unadopted: &[String], installation: &str) -> String {
    format!(
        "waiting for snapshot(s) {} of this object, made before the operator tagged its \
         installation, to be adopted (aws ec2 create-tags --resources {} --tags Key={},Value={}) \
         or the finalizer removed by hand",
        unadopted.join(", "),
        unadopted.join(" "),
        keys::INSTALLATION,
        installation
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{captured, snap, snap_ref};
    use super::*;

    fn tagged(id: &str, uid: &str, installation: Option<&str>) -> Snapshot {
        let mut s = snap(id, "vol-0", "completed", 1);
        s.tags = [
            (keys::SNAPSHOT_UID, uid),
            (keys::MANAGED_BY, keys::MANAGED_BY_VALUE),
        ]
        .into_iter()
        .chain(installation.map(|i| (keys::INSTALLATION, i)))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        s
    }

    #[test]
    fn only_snapshots_tagged_for_this_object_and_installation_are_ours() {
        let id = snap_ref();
        let mut gone = tagged("snap-gone", "u-1", Some("prod-b"));
        gone.state = state::DELETED.into();
        let mut unmanaged = tagged("snap-unmanaged", "u-1", Some("prod-a"));
        unmanaged.tags.remove(keys::MANAGED_BY);
        let found = vec![
            tagged("snap-ours", "u-1", Some("prod-a")),
            tagged("snap-old", "u-1", None),
            tagged("snap-theirs", "u-1", Some("prod-b")),
            tagged("snap-other-object", "u-2", Some("prod-a")),
            unmanaged,
            gone,
        ];
        let o = sort_owned(found, &id);
        let ours: Vec<&str> = o.ours.iter().map(|s| s.snapshot_id.as_str()).collect();
        assert_eq!(ours, ["snap-ours"]);
        assert_eq!(o.unadopted, ["snap-old"]);
        let reasons: Vec<&str> = o.left_alone.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            reasons,
            [
                ownership::reason::INSTALLATION_TAG_MISSING,
                ownership::reason::NOT_OURS
            ]
        );
        assert!(o.left_alone[0].1.contains(
            "aws ec2 create-tags --resources snap-old --tags Key=pgml.io/installation,Value=prod-a"
        ));
        for s in ["snap-theirs", "snap-other-object", "snap-unmanaged"] {
            assert!(o.left_alone[1].1.contains(s), "{}", o.left_alone[1].1);
        }
        assert_eq!(to_delete(&o.ours), ["snap-ours"]);
    }

    #[test]
    fn status_ids_the_tag_search_missed_are_looked_up_not_deleted_blindly() {
        let m = captured(3);
        let found = vec![snap("snap-1", "vol-1", "completed", 1)];
        assert_eq!(unlisted(&found, &m), ["snap-0", "snap-2"]);
        assert!(unlisted(&found, &[]).is_empty());
        // An ID status names that EC2 does not have (or does not tag as ours) is not in
        // `ours`, so nothing deletes it.
        assert!(to_delete(&sort_owned(found, &snap_ref()).ours).is_empty());
        let twice = vec![
            tagged("snap-b", "u-1", Some("prod-a")),
            tagged("snap-a", "u-1", Some("prod-a")),
            tagged("snap-b", "u-1", Some("prod-a")),
        ];
        assert_eq!(to_delete(&twice), ["snap-a", "snap-b"]);
        let why = waiting_for_adoption(&["snap-a".into(), "snap-b".into()], "prod-a");
        assert!(
            why.contains("snap-a, snap-b")
                && why.contains(
                    "--resources snap-a snap-b --tags Key=pgml.io/installation,Value=prod-a"
                ),
            "{why}"
        );
    }
}
