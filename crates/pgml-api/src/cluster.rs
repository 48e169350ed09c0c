//! `PgmlCluster`: a PostgresML primary with streaming replicas, each instance on its own
//! node with its own storage (a ZfsPool of EBS volumes, or an ext4 PVC).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Time, fixed, is_empty_map};
pub use crate::schedule::SnapshotRetention;
use crate::schedule::{CRON_MESSAGE, CRON_RULE, ScheduleStatus, SnapshotSchedule};
use crate::zfspool::ZfsPoolTemplate;

/// PostgresML's published image (Ubuntu, PostgreSQL 15 with the pgml extension).
pub const DEFAULT_IMAGE: &str = "ghcr.io/postgresml/postgresml:2.10.0";

/// Parameters the operator sets itself; a user value would break replication or backups.
pub const MANAGED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "data_directory",
    "hba_file",
    "ident_file",
    "config_file",
    "archive_mode",
    "archive_command",
    "restore_command",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// Admission's rule on parameter values: no ASCII control character (C0 or DEL). A
/// newline would end the `name = 'value'` line and start another of the user's making; a
/// NUL cuts it. Refused, never rewritten; [`crate::validate::check_cluster`] refuses the
/// same set ([`char::is_ascii_control`]) for objects admitted before the rule.
pub const PARAMETER_VALUE_RULE: &str = r"self.all(k, !self[k].matches('[\\x00-\\x1f\\x7f]'))";
pub const PARAMETER_VALUE_MESSAGE: &str = "PostgreSQL parameter values cannot contain control characters (newline, carriage return, tab, NUL…)";

/// pg_hba.conf authentication methods refused in `pgHba`: `trust` lets anyone who reaches
/// the port in as any role, password or not.
pub const PG_HBA_REFUSED_METHODS: &[&str] = &["trust"];

/// Admission's rule on `pgHba` lines: none of [`PG_HBA_REFUSED_METHODS`] as a field, in
/// any ASCII case, quoted or not. PostgreSQL drops the quotes of a token (`"trust"`, even
/// `t"rus"t`, is the method trust), so the quotes are removed before looking; fields are
/// separated by PostgreSQL's blanks (space, tab, CR, LF), lists within a field by commas.
/// A database or role literally named trust is refused too: a false alarm is the price of
/// never missing the method. [`crate::validate::pg_hba_refused_method`] is the same test.
pub fn pg_hba_method_rule() -> String {
    // `[tT][rR]…` rather than `(?i)`: Unicode case folding (RE2's and Rust's) would also
    // take `ſ` for `s`, which PostgreSQL does not.
    let methods: Vec<String> = PG_HBA_REFUSED_METHODS
        .iter()
        .map(|m| {
            m.chars()
                .map(|c| format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase()))
                .collect()
        })
        .collect();
    format!(
        r#"self.all(l, !l.replace('"', '').matches('(^|[ \\t\\r\\n,])({})([ \\t\\r\\n,]|$)'))"#,
        methods.join("|")
    )
}

/// Admission's rule on `pgHba` lines: no control character but tab (a field separator).
/// `\n` and `\r` are also refused by the lines' pattern.
pub const PG_HBA_CONTROL_RULE: &str = r"self.all(l, !l.matches('[\\x00-\\x08\\x0a-\\x1f\\x7f]'))";

fn parameters_schema(_: &mut SchemaGenerator) -> Schema {
    let managed = MANAGED_PARAMETERS
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    json_schema!({
        "type": "object",
        "maxProperties": 256,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, k.size() <= 63 && k.matches('^[a-z][a-z0-9_.]*$'))",
                "message": "PostgreSQL parameter names are lowercase letters, digits, _ and . (e.g. shared_buffers, pgml.venv)",
            },
            {
                "rule": format!("self.all(k, !(k in [{managed}]))"),
                "message": "listen_addresses, port, data_directory, hba_file, ident_file, config_file, archive_mode, archive_command, restore_command, primary_conninfo, primary_slot_name and recovery_target* are managed by the operator",
            },
            { "rule": PARAMETER_VALUE_RULE, "message": PARAMETER_VALUE_MESSAGE },
        ]
    })
}

