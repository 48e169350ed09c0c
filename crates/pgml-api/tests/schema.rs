//! The generated CRDs: names, columns, defaults, documentation and rules.

mod common;

use common::*;
use kube::CustomResourceExt;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use serde_json::Value;

#[test]
fn crds_directory_is_up_to_date() {
    for crd in pgml_api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let path = repo_root().join("crds").join(format!("{name}.yaml"));
        let stored =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let body = stored.split_once('\n').unwrap().1;
        assert_eq!(
            body,
            pgml_api::crd_yaml(&crd),
            "{} is stale: run `make crds`",
            path.display()
        );
    }
}

#[test]
fn stored_crds_read_back_as_generated() {
    // Catches YAML 1.1 surprises (a bare `off` read back as a boolean) in the files
    // kubectl would apply.
    for crd in pgml_api::crds() {
        let yaml = pgml_api::crd_yaml(&crd);
        let back: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, serde_json::to_value(&crd).unwrap());
        assert!(!yaml.contains(": off\n") && !yaml.contains(": on\n"));
    }
}

#[test]
fn names_group_and_scope() {
    for (crd, plural, short) in [
        (ZfsPool::crd(), "zfspools", vec!["zp", "zpool"]),
        (EbsSnapshot::crd(), "ebssnapshots", vec!["ebss", "ebssnap"]),
        (PgmlCluster::crd(), "pgmlclusters", vec!["pgmlc"]),
    ] {
        assert_eq!(crd.spec.group, "pgml.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(crd.spec.names.short_names.clone().unwrap(), short);
        assert_eq!(crd.spec.names.categories.clone().unwrap(), vec!["pgml"]);
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources.as_ref().unwrap().status.is_some(),
            "{plural} has no status subresource"
        );
    }
}

fn columns(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Vec<String> {
    crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap()
        .into_iter()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name)
        .collect()
}

#[test]
fn printer_columns_answer_the_first_question() {
    assert_eq!(
        columns(ZfsPool::crd()),
        ["Node", "Layout", "Volumes", "Size", "Health", "Age"]
    );
    assert_eq!(
        columns(EbsSnapshot::crd()),
        ["Source", "Phase", "Volumes", "Age"]
    );
    assert_eq!(
        columns(PgmlCluster::crd()),
        ["Instances", "Ready", "Primary", "Phase", "Age"]
    );
}

/// Walks a schema, calling `f(path, node)` on every node.
fn walk(path: &str, node: &Value, f: &mut dyn FnMut(&str, &Value)) {
    f(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(&format!("{path}.{k}"), v, f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, f);
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), ap, f);
    }
}

#[test]
fn every_field_is_documented() {
    for kind in ["ZfsPool", "EbsSnapshot", "PgmlCluster"] {
        let schema = schema_of(kind);
        let mut undocumented = Vec::new();
        for part in ["spec", "status"] {
            walk(part, &schema["properties"][part], &mut |path, node| {
                let is_field = !path.ends_with("[]") && !path.ends_with("{}");
                if is_field
                    && node
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none_or(|d| d.trim().is_empty())
                {
                    undocumented.push(path.to_string());
                }
            });
        }
        assert!(
            undocumented.is_empty(),
            "{kind}: fields without a description: {undocumented:#?}"
        );
    }
}

#[test]
fn every_rule_has_a_message_and_bounded_inputs() {
    for kind in ["ZfsPool", "EbsSnapshot", "PgmlCluster"] {
        let schema = schema_of(kind);
        let mut count = 0;
        walk(kind, &schema, &mut |path, node| {
            for rule in node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                count += 1;
                let msg = rule["message"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{path}: rule without message: {rule}"));
                assert!(msg.len() > 10 && !msg.contains('\n'), "{path}: {msg:?}");
                // Rules over lists and maps need a bound so the apiserver's cost estimate fits.
                let r = rule["rule"].as_str().unwrap();
                if r.contains(".all(") || r.contains(".exists") {
                    assert!(
                        node.get("maxItems").is_some()
                            || node.get("maxProperties").is_some()
                            || r.contains("self.datasets"),
                        "{path}: {r} iterates an unbounded collection"
                    );
                }
            }
        });
        assert!(count > 0, "{kind} has no rules");
    }
}

