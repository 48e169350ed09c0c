//! `ZfsPool`: a ZFS pool on one node, built from EBS volumes the operator creates and
//! attaches, with datasets tuned for PostgreSQL.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Time, fixed, is_empty_map};
use crate::ebs::EbsVolumes;
use crate::schedule::{ScheduleStatus, SnapshotSchedule};

/// ZFS pool names: what `zpool create` accepts, narrowed to what is also a readable DNS
/// label (no `.`/`:`; see [`RESERVED_POOL_PREFIXES`] for the names ZFS refuses).
pub const POOL_NAME_PATTERN: &str = r"^[a-z][a-z0-9_-]{0,47}$";
/// One dataset component below the pool: no `/`, `@` or `%`, no leading dash.
pub const DATASET_NAME_PATTERN: &str = r"^[a-z0-9][a-z0-9_-]{0,62}$";
/// Absolute paths whose components start with a letter, digit or `_`: no `.`/`..`, no
/// spaces, nothing a shell or `zfs set mountpoint=` could misread.
pub const MOUNT_POINT_PATTERN: &str = r"^(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+$";
/// Pool names ZFS refuses: any name starting with one of these (`zpool create` reads them
/// as vdev keywords)…
pub const RESERVED_POOL_PREFIXES: &[&str] = &["mirror", "raidz", "draid", "spare"];
/// …and these whole names. Names like `c0…` (Solaris disks) are refused too.
pub const RESERVED_POOL_NAMES: &[&str] = &["log", "cache", "special", "dedup"];

/// The native ZFS properties a pool (`filesystemProperties`) or a dataset (`properties`)
/// may set: what tunes a file system for PostgreSQL, and nothing that shares it over the
/// network (`sharenfs`, `sharesmb`), lets it hold device nodes (`devices`), touches its
/// encryption (`encryption`, `keyformat`, `keylocation`) or where it is mounted
/// (`mountpoint`, `canmount`: see [`ZFS_MANAGED_PROPERTIES`]). Admission refuses any other
/// native name (the CEL rule is generated from this list) and the operator checks each
/// value ([`crate::validate::check_zfs_properties`]). User properties (`module:name`) are
/// not native and always pass.
pub const ZFS_NATIVE_PROPERTIES: &[&str] = &[
    "atime",
    "checksum",
    "compression",
    "copies",
    "dnodesize",
    "exec",
    "logbias",
    "primarycache",
    "quota",
    "recordsize",
    "redundant_metadata",
    "refquota",
    "refreservation",
    "relatime",
    "reservation",
    "secondarycache",
    "setuid",
    "sync",
    "xattr",
];

/// Of [`ZFS_NATIVE_PROPERTIES`], those that may only be turned `off` (hardening): a
/// database's files are never programs, and never set-uid ones.
pub const ZFS_OFF_ONLY_PROPERTIES: &[&str] = &["exec", "setuid"];

/// Properties the node agent sets itself from `mountPoint`; refused in property maps.
pub const ZFS_MANAGED_PROPERTIES: &[&str] = &["mountpoint", "canmount"];

/// How the volumes are combined.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Stripe over all volumes: the most space, throughput and IOPS; losing one volume loses
    /// the pool (EBS volumes are themselves replicated within their AZ).
    #[default]
    Raid0,
    /// Single parity over 3 or more volumes: one volume's worth of space buys surviving the
    /// loss of any one volume, which the operator can replace online.
    Raidz1,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Raid0 => "raid0",
            Layout::Raidz1 => "raidz1",
        }
    }
}

/// What happens to the EBS volumes when the ZfsPool object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    /// Export the pool, detach the volumes and keep them (tagged with the pool's name and
    /// GUID), so the data survives a mistaken delete.
    #[default]
    Retain,
    /// Export the pool, detach and delete the volumes. The data is gone unless snapshots
    /// exist.
    Delete,
}

/// Who replaces a failed member of a raidz1 pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MemberReplacement {
    /// The operator creates a new volume, attaches it and runs `zpool replace`; the pool
    /// stays online (degraded) while it resilvers.
    #[default]
    Automatic,
    /// The operator reports the pool as Degraded and waits; replace the member by hand.
    Manual,
}