/// PostgreSQL configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresConfig {
    /// postgresql.conf parameters, as strings (`shared_buffers: 8GB`,
    /// `max_connections: "200"`). `shared_preload_libraries` always includes `pgml`. On ZFS
    /// the operator also sets `full_page_writes: "off"`, `wal_init_zero: "off"` and
    /// `wal_recycle: "off"` unless given here. Replication, archiving and file locations are
    /// managed by the operator and refused here. Values cannot contain control characters
    /// (newline, tab, NUL…): they are refused, never rewritten.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    #[schemars(schema_with = "parameters_schema")]
    pub parameters: BTreeMap<String, String>,

    /// Extra pg_hba.conf lines, added after the operator's own (local, replication and
    /// operator access), e.g. `host all all 10.0.0.0/8 scram-sha-256`. At most 64. The
    /// `trust` method is refused (the word trust as any field, in any case, quoted or not):
    /// every connection authenticates. No control characters but tab.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^(local|host|hostssl|hostnossl|hostgssenc|hostnogssenc)\s[^\n\r]+$")
        )
    )]
    #[x_kube(
        validation = Rule::new(pg_hba_method_rule())
            .message("pg_hba lines cannot use the trust method: every connection must authenticate (scram-sha-256, cert, peer…)"),
        validation = Rule::new(PG_HBA_CONTROL_RULE)
            .message("pg_hba lines cannot contain control characters other than tab"),
    )]
    pub pg_hba: Vec<String>,
}

/// Storage from a StorageClass (the EBS CSI driver with ext4): the path without ZFS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0")
    .message("volumes can grow but never shrink: size cannot decrease").field_path(".size"))]
pub struct PvcStorage {
    /// StorageClass of the PVC, normally one of the EBS CSI driver (`ebs.csi.aws.com`)
    /// with `csi.storage.k8s.io/fstype: ext4`. Unset: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub storage_class_name: Option<String>,

    /// Size of each instance's volume, a Kubernetes quantity (`100Gi`). Can grow when the
    /// class allows expansion, never shrink.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
        .message("size must be a positive Kubernetes quantity such as 100Gi"))]
    pub size: String,
}

/// A ZfsPool per instance, made from this template on the instance's node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZfsStorage {
    /// The pool every instance gets: volumes, layout, datasets and policies, as in a
    /// ZfsPool's spec (without nodeName, chosen per instance, and restoreFrom, chosen by
    /// the operator when it seeds a replica). The pool of instance `<cluster>-<n>` is named
    /// after it. Its datasets must include `pgdata`, and cannot set `mountPoint`: each
    /// instance's datasets are mounted below its own pool's directory.
    #[x_kube(
        validation = Rule::new("self.datasets.exists(d, d.name == 'pgdata')")
            .message("the datasets must include one named pgdata, which holds PostgreSQL's data directory")
            .field_path(".datasets"),
        validation = Rule::new("self.datasets.all(d, !has(d.mountPoint))")
            .message("a PgmlCluster's datasets cannot set mountPoint: each instance's pool, named by the operator, mounts them below its own directory")
            .field_path(".datasets"),
    )]
    pub template: ZfsPoolTemplate,
}

/// Where each instance keeps its data: exactly one of `zfs` or `persistentVolumeClaim`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.zfs) != has(self.persistentVolumeClaim)")
        .message("storage must set exactly one of zfs or persistentVolumeClaim"),
    validation = Rule::new("has(self.zfs) == has(oldSelf.zfs)")
        .message("storage cannot switch between zfs and persistentVolumeClaim; create a new cluster and restore into it")
        .field_path(".zfs"),
)]
pub struct Storage {
    /// A ZfsPool of EBS volumes per instance, striped (raid0) or with parity (raidz1). The
    /// recommended storage: consistent snapshots without pausing writes, and room to scale
    /// I/O by adding volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs: Option<ZfsStorage>,
    /// One ext4 PVC per instance from a StorageClass. Snapshots freeze the file system for
    /// a moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcStorage>,
}

