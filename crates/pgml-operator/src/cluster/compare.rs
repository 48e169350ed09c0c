//! "Would this apply change anything?": the desired body against the object as stored.
//! The apiserver adds defaults (a Pod's `terminationMessagePath`, a Service's
//! `clusterIP`), so the test is whether the stored object covers every field we set.

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
/// of `desired`; lists: the same length, element by element; numbers: by value).
pub fn covers(stored: &Value, desired: &Value) -> bool {
    match (stored, desired) {
        (_, Value::Null) => true,
        (Value::Object(s), Value::Object(d)) => d
            .iter()
            .all(|(k, v)| v.is_null() || s.get(k).is_some_and(|sv| covers(sv, v))),
        (Value::Array(s), Value::Array(d)) => {
            s.len() == d.len() && s.iter().zip(d).all(|(a, b)| covers(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
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