/// A ZFS dataset (file system) in the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
// `datasets` is a list keyed by name, so the apiserver pairs each dataset with the old one
// of the same name for this rule.
#[x_kube(validation = Rule::new(fixed("mountPoint"))
    .message("mountPoint cannot change once the dataset exists: setting, changing and removing it are all refused (the agent would remount live data)")
    .field_path(".mountPoint"))]
pub struct Dataset {
    /// Dataset name below the pool, one component (`pgdata`, not `tank/pgdata`): lowercase
    /// letters, digits, `_` and `-`, up to 63 characters. PgmlCluster puts PostgreSQL's data
    /// directory on `pgdata` and, when present, its WAL on `pgwal`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DATASET_NAME_PATTERN))]
    pub name: String,

    /// Where the dataset is mounted, as a path below the node agent's mount root (the
    /// agent's `--mount-root`, `/var/lib/pgml` by default), and always below the pool's
    /// own directory there, `/<pool name>/` (the pool name is `spec.poolName`, else the
    /// object's name): `/tank/wal` mounts at `/var/lib/pgml/tank/wal` on the node. Plain
    /// components only (no `.` or `..`), so a dataset can never be mounted outside its
    /// pool's directory, over another pool's. Unset: `/<pool name>/<name>`. Fixed once
    /// the dataset exists: it cannot be changed, added or removed later. Not settable in a
    /// PgmlCluster's template, whose pools are named by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = MOUNT_POINT_PATTERN))]
    pub mount_point: Option<String>,

    /// ZFS properties of this dataset (`zfs create -o key=value`), on top of the pool's
    /// `filesystemProperties`: native properties from the allowlist below
    /// (`recordsize: 32K`, `logbias: throughput`) or user properties
    /// (`com.example:owner: dba`). Native properties allowed: atime, checksum,
    /// compression, copies, dnodesize, exec (off only), logbias, primarycache, quota,
    /// recordsize, redundant_metadata, refquota, refreservation, relatime, reservation,
    /// secondarycache, setuid (off only), sync, xattr. Any other native name is refused
    /// (sharenfs, sharesmb, devices, encryption, keyformat, keylocation…). Set the mount
    /// point with `mountPoint`, not here.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    #[schemars(schema_with = "zfs_properties_schema")]
    pub properties: BTreeMap<String, String>,
}

/// CEL list literal of names: `['a', 'b']`.
pub(crate) fn cel_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Schema of a ZFS property map (keys and values end up as `-o key=value` arguments).
pub fn zfs_properties_schema(_: &mut SchemaGenerator) -> Schema {
    let allowed = cel_list(ZFS_NATIVE_PROPERTIES);
    let managed = cel_list(ZFS_MANAGED_PROPERTIES);
    let off_only = cel_list(ZFS_OFF_ONLY_PROPERTIES);
    // Each rule leaves alone what another rule reports, so a bad name breaks one rule only.
    let allowlist_rule =
        format!("self.all(k, !k.matches('^[a-z][a-z0-9_]*$') || k in {managed} || k in {allowed})");
    let allowlist_message = format!(
        "ZFS native properties are limited to {}; use a user property (module:name) for metadata",
        ZFS_NATIVE_PROPERTIES.join(", ")
    );
    let off_only_rule = format!("{off_only}.all(p, !(p in self) || self[p] == 'off')");
    let off_only_message = format!(
        "{} may only be set to off",
        ZFS_OFF_ONLY_PROPERTIES.join(" and ")
    );
    json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": "^[A-Za-z0-9_.:/+=@,-]+$"
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, k.size() <= 64 && k.matches('^([a-z][a-z0-9_]*|[a-z0-9_.-]+:[a-z0-9_.:-]+)$'))",
                "message": "ZFS property names are lowercase native names (recordsize) or user properties with a colon (com.example:owner), up to 64 characters",
            },
            {
                "rule": "!('mountpoint' in self) && !('canmount' in self)",
                "message": "set the mount point with mountPoint; mountpoint and canmount are managed by the operator",
            },
            { "rule": allowlist_rule, "message": allowlist_message },
            { "rule": off_only_rule, "message": off_only_message },
        ]
    })
}