/// Where pgBackRest finds its AWS credentials. Never keys: there is no field for them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CredentialsMode {
    /// The EC2 instance profile of the node (`repo1-s3-key-type=auto`), as the PostgresML
    /// guide recommends. The role needs s3:ListBucket on the bucket and
    /// s3:GetObject/PutObject/DeleteObject on the path.
    #[default]
    InstanceRole,
    /// IAM Roles for Service Accounts (`repo1-s3-key-type=web-id`): the instance pods'
    /// service account is annotated with `serviceAccountRoleArn`.
    #[serde(rename = "IRSA")]
    Irsa,
    /// EKS Pod Identity: the role is associated with the instance pods' service account in
    /// EKS; nothing to set here.
    PodIdentity,
}

/// AWS credentials for pgBackRest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'IRSA' || has(self.serviceAccountRoleArn)")
        .message("mode IRSA needs serviceAccountRoleArn").field_path(".serviceAccountRoleArn"),
    validation = Rule::new("self.mode == 'IRSA' || !has(self.serviceAccountRoleArn)")
        .message("serviceAccountRoleArn is only used with mode IRSA").field_path(".serviceAccountRoleArn"),
)]
pub struct S3Credentials {
    /// `InstanceRole` (default: the node's EC2 instance profile), `IRSA` or `PodIdentity`.
    #[serde(default)]
    pub mode: CredentialsMode,
    /// IAM role ARN for IRSA (`arn:aws:iam::123456789012:role/pgbackrest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 2048),
        regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
    )]
    pub service_account_role_arn: Option<String>,
}

/// The S3 repository.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Repository {
    /// Bucket name.
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    )]
    pub bucket: String,
    /// Bucket region, e.g. `us-east-1`.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    )]
    pub region: String,
    /// Repository path in the bucket (`repo1-path`). Unset: `/pgbackrest/<namespace>/<cluster>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+/?$")
    )]
    pub path: Option<String>,
    /// S3 endpoint for S3-compatible stores or VPC endpoints, e.g.
    /// `s3.us-east-1.amazonaws.com` or `https://minio.example:9000`. Unset: AWS's endpoint
    /// for the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^(https?://)?[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")
    )]
    pub endpoint: Option<String>,
}

/// When pgBackRest takes backups.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSchedule {
    /// Cron schedule of full backups, e.g. `0 2 * * 0` (Sundays 02:00). Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(CRON_RULE).message(CRON_MESSAGE))]
    pub full: Option<String>,
    /// Cron schedule of incremental backups, e.g. `0 2 * * 1-6`. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(CRON_RULE).message(CRON_MESSAGE))]
    pub incremental: Option<String>,
}

/// How long pgBackRest keeps backups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRetention {
    /// Full backups to keep (`repo1-retention-full`, default 2); WAL needed by older ones
    /// expires with them.
    #[serde(default = "default_full_retention")]
    #[schemars(range(min = 1, max = 9999))]
    pub full: i32,
}

impl Default for BackupRetention {
    fn default() -> Self {
        Self {
            full: default_full_retention(),
        }
    }
}

fn default_full_retention() -> i32 {
    2
}

/// pgBackRest: WAL archiving and base backups to S3.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PgBackRest {
    /// The S3 repository.
    pub s3: S3Repository,
    /// Where AWS credentials come from. Default: the node's EC2 instance role.
    #[serde(default)]
    pub credentials: S3Credentials,
    /// When full and incremental backups run. WAL is archived continuously regardless.
    #[serde(default)]
    pub schedule: BackupSchedule,
    /// How many backups to keep.
    #[serde(default)]
    pub retention: BackupRetention,
}

/// Which instance scheduled snapshots are taken of.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SnapshotSourceRole {
    /// A ready replica (the primary is used only when it is the sole instance).
    #[default]
    Replica,
    /// Always the primary.
    Primary,
}

/// Scheduled EbsSnapshots of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotBackups {
    /// `schedule` (unset: no scheduled snapshots; replicas are still seeded from fresh
    /// ones), `retention` and `deletionPolicy`, as on a ZfsPool's `spec.snapshots`.
    #[serde(flatten)]
    pub scheduled: SnapshotSchedule,
    /// `Replica` (default) or `Primary`: which instance is snapshotted. Snapshotting a
    /// replica never touches the primary.
    #[serde(default)]
    pub source: SnapshotSourceRole,
}

