//! The examples and the invalid manifests against the generated schemas, without an
//! apiserver: CEL rules are evaluated with kube-cel (schema defaults applied first, as the
//! apiserver does), then, on an update, the admission policy that ships with the CRDs
//! (`pgml_api::policy`), and every example deserializes into the Rust types and back. The
//! same manifests go to the real kube-apiserver in `tests/e2e/tests/api_admission.rs`; this
//! is the fast loop.

mod common;

use common::*;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use serde_json::Value;

/// What the apiserver's admission refuses of `object` (an update of `old` when given): the
/// schema's CEL rules, then, when they pass, the ValidatingAdmissionPolicy.
fn cel(object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    let kind = object["kind"].as_str().unwrap();
    kube_cel::Validator::new()
        .validate(&schema_of(kind), object, old)
        .map_err(|errs| {
            errs.into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message))
                .collect::<Vec<_>>()
        })?;
    let refused = old.map(|old| policy(object, old)).unwrap_or_default();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused)
    }
}

/// The messages of `pgml_api::policy`'s validations that refuse the update `old` → `object`
/// (both with the schema's defaults, as the apiserver has them by then). Evaluated with the
/// `cel` crate and kube-cel's functions, not kube-cel's `VapEvaluator`, which escapes map
/// keys as if they were field names (an annotation `pgml.io/x` would not be found); the
/// apiserver does not.
fn policy(object: &Value, old: &Value) -> Vec<String> {
    use kube_cel::KubeCelExt;
    use kube_cel::cel::{Context, Program, Value as Cel};
    let schema = schema_of(object["kind"].as_str().unwrap());
    let mut ctx = Context::default().with_all();
    ctx.add_variable("object", kube_cel::apply_defaults(&schema, object))
        .unwrap();
    ctx.add_variable("oldObject", kube_cel::apply_defaults(&schema, old))
        .unwrap();
    let holds = |expression: &str| -> Result<bool, String> {
        match Program::compile(expression)
            .map_err(|e| e.to_string())?
            .execute(&ctx)
        {
            Ok(Cel::Bool(b)) => Ok(b),
            other => Err(format!("{expression}: {other:?}")),
        }
    };
    let spec = pgml_api::policy::validating_admission_policy()
        .spec
        .unwrap();
    let name = pgml_api::policy::POLICY_NAME;
    for condition in spec.match_conditions.unwrap_or_default() {
        match holds(&condition.expression) {
            Ok(true) => {}
            Ok(false) => return Vec::new(),
            // failurePolicy Fail: an error refuses the request.
            Err(e) => return vec![format!("policy {name}: {e}")],
        }
    }
    spec.validations
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| match holds(&v.expression) {
            Ok(true) => None,
            Ok(false) => Some(format!("policy {name}: {}", v.message.unwrap_or_default())),
            Err(e) => Some(format!("policy {name}: {e}")),
        })
        .collect()
}

#[test]
fn examples_cover_every_kind_layout_and_volume_type() {
    let texts: Vec<String> = yaml_files("examples")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for needle in [
        "kind: ZfsPool",
        "kind: EbsSnapshot",
        "kind: PgmlCluster",
        "layout: raid0",
        "layout: raidz1",
        "type: gp3",
        "type: io2",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(needle)),
            "no example has {needle:?}"
        );
    }
}

#[test]
fn examples_pass_every_cel_rule() {
    for path in yaml_files("examples") {
        let obj = load(&path);
        if let Err(e) = cel(&obj, None) {
            panic!("{}: {e:?}", path.display());
        }
        // Re-applying the same object is an update: transition rules must accept it too.
        if let Err(e) = cel(&obj, Some(&obj)) {
            panic!("{} (as an update to itself): {e:?}", path.display());
        }
    }
}

/// Deserializes an example into its Rust type and serializes it back: every field the
/// example sets must come back with the same value (defaults may be added, nothing lost).
#[test]
fn examples_round_trip_through_the_rust_types() {
    for path in yaml_files("examples") {
        let obj = load(&path);
        let back = match obj["kind"].as_str().unwrap() {
            "ZfsPool" => {
                serde_json::to_value(serde_json::from_value::<ZfsPool>(obj.clone()).unwrap())
            }
            "EbsSnapshot" => {
                serde_json::to_value(serde_json::from_value::<EbsSnapshot>(obj.clone()).unwrap())
            }
            "PgmlCluster" => {
                serde_json::to_value(serde_json::from_value::<PgmlCluster>(obj.clone()).unwrap())
            }
            k => panic!("unknown kind {k}"),
        }
        .unwrap();
        if let Some(diff) = missing_or_changed(&obj["spec"], &back["spec"], "spec") {
            panic!("{}: {diff}", path.display());
        }
    }
}