/// The shape of a pool, shared by ZfsPool and PgmlCluster's storage template: volumes,
/// layout and datasets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.layout != 'raidz1' || self.volumes.count >= 3")
        .message("raidz1 needs at least 3 volumes").field_path(".volumes.count"),
    validation = Rule::new("self.layout != 'raidz1' || self.volumes.count == oldSelf.volumes.count")
        .message("a raidz1 pool's volume count is fixed once created; grow sizeGiB instead").field_path(".volumes.count"),
    validation = Rule::new(fixed("layout"))
        .message("layout cannot change once the pool exists").field_path(".layout"),
)]
pub struct ZfsPoolTemplate {
    /// The EBS volumes the pool is built from: how many, type, size, IOPS, throughput,
    /// encryption and tags.
    pub volumes: EbsVolumes,

    /// `raid0` (default) stripes over all volumes for the most space and speed; `raidz1`
    /// adds single parity across 3 or more volumes so the pool survives losing one.
    /// Fixed once the pool exists.
    #[serde(default)]
    pub layout: Layout,

    /// ZFS properties of the pool's root file system, inherited by every dataset
    /// (`zpool create -O`). Defaults suit PostgreSQL: `compression: lz4` (the agent writes
    /// `on` on zfs-fuse, which lacks lz4), `atime: "off"`, `xattr: sa`. Pools are always
    /// created with `ashift=12` and `autoexpand=on`. The native properties allowed are
    /// those of a dataset's `properties` (see there); any other native name is refused.
    #[serde(default = "default_fs_properties")]
    #[schemars(schema_with = "zfs_properties_schema")]
    pub filesystem_properties: BTreeMap<String, String>,

    /// Datasets created in the pool. Default: `pgdata` with `recordsize: 32K` and
    /// `logbias: throughput` (PostgreSQL's data files), and `pgwal` with
    /// `recordsize: 128K` and `logbias: latency` (its write-ahead log, where fsync
    /// latency matters). Names must be unique; at most 8.
    #[serde(default = "default_datasets")]
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[x_kube(validation = Rule::new("self.all(d, !has(d.mountPoint) || self.exists_one(e, has(e.mountPoint) && e.mountPoint == d.mountPoint))")
        .message("two datasets cannot share a mount point"))]
    pub datasets: Vec<Dataset>,

    /// What happens to the EBS volumes when the pool object is deleted: `Retain`
    /// (default; volumes are detached and kept) or `Delete`. Changing `Retain` to `Delete`
    /// on an existing object needs the annotation `pgml.io/allow-delete-policy: "true"` in
    /// the same update (the ValidatingAdmissionPolicy `retain-to-delete.pgml.io`, installed
    /// with the CRDs; a PgmlCluster's pools follow its template, where the change is made).
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// For raidz1 pools, who replaces a failed member: `Automatic` (default; a new volume
    /// is attached and resilvered while the pool stays online) or `Manual`. raid0 pools
    /// cannot lose a member.
    #[serde(default)]
    pub member_replacement: MemberReplacement,
}

fn default_fs_properties() -> BTreeMap<String, String> {
    [("compression", "lz4"), ("atime", "off"), ("xattr", "sa")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn default_datasets() -> Vec<Dataset> {
    let props = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    vec![
        Dataset {
            name: "pgdata".into(),
            mount_point: None,
            properties: props(&[("recordsize", "32K"), ("logbias", "throughput")]),
        },
        Dataset {
            name: "pgwal".into(),
            mount_point: None,
            properties: props(&[("recordsize", "128K"), ("logbias", "latency")]),
        },
    ]
}

/// Restores the pool's volumes from an EbsSnapshot instead of creating empty ones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreFrom {
    /// Name of a Completed EbsSnapshot in the same namespace, taken of a pool with the same
    /// layout and volume count. Each volume is created from the matching member's snapshot;
    /// volumes may be larger than the snapshot, never smaller.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub ebs_snapshot_name: String,

    /// Volumes made from snapshots load their blocks lazily from S3 on first read. Set a
    /// rate (100–300 MiB/s, billed by AWS) to have EBS fully initialize each volume at that
    /// speed instead. Unset: lazy loading.
    #[serde(
        rename = "volumeInitializationRateMiBps",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 100, max = 300))]
    pub volume_initialization_rate_mibps: Option<i32>,
}

