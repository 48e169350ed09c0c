//! "Would this apply change anything?": the desired body against the object as stored.
//! The apiserver adds defaults (a Pod's `terminationMessagePath`, a Service's
//! `clusterIP`), so the test is whether the stored object covers every field we set.
//!
//! Admission adds list items too: the ServiceAccount plugin a `kube-api-access-*` volume
//! and its mounts, EKS's Pod Identity and IRSA webhooks a token volume and `AWS_*` env, a
//! mesh a sidecar container. Lists of named items (volumes, volumeMounts, containers, env,
//! ports) are maps keyed by name for server-side apply, and an apply of ours leaves items
//! it does not name alone: so there, every item we name must be stored as we set it, and
//! items someone else added do not count. Other lists (commands, rules) are compared
//! element by element. (A named item we stopped setting is not seen this way; none of the
//! Pod's can go away while the Pod lives: storage, identity and the image's paths are
//! immutable.)

use serde_json::Value;

/// An object as JSON (`Null` if it does not serialize, which no API object fails to).
pub fn to_value<T: serde::Serialize>(o: &T) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// Whether applying `desired` would change nothing of `stored`: it has every field of it,
/// the type aside (a typed object serializes it, a dynamic one may not).
pub fn unchanged(stored: Option<&Value>, desired: &Value) -> bool {
    let mut content = desired.clone();
    if let Some(o) = content.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
    }
    stored.is_some_and(|s| covers(s, &content))
}

/// Whether `stored` has every field of `desired` with the same value (objects: the keys
/// of `desired`; lists of named objects: each named item of `desired` covered by the stored
/// item of that name, others ignored; other lists: the same length, element by element;
/// numbers: by value).
pub fn covers(stored: &Value, desired: &Value) -> bool {
    difference(stored, desired, "").is_none()
}

/// Where `stored` first fails to cover `desired` (as [`covers`] reads it): a path such as
/// `.containers[postgres].image`, for the message that says a Pod is outdated.
pub fn difference(stored: &Value, desired: &Value, at: &str) -> Option<String> {
    match (stored, desired) {
        (_, Value::Null) => None,
        (Value::Object(s), Value::Object(d)) => d.iter().find_map(|(k, v)| {
            let here = format!("{at}.{k}");
            match s.get(k) {
                _ if v.is_null() => None,
                Some(sv) => difference(sv, v, &here),
                None => Some(here),
            }
        }),
        (Value::Array(s), Value::Array(d))
            if !d.is_empty() && d.iter().all(|i| name_of(i).is_some()) =>
        {
            d.iter().find_map(|want| {
                let name = name_of(want).unwrap_or_default();
                let here = format!("{at}[{name}]");
                match s.iter().find(|have| name_of(have) == Some(name)) {
                    Some(have) => difference(have, want, &here),
                    None => Some(here),
                }
            })
        }
        (Value::Array(s), Value::Array(d)) => {
            if s.len() != d.len() {
                return Some(format!("{at} ({} items, not {})", s.len(), d.len()));
            }
            s.iter()
                .zip(d)
                .enumerate()
                .find_map(|(i, (a, b))| difference(a, b, &format!("{at}[{i}]")))
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (a, b) if a == b => None,
        _ => Some(at.to_string()),
    }
}

/// The `name` of a list item that has one (volumes, mounts, containers, env, ports).
fn name_of(v: &Value) -> Option<&str> {
    v.get("name")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_do_not_count() {
        let desired = json!({"spec": {"ports": [{"port": 5432}], "selector": {"a": "b"}}});
        let stored = json!({"spec": {"clusterIP": "10.0.0.3", "ports": [{"port": 5432, "protocol": "TCP"}], "selector": {"a": "b"}}});
        assert!(covers(&stored, &desired));
        assert!(!covers(&stored, &json!({"spec": {"selector": {"a": "c"}}})));
        assert!(!covers(
            &stored,
            &json!({"spec": {"ports": [{"port": 5432}, {"port": 1}]}})
        ));
        assert!(!covers(&stored, &json!({"spec": {"missing": 1}})));
        assert!(covers(&json!({"n": 1.0}), &json!({"n": 1})));
        assert!(covers(&json!({}), &json!({"x": null})));
    }

    #[test]
    fn items_admission_adds_to_named_lists_do_not_count() {
        let desired = json!({"spec": {
            "volumes": [{"name": "pgdata", "persistentVolumeClaim": {"claimName": "main-1"}}],
            "containers": [{"name": "postgres", "image": "pg:1",
                "env": [{"name": "PGDATA", "value": "/d"}],
                "volumeMounts": [{"name": "pgdata", "mountPath": "/d"}]}],
        }});
        // As the ServiceAccount plugin and the Pod Identity webhook leave a Pod: a token
        // volume, its mount and AWS_* env added, a sidecar too, items in another order.
        let stored = json!({"spec": {
            "volumes": [
                {"name": "kube-api-access-x7k2p", "projected": {"sources": []}},
                {"name": "pgdata", "persistentVolumeClaim": {"claimName": "main-1"}},
            ],
            "containers": [
                {"name": "sidecar", "image": "mesh:1"},
                {"name": "postgres", "image": "pg:1",
                 "env": [{"name": "PGDATA", "value": "/d"},
                         {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"}],
                 "volumeMounts": [{"name": "pgdata", "mountPath": "/d"},
                                  {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
            ],
        }});
        assert!(covers(&stored, &desired));
        // What we set still counts: a changed image, env value, or mount; a missing item.
        let mut changed = stored.clone();
        changed["spec"]["containers"][1]["image"] = json!("pg:2");
        assert!(!covers(&changed, &desired));
        let mut changed = stored.clone();
        changed["spec"]["containers"][1]["env"][0]["value"] = json!("/e");
        assert!(!covers(&changed, &desired));
        let mut changed = stored.clone();
        changed["spec"]["volumes"].as_array_mut().unwrap().remove(1);
        assert!(!covers(&changed, &desired));
        // Lists of unnamed items stay element by element.
        assert!(!covers(
            &json!({"command": ["a", "b"]}),
            &json!({"command": ["a"]})
        ));
        assert!(!covers(
            &json!({"rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]}),
            &json!({"rules": [{"verbs": ["get"]}]})
        ));
        assert!(covers(&json!({"l": []}), &json!({"l": []})));
        assert!(!covers(&json!({"l": [{"name": "a"}]}), &json!({"l": []})));
    }

    #[test]
    fn the_difference_names_where() {
        let desired = json!({"containers": [{"name": "postgres", "image": "pg:1"}], "tolerations": [{"key": "a"}]});
        let stored = json!({"containers": [{"name": "postgres", "image": "pg:2"}], "tolerations": [{"key": "a"}]});
        assert_eq!(
            difference(&stored, &desired, "").as_deref(),
            Some(".containers[postgres].image")
        );
        let stored = json!({"containers": [{"name": "postgres", "image": "pg:1"}], "tolerations": [{"key": "a"}, {"key": "b"}]});
        assert_eq!(
            difference(&stored, &desired, "").as_deref(),
            Some(".tolerations (2 items, not 1)")
        );
        assert_eq!(
            difference(&json!({}), &desired, "").as_deref(),
            Some(".containers")
        );
    }

    #[test]
    fn the_type_of_the_desired_body_is_not_compared() {
        let desired = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}});
        assert!(unchanged(
            Some(&json!({"metadata": {"name": "a"}})),
            &desired
        ));
        assert!(!unchanged(
            Some(&json!({"metadata": {"name": "b"}})),
            &desired
        ));
        assert!(!unchanged(None, &desired), "nothing stored: to be made");
    }
}