#[test]
fn there_are_enough_invalid_cases_and_updates() {
    let cases = invalid_cases();
    assert!(cases.len() >= 22, "only {} invalid manifests", cases.len());
    assert!(
        cases.iter().filter(|c| c.before.is_some()).count() >= 5,
        "too few update cases"
    );
    for case in &cases {
        if let Some(before) = &case.before {
            assert_eq!(
                before["metadata"]["name"],
                case.object["metadata"]["name"],
                "{}: an update must keep the name",
                case.name()
            );
            assert_eq!(
                cel(before, None),
                Ok(()),
                "{}: the object created first must be valid",
                case.name()
            );
        }
    }
}

/// Every case whose rule is CEL fails with exactly its own message (and no other rule
/// fires, so each manifest tests one rule).
#[test]
fn invalid_cases_fail_their_cel_rule() {
    let mut failures = Vec::new();
    for case in invalid_cases().iter().filter(|c| !c.is_openapi()) {
        match cel(&case.object, case.before.as_ref()) {
            Ok(()) => failures.push(format!(
                "{}: accepted, expected {:?}",
                case.name(),
                case.expect
            )),
            Err(errs) if errs.len() == 1 && errs[0].contains(&case.expect) => {}
            Err(errs) => failures.push(format!(
                "{}: expected only {:?}, got {errs:?}",
                case.name(),
                case.expect
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// OpenAPI-constraint cases must not trip a CEL rule as well: the apiserver would then
/// report two errors and the case would not isolate its rule.
#[test]
fn openapi_cases_pass_cel() {
    for case in invalid_cases().iter().filter(|c| c.is_openapi()) {
        let res = cel(&case.object, case.before.as_ref());
        // Enum and unknown-field cases hold values CEL cannot compare; only check the rest.
        if !case.expect.starts_with("Unsupported") {
            assert_eq!(res, Ok(()), "{}", case.name());
        }
    }
}

/// A cluster whose `postgresql` is `postgresql`, for the tests below.
fn cluster_with(postgresql: Value) -> Value {
    serde_json::json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "PgmlCluster",
        "metadata": {"name": "c"},
        "spec": {"storage": {"persistentVolumeClaim": {"size": "10Gi"}}, "postgresql": postgresql}
    })
}

/// Admission and the operator's own check (`validate::check_postgresql`, run on objects
/// admitted before these rules) refuse the same parameter values and pg_hba lines.
#[test]
fn postgresql_rules_and_the_operator_check_agree() {
    let verdicts = |postgresql: Value| {
        let object = cluster_with(postgresql);
        let admitted = cel(&object, None).is_ok();
        let typed: PgmlCluster = serde_json::from_value(object).unwrap();
        let checked = pgml_api::validate::check_postgresql(&typed.spec.postgresql).is_empty();
        (admitted, checked)
    };
    let mut chars: Vec<char> = (0u8..128).map(char::from).collect();
    chars.extend(['\u{85}', '\u{a0}', '\u{2028}', 'é']);
    for c in chars {
        let value = format!("a{c}b");
        let (admitted, checked) = verdicts(serde_json::json!({"parameters": {"work_mem": value}}));
        assert_eq!(admitted, checked, "parameter value with {c:?}");
        assert_eq!(
            admitted,
            !c.is_ascii_control(),
            "parameter value with {c:?}"
        );
        let line = format!("host all all 10.0.0.0/8 scram-sha-256{c}x");
        let (admitted, checked) = verdicts(serde_json::json!({"pgHba": [line]}));
        assert_eq!(admitted, checked, "pg_hba line with {c:?}");
    }
    for (line, refused) in [
        ("host all all 10.0.0.0/8 trust", true),
        ("host all all 10.0.0.0/8 TRUST", true),
        ("host all all 10.0.0.0/8 Trust", true),
        ("host all all 10.0.0.0/8 \"trust\"", true),
        ("host all all 10.0.0.0/8 t\"rus\"t", true),
        ("local\tall\tall\ttrust", true),
        ("host all all 10.0.0.0/8 trust ", true),
        ("host all trust 10.0.0.0/8 scram-sha-256", true),
        ("host all dba,trust 10.0.0.0/8 scram-sha-256", true),
        ("host all all 10.0.0.0/8 cert # trust me", true),
        ("host all all 10.0.0.0/8 scram-sha-256", false),
        ("host all trusted 10.0.0.0/8 scram-sha-256", false),
        ("host all all 10.0.0.0/8 mistrust", false),
        ("host all all 10.0.0.0/8 tru\u{17f}t", false),
        ("hostssl all all 10.0.0.0/8 cert", false),
    ] {
        let (admitted, checked) = verdicts(serde_json::json!({"pgHba": [line]}));
        assert_eq!(admitted, checked, "{line:?}");
        assert_eq!(admitted, !refused, "{line:?}");
    }
}

/// A change of policy from Retain to Delete goes through with the annotation, and in the
/// other direction always; a PgmlCluster's own pools follow its template; nothing else is
/// touched by the policy.
#[test]
fn retain_to_delete_goes_through_when_confirmed() {
    let pool = |policy: &str, annotations: Value, owners: Value| {
        serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1",
            "kind": "ZfsPool",
            "metadata": {"name": "p", "annotations": annotations, "ownerReferences": owners},
            "spec": {"nodeName": "n", "volumes": {"sizeGiB": 10}, "reclaimPolicy": policy}
        })
    };
    let none = serde_json::json!({});
    let no_owner = serde_json::json!([]);
    let retain = pool("Retain", none.clone(), no_owner.clone());
    let refused = cel(
        &pool("Delete", none.clone(), no_owner.clone()),
        Some(&retain),
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.len() == 1
            && e[0].contains("spec.reclaimPolicy cannot change from Retain to Delete")),
        "{refused:?}"
    );
    let confirmed = serde_json::json!({"pgml.io/allow-delete-policy": "true"});
    assert_eq!(
        cel(&pool("Delete", confirmed, no_owner.clone()), Some(&retain)),
        Ok(())
    );
    let not_true = serde_json::json!({"pgml.io/allow-delete-policy": "yes"});
    assert!(cel(&pool("Delete", not_true, no_owner.clone()), Some(&retain)).is_err());
    assert_eq!(
        cel(
            &retain,
            Some(&pool("Delete", none.clone(), no_owner.clone()))
        ),
        Ok(()),
        "Delete to Retain needs nothing"
    );
    assert_eq!(
        cel(&pool("Delete", none.clone(), no_owner.clone()), None),
        Ok(()),
        "created with Delete"
    );
    let owned = serde_json::json!([{"apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
        "name": "main", "uid": "u", "controller": true}]);
    assert_eq!(
        cel(
            &pool("Delete", none.clone(), owned.clone()),
            Some(&pool("Retain", none.clone(), owned))
        ),
        Ok(()),
        "a PgmlCluster's pool follows its template"
    );
    let not_controller = serde_json::json!([{"apiVersion": "pgml.io/v1alpha1",
        "kind": "PgmlCluster", "name": "main", "uid": "u"}]);
    assert!(
        cel(
            &pool("Delete", none.clone(), not_controller.clone()),
            Some(&pool("Retain", none, not_controller))
        )
        .is_err()
    );
}