#[test]
fn schema_contains_the_rules_the_issue_asks_for() {
    let all: String = pgml_api::crds().iter().map(pgml_api::crd_yaml).collect();
    for message in [
        "raidz1 needs at least 3 volumes",
        "gp3 IOPS must be between 3000 and 80000",
        "gp3 allows at most 500 IOPS per GiB",
        "gp3 throughput may be at most IOPS/4",
        "io2 volumes need iops",
        "io2 allows at most 1000 IOPS per GiB",
        "io2 volumes must be at least 4 GiB",
        "volumes can grow but never shrink",
        "layout cannot change once the pool exists",
        "nodeName cannot change",
        "source cannot change",
        "source must set exactly one of",
        "storage must set exactly one of",
        "kmsKeyId needs encrypted: true",
        "must be a cron schedule",
    ] {
        assert!(all.contains(message), "no rule says {message:?}");
    }
    // Type-independent bounds are OpenAPI constraints; per-type ones (gp3's 80000) are CEL.
    for bound in [
        "maximum: 256000",
        "maximum: 65536",
        "maximum: 2000",
        "minimum: 125",
        "maximum: 300",
        "maximum: 60",
    ] {
        assert!(all.contains(bound), "no {bound}");
    }
}

#[test]
fn defaults_live_in_the_schema() {
    let pool = schema_of("ZfsPool");
    let spec = &pool["properties"]["spec"]["properties"];
    assert_eq!(spec["layout"]["default"], "raid0");
    assert_eq!(spec["reclaimPolicy"]["default"], "Retain");
    assert_eq!(spec["memberReplacement"]["default"], "Automatic");
    assert_eq!(spec["volumes"]["properties"]["type"]["default"], "gp3");
    assert_eq!(spec["volumes"]["properties"]["encrypted"]["default"], true);
    assert_eq!(spec["volumes"]["properties"]["count"]["default"], 1);
    assert_eq!(
        spec["filesystemProperties"]["default"]["compression"],
        "lz4"
    );
    assert_eq!(spec["filesystemProperties"]["default"]["atime"], "off");
    assert_eq!(spec["datasets"]["default"][0]["name"], "pgdata");
    assert_eq!(
        spec["datasets"]["default"][0]["properties"]["recordsize"],
        "32K"
    );

    let snap = schema_of("EbsSnapshot");
    let spec = &snap["properties"]["spec"]["properties"];
    assert_eq!(spec["standbySignal"]["default"], "Auto");
    assert_eq!(spec["consistency"]["default"], "Auto");
    assert_eq!(spec["deletionPolicy"]["default"], "Delete");
    assert_eq!(spec["freezeTimeoutSeconds"]["default"], 10);

    let cluster = schema_of("PgmlCluster");
    let spec = &cluster["properties"]["spec"]["properties"];
    assert_eq!(spec["image"]["default"], pgml_api::cluster::DEFAULT_IMAGE);
    assert_eq!(spec["instances"]["default"], 1);
    assert_eq!(spec["replicas"]["default"]["seedFrom"], "Snapshot");
    let pgbr = &spec["backups"]["properties"]["pgbackrest"]["properties"];
    assert_eq!(pgbr["credentials"]["default"]["mode"], "InstanceRole");
    let snaps = &spec["backups"]["properties"]["snapshots"]["properties"];
    assert_eq!(snaps["source"]["default"], "Replica");
}

/// The Rust defaults (what the operator sees when a field is absent) equal the schema
/// defaults (what the apiserver stores): a minimal manifest deserialized in Rust equals the
/// same manifest after kube-cel applied the schema's defaults.
#[test]
fn rust_defaults_match_schema_defaults() {
    let minimal = [
        (
            "ZfsPool",
            "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {name: p}\nspec: {nodeName: n, volumes: {sizeGiB: 10}}",
        ),
        (
            "EbsSnapshot",
            "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {name: s}\nspec: {source: {zfsPool: {name: p}}}",
        ),
        (
            "PgmlCluster",
            "apiVersion: pgml.io/v1alpha1\nkind: PgmlCluster\nmetadata: {name: c}\nspec: {storage: {zfs: {template: {volumes: {sizeGiB: 10}}}}, backups: {pgbackrest: {s3: {bucket: bkt, region: us-east-1}}, snapshots: {}}}",
        ),
    ];
    for (kind, yaml) in minimal {
        let raw: Value = serde_yaml::from_str(yaml).unwrap();
        let rust = match kind {
            "ZfsPool" => {
                serde_json::to_value(serde_json::from_value::<ZfsPool>(raw.clone()).unwrap())
            }
            "EbsSnapshot" => {
                serde_json::to_value(serde_json::from_value::<EbsSnapshot>(raw.clone()).unwrap())
            }
            _ => serde_json::to_value(serde_json::from_value::<PgmlCluster>(raw.clone()).unwrap()),
        }
        .unwrap();
        let schema = schema_of(kind);
        let defaulted = kube_cel::apply_defaults(&schema, &raw);
        assert_eq!(
            rust["spec"], defaulted["spec"],
            "{kind}: Rust and schema defaults differ"
        );
    }
}