/// Backups: WAL archive and base backups with pgBackRest, and EBS snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backups {
    /// Continuous WAL archiving and base backups to S3 with pgBackRest. Unset: no archive
    /// (point-in-time recovery impossible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgbackrest: Option<PgBackRest>,
    /// Scheduled EBS snapshots and their retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotBackups>,
}

/// How a new replica gets its first copy of the data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SeedFrom {
    /// Restore its pool from an EbsSnapshot of a replica (a fresh one, or the newest
    /// completed one if recent): instantaneous whatever the database size. Falls back to
    /// PgBasebackup when storage is a PVC without snapshots available.
    #[default]
    Snapshot,
    /// Stream a copy from the primary with pg_basebackup: slow for large databases, loads
    /// the primary.
    PgBasebackup,
}

/// Replica settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replicas {
    /// `Snapshot` (default) or `PgBasebackup`.
    #[serde(default)]
    pub seed_from: SeedFrom,
    /// A replica is Ready (so served by the `-ro` Service) only while it streams from the
    /// primary with at most this many bytes of WAL received or known to the primary that
    /// it has not replayed yet. Unset: a replica that accepts connections is Ready, however
    /// far behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub maximum_lag_bytes: Option<i64>,
}

/// How the cluster's database is made, once, when the cluster is created: at most one of
/// `initdb` (the default) or `snapshot`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.initdb) && (has(self.snapshot) || has(self.pgbackrest)))")
        .message("bootstrap.initdb makes a new, empty database: it cannot be combined with snapshot or pgbackrest"),
    validation = Rule::new("!has(self.recoveryTarget) || has(self.pgbackrest)")
        .message("recoveryTarget needs the WAL of a pgBackRest repository: set bootstrap.pgbackrest").field_path(".recoveryTarget"),
)]
pub struct Bootstrap {
    /// A new, empty database made by `initdb` on the first instance (what an unset
    /// `bootstrap` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initdb: Option<InitdbBootstrap>,
    /// The database of an EBS snapshot set: the first instance's pool is restored from a
    /// Completed EbsSnapshot (of a PgmlCluster, or of a ZfsPool holding PGDATA under its
    /// `pgdata` dataset) in this namespace, PostgreSQL starts on it as the standby the
    /// snapshot was stamped to be, and the instance manager then promotes it (a new
    /// timeline: this is a new cluster, whose WAL is never mixed with the source's). The
    /// source cluster is not touched. The other instances are seeded from the new primary
    /// as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotBootstrap>,
    /// A pgBackRest repository of another cluster (its `backups.pgbackrest`, read only).
    /// Alone: its base backup is restored into the first instance's data directory and its
    /// WAL replayed. With `snapshot`: the snapshot is the base (restored in the time of an
    /// EBS restore, whatever the size) and only the repository's WAL is replayed on it, up
    /// to `recoveryTarget`. The repository is never written: this cluster archives to its
    /// own (`backups.pgbackrest`), which must not already hold a stanza.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgbackrest: Option<PgBackRestSource>,
    /// Where WAL replay stops (point-in-time recovery); unset: at the end of the archived
    /// WAL. The first instance pauses there, and the instance manager then promotes it (a
    /// new timeline). A target the WAL never reaches (after the last archived segment,
    /// before the base) fails the restore, with nothing promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_target: Option<RecoveryTarget>,
}

/// `bootstrap.pgbackrest`: the repository to restore from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PgBackRestSource {
    /// The stanza: the name of the cluster whose repository it is. Its default repository
    /// path is `/pgbackrest/<this namespace>/<stanza>`; set `s3.path` for another.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub stanza: String,
    /// The S3 repository, as in `backups.pgbackrest.s3`.
    pub s3: S3Repository,
    /// Where AWS credentials come from, as in `backups.pgbackrest.credentials`. Reading
    /// needs `s3:GetObject` and `s3:ListBucket` on the path only.
    #[serde(default)]
    pub credentials: S3Credentials,
    /// The backup set to restore (its label, e.g. `20261207-101500F`). Unset: with a
    /// `time` target, the newest backup that ended before it; else the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$")
    )]
    pub backup_set: Option<String>,
}

