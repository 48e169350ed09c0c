//! The API users write YAML against: `PgmlCluster`, `ZfsPool` and `EbsSnapshot` in group
//! `pgml.io`, version `v1alpha1`.
//!
//! Users own `spec`; defaults live in the CRD schema (every `#[serde(default = ...)]` here
//! becomes a schema `default`), so the operator never writes spec. Rules the apiserver can
//! check are CEL `x-kubernetes-validations` and OpenAPI constraints on the types; the few
//! that need other objects or outside facts are in [`validate`], enforced by the operator.

// kube's `printcolumn(...)`/`validation = ...` lists repeat keys by design.
#![allow(clippy::duplicated_attributes)]

pub mod cluster;
pub mod common;
pub mod cron;
pub mod ebs;
pub mod instance;
pub mod policy;
pub mod prose;
pub mod reference;
pub mod schedule;
pub mod snapshot;
pub mod validate;
pub mod zfspool;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use cluster::{PgmlCluster, PgmlClusterSpec, PgmlClusterStatus};
pub use common::condition;
pub use ebs::{EbsVolumes, VolumeType};
pub use snapshot::{EbsSnapshot, EbsSnapshotSpec, EbsSnapshotStatus};
pub use zfspool::{Layout, ZfsPool, ZfsPoolSpec, ZfsPoolStatus, ZfsPoolTemplate};

pub const GROUP: &str = "pgml.io";
pub const VERSION: &str = "v1alpha1";

/// Every CRD of the API, in a stable order (the file names `crdgen` writes follow it).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![PgmlCluster::crd(), ZfsPool::crd(), EbsSnapshot::crd()]
        .into_iter()
        .map(unwrap_descriptions)
        .collect()
}

/// The CRD with its schema's descriptions in paragraphs ([`prose::unwrap`]), so that
/// `kubectl explain` wraps them at the terminal's width, not at the source's.
fn unwrap_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut v = serde_json::to_value(&crd).expect("a CRD serializes");
    for version in v["spec"]["versions"].as_array_mut().into_iter().flatten() {
        prose::unwrap_descriptions(&mut version["schema"]);
    }
    serde_json::from_value(v).expect("unwrapping descriptions keeps a CRD")
}

/// A CRD as YAML, the way `crds/` stores it.
///
/// serde_yaml writes YAML 1.2, where `off` is a string; kubectl and the apiserver read YAML
/// 1.1, where a bare `off`/`on`/`yes`/`no` is a boolean (and `atime: off` is a default
/// here). Such scalars are quoted so every YAML reader sees the same CRD.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let text = serde_yaml::to_string(crd).expect("a CRD serializes to YAML");
    quote_yaml11_booleans(&text)
}

const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quotes plain scalars that YAML 1.1 reads as booleans, in `key: value` and `- value` lines
/// (not inside `|` block scalars, whose text is literal).
pub fn quote_yaml11_booleans(text: &str) -> String {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = String::with_capacity(text.len());
    // Indentation of the key that opened the block scalar we are in, if any.
    let mut block: Option<usize> = None;
    for line in text.lines() {
        if let Some(key_indent) = block {
            if line.trim().is_empty() || indent(line) > key_indent {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let fixed = YAML11_BOOLEANS.iter().find_map(|word| {
            let head = line.strip_suffix(word)?;
            (head.ends_with(": ") || head.trim_start() == "- ").then(|| format!("{head}'{word}'"))
        });
        out.push_str(fixed.as_deref().unwrap_or(line));
        out.push('\n');
        let t = line.trim_end();
        if t.ends_with('|') || t.ends_with("|-") || t.ends_with('>') || t.ends_with(">-") {
            block = Some(indent(line));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kubectl explain` shows paragraphs, not the doc comments' source lines.
    #[test]
    fn crd_descriptions_are_paragraphs() {
        let crd = crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "ZfsPool")
            .unwrap();
        let v = serde_json::to_value(&crd).unwrap();
        let datasets = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["datasets"]["description"];
        let text = datasets.as_str().unwrap();
        assert!(text.starts_with("Datasets created in the pool."), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn yaml11_booleans_are_quoted_outside_block_scalars() {
        let text = "a: off\nb:\n- on\n- offset\nc: |-\n  literal: no\n  more\nd: yes\ne: 'off'\n";
        assert_eq!(
            quote_yaml11_booleans(text),
            "a: 'off'\nb:\n- 'on'\n- offset\nc: |-\n  literal: no\n  more\nd: 'yes'\ne: 'off'\n"
        );
    }

    #[test]
    fn pool_name_and_mount_points_default_from_metadata() {
        let pool: ZfsPool = serde_yaml::from_str(
            "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {name: analytics}\nspec: {nodeName: n, volumes: {sizeGiB: 10}}",
        )
        .unwrap();
        assert_eq!(pool.pool_name(), "analytics");
        assert_eq!(pool.spec.template.datasets.len(), 2);
        assert_eq!(
            pool.mount_point(&pool.spec.template.datasets[0]),
            "/analytics/pgdata"
        );
        assert_eq!(pool.spec.template.volumes.volume_type, VolumeType::Gp3);
        assert!(pool.spec.template.volumes.encrypted);
        assert_eq!(pool.spec.template.layout, Layout::Raid0);
    }

    #[test]
    fn status_round_trips_with_conditions() {
        let status: ZfsPoolStatus = serde_json::from_value(serde_json::json!({
            "observedGeneration": 3,
            "phase": "Online",
            "health": "ONLINE",
            "size": "398G",
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "PoolOnline", "message": "",
                "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 3
            }],
            "volumes": [{"index": 0, "volumeId": "vol-0abc", "attachmentState": "attached", "sizeGiB": 100}]
        }))
        .unwrap();
        assert_eq!(status.conditions[0].type_, condition::READY);
        let back = serde_json::to_value(&status).unwrap();
        assert_eq!(back["volumes"][0]["sizeGiB"], 100);
        assert_eq!(
            back["conditions"][0]["lastTransitionTime"],
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(
            serde_json::from_value::<ZfsPoolStatus>(back).unwrap(),
            status
        );
    }
}