/// A ZFS pool on one node, built from EBS volumes that the operator creates, attaches to
/// the node's EC2 instance and keeps in the shape this spec asks for.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pgml.io",
    version = "v1alpha1",
    kind = "ZfsPool",
    doc = "A ZFS pool on one node, built from EBS volumes the operator creates and attaches. See spec for the volumes, layout and datasets.",
    plural = "zfspools",
    namespaced,
    status = "ZfsPoolStatus",
    shortname = "zp",
    shortname = "zpool",
    category = "pgml",
    // The node agent lists and watches only its own node's pools (`spec.nodeName=<node>`).
    selectable = ".spec.nodeName",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName", description = "Node whose EC2 instance the volumes are attached to"),
    printcolumn(name = "Layout", type_ = "string", json_path = ".spec.layout", description = "raid0 or raidz1"),
    printcolumn(name = "Volumes", type_ = "integer", json_path = ".spec.volumes.count", description = "Number of EBS volumes"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.volumes.type", description = "EBS volume type", priority = 1),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size", description = "Pool size as zpool list reports it"),
    printcolumn(name = "Health", type_ = "string", json_path = ".status.health", description = "Pool health as zpool status reports it"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", priority = 1),
    printcolumn(name = "Instance", type_ = "string", json_path = ".status.instanceId", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.poolName) || self.metadata.name.matches('^[a-z][a-z0-9_-]{0,47}$')")
        .message("metadata.name cannot be used as a ZFS pool name (lowercase letter first, then letters, digits, _ or -, at most 48); set spec.poolName"),
    validation = Rule::new("!(has(self.spec.poolName) ? self.spec.poolName : self.metadata.name).matches('^(mirror|raidz|draid|spare|c[0-9])') && !((has(self.spec.poolName) ? self.spec.poolName : self.metadata.name) in ['log', 'cache', 'special', 'dedup'])")
        .message("the pool name (spec.poolName, else metadata.name) cannot start with mirror, raidz, draid or spare, be log, cache, special or dedup, or look like a disk (c0…): ZFS refuses such names"),
    validation = Rule::new("self.spec.datasets.all(d, !has(d.mountPoint) || d.mountPoint.startsWith('/' + (has(self.spec.poolName) ? self.spec.poolName : self.metadata.name) + '/'))")
        .message("a dataset's mountPoint must be below the pool's own directory, /<pool name>/… (the pool name is spec.poolName, else metadata.name)")
        .field_path(".spec.datasets"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(fixed("nodeName"))
        .message("nodeName cannot change; restore a snapshot on the other node instead").field_path(".nodeName"),
    validation = Rule::new(fixed("poolName"))
        .message("poolName cannot change once the pool exists: setting, changing and removing it are all refused").field_path(".poolName"),
    validation = Rule::new(fixed("restoreFrom"))
        .message("restoreFrom cannot change once the pool exists: setting, changing and removing it are all refused").field_path(".restoreFrom"),
)]
pub struct ZfsPoolSpec {
    /// Kubernetes Node the pool lives on. The operator reads the node's EC2 instance and
    /// availability zone from its `spec.providerID`, creates the volumes in that zone and
    /// attaches them there. Fixed once set: moving data between nodes goes through an
    /// EbsSnapshot and `restoreFrom`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub node_name: String,

    /// Name of the pool on the node (`zpool list`). Unset: the object's name. A lowercase
    /// letter, then letters, digits, `_` or `-`, at most 48 characters; names ZFS refuses
    /// (starting with mirror, raidz, draid or spare; log; c0…) are refused. Fixed once the
    /// pool exists: it cannot be changed, added or removed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 48), regex(pattern = POOL_NAME_PATTERN))]
    pub pool_name: Option<String>,

    /// Volumes, layout, datasets and policies.
    #[serde(flatten)]
    pub template: ZfsPoolTemplate,

    /// Create the volumes from an EbsSnapshot of another pool instead of empty ones (to
    /// seed a replica or recover). Only read when the pool is first created; fixed after:
    /// it cannot be changed, added or removed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreFrom>,
    /// Scheduled EbsSnapshots of this pool and how many to keep, e.g.
    /// `{schedule: "0 */6 * * *", retention: {keepLast: 4, daily: 7}}`. Each slot creates
    /// an EbsSnapshot named `<pool>-<yyyymmddhhmm>` (UTC) labelled `pgml.io/scheduled-by`;
    /// retention deletes only those. The snapshots are not owned by the pool: they outlive
    /// its deletion, which is what disaster recovery needs (delete them by hand, or by
    /// label, when they are no longer wanted). A PgmlCluster's pools are snapshotted
    /// through the cluster's `backups.snapshots` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotSchedule>,
}