/// `bootstrap.recoveryTarget`: exactly one of `time`, `lsn`, `name`, `xid` or
/// `immediate`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.time) ? 1 : 0) + (has(self.lsn) ? 1 : 0) + (has(self.name) ? 1 : 0) + (has(self.xid) ? 1 : 0) + (has(self.immediate) && self.immediate ? 1 : 0) == 1")
        .message("recoveryTarget sets exactly one of time, lsn, name, xid or immediate: true"),
    validation = Rule::new("!has(self.exclusive) || !self.exclusive || !(has(self.name) || (has(self.immediate) && self.immediate))")
        .message("exclusive applies to time, lsn and xid targets only").field_path(".exclusive"),
)]
pub struct RecoveryTarget {
    /// Stop at this time (RFC 3339, e.g. `2026-12-07T10:15:00Z`): transactions committed
    /// up to it are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 20, max = 35),
        regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"),
        extend("format" = "date-time")
    )]
    pub time: Option<String>,
    /// Stop at this WAL position (`pg_current_wal_lsn()`, e.g. `0/3000060`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 3, max = 17),
        regex(pattern = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
    )]
    pub lsn: Option<String>,
    /// Stop at this restore point (`pg_create_restore_point(name)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9_.:-]+$"))]
    pub name: Option<String>,
    /// Stop at this transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[0-9]+$"))]
    pub xid: Option<String>,
    /// Stop as soon as the base is consistent (the end of the base backup, or of the
    /// snapshot's own WAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immediate: Option<bool>,
    /// Stop just before the target instead of just after it (time, lsn, xid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,
    /// The timeline to follow: `latest` (default), `current` or a timeline number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 10),
        regex(pattern = r"^(latest|current|[1-9][0-9]{0,8})$")
    )]
    pub timeline: Option<String>,
}

/// The application database and its owner when `bootstrap.initdb` does not name them.
pub const DEFAULT_APP: &str = "app";

/// `bootstrap.initdb`: the application database and its owner, made on the primary once
/// the database exists (also after a restore, when the source has neither), named in the
/// `<cluster>-app` Secret (`username`, `dbname`, `uri`), with the `pgml` extension created
/// in it when the image has it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.database) || !(self.database in ['postgres', 'template0', 'template1'])")
        .message("bootstrap.initdb.database cannot be one of PostgreSQL's own databases (postgres, template0, template1)").field_path(".database"),
    validation = Rule::new("!has(self.owner) || !(self.owner in ['postgres', 'streaming_replica'])")
        .message("bootstrap.initdb.owner cannot be the superuser (postgres) or the replication role (streaming_replica)").field_path(".owner"),
)]
pub struct InitdbBootstrap {
    /// The application database (default `app`): lowercase letters, digits and `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub database: Option<String>,
    /// The role that owns it and that the `<cluster>-app` Secret logs in as (default
    /// `app`): lowercase letters, digits and `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub owner: Option<String>,
}

/// `bootstrap.snapshot`: the EbsSnapshot to restore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotBootstrap {
    /// The EbsSnapshot's name, in this cluster's namespace. It must be Completed; until it
    /// is (or when it is missing or Failed) nothing is created and the cluster says why.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl PgmlClusterSpec {
    /// The application database and its owner (`bootstrap.initdb`, else `app`/`app`).
    pub fn app(&self) -> (String, String) {
        let i = self.bootstrap.as_ref().and_then(|b| b.initdb.as_ref());
        let pick = |v: Option<&String>| v.cloned().unwrap_or_else(|| DEFAULT_APP.to_string());
        (
            pick(i.and_then(|i| i.database.as_ref())),
            pick(i.and_then(|i| i.owner.as_ref())),
        )
    }

    /// The EbsSnapshot the cluster's database is restored from, if any.
    /// `bootstrap.pgbackrest`, the repository the database is restored from, if any.
    pub fn bootstrap_pgbackrest(&self) -> Option<&PgBackRestSource> {
        self.bootstrap.as_ref().and_then(|b| b.pgbackrest.as_ref())
    }

    /// `bootstrap.recoveryTarget`, if any.
    pub fn recovery_target(&self) -> Option<&RecoveryTarget> {
        self.bootstrap
            .as_ref()
            .and_then(|b| b.recovery_target.as_ref())
    }

    pub fn bootstrap_snapshot(&self) -> Option<&str> {
        self.bootstrap
            .as_ref()
            .and_then(|b| b.snapshot.as_ref())
            .map(|s| s.name.as_str())
    }
}

