//! The CRD reference as Markdown, generated from the same schemas the apiserver enforces
//! (`make crds` writes `docs/reference/crds.md`; `make crds-check` fails when it is stale).
//!
//! One section per kind: the printer columns, then one table of `spec` fields and one of
//! `status` fields, each row a dotted path with its type, default, constraints and the
//! field's doc comment; the CEL rules with their messages follow their object.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use std::fmt::Write;

/// The whole reference page for these CRDs.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(
        "# CRD reference\n\n\
         Generated from the Rust types by `make crds` (do not edit). The same schemas are served \
         by the apiserver: `kubectl explain <kind>.spec --recursive` shows them too.\n\n",
    );
    for crd in crds {
        out.push_str(&kind_section(crd));
    }
    out
}

fn kind_section(crd: &CustomResourceDefinition) -> String {
    let names = &crd.spec.names;
    let mut out = String::new();
    for v in &crd.spec.versions {
        let _ = writeln!(out, "## {} ({}/{})\n", names.kind, crd.spec.group, v.name);
        let short = names.short_names.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "Scope: {}. Plural: `{}`{}.\n",
            crd.spec.scope,
            names.plural,
            if short.is_empty() {
                String::new()
            } else {
                format!("; short names: {}", code_list(&short))
            }
        );
        let Some(schema) = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        else {
            continue;
        };
        if let Some(d) = &schema.description {
            let _ = writeln!(out, "{}\n", one_paragraph(d));
        }
        if let Some(cols) = &v.additional_printer_columns {
            out.push_str("`kubectl get` columns:\n\n| Column | From | Meaning |\n|---|---|---|\n");
            for c in cols {
                let wide = if c.priority.unwrap_or(0) > 0 {
                    " (`-o wide`)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "| {}{wide} | `{}` | {} |",
                    c.name,
                    c.json_path,
                    cell(c.description.as_deref().unwrap_or(""))
                );
            }
            out.push('\n');
        }
        let mut whole = Vec::new();
        push_rules("(object)", schema, &mut whole);
        if !whole.is_empty() {
            out.push_str("Admission rules on the whole object (CEL):\n\n| On | Rule | Message |\n|---|---|---|\n");
            for r in whole {
                out.push_str(&r);
            }
            out.push('\n');
        }
        let props = schema.properties.clone().unwrap_or_default();
        for part in ["spec", "status"] {
            if let Some(p) = props.get(part) {
                let _ = writeln!(out, "### {}.{part}\n", names.kind);
                let mut rows = Vec::new();
                let mut rules = Vec::new();
                walk(part, p, &mut rows, &mut rules);
                out.push_str("| Field | Type | Required | Default | Constraints | Description |\n|---|---|---|---|---|---|\n");
                for r in rows {
                    out.push_str(&r);
                }
                out.push('\n');
                if !rules.is_empty() {
                    out.push_str(
                        "Admission rules (CEL):\n\n| On | Rule | Message |\n|---|---|---|\n",
                    );
                    for r in rules {
                        out.push_str(&r);
                    }
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// The CEL rules of one schema node, as rows of the rules table.
fn push_rules(path: &str, s: &JSONSchemaProps, rules: &mut Vec<String>) {
    for v in s.x_kubernetes_validations.iter().flatten() {
        let message = match (&v.message, &v.message_expression) {
            (Some(m), _) => m.clone(),
            (None, Some(e)) => format!("(computed) `{e}`"),
            (None, None) => String::new(),
        };
        let on = match &v.field_path {
            Some(f) => format!("`{path}` (reported at `{f}`)"),
            None => format!("`{path}`"),
        };
        rules.push(format!(
            "| {on} | `{}` | {} |\n",
            v.rule.replace('|', "\\|"),
            cell(&message)
        ));
    }
}

/// Adds a row for `path` and its children, and its CEL rules.
fn walk(path: &str, s: &JSONSchemaProps, rows: &mut Vec<String>, rules: &mut Vec<String>) {
    push_rules(path, s, rules);
    let req: Vec<String> = s.required.clone().unwrap_or_default();
    for (name, child) in s.properties.iter().flatten() {
        let p = format!("{path}.{name}");
        let is_req = req.iter().any(|r| r == name);
        rows.push(row(&p, child, is_req));
        if kubernetes_type(&p).is_none() {
            walk(&p, child, rows, rules);
        }
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &s.items
        && (item.properties.is_some() || item.x_kubernetes_validations.is_some())
    {
        walk(&format!("{path}[]"), item, rows, rules);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(v)) = &s.additional_properties
        && (v.properties.is_some() || v.x_kubernetes_validations.is_some())
    {
        walk(&format!("{path}.<key>"), v, rows, rules);
    }
}

fn row(path: &str, s: &JSONSchemaProps, required: bool) -> String {
    format!(
        "| `{path}` | {} | {} | {} | {} | {} |\n",
        type_of(path, s),
        if required { "yes" } else { "" },
        s.default
            .as_ref()
            .map(|d| format!("`{}`", d.0))
            .unwrap_or_default(),
        cell(&constraints(s).join(", ")),
        cell(&one_paragraph(s.description.as_deref().unwrap_or("")))
    )
}

/// Fields that embed a Kubernetes core type: their rows name the type instead of listing
/// its fields (`kubectl explain` has those).
const KUBERNETES_TYPES: &[(&str, &str)] = &[
    ("spec.affinity", "core/v1 Affinity"),
    ("spec.tolerations", "[]core/v1 Toleration"),
    ("spec.resources", "core/v1 ResourceRequirements"),
    ("status.conditions", "[]meta/v1 Condition"),
];

fn kubernetes_type(path: &str) -> Option<&'static str> {
    KUBERNETES_TYPES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| *t)
}

fn type_of(path: &str, s: &JSONSchemaProps) -> String {
    if let Some(t) = kubernetes_type(path) {
        return t.into();
    }
    if s.x_kubernetes_int_or_string == Some(true) {
        return "int or string".into();
    }
    let t = s.type_.clone().unwrap_or_else(|| "any".into());
    match (t.as_str(), &s.items) {
        ("array", Some(JSONSchemaPropsOrArray::Schema(i))) => {
            format!("[]{}", i.type_.clone().unwrap_or_else(|| "any".into()))
        }
        ("object", _) if s.additional_properties.is_some() && s.properties.is_none() => {
            "map".into()
        }
        _ => t,
    }
}

/// Everything the schema enforces on a field: its own bounds, how a list is merged, and
/// the bounds on each item of a list or value of a map (their rules are listed with the
/// CEL rules).
fn constraints(s: &JSONSchemaProps) -> Vec<String> {
    let mut c = own_constraints(s);
    match s.x_kubernetes_list_type.as_deref() {
        Some("map") => {
            let keys = s.x_kubernetes_list_map_keys.clone().unwrap_or_default();
            c.push(format!("list-map keyed by {}", code_list(&keys)));
        }
        Some("set") => c.push("set (items unique)".into()),
        _ => {}
    }
    if let Some(m) = s.min_properties {
        c.push(format!("keys ≥ {m}"));
    }
    if let Some(m) = s.max_properties {
        c.push(format!("keys ≤ {m}"));
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &s.items
        && item.properties.is_none()
    {
        let each = own_constraints(item);
        if !each.is_empty() {
            c.push(format!("each item: {}", each.join(", ")));
        }
    }
    if let Some(JSONSchemaPropsOrBool::Schema(v)) = &s.additional_properties
        && v.properties.is_none()
    {
        let each = own_constraints(v);
        if !each.is_empty() {
            c.push(format!("each value: {}", each.join(", ")));
        }
    }
    c
}

/// The bounds a schema node puts on its own value.
fn own_constraints(s: &JSONSchemaProps) -> Vec<String> {
    let mut c = Vec::new();
    if let Some(e) = &s.enum_ {
        let vals: Vec<String> = e.iter().map(|v| v.0.to_string()).collect();
        c.push(format!("one of {}", vals.join(", ")));
    }
    if let Some(m) = s.minimum {
        c.push(format!("≥ {m}"));
    }
    if let Some(m) = s.maximum {
        c.push(format!("≤ {m}"));
    }
    if let Some(m) = s.multiple_of {
        c.push(format!("multiple of {m}"));
    }
    if let Some(m) = s.min_length {
        c.push(format!("length ≥ {m}"));
    }
    if let Some(m) = s.max_length {
        c.push(format!("length ≤ {m}"));
    }
    if let Some(m) = s.min_items {
        c.push(format!("items ≥ {m}"));
    }
    if let Some(m) = s.max_items {
        c.push(format!("items ≤ {m}"));
    }
    if s.unique_items == Some(true) {
        c.push("items unique".into());
    }
    if let Some(p) = &s.pattern {
        c.push(format!("pattern `{p}`"));
    }
    if let Some(f) = &s.format {
        c.push(format!("format {f}"));
    }
    if s.nullable == Some(true) {
        c.push("nullable".into());
    }
    c
}

fn code_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Doc comments keep their line breaks in the schema; a table cell needs one line.
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(text: &str) -> String {
    one_paragraph(text).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Map value bounds, key counts and list-map keys are in the table, not only in the
    /// CRD.
    #[test]
    fn map_values_key_counts_and_list_map_keys_are_listed() {
        let md = markdown(&crate::crds());
        let tags = md
            .lines()
            .find(|l| l.starts_with("| `spec.tags` |") && l.contains("AWS tags on each snapshot"))
            .expect("EbsSnapshot spec.tags row");
        assert!(tags.contains("keys ≤ 40"), "{tags}");
        assert!(tags.contains("each value: length ≤ 256"), "{tags}");
        let conditions = md
            .lines()
            .find(|l| l.starts_with("| `status.conditions` |"))
            .expect("a status.conditions row");
        assert!(
            conditions.contains("list-map keyed by `type`"),
            "{conditions}"
        );
        // Rules on the whole object (the name's, fields fixed once created) are listed too.
        assert!(md.contains("Admission rules on the whole object (CEL)"));
        assert!(
            md.contains("a PgmlCluster name must be a DNS label"),
            "{md}"
        );
    }

    #[test]
    fn every_kind_has_spec_and_status_tables_with_defaults_and_rules() {
        let md = markdown(&crate::crds());
        for kind in ["PgmlCluster", "ZfsPool", "EbsSnapshot"] {
            assert!(
                md.contains(&format!("## {kind} (pgml.io/v1alpha1)")),
                "{kind}"
            );
            assert!(md.contains(&format!("### {kind}.spec")), "{kind} spec");
            assert!(md.contains(&format!("### {kind}.status")), "{kind} status");
        }
        // A field with a schema default, an enum and a CEL message make it through.
        assert!(md.contains("| `spec.layout` |"), "{md}");
        assert!(
            md.contains("one of \"raid0\", \"raidz1\""),
            "enum of layout"
        );
        assert!(md.contains("Admission rules (CEL)"));
        // Embedded Kubernetes types are named, not expanded.
        assert!(
            md.contains("| `spec.affinity` | core/v1 Affinity |"),
            "affinity row"
        );
        assert!(
            !md.contains("spec.affinity.nodeAffinity"),
            "affinity expanded"
        );
        assert!(!md.contains("status.conditions[].lastTransitionTime"));
        // Table rows never break: no raw newline inside a row.
        for line in md.lines().filter(|l| l.starts_with("| `")) {
            assert!(line.ends_with(" |"), "broken row: {line}");
        }
    }
}
