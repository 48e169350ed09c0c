//! `examples/nodes/` checked against the schemas of their kinds, vendored in
//! `tests/testbed/schemas/` (see the README there for versions and licences), without a
//! cluster:
//!
//! - Karpenter's `EC2NodeClass` and `NodePool`: the CRD's `openAPIV3Schema` as a JSON Schema
//!   that refuses unknown fields (what `kubectl apply` gets from the apiserver, its field
//!   validation being `Strict` by default), then the CRD's CEL rules with kube-cel, schema
//!   defaults applied first as the apiserver does;
//! - eksctl's `ClusterConfig`: eksctl's own JSON Schema, which already refuses unknown fields.
//!
//! Node bootstrap scripts are parsed with `bash -n`.

pub mod openapi;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository's root (this crate is `tests/node-examples`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every YAML document of a file, as JSON.
pub fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).map_err(|e| e.to_string())?;
            Ok(v)
        })
        .filter(|v| !matches!(v, Ok(Value::Null)))
        .collect()
}

/// How objects of a kind whose schema is vendored are checked: a JSON Schema (for a CRD, its
/// served version's structural schema made strict) and, for a CRD, its CEL rules.
pub struct Checker {
    structural: jsonschema::Validator,
    cel: Option<Box<kube_cel::CompiledSchema>>,
}

impl Checker {
    /// The checker of a served version of a CRD file, by `apiVersion` and `kind`.
    pub fn from_crd(crd_path: &Path, api_version: &str, kind: &str) -> Checker {
        let crd = documents(crd_path)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{} is empty", crd_path.display()));
        let schema = openapi::served_schema(&crd, api_version, kind)
            .unwrap_or_else(|e| panic!("{}: {e}", crd_path.display()));
        let structural = jsonschema::draft4::new(&openapi::strict_json_schema(&schema))
            .unwrap_or_else(|e| panic!("{}: not a JSON Schema: {e}", crd_path.display()));
        Checker {
            structural,
            cel: Some(Box::new(kube_cel::compile_schema(&schema))),
        }
    }

    pub fn from_json_schema(path: &Path) -> Checker {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut schema: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        uri_safe_definitions(&mut schema);
        Checker {
            structural: jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{}: not a JSON Schema: {e}", path.display())),
            cel: None,
        }
    }

    /// Every reason the object is refused, as `<path>: <message>`; empty when it is accepted.
    pub fn refusals(&self, object: &Value) -> Vec<String> {
        let mut out: Vec<String> = self
            .structural
            .iter_errors(object)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if let Some(cel) = &self.cel {
            // The apiserver evaluates CEL only on an object that passed the schema.
            if out.is_empty()
                && let Err(errors) = kube_cel::Validator::new().validate_compiled(cel, object, None)
            {
                out.extend(errors.into_vec().into_iter().map(|e| e.to_string()));
            }
        }
        out
    }
}

/// Renames `definitions` whose names are no valid URI fragment, and the `$ref`s to them: eksctl
/// names them after Go packages (`k8s.io|api|core|v1.TaintEffect`), which a JSON Schema
/// validator that checks `$ref` against its meta-schema refuses. `|` becomes `.`; nothing else
/// changes.
fn uri_safe_definitions(schema: &mut Value) {
    fn safe(s: &str) -> String {
        s.replace('|', ".")
    }
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get_mut("$ref") {
                    *r = safe(r);
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(Value::Object(defs)) = schema.get_mut("definitions") {
        let before = defs.len();
        *defs = std::mem::take(defs)
            .into_iter()
            .map(|(k, v)| (safe(&k), v))
            .collect();
        assert_eq!(
            defs.len(),
            before,
            "two definitions differ only by '|' and '.'"
        );
    }
    walk(schema);
}

/// The vendored schemas, by `apiVersion` and `kind`.
pub struct Schemas {
    kinds: Vec<(&'static str, &'static str, Checker)>,
}

impl Schemas {
    pub fn load() -> Schemas {
        let dir = repo_root().join("tests/testbed/schemas");
        let karpenter = dir.join("karpenter");
        let kinds = vec![
            (
                "karpenter.k8s.aws/v1",
                "EC2NodeClass",
                Checker::from_crd(
                    &karpenter.join("karpenter.k8s.aws_ec2nodeclasses.yaml"),
                    "karpenter.k8s.aws/v1",
                    "EC2NodeClass",
                ),
            ),
            (
                "karpenter.sh/v1",
                "NodePool",
                Checker::from_crd(
                    &karpenter.join("karpenter.sh_nodepools.yaml"),
                    "karpenter.sh/v1",
                    "NodePool",
                ),
            ),
            (
                "eksctl.io/v1alpha5",
                "ClusterConfig",
                Checker::from_json_schema(&dir.join("eksctl/clusterconfig.schema.json")),
            ),
        ];
        Schemas { kinds }
    }

    /// Every reason the object is refused; an object of a kind with no vendored schema is
    /// refused as such.
    pub fn refusals(&self, object: &Value) -> Vec<String> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        match self
            .kinds
            .iter()
            .find(|(v, k, _)| *v == api_version && *k == kind)
        {
            Some((_, _, checker)) => checker.refusals(object),
            None => vec![format!(
                "no schema for apiVersion {api_version:?} kind {kind:?} in tests/testbed/schemas"
            )],
        }
    }
}

#[cfg(test)]
mod tests;