/// A PostgresML database: a primary and streaming replicas, each instance on its own node
/// with its own ZFS pool of EBS volumes (or ext4 PVC), with pgBackRest archiving and EBS
/// snapshot backups.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pgml.io",
    version = "v1alpha1",
    kind = "PgmlCluster",
    doc = "A PostgresML database on EC2: a primary and streaming replicas, each on its own node with a ZFS pool of EBS volumes (or an ext4 PVC), with pgBackRest archiving and EBS snapshot backups.",
    plural = "pgmlclusters",
    namespaced,
    status = "PgmlClusterStatus",
    shortname = "pgmlc",
    category = "pgml",
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances", description = "Desired instances"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyInstances", description = "Instances ready"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.currentPrimary", description = "Instance that is the primary"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image", priority = 1),
    printcolumn(name = "Last Snapshot", type_ = "string", json_path = ".status.lastSnapshot.name", priority = 1),
    printcolumn(name = "Last Backup", type_ = "date", json_path = ".status.lastBackup.completionTime", description = "When the last pgBackRest backup finished", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$')")
        .message("a PgmlCluster name must be a DNS label of at most 45 characters starting with a letter: its instances, services and ZFS pools are named after it"),
    validation = Rule::new("!has(self.spec.primary) || self.spec.primary.startsWith(self.metadata.name + '-')")
        .message("primary must name one of this cluster's instances, <cluster name>-<n>").field_path(".spec.primary"),
    validation = Rule::new(fixed("spec.bootstrap"))
        .message("bootstrap cannot be added, removed or changed once the cluster exists: it says how its database was made; restore into a new cluster instead").field_path(".spec.bootstrap"),
    validation = Rule::new("!has(self.spec.bootstrap) || !has(self.spec.bootstrap.pgbackrest) || !has(self.spec.backups) || !has(self.spec.backups.pgbackrest) || self.spec.bootstrap.pgbackrest.credentials.mode != 'IRSA' || self.spec.backups.pgbackrest.credentials.mode != 'IRSA' || !has(self.spec.bootstrap.pgbackrest.credentials.serviceAccountRoleArn) || !has(self.spec.backups.pgbackrest.credentials.serviceAccountRoleArn) || self.spec.bootstrap.pgbackrest.credentials.serviceAccountRoleArn == self.spec.backups.pgbackrest.credentials.serviceAccountRoleArn")
        .message("the instance Pods have one IRSA role: bootstrap.pgbackrest and backups.pgbackrest on IRSA must name the same serviceAccountRoleArn").field_path(".spec.bootstrap.pgbackrest.credentials.serviceAccountRoleArn"),
    validation = Rule::new("!has(self.spec.bootstrap) || !has(self.spec.bootstrap.snapshot) || has(self.spec.storage.zfs)")
        .message("bootstrap.snapshot restores the first instance's ZFS pool from an EBS snapshot set: it needs storage.zfs").field_path(".spec.bootstrap.snapshot"),
)]
#[serde(rename_all = "camelCase")]
pub struct PgmlClusterSpec {
    /// Number of PostgreSQL instances (1–16): one primary and instances − 1 streaming
    /// replicas, each on its own node.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 16))]
    pub instances: i32,

