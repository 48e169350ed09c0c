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

/// The administrator's command that adopts `ids` into `installation` (the operator's role
/// may not add that key itself).
pub fn adopt_command(ids: &[&str], installation: &str) -> String {
    format!(
        "aws ec2 create-tags --resources {} --tags Key={},Value={installation}",
        ids.join(" "),
        keys::INSTALLATION
    )
}

/// The Warnings for the resources the check left alone, (reason, note), at most one per
/// reason, each naming all of its resources: the Event recorder counts a repeat of a
/// reason as the same Event, so a second note of the same reason would not be seen.
/// Unadopted ones get the command that adopts them. `kind` is `volume` or `snapshot`;
/// ours are skipped.
pub fn left_alone(
    kind: &str,
    found: &[(String, Ownership)],
    installation: &str,
) -> Vec<(&'static str, String)> {
    let unadopted: Vec<&str> = found
        .iter()
        .filter(|(_, o)| *o == Ownership::Unadopted)
        .map(|(id, _)| id.as_str())
        .collect();
    let not_ours: Vec<String> = found
        .iter()
        .filter_map(|(id, o)| match o {
            Ownership::NotOurs(why) => Some(format!("{id} ({why})")),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    if !unadopted.is_empty() {
        out.push((
            reason::INSTALLATION_TAG_MISSING,
            format!(
                "{kind}(s) {} without a {} tag (made before the operator tagged its \
                 installation): left alone, not adopted, detached or deleted. If they are \
                 this installation's, adopt them: {}",
                unadopted.join(", "),
                keys::INSTALLATION,
                adopt_command(&unadopted, installation)
            ),
        ));
    }
    if !not_ours.is_empty() {
        out.push((
            reason::NOT_OURS,
            format!(
                "{kind}(s) left alone, not ours to touch: {}",
                not_ours.join("; ")
            ),
        ));
    }
    out
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
    fn what_is_left_alone_is_named_once_per_reason_and_unadopted_ones_say_how_to_adopt() {
        let found = [
            ("vol-1".to_string(), Ownership::Ours),
            ("vol-2".to_string(), Ownership::Unadopted),
            (
                "vol-3".to_string(),
                Ownership::NotOurs("tagged pgml.io/installation=prod-b".into()),
            ),
            ("vol-4".to_string(), Ownership::Unadopted),
            (
                "vol-5".to_string(),
                Ownership::NotOurs("it has no pgml.io/pool-uid tag".into()),
            ),
        ];
        let w = left_alone("volume", &found, "prod-a");
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].0, reason::INSTALLATION_TAG_MISSING);
        assert!(
            w[0].1
                .starts_with("volume(s) vol-2, vol-4 without a pgml.io/installation tag")
        );
        assert!(w[0].1.ends_with(
            "aws ec2 create-tags --resources vol-2 vol-4 --tags Key=pgml.io/installation,Value=prod-a"
        ));
        assert_eq!(
            w[1],
            (
                reason::NOT_OURS,
                "volume(s) left alone, not ours to touch: vol-3 (tagged \
                 pgml.io/installation=prod-b); vol-5 (it has no pgml.io/pool-uid tag)"
                    .to_string()
            )
        );
        assert!(left_alone("snapshot", &found[..1], "prod-a").is_empty());
    }
}
