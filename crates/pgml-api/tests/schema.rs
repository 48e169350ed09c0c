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
                for receiver in iterated(r) {
                    let bounded = match receiver {
                        Iterated::Literal => true,
                        Iterated::Field(field) => {
                            let mut at = node.clone();
                            for part in field.split('.').filter(|p| !p.is_empty()) {
                                at = at["properties"][part].clone();
                            }
                            at.get("maxItems").is_some() || at.get("maxProperties").is_some()
                        }
                        Iterated::Unknown(what) => panic!("{path}: {r} iterates {what}"),
                    };
                    assert!(bounded, "{path}: {r} iterates an unbounded collection");
                }
            }
        });
        assert!(count > 0, "{kind} has no rules");
    }
}

/// What a rule's `.all(`, `.exists(` and `.exists_one(` iterate.
#[derive(Debug)]
enum Iterated {
    /// A list written in the rule (`['exec', 'setuid'].all(…)`).
    Literal,
    /// A field below the rule's node (`""` for the node itself).
    Field(String),
    /// Anything else (a comprehension variable…): the test cannot bound it.
    Unknown(String),
}

fn iterated(rule: &str) -> Vec<Iterated> {
    let mut out = Vec::new();
    for macro_ in [".all(", ".exists(", ".exists_one("] {
        for (at, _) in rule.match_indices(macro_) {
            let head = &rule[..at];
            if head.ends_with(']') {
                out.push(Iterated::Literal);
                continue;
            }
            let start = head
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .map_or(0, |i| i + 1);
            let receiver = &head[start..];
            out.push(match receiver.strip_prefix("self") {
                Some(field) if field.is_empty() || field.starts_with('.') => {
                    Iterated::Field(field.trim_start_matches('.').to_string())
                }
                _ => Iterated::Unknown(receiver.to_string()),
            });
        }
    }
    out
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
        "cannot change once the dataset exists",
        "must be below the pool's own directory",
        "ZFS native properties are limited to",
        "exec and setuid may only be set to off",
        "PostgreSQL parameter values cannot contain control characters",
        "pg_hba lines cannot use the trust method",
        "pg_hba lines cannot contain control characters other than tab",
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

/// The field paths a CEL rule reads below its node: `self.volumes.count` and
/// `has(oldSelf.kmsKeyId)` read `volumes.count` and `kmsKeyId`; a method call ends a path
/// (`self.datasets.all(…)` reads `datasets`, `self.matches(…)` nothing).
fn paths_read(rule: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut paths = Vec::new();
    for start in ["self.", "oldSelf."] {
        for (at, _) in rule.match_indices(start) {
            if rule[..at].chars().next_back().is_some_and(ident) {
                continue; // the tail of another identifier
            }
            let rest = &rule[at + start.len()..];
            let mut segments: Vec<&str> = Vec::new();
            let mut tail = rest;
            loop {
                let len = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
                if len == 0 {
                    break;
                }
                let (segment, after) = tail.split_at(len);
                if after.starts_with('(') {
                    break; // a method, not a field
                }
                segments.push(segment);
                match after.strip_prefix('.') {
                    Some(next) => tail = next,
                    None => break,
                }
            }
            if !segments.is_empty() {
                paths.push(segments.join("."));
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

#[test]
fn paths_read_by_a_rule() {
    assert_eq!(
        paths_read("self.layout != 'raidz1' || self.volumes.count == oldSelf.volumes.count"),
        ["layout", "volumes.count"]
    );
    assert_eq!(
        paths_read("self.datasets.exists(d, d.name == 'pgdata')"),
        ["datasets"]
    );
    assert_eq!(
        paths_read("self.all(k, k.size() <= 63)"),
        Vec::<String>::new()
    );
    assert_eq!(
        paths_read("has(self.spec.poolName) || self.metadata.name.matches('^a$')"),
        ["metadata.name", "spec.poolName"]
    );
}

/// Every CEL rule on an object that reads its fields says which field is wrong: it has a
/// `fieldPath` naming a field it reads (the apiserver then reports the error at that field),
/// or, when it relates several fields at once (exactly one of…, a sum), its message names
/// every field it reads. A rule on one field (`self == oldSelf` on the field, a map's keys)
/// is reported at that field already. The object's `metadata` has no fields in the schema
/// for a fieldPath to name: rules reading `metadata.name` name it in their message instead.
#[test]
fn every_rule_on_a_nested_field_names_the_field() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for kind in ["ZfsPool", "EbsSnapshot", "PgmlCluster"] {
        walk(kind, &schema_of(kind), &mut |path, node| {
            for rule in node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = rule["rule"].as_str().unwrap();
                let message = rule["message"].as_str().unwrap_or_default();
                let read = paths_read(text);
                let fields: Vec<&String> =
                    read.iter().filter(|p| !p.starts_with("metadata")).collect();
                if fields.is_empty() {
                    continue;
                }
                checked += 1;
                let reads_metadata = fields.len() < read.len();
                let ok = match rule.get("fieldPath").and_then(Value::as_str) {
                    Some(fp) => {
                        let fp = fp.strip_prefix('.').unwrap_or(fp);
                        fields
                            .iter()
                            .any(|f| *f == fp || f.starts_with(&format!("{fp}.")))
                    }
                    None => {
                        (fields.len() > 1 || reads_metadata)
                            && fields
                                .iter()
                                .all(|f| message.contains(f.rsplit('.').next().unwrap()))
                    }
                };
                if !ok {
                    failures.push(format!(
                        "{path}: {text:?} (fieldPath {:?}) reads {fields:?}",
                        rule.get("fieldPath")
                    ));
                }
            }
        });
    }
    assert!(checked >= 40, "only {checked} rules read nested fields");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A transition rule written on a field itself (`self == oldSelf` there) only runs when the
/// field is in both the old and the new object: adding or removing an optional field would
/// slip through. Such rules are only allowed on fields that are always present (required,
/// or defaulted by the schema); fixed optional fields are guarded from their parent.
#[test]
fn transition_rules_on_a_field_only_where_it_is_always_present() {
    let mut failures = Vec::new();
    for kind in ["ZfsPool", "EbsSnapshot", "PgmlCluster"] {
        let schema = schema_of(kind);
        let mut check = |path: &str, parent: &Value| {
            let required: Vec<&str> = parent
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for (name, field) in parent
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                // A rule comparing the field's whole value with its old one (rules on an
                // object's own fields, like a size that may only grow, are not about the
                // object being there).
                let transition = field
                    .get("x-kubernetes-validations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|r| r["rule"].as_str().unwrap())
                    .any(|r| r.contains("oldSelf") && paths_read(r).is_empty());
                let always_there =
                    required.contains(&name.as_str()) || field.get("default").is_some();
                if transition && !always_there {
                    failures.push(format!("{path}.{name}"));
                }
            }
        };
        walk(kind, &schema, &mut check);
    }
    assert!(
        failures.is_empty(),
        "transition rules on optional fields (move them to the parent, see common::fixed): {failures:?}"
    );
}

/// The fields fixed once the object exists: each has a rule on its parent that catches it
/// being set, changed or removed (`has(self.f) == has(oldSelf.f) && …`), reported at the
/// field, with a manifest in tests/manifests/invalid for each way.
#[test]
fn fixed_fields_are_guarded_from_their_parent() {
    for (kind, parent, field) in [
        ("ZfsPool", "spec", "nodeName"),
        ("ZfsPool", "spec", "poolName"),
        ("ZfsPool", "spec", "restoreFrom"),
        ("ZfsPool", "spec", "layout"),
        ("ZfsPool", "spec.volumes", "encrypted"),
        ("ZfsPool", "spec.volumes", "kmsKeyId"),
        ("ZfsPool", "spec.datasets[]", "mountPoint"),
        ("EbsSnapshot", "spec", "source"),
        ("EbsSnapshot", "spec", "standbySignal"),
        ("EbsSnapshot", "spec", "consistency"),
        ("PgmlCluster", "spec.storage.zfs.template", "layout"),
        (
            "PgmlCluster",
            "spec.storage.zfs.template.volumes",
            "encrypted",
        ),
        (
            "PgmlCluster",
            "spec.storage.zfs.template.volumes",
            "kmsKeyId",
        ),
    ] {
        let mut node = schema_of(kind);
        for part in parent.split('.') {
            node = match part.strip_suffix("[]") {
                Some(list) => node["properties"][list]["items"].clone(),
                None => node["properties"][part].clone(),
            };
        }
        let rules = node["x-kubernetes-validations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let expected = format!(
            "has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
        );
        let rule = rules
            .iter()
            .find(|r| r["rule"] == expected.as_str())
            .unwrap_or_else(|| panic!("{kind} {parent}: no rule fixes {field}"));
        assert_eq!(
            rule["fieldPath"],
            format!(".{field}"),
            "{kind} {parent}.{field}"
        );
    }
}

/// The allowlist of native ZFS properties is the one list admission and the operator use,
/// and `kubectl explain` shows it.
#[test]
fn zfs_property_allowlist_is_documented_and_enforced() {
    use pgml_api::zfspool::{ZFS_NATIVE_PROPERTIES, ZFS_OFF_ONLY_PROPERTIES};
    let pool = schema_of("ZfsPool");
    let spec = &pool["properties"]["spec"]["properties"];
    let doc = spec["datasets"]["items"]["properties"]["properties"]["description"]
        .as_str()
        .unwrap();
    for name in ZFS_NATIVE_PROPERTIES {
        assert!(
            doc.contains(name),
            "the properties doc does not list {name}"
        );
    }
    for name in ZFS_OFF_ONLY_PROPERTIES {
        assert!(doc.contains(&format!("{name} (off only)")), "{name}");
    }
    for refused in ["sharenfs", "sharesmb", "devices", "keylocation"] {
        assert!(!ZFS_NATIVE_PROPERTIES.contains(&refused), "{refused}");
        assert!(
            doc.contains(refused),
            "the doc does not say {refused} is refused"
        );
    }
    for maps in [
        &spec["filesystemProperties"],
        &spec["datasets"]["items"]["properties"]["properties"],
    ] {
        let rules = maps["x-kubernetes-validations"].to_string();
        for name in ZFS_NATIVE_PROPERTIES {
            assert!(
                rules.contains(&format!("'{name}'")),
                "{name} not in the rule"
            );
        }
    }
}

/// The admission policy file in crds/ is what `pgml_api::policy` generates, and every field
/// it guards tells `kubectl explain` readers about the annotation.
#[test]
fn admission_policy_is_up_to_date_and_documented() {
    let path = repo_root()
        .join("crds")
        .join(pgml_api::policy::policy_file_name());
    let stored =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        stored.split_once('\n').unwrap().1,
        pgml_api::policy::policy_yaml(),
        "{} is stale: run `make crds`",
        path.display()
    );
    for (kind, path, _) in pgml_api::policy::GUARDED_FIELDS {
        let mut node = schema_of(kind);
        for part in path.split('.') {
            node = node["properties"][part].clone();
        }
        let doc = node["description"].as_str().unwrap_or_default();
        assert!(
            doc.contains(pgml_api::policy::ALLOW_DELETE_POLICY_ANNOTATION)
                && doc.contains("Retain"),
            "{kind} {path}: the doc does not mention the annotation"
        );
        let values = node["enum"].as_array().cloned().unwrap_or_default();
        assert!(
            values.contains(&"Retain".into()) && values.contains(&"Delete".into()),
            "{kind} {path} is not a Retain/Delete field"
        );
    }
}