    /// Container image with PostgreSQL and the pgml extension. Default:
    /// ghcr.io/postgresml/postgresml:2.10.0.
    #[serde(default = "default_image")]
    #[schemars(
        length(min = 1, max = 512),
        regex(
            pattern = r"^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
        )
    )]
    pub image: String,

    /// PostgreSQL parameters and pg_hba.conf lines.
    #[serde(default)]
    pub postgresql: PostgresConfig,

    /// CPU and memory for each instance's PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Where each instance keeps its data: `zfs` (a ZfsPool of EBS volumes per instance)
    /// or `persistentVolumeClaim` (ext4 from a StorageClass).
    pub storage: Storage,

    /// WAL archiving and backups with pgBackRest, and scheduled EBS snapshots.
    #[serde(default)]
    pub backups: Backups,

    /// How replicas are seeded.
    #[serde(default)]
    pub replicas: Replicas,

    /// How the database is made when the cluster is created: `initdb` (unset: the
    /// default) or restored from an EBS `snapshot`. Fixed once the cluster exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,

    /// Affinity for the instance pods, on top of the operator's anti-affinity that keeps
    /// instances on different nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Node labels the instance pods (and so their pools) must land on.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations for the instance pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// Switchover: name the instance that should be primary (e.g. `main-2`). The operator
    /// stops writes on the current primary, waits for the target to catch up, promotes it
    /// and makes the old primary follow. Unset: the operator picks (and fails over on its
    /// own when the primary is lost). An instance whose node is leaving (cordoned, or
    /// tainted by Karpenter, the cluster autoscaler or the AWS Node Termination Handler)
    /// is not switched to until its node is back; a primary on such a node is switched
    /// away from on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub primary: Option<String>,

    /// PodDisruptionBudgets for the instance Pods (default true): `<cluster>-primary`
    /// keeps the primary from being evicted (a node drain waits while the operator switches
    /// over to a replica on another node, then goes on), and `<cluster>-replicas` lets at
    /// most one replica be evicted at a time. False: both budgets allow every eviction
    /// (a drain of the primary's node then stops the primary with no switchover first).
    #[serde(rename = "enablePDB", default = "default_true")]
    pub enable_pdb: bool,

    /// How the primary gets a new Pod spec (`image`, `resources`, scheduling) once every
    /// replica has it, the replicas being updated one at a time first: `Unsupervised`
    /// (default) switches over to the most advanced updated replica, then updates the old
    /// primary as a replica; `Supervised` waits for a human to switch over (`kubectl pgml
    /// promote`, or `spec.primary`). A single instance is restarted in place either way.
    #[serde(default)]
    pub primary_update_strategy: PrimaryUpdateStrategy,
}

/// See `spec.primaryUpdateStrategy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PrimaryUpdateStrategy {
    #[default]
    Unsupervised,
    Supervised,
}

fn default_true() -> bool {
    true
}

fn default_instances() -> i32 {
    1
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

/// One-word state of the cluster for `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClusterPhase {
    Pending,
    Creating,
    /// Made from `bootstrap.snapshot` or `bootstrap.pgbackrest`, not yet serving: the base
    /// restored, PostgreSQL replaying WAL, then promoted.
    Restoring,
    Healthy,
    Degraded,
    Switchover,
    Failover,
    Scaling,
    /// A new Pod spec is rolled out, one instance at a time.
    Upgrading,
    Failed,
}

/// Role of an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InstanceRole {
    Primary,
    Replica,
}

/// What the operator last observed of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PgmlClusterStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pending, Creating, Restoring, Healthy, Degraded, Switchover, Failover, Scaling,
    /// Upgrading or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,

    /// Standard conditions: Ready, Progressing, Degraded, ContinuousArchiving,
    /// LastBackupSucceeded, SpecValid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Each instance: where it runs, its role, readiness and replication position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub instances: Vec<InstanceStatus>,

    /// The instance currently accepting writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,

    /// The instance being promoted during a switchover or failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,

    /// Instances that are ready (primary accepting writes, replicas streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_instances: Option<i32>,

    /// The newest completed EbsSnapshot of this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<SnapshotRef>,

    /// WAL archiving to the pgBackRest repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archiving: Option<ArchivingStatus>,

    /// The last pgBackRest backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRef>,

    /// The database's identity: PostgreSQL's `pg_control_system().system_identifier`,
    /// recorded by the operator the first time the primary reports it running, and never
    /// changed or removed afterwards. Unset means the cluster was never bootstrapped: only
    /// then may an instance run `initdb`. Once set, an instance whose data directory is
    /// empty (a pool not imported after a reboot, say) waits instead of making a new,
    /// empty database, and one whose data directory carries another identifier is not
    /// started. The primary's Pod is labelled `pgml.io/role: primary` (the `-rw` Service)
    /// only after this is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,20}$"))]
    pub system_identifier: Option<String>,

    /// The restore of the database (`bootstrap.snapshot` / `bootstrap.pgbackrest`), shown
    /// until it first serves (its system identifier recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
    /// The `pgml` extension's version in the application database, as the primary last
    /// reported it (condition `PgmlExtension`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgml_version: Option<String>,

    /// The snapshot scheduler's last and next slot.
    #[serde(flatten)]
    pub schedule: ScheduleStatus,
}