impl ZfsPool {
    /// The pool name on the node: `spec.poolName`, else the object's name.
    pub fn pool_name(&self) -> String {
        self.spec
            .pool_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// Mount point of a dataset below the agent's mount root, defaulted as documented on
    /// `Dataset.mountPoint`.
    pub fn mount_point(&self, dataset: &Dataset) -> String {
        dataset
            .mount_point
            .clone()
            .unwrap_or_else(|| format!("/{}/{}", self.pool_name(), dataset.name))
    }
}

/// What the operator and the node agent last observed of the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZfsPoolStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word for `kubectl get`: Pending, Creating, Attaching, Importing, Online,
    /// Degraded, Resilvering, Resizing, Failed or Deleting. Conditions carry the detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PoolPhase>,

    /// Standard conditions: Ready, Progressing, Degraded, VolumesAttached, Resilvering,
    /// SpecValid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// EC2 instance ID of the node (from its providerID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,

    /// EC2 instance type of the node; its EBS limits cap the pool's performance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,

    /// Availability zone of the node and of every volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,

    /// Pool name on the node, as resolved from spec.poolName or the object name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,

    /// ZFS pool GUID (decimal, as `zpool get guid` prints it). A restored copy keeps its
    /// source's GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_guid: Option<String>,

    /// ZFS dialect the node speaks: `openzfs` or `zfs-fuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_dialect: Option<String>,

    /// Pool health from `zpool status`: ONLINE, DEGRADED, FAULTED, OFFLINE, UNAVAIL or
    /// REMOVED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,

    /// Pool size, human-readable as `zpool list` prints it (e.g. `398G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,

    /// Pool size in bytes (raw, including raidz1 parity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,

    /// Bytes allocated in the pool. Rewritten when it moves by 0.5% of the pool's size or
    /// more (or the size changes), so that a busy database does not rewrite its status at
    /// every look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_bytes: Option<i64>,

    /// Bytes free in the pool; rewritten with `allocatedBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<i64>,

    /// Each EBS volume of the pool, by member index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["index"]))]
    pub volumes: Vec<VolumeStatus>,

    /// Progress of the running (or last) resilver after a member replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilver: Option<ResilverStatus>,

    /// Each dataset of the spec as the node agent sees it: where it is mounted on the node
    /// (what a local PersistentVolume or a pod's hostPath points at) and whether it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub datasets: Vec<DatasetStatus>,

    /// The most the pool can deliver: the volumes' IOPS and throughput added up, capped by
    /// the instance type's EBS limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<PerformanceCeiling>,

    /// Start times of the EBS modifications (resize, IOPS, throughput, type) made in the
    /// last 24 hours. AWS allows 4 per volume per rolling 24 hours, so the operator batches
    /// spec changes and waits when the budget is spent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub recent_modifications: Vec<Time>,

    /// The snapshot this pool was restored from, once the restore has been done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// The snapshot scheduler's last and next slot (`spec.snapshots`).
    #[serde(flatten)]
    pub schedule: ScheduleStatus,
}

/// One-word state of a pool for `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PoolPhase {
    Pending,
    Creating,
    Attaching,
    Importing,
    Online,
    Degraded,
    Resilvering,
    Resizing,
    Failed,
    Deleting,
}

