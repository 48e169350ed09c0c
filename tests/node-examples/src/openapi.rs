//! A CRD's structural schema (OpenAPI v3) as a JSON Schema that judges a manifest the way the
//! apiserver does for `kubectl apply`.

use serde_json::{Map, Value, json};

/// The `openAPIV3Schema` of the CRD's version `api_version` (`group/version`) of `kind`, which
/// must be served.
pub fn served_schema(crd: &Value, api_version: &str, kind: &str) -> Result<Value, String> {
    let spec = &crd["spec"];
    let (group, version) = api_version
        .split_once('/')
        .ok_or_else(|| format!("{api_version:?} is not group/version"))?;
    if spec["group"] != group || spec["names"]["kind"] != kind {
        return Err(format!(
            "the CRD is {}/{}, not {group}/{kind}",
            spec["group"], spec["names"]["kind"]
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let v = versions
        .iter()
        .find(|v| v["name"] == version)
        .ok_or_else(|| format!("the CRD has no version {version}"))?;
    if v["served"] != true {
        return Err(format!("version {version} is not served"));
    }
    v["schema"]["openAPIV3Schema"]
        .as_object()
        .map(|o| Value::Object(o.clone()))
        .ok_or_else(|| format!("version {version} has no openAPIV3Schema"))
}

/// `schema` (a structural schema) as a draft-4 JSON Schema with the apiserver's strictness:
/// an object with declared `properties` and no `x-kubernetes-preserve-unknown-fields` refuses
/// any other field (the apiserver's `Strict` field validation, `kubectl apply`'s default;
/// without it the field would be silently dropped, which is as wrong for an example);
/// `nullable` admits `null`; the object's `apiVersion`, `kind` and `metadata.name` are required
/// and the name is a DNS subdomain (ObjectMeta is validated by the apiserver itself, not by
/// the CRD's schema).
pub fn strict_json_schema(schema: &Value) -> Value {
    let mut out = strict(schema);
    if let Some(root) = out.as_object_mut() {
        root.insert("required".into(), json!(["apiVersion", "kind", "metadata"]));
        if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "metadata".into(),
                json!({
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {
                            "type": "string",
                            "maxLength": 253,
                            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
                        },
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                }),
            );
        }
    }
    out
}

fn strict(schema: &Value) -> Value {
    let Some(node) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in node {
        let converted = match key.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .map(|props| props.iter().map(|(k, v)| (k.clone(), strict(v))).collect())
                    .unwrap_or_default(),
            ),
            "items" | "additionalProperties" | "not" if value.is_object() => strict(value),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .map(|all| all.iter().map(strict).collect())
                    .unwrap_or_default(),
            ),
            // Documentation and CEL: not JSON Schema (CEL is evaluated by kube-cel).
            "description" | "x-kubernetes-validations" => continue,
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    let preserves = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if node.contains_key("properties") && !node.contains_key("additionalProperties") && !preserves {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if node.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(t)) = node.get("type")
    {
        out.insert("type".into(), json!([t, "null"]));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_with_properties_refuse_other_fields() {
        let s = strict(&json!({
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "p": {"type": "object", "properties": {"c": {"type": "string"}},
                      "x-kubernetes-preserve-unknown-fields": true},
                "l": {"type": "array", "items": {"type": "object", "properties": {"d": {"type": "integer"}}}},
                "n": {"type": "string", "nullable": true}
            }
        }));
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["a"]["additionalProperties"], false);
        assert_eq!(
            s["properties"]["m"]["additionalProperties"],
            json!({"type": "string"})
        );
        assert!(s["properties"]["p"].get("additionalProperties").is_none());
        assert_eq!(s["properties"]["l"]["items"]["additionalProperties"], false);
        assert_eq!(s["properties"]["n"]["type"], json!(["string", "null"]));
    }

    #[test]
    fn a_served_version_is_found_by_group_version_and_kind() {
        let crd = json!({"spec": {
            "group": "example.com",
            "names": {"kind": "Thing"},
            "versions": [
                {"name": "v1", "served": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v0", "served": false, "schema": {"openAPIV3Schema": {"type": "object"}}}
            ]
        }});
        assert!(served_schema(&crd, "example.com/v1", "Thing").is_ok());
        assert!(served_schema(&crd, "example.com/v0", "Thing").is_err());
        assert!(served_schema(&crd, "example.com/v2", "Thing").is_err());
        assert!(served_schema(&crd, "example.org/v1", "Thing").is_err());
        assert!(served_schema(&crd, "example.com/v1", "Other").is_err());
    }
}
