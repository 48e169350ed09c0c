//! Whether an EC2 resource is ours to detach or delete, read from its own tags: made by
//! pgml-operator (`pgml.io/managed-by`), for this object (its UID tag), by this
//! installation (`pgml.io/installation`). Status is no proof (the node agent writes status
//! too, and a status can outlive what it names): nothing is detached or deleted unless its
//! tags say all three.

use std::collections::BTreeMap;

use pgml_api::common::keys;

/// Event reasons for what the check leaves alone.
pub mod reason {
    /// Tagged for another object, another installation, or not made by pgml-operator.
    pub const NOT_OURS: &str = "NotOurs";
    /// This object's and made by pgml-operator, but with no installation tag: made before
    /// the operator tagged its installation. Left alone until an administrator adopts it.
    pub const INSTALLATION_TAG_MISSING: &str = "InstallationTagMissing";
}

/// What a resource's tags say about whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This object's, made by this installation: the operator may detach and delete it.
    Ours,
    /// This object's UID and made by pgml-operator, but no `pgml.io/installation` tag (made
    /// before the operator wrote it). Not ours until an administrator adds the tag: another
    /// installation that saw the same UID could have made it just as well.
    Unadopted,
    /// Not ours: why, for the Event.
    NotOurs(String),
}

/// Reads `tags`: `uid_key` must be `uid`, `pgml.io/managed-by` the operator's, and
/// `pgml.io/installation` this `installation`.
pub fn ownership(
    tags: &BTreeMap<String, String>,
    uid_key: &str,
    uid: &str,
    installation: &str,
) -> Ownership {
    let tag = |k: &str| tags.get(k).map(String::as_str);
    match tag(uid_key) {
        Some(v) if v == uid => {}
        Some(other) => return Ownership::NotOurs(format!("tagged {uid_key}={other}, not {uid}")),
        None => return Ownership::NotOurs(format!("it has no {uid_key} tag")),
    }
    if tag(keys::MANAGED_BY) != Some(keys::MANAGED_BY_VALUE) {
        return Ownership::NotOurs(format!(
            "it is not tagged {}={}",
            keys::MANAGED_BY,
            keys::MANAGED_BY_VALUE
        ));
    }
    match tag(keys::INSTALLATION) {
        None => Ownership::Unadopted,
        Some(i) if i == installation => Ownership::Ours,
        Some(other) => Ownership::NotOurs(format!(
            "tagged {}={other}, not this installation's ({installation})",
            keys::INSTALLATION
        )),
    }
}

/// The Warning for a resource the check left alone: (reason, note); `None` for ours.
/// `kind` is `volume` or `snapshot`.
pub fn left_alone(
    kind: &str,
    id: &str,
    o: &Ownership,
    installation: &str,
) -> Option<(&'static str, String)> {
    match o {
        Ownership::Ours => None,
        Ownership::Unadopted => Some((
            reason::INSTALLATION_TAG_MISSING,
            format!(
                "{kind} {id} has no {key} tag (made before the operator tagged its \
                 installation): left alone, not detached or deleted. If it is this \
                 installation's, adopt it: aws ec2 create-tags --resources {id} --tags \
                 Key={key},Value={installation}",
                key = keys::INSTALLATION
            ),
        )),
        Ownership::NotOurs(why) => Some((
            reason::NOT_OURS,
            format!("{kind} {id} is not ours to touch ({why}): left alone"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const UID: (&str, &str) = (keys::POOL_UID, "uid-1");
    const MANAGED: (&str, &str) = (keys::MANAGED_BY, keys::MANAGED_BY_VALUE);
    const MINE: (&str, &str) = (keys::INSTALLATION, "prod-a");

    fn of(pairs: &[(&str, &str)]) -> Ownership {
        ownership(&tags(pairs), keys::POOL_UID, "uid-1", "prod-a")
    }

    #[test]
    fn ours_only_with_the_uid_the_operator_and_this_installation() {
        assert_eq!(of(&[UID, MANAGED, MINE]), Ownership::Ours);
        assert_eq!(of(&[UID, MANAGED]), Ownership::Unadopted);
        let not_ours = |pairs: &[(&str, &str)], why: &str| match of(pairs) {
            Ownership::NotOurs(w) => assert!(w.contains(why), "{w}"),
            o => panic!("{pairs:?}: {o:?}"),
        };
        not_ours(
            &[UID, MANAGED, (keys::INSTALLATION, "prod-b")],
            "pgml.io/installation=prod-b, not this installation's (prod-a)",
        );
        not_ours(&[UID, MANAGED, (keys::INSTALLATION, "")], "not this");
        not_ours(
            &[(keys::POOL_UID, "uid-2"), MANAGED, MINE],
            "pgml.io/pool-uid=uid-2",
        );
        not_ours(&[MANAGED, MINE], "no pgml.io/pool-uid tag");
        not_ours(&[UID, MINE], "pgml.io/managed-by=pgml-operator");
        not_ours(
            &[UID, (keys::MANAGED_BY, "someone"), MINE],
            "pgml.io/managed-by",
        );
        not_ours(&[], "no pgml.io/pool-uid");
        // The snapshot's UID key is a different key: a pool UID tag does not stand in.
        assert!(matches!(
            ownership(
                &tags(&[UID, MANAGED, MINE]),
                keys::SNAPSHOT_UID,
                "uid-1",
                "prod-a"
            ),
            Ownership::NotOurs(_)
        ));
    }

    #[test]
    fn what_is_left_alone_is_named_and_an_unadopted_one_says_how_to_adopt_it() {
        assert_eq!(
            left_alone("volume", "vol-1", &Ownership::Ours, "prod-a"),
            None
        );
        let (r, note) = left_alone("snapshot", "snap-1", &Ownership::Unadopted, "prod-a").unwrap();
        assert_eq!(r, reason::INSTALLATION_TAG_MISSING);
        assert!(note.starts_with("snapshot snap-1 has no pgml.io/installation tag"));
        assert!(note.ends_with(
            "aws ec2 create-tags --resources snap-1 --tags Key=pgml.io/installation,Value=prod-a"
        ));
        let o = Ownership::NotOurs("tagged pgml.io/installation=prod-b".into());
        let (r, note) = left_alone("volume", "vol-1", &o, "prod-a").unwrap();
        assert_eq!(r, reason::NOT_OURS);
        assert_eq!(
            note,
            "volume vol-1 is not ours to touch (tagged pgml.io/installation=prod-b): left alone"
        );
    }
}
