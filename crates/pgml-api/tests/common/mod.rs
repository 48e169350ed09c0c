//! Shared by the crate's integration tests: the repository's manifests and the generated
//! schemas.

#![allow(dead_code)]

use serde_json::Value;

// Each test file uses a part of these.
#[allow(unused_imports)]
pub use pgml_testbed::manifests::{Case, invalid_cases, load, missing_or_changed, yaml_files};
#[allow(unused_imports)]
pub use pgml_testbed::sandbox::repo_root;

/// The openAPIV3Schema of a kind, as generated (not as stored in crds/).
pub fn schema_of(kind: &str) -> Value {
    let crd = pgml_api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}
