//! What the controllers share to write only what they own: forced server-side apply under
//! the operator's field manager (on the status subresource, or metadata labels), and their
//! conditions in the canonical order they apply them in.
//!
//! The agent and the scheduler apply other fields of the same objects under their own
//! managers; an apply carries all of the controller's fields and none of theirs.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use pgml_api::common::Condition;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runtime::{Error, FIELD_MANAGER};

/// A namespaced kind of ours.
pub trait Namespaced:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned
{
}

impl<K> Namespaced for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
{
}

/// The namespace and name of an object read from the API server.
pub fn names<K: Resource>(obj: &K) -> Result<(&str, &str), Error> {
    let meta = obj.meta();
    Ok((
        meta.namespace
            .as_deref()
            .ok_or(Error::Incomplete("namespace"))?,
        meta.name.as_deref().ok_or(Error::Incomplete("name"))?,
    ))
}

/// Server-side apply of the controller's `status` fields on the status subresource.
pub async fn apply_status<K: Namespaced>(
    client: &Client,
    obj: &K,
    status: &impl Serialize,
) -> Result<(), Error> {
    let (ns, name) = names(obj)?;
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), ns)
        .patch_status(name, &params(), &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// Server-side apply of the controller's metadata `labels` (metadata only, not the spec).
pub async fn apply_labels<K: Namespaced>(
    client: &Client,
    obj: &K,
    labels: &BTreeMap<&str, &str>,
) -> Result<(), Error> {
    let (ns, name) = names(obj)?;
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name, "labels": labels},
    });
    Api::<K>::namespaced(client.clone(), ns)
        .patch(name, &params(), &Patch::Apply(&body))
        .await?;
    Ok(())
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The conditions of `types` (those the controller owns), sorted by type: what an owned
/// view of a status compares and applies.
pub fn owned_conditions(conditions: &[Condition], types: &[&str]) -> Vec<Condition> {
    let mut owned: Vec<Condition> = conditions
        .iter()
        .filter(|c| types.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    owned.sort_by(|a, b| a.type_.cmp(&b.type_));
    owned
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_api::common::Time;

    fn cond(type_: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn owned_conditions_keep_only_the_owned_types_sorted() {
        let all = [cond("Ready"), cond("PoolHealthy"), cond("Degraded")];
        let types: Vec<String> = owned_conditions(&all, &["Ready", "Degraded"])
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, ["Degraded", "Ready"]);
    }

    #[test]
    fn names_need_a_namespace() {
        let mut pool: pgml_api::ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "tank"},
            "spec": {"nodeName": "n", "volumes": {"sizeGiB": 10}},
        }))
        .unwrap();
        assert!(matches!(names(&pool), Err(Error::Incomplete("namespace"))));
        pool.metadata.namespace = Some("ns".into());
        assert_eq!(names(&pool).unwrap(), ("ns", "tank"));
    }
}
