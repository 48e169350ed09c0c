//! The admission check a CRD cannot make: turning a `Retain` policy into `Delete` needs an
//! annotation that confirms it.
//!
//! A CRD's CEL rules see `metadata.name` and `metadata.generateName` of the object and no
//! other metadata, so they cannot read an annotation. A ValidatingAdmissionPolicy can (it
//! sees the whole object and the stored one), and the apiserver runs it with no webhook: it
//! ships next to the CRDs (`crds/retain-to-delete.pgml.io.yaml`, written by `make crds`),
//! so whoever installs the CRDs installs it too.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation that confirms a change from `Retain` to `Delete`, with the value `"true"`,
/// on the object being changed (in the same update). It stays on the object: remove it
/// afterwards to make the next such change deliberate again.
pub const ALLOW_DELETE_POLICY_ANNOTATION: &str = "pgml.io/allow-delete-policy";

/// Name of the ValidatingAdmissionPolicy and of its binding.
pub const POLICY_NAME: &str = "retain-to-delete.pgml.io";

/// The fields whose `Retain` → `Delete` change is refused without the annotation: the kind,
/// the field's path in the object, and what `Delete` then deletes.
pub const GUARDED_FIELDS: &[(&str, &str, &str)] = &[
    (
        "ZfsPool",
        "spec.reclaimPolicy",
        "deleting the ZfsPool deletes its EBS volumes",
    ),
    (
        "ZfsPool",
        "spec.snapshots.deletionPolicy",
        "retention deletes the AWS snapshots of the EbsSnapshots it prunes",
    ),
    (
        "EbsSnapshot",
        "spec.deletionPolicy",
        "deleting the EbsSnapshot deletes its AWS snapshots",
    ),
    (
        "PgmlCluster",
        "spec.storage.zfs.template.reclaimPolicy",
        "deleting the cluster or one of its instances deletes the instance's EBS volumes",
    ),
    (
        "PgmlCluster",
        "spec.backups.snapshots.deletionPolicy",
        "retention deletes the AWS snapshots of the EbsSnapshots it prunes",
    ),
];

/// `has(x.a) && has(x.a.b) && …`: CEL's `has` needs every parent present.
fn present(root: &str, path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    (1..=parts.len())
        .map(|n| format!("has({root}.{})", parts[..n].join(".")))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// The expression that refuses `path` going from Retain to Delete on `kind` unless the
/// annotation confirms it.
pub fn expression(kind: &str, path: &str) -> String {
    let a = ALLOW_DELETE_POLICY_ANNOTATION;
    format!(
        "object.kind != '{kind}' || !({old} && oldObject.{path} == 'Retain' && {new} && object.{path} == 'Delete') || (has(object.metadata.annotations) && '{a}' in object.metadata.annotations && object.metadata.annotations['{a}'] == 'true')",
        old = present("oldObject", path),
        new = present("object", path),
    )
}

/// The message of the refusal of `path`; `consequence` says what Delete deletes.
pub fn message(path: &str, consequence: &str) -> String {
    format!(
        "{path} cannot change from Retain to Delete without the annotation {ALLOW_DELETE_POLICY_ANNOTATION}: \"true\" (with Delete, {consequence})"
    )
}

/// The policy: on every update of the three kinds, each guarded field.
///
/// ZfsPools a PgmlCluster owns are left out: the cluster controller applies their spec
/// from the cluster's template, whose own change is the one guarded.
pub fn validating_admission_policy() -> ValidatingAdmissionPolicy {
    let s = |v: &str| v.to_string();
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(s(POLICY_NAME)),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some(s("Fail")),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![s(crate::GROUP)]),
                    api_versions: Some(vec![s(crate::VERSION)]),
                    operations: Some(vec![s("UPDATE")]),
                    resources: Some(vec![s("zfspools"), s("ebssnapshots"), s("pgmlclusters")]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: s("not-a-pgmlcluster-pool"),
                expression: s(
                    "object.kind != 'ZfsPool' || !has(object.metadata.ownerReferences) || !object.metadata.ownerReferences.exists(r, r.kind == 'PgmlCluster' && has(r.controller) && r.controller)",
                ),
            }]),
            validations: Some(
                GUARDED_FIELDS
                    .iter()
                    .map(|(kind, path, consequence)| Validation {
                        expression: expression(kind, path),
                        message: Some(message(path, consequence)),
                        reason: Some(s("Invalid")),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// The binding that puts the policy in force everywhere, denying what it refuses.
pub fn validating_admission_policy_binding() -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(POLICY_NAME.to_string()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(POLICY_NAME.to_string()),
            validation_actions: Some(vec!["Deny".to_string()]),
            ..Default::default()
        }),
    }
}

/// The policy and its binding as one YAML file, the way `crds/` stores it.
pub fn policy_yaml() -> String {
    let policy = serde_yaml::to_string(&validating_admission_policy()).expect("serializes");
    let binding =
        serde_yaml::to_string(&validating_admission_policy_binding()).expect("serializes");
    crate::quote_yaml11_booleans(&format!("{policy}---\n{binding}"))
}

/// File name of [`policy_yaml`] in `crds/`.
pub fn policy_file_name() -> String {
    format!("{POLICY_NAME}.yaml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_checked_level_by_level() {
        assert_eq!(
            present("object", "spec.snapshots.deletionPolicy"),
            "has(object.spec) && has(object.spec.snapshots) && has(object.spec.snapshots.deletionPolicy)"
        );
    }

    #[test]
    fn every_guarded_field_has_a_validation() {
        let policy = validating_admission_policy();
        let validations = policy.spec.unwrap().validations.unwrap();
        assert_eq!(validations.len(), GUARDED_FIELDS.len());
        for (v, (_, path, _)) in validations.iter().zip(GUARDED_FIELDS) {
            assert!(
                v.expression
                    .contains(&format!("oldObject.{path} == 'Retain'"))
            );
            assert!(v.message.as_deref().unwrap().starts_with(path));
        }
    }
}