/// The examples read as one installation: an EbsSnapshot's source is an object another
/// example makes (a PgmlCluster, a ZfsPool, or the claim `<cluster>-<n>` the operator
/// makes for instance n of a cluster on PVCs), and a dataset's `mountPoint` is a path
/// below the agent's mount root inside the pool's own directory, not a host path.
#[test]
fn examples_name_only_objects_the_examples_make() {
    let all: Vec<Value> = yaml_files("examples").iter().map(|p| load(p)).collect();
    let of = |kind: &'static str| all.iter().filter(move |o| o["kind"] == kind);
    let name = |o: &Value| o["metadata"]["name"].as_str().unwrap().to_string();
    let clusters: Vec<String> = of("PgmlCluster").map(name).collect();
    let pools: Vec<String> = of("ZfsPool").map(name).collect();
    let claims: Vec<String> = of("PgmlCluster")
        .filter(|c| c["spec"]["storage"]["persistentVolumeClaim"].is_object())
        .flat_map(|c| {
            let n = c["spec"]["instances"].as_u64().unwrap_or(1);
            let cluster = name(c);
            (1..=n).map(move |i| format!("{cluster}-{i}"))
        })
        .collect();
    for snap in of("EbsSnapshot") {
        let src = &snap["spec"]["source"];
        let (known, wanted) = if let Some(c) = src["cluster"]["name"].as_str() {
            (&clusters, c)
        } else if let Some(p) = src["zfsPool"]["name"].as_str() {
            (&pools, p)
        } else {
            (
                &claims,
                src["persistentVolumeClaim"]["name"].as_str().unwrap(),
            )
        };
        assert!(
            known.iter().any(|k| k == wanted),
            "EbsSnapshot {} names {wanted}, which no example makes (known: {known:?})",
            name(snap)
        );
    }
    for pool in of("ZfsPool") {
        let pool_name = pool["spec"]["poolName"]
            .as_str()
            .map_or_else(|| name(pool), str::to_string);
        for d in pool["spec"]["datasets"].as_array().into_iter().flatten() {
            if let Some(mp) = d["mountPoint"].as_str() {
                assert!(
                    mp.starts_with(&format!("/{pool_name}/")),
                    "ZfsPool {}: mountPoint {mp} is not below /{pool_name}/",
                    name(pool)
                );
            }
        }
    }
}