/// A restore in progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// What the database is restored from: `EbsSnapshot <name>`, `pgBackRest stanza
    /// <stanza>` (with the backup set when one is named), or a snapshot with WAL from a
    /// repository.
    pub base: String,
    /// `bootstrap.recoveryTarget`, e.g. `time 2026-12-07T10:15:00Z`; unset: the end of the
    /// archived WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How far WAL replay has come on the first instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<String>,
    /// Replay stopped at the target; promotion follows.
    #[serde(default)]
    pub target_reached: bool,
    /// Why the restore failed, when it did (phase `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl RecoveryTarget {
    /// `time 2026-12-07T10:15:00Z`, `lsn 0/3000060`, `name before-migration`, `xid 742`
    /// or `immediate`, with ` (exclusive)` when set.
    pub fn describe(&self) -> String {
        let kind = if let Some(t) = &self.time {
            format!("time {t}")
        } else if let Some(l) = &self.lsn {
            format!("lsn {l}")
        } else if let Some(n) = &self.name {
            format!("name {n}")
        } else if let Some(x) = &self.xid {
            format!("xid {x}")
        } else {
            "immediate".to_string()
        };
        if self.exclusive == Some(true) {
            format!("{kind} (exclusive)")
        } else {
            kind
        }
    }
}

impl Bootstrap {
    /// What the database is restored from, for the status; None for `initdb`.
    pub fn base(&self) -> Option<String> {
        let repo = self.pgbackrest.as_ref().map(|p| match &p.backup_set {
            Some(set) => format!("pgBackRest stanza {} (backup set {set})", p.stanza),
            None => format!("pgBackRest stanza {}", p.stanza),
        });
        match (&self.snapshot, repo) {
            (Some(s), Some(r)) => Some(format!("EbsSnapshot {} with WAL of {r}", s.name)),
            (Some(s), None) => Some(format!("EbsSnapshot {}", s.name)),
            (None, r) => r,
        }
    }
}

/// One PostgreSQL instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Instance name (`<cluster>-<n>`), also the name of its pod and ZfsPool or PVC.
    pub name: String,
    /// Node the instance runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Availability zone of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// The instance's ZfsPool (or PVC) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Primary or Replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<InstanceRole>,
    /// PostgreSQL accepts connections (and, for a replica, streams from the primary).
    #[serde(default)]
    pub ready: bool,
    /// Current WAL position: written LSN on the primary, replayed LSN on a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// How far a replica's replay is behind the primary, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// Health of the instance's ZFS pool as its node agent reports it (`ONLINE`,
    /// `DEGRADED` while a RAIDZ1 member is lost or resilvering, `FAULTED`…); unset on the
    /// PVC path or before the pool reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_health: Option<String>,
    /// How the replica was seeded: the EbsSnapshot name or `pg_basebackup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded_from: Option<String>,
    /// The operator fenced this instance (a primary it failed over from): its Pod carries
    /// `pgml.io/fenced: "true"` and PostgreSQL stays stopped so it can never come back as a
    /// second primary. Rebuild it (scale down and up) to get a replica again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// Why the instance's node is going away (cordoned; tainted by Karpenter, the cluster
    /// autoscaler or the AWS Node Termination Handler): a primary there is switched away
    /// from, and the instance's Pod is not made again there until the node is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_leaving: Option<String>,
}

/// A reference to an EbsSnapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// EbsSnapshot name.
    pub name: String,
    /// Its capture time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_time: Option<Time>,
}

/// State of WAL archiving.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchivingStatus {
    /// Last WAL segment archived (pg_stat_archiver.last_archived_wal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// When it was archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<Time>,
    /// Last WAL segment that failed to archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    /// When archiving last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_time: Option<Time>,
}

/// The last pgBackRest backup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRef {
    /// pgBackRest backup label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// full, diff or incr.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub backup_type: Option<String>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Whether it succeeded.
    #[serde(default)]
    pub succeeded: bool,
}