/// One EBS volume of the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// Member index, 0 to count − 1. Stable across replacements: a replaced member's new
    /// volume takes the same index.
    pub index: i32,

    /// EBS volume ID (`vol-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,

    /// Incremented each time the member is replaced; part of its EC2 ClientToken.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i32,

    /// The volume this member's current one replaced, until the operator has deleted it
    /// (detached once the replacement is recorded, deleted once the new member is ONLINE
    /// and the pool is ONLINE again): a crash never forgets a volume of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_volume_id: Option<String>,

    /// Availability zone of the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,

    /// Stable device path on the node
    /// (`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…`), the path given to zpool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,

    /// EBS volume state: creating, available, in-use, deleting, deleted or error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,

    /// Attachment state to the node's instance: attaching, attached, detaching or
    /// detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_state: Option<String>,

    /// State of this member in the pool as `zpool status` reports it (ONLINE, DEGRADED,
    /// FAULTED, UNAVAIL, REMOVED…). Written by the node agent with `memberVolumeId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_state: Option<String>,

    /// The EBS volume `memberState` is about, as the node agent found it in the pool (from
    /// the member's by-id path, or the path ZFS last knew for a member that is gone). It
    /// differs from `volumeId` while a replacement is under way: then it names the volume
    /// being replaced (`replacedVolumeId`) until the new one is in the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_volume_id: Option<String>,

    /// EBS volume type as AWS reports it.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,

    /// Size in GiB as AWS reports it.
    #[serde(rename = "sizeGiB", default, skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<i64>,

    /// Provisioned IOPS as AWS reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<i64>,

    /// Provisioned throughput in MiB/s as AWS reports it (gp3).
    #[serde(
        rename = "throughputMiBps",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub throughput_mibps: Option<i64>,

    /// The EBS modification in progress or last made on this volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modification: Option<VolumeModification>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// An EBS volume's state, as `status.volumes[].state` holds it: EC2's word, or `deleted`
/// for a member volume EC2 no longer knows. The field stays a string on the wire (and in
/// the schema); [`VolumeStatus::volume_state`] reads it typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
    /// A word EC2 may add later, kept as it came.
    Other(String),
}

impl VolumeState {
    pub fn parse(s: &str) -> VolumeState {
        match s {
            "creating" => VolumeState::Creating,
            "available" => VolumeState::Available,
            "in-use" => VolumeState::InUse,
            "deleting" => VolumeState::Deleting,
            "deleted" => VolumeState::Deleted,
            "error" => VolumeState::Error,
            other => VolumeState::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::InUse => "in-use",
            VolumeState::Deleting => "deleting",
            VolumeState::Deleted => "deleted",
            VolumeState::Error => "error",
            VolumeState::Other(s) => s,
        }
    }
}

/// A volume's attachment to the node's instance, as `status.volumes[].attachmentState`
/// holds it (a string on the wire; [`VolumeStatus::attachment`] reads it typed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachmentState {
    Attaching,
    Attached,
    Detaching,
    Detached,
    Busy,
    /// EC2's `unknown`, and any word this version does not know.
    Unknown,
}

impl AttachmentState {
    pub fn parse(s: &str) -> AttachmentState {
        match s {
            "attaching" => AttachmentState::Attaching,
            "attached" => AttachmentState::Attached,
            "detaching" => AttachmentState::Detaching,
            "detached" => AttachmentState::Detached,
            "busy" => AttachmentState::Busy,
            _ => AttachmentState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentState::Attaching => "attaching",
            AttachmentState::Attached => "attached",
            AttachmentState::Detaching => "detaching",
            AttachmentState::Detached => "detached",
            AttachmentState::Busy => "busy",
            AttachmentState::Unknown => "unknown",
        }
    }
}

impl VolumeStatus {
    /// `state`, typed.
    pub fn volume_state(&self) -> Option<VolumeState> {
        self.state.as_deref().map(VolumeState::parse)
    }

    /// `attachmentState`, typed.
    pub fn attachment(&self) -> Option<AttachmentState> {
        self.attachment_state.as_deref().map(AttachmentState::parse)
    }

    /// Attached to the node's instance.
    pub fn is_attached(&self) -> bool {
        self.attachment() == Some(AttachmentState::Attached)
    }

    pub fn set_attachment(&mut self, state: AttachmentState) {
        self.attachment_state = Some(state.as_str().to_string());
    }
}

/// The state of an EBS modification, as `status.volumes[].modification.state` holds it (a
/// string on the wire; [`VolumeModification::phase`] reads it typed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModificationState {
    Modifying,
    Optimizing,
    Completed,
    Failed,
    /// A word AWS may add later, kept as it came.
    Other(String),
}

impl ModificationState {
    pub fn parse(s: &str) -> ModificationState {
        match s {
            "modifying" => ModificationState::Modifying,
            "optimizing" => ModificationState::Optimizing,
            "completed" => ModificationState::Completed,
            "failed" => ModificationState::Failed,
            other => ModificationState::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ModificationState::Modifying => "modifying",
            ModificationState::Optimizing => "optimizing",
            ModificationState::Completed => "completed",
            ModificationState::Failed => "failed",
            ModificationState::Other(s) => s,
        }
    }
}

