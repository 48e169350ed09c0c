//! Pieces shared by the three kinds: conditions, tag maps and the schema helpers that keep
//! CEL rules within the apiserver's cost budget.

use std::collections::BTreeMap;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator, json_schema};

/// Condition types every kind reports.
pub mod condition {
    /// The object does what its spec asks (pool imported and healthy, snapshot completed,
    /// cluster serving with every instance ready).
    pub const READY: &str = "Ready";
    /// The operator or agent is working toward the spec (creating, attaching, resizing…).
    pub const PROGRESSING: &str = "Progressing";
    /// Serving, but with reduced redundancy or performance (a RAIDZ1 member lost, a replica
    /// down).
    pub const DEGRADED: &str = "Degraded";
    /// ZfsPool: every EBS volume is attached to the pool's node and its device is visible.
    pub const VOLUMES_ATTACHED: &str = "VolumesAttached";
    /// ZfsPool: a resilver is running after a member was replaced.
    pub const RESILVERING: &str = "Resilvering";
    /// PgmlCluster: WAL archiving to the pgBackRest repository works.
    pub const CONTINUOUS_ARCHIVING: &str = "ContinuousArchiving";
    /// PgmlCluster: the last scheduled snapshot or backup succeeded.
    pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
    /// PgmlCluster: the newest finished EbsSnapshot of the cluster (scheduled or made by a
    /// user; replica seeds excepted) is Completed.
    pub const LAST_SNAPSHOT_SUCCEEDED: &str = "LastSnapshotSucceeded";
    /// The spec is valid against checks the schema cannot express (see `crate::validate`).
    pub const SPEC_VALID: &str = "SpecValid";
    /// PgmlCluster: the `pgml` extension is created in the application database.
    pub const PGML_EXTENSION: &str = "PgmlExtension";
    /// ZfsPool: the volumes buy more IOPS or throughput than the instance type can use.
    pub const PERFORMANCE_LIMITED: &str = "PerformanceLimited";
    /// ZfsPool (agent): the pool is imported on the node.
    pub const POOL_IMPORTED: &str = "PoolImported";
    /// ZfsPool (agent): `zpool status` says ONLINE.
    pub const POOL_HEALTHY: &str = "PoolHealthy";
    /// ZfsPool (agent): every member's device was found on the node.
    pub const DEVICES_FOUND: &str = "DevicesFound";
    /// ZfsPool (agent): the pool was exported or destroyed for deletion; the controller may
    /// detach the volumes.
    pub const POOL_RELEASED: &str = "PoolReleased";

    /// `status` values of a condition.
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// Label and tag keys the operator sets on what it creates; users may not set them. The
/// AWS tags let the AWS side be rebuilt, audited and cleaned up from AWS alone, and let IAM
/// conditions restrict the operator to its own resources (`pgml.io/managed-by`).
pub mod keys {
    /// Prefix of every label, annotation and AWS tag key the operator owns.
    pub const PREFIX: &str = "pgml.io/";
    pub const MANAGED_BY: &str = "pgml.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "pgml-operator";
    /// On every volume and snapshot: which installation of the operator made it. The IAM
    /// policy compares it with the same tag on the operator's role, so two installations
    /// in one account cannot touch each other's volumes (docs/iam.md).
    pub const INSTALLATION: &str = "pgml.io/installation";
    /// UID of the ZfsPool a volume belongs to: what the controller finds its volumes by.
    pub const POOL_UID: &str = "pgml.io/pool-uid";
    pub const SNAPSHOT_UID: &str = "pgml.io/snapshot-uid";
    pub const LAYOUT: &str = "pgml.io/layout";
    /// AWS's display name tag.
    pub const NAME: &str = "Name";
    pub const CLUSTER: &str = "pgml.io/cluster";
    pub const INSTANCE: &str = "pgml.io/instance";
    pub const POOL: &str = "pgml.io/pool";
    pub const POOL_GUID: &str = "pgml.io/pool-guid";
    pub const MEMBER_INDEX: &str = "pgml.io/member-index";
    pub const SNAPSHOT: &str = "pgml.io/snapshot";
    pub const NAMESPACE: &str = "pgml.io/namespace";
    /// Label on an EbsSnapshot: the node whose agent prepares its capture.
    pub const NODE: &str = "pgml.io/node";
    /// Label on an EbsSnapshot a schedule created: `<Kind>.<name>` of the object whose
    /// schedule made it (see `crate::schedule::scheduled_by`). Retention deletes only
    /// objects carrying it, never snapshots made by hand.
    pub const SCHEDULED_BY: &str = "pgml.io/scheduled-by";
    /// Annotation on a scheduled EbsSnapshot: the schedule slot it was made for (RFC 3339,
    /// UTC).
    pub const SCHEDULE_SLOT: &str = "pgml.io/schedule-slot";
}

/// Extra AWS tags a user adds to what the operator creates.
pub type Tags = BTreeMap<String, String>;

/// Most user tags allowed on one object. AWS allows 50 per resource; the operator keeps the
/// rest for its own `pgml.io/*` tags.
pub const MAX_USER_TAGS: u32 = 40;

/// Schema of a user `tags` map: AWS's limits (keys 1–128, values 0–256 characters, no `aws:`
/// prefix) plus our reserved `pgml.io/` prefix. Keys have no `maxLength` in a structural
/// schema, so every key rule starts with a size check to bound the CEL cost.
pub fn tags_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_USER_TAGS,
        "additionalProperties": { "type": "string", "maxLength": 256 },
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, k.size() >= 1 && k.size() <= 128)",
                "message": "tag keys must be 1 to 128 characters long",
            },
            {
                "rule": "self.all(k, !k.startsWith('aws:') && !k.startsWith('pgml.io/'))",
                "message": "tag keys starting with aws: (AWS) or pgml.io/ (this operator) are reserved",
            }
        ]
    })
}

/// CEL for a field that is fixed once the object exists: setting, changing and removing it
/// are all refused. Written on the field's PARENT: a rule on the field itself (`self ==
/// oldSelf`) only runs when the field is in both the old and the new object, so adding or
/// removing an optional field would slip through. Pair it with `.field_path(".<field>")`.
pub(crate) fn fixed(field: &str) -> String {
    format!(
        "has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
    )
}

/// Serde helper for `#[serde(default = ...)]` on booleans that default to true.
pub(crate) fn yes() -> bool {
    true
}

/// Drops empty maps/lists from serialized specs so a round trip stays byte-identical.
pub(crate) fn is_empty_map<K, V>(m: &BTreeMap<K, V>) -> bool {
    m.is_empty()
}