/// An EBS ModifyVolume on one volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeModification {
    /// modifying, optimizing, completed or failed (AWS's modification state). The volume is
    /// usable at its new size from `optimizing` on.
    pub state: String,
    /// Progress in percent as AWS reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<i32>,
    /// When the modification was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// Target size in GiB.
    #[serde(
        rename = "targetSizeGiB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub target_size_gib: Option<i64>,
    /// Target IOPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_iops: Option<i64>,
    /// Target throughput in MiB/s.
    #[serde(
        rename = "targetThroughputMiBps",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub target_throughput_mibps: Option<i64>,
    /// Target volume type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    /// AWS's message when the modification failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl VolumeModification {
    /// `state`, typed.
    pub fn phase(&self) -> ModificationState {
        ModificationState::parse(&self.state)
    }

    /// EBS is still modifying the volume (not yet `optimizing`, `completed` or `failed`).
    pub fn is_modifying(&self) -> bool {
        self.phase() == ModificationState::Modifying
    }
}

/// A dataset as mounted on the node (written by the agent).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// The dataset's name below the pool (`pgdata`).
    pub name: String,
    /// Absolute path on the node where it is mounted (below the agent's mount root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// ZFS reports it mounted there.
    #[serde(default)]
    pub mounted: bool,
}

/// Progress of a resilver, from `zpool status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResilverStatus {
    /// True while the resilver runs.
    pub in_progress: bool,
    /// Member index being resilvered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_index: Option<i32>,
    /// Percent done (0–100), as `zpool status` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_done: Option<i32>,
    /// Bytes scanned so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned_bytes: Option<i64>,
    /// Bytes to scan in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// When the resilver started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
}

/// The most I/O the pool can do, and what limits it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerformanceCeiling {
    /// Sum of the volumes' IOPS (data volumes only for raidz1 writes, all for reads).
    pub volume_iops: i64,
    /// Sum of the volumes' throughput in MiB/s.
    #[serde(rename = "volumeThroughputMiBps")]
    pub volume_throughput_mibps: i64,
    /// The instance type's maximum EBS IOPS, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_iops: Option<i64>,
    /// The instance type's maximum EBS throughput in MiB/s, when known.
    #[serde(
        rename = "instanceThroughputMiBps",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_throughput_mibps: Option<i64>,
    /// What the pool can actually reach: the lower of the two.
    pub iops: i64,
    /// What the pool can actually reach, in MiB/s.
    #[serde(rename = "throughputMiBps")]
    pub throughput_mibps: i64,
    /// `Volumes` when the volumes are the bottleneck, `Instance` when the instance type is
    /// (adding IOPS to the volumes then buys nothing).
    pub limited_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_states_read_and_write_the_wire_words() {
        for w in [
            "creating",
            "available",
            "in-use",
            "deleting",
            "deleted",
            "error",
            "x",
        ] {
            assert_eq!(VolumeState::parse(w).as_str(), w);
        }
        assert_eq!(VolumeState::parse("in-use"), VolumeState::InUse);
        for w in [
            "attaching",
            "attached",
            "detaching",
            "detached",
            "busy",
            "unknown",
        ] {
            assert_eq!(AttachmentState::parse(w).as_str(), w);
        }
        assert_eq!(AttachmentState::parse("x"), AttachmentState::Unknown);
        for w in ["modifying", "optimizing", "completed", "failed", "x"] {
            assert_eq!(ModificationState::parse(w).as_str(), w);
        }

        let mut v = VolumeStatus {
            state: Some("in-use".into()),
            ..Default::default()
        };
        assert_eq!(v.volume_state(), Some(VolumeState::InUse));
        assert_eq!((v.attachment(), v.is_attached()), (None, false));
        v.set_attachment(AttachmentState::Attached);
        assert!(v.is_attached());
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"index": 0, "state": "in-use", "attachmentState": "attached"})
        );
        let m = VolumeModification {
            state: "modifying".into(),
            ..Default::default()
        };
        assert!(m.is_modifying());
    }
}
