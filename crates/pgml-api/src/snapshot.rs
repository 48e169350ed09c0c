//! `EbsSnapshot`: a crash-consistent set of EBS snapshots of every volume behind a database,
//! taken with `standby.signal` in place so that a restore comes up as a replica.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Tags, Time, fixed, is_empty_map, tags_schema};

/// Kubernetes object names (DNS subdomain).
const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// Snapshot one instance of a PgmlCluster (its ZfsPool or PVC).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSource {
    /// Name of the PgmlCluster in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Instance to snapshot (e.g. `main-2`). Unset: a ready replica, so the primary never
    /// pauses; the primary only when the cluster has a single instance (see the cluster's
    /// `backups.snapshots.source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub instance: Option<String>,
}

/// A reference to an object by name in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the object in the same namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
}

/// What to snapshot: exactly one of `cluster`, `zfsPool` or `persistentVolumeClaim`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.cluster), has(self.zfsPool), has(self.persistentVolumeClaim)].filter(x, x).size() == 1")
    .message("source must set exactly one of cluster, zfsPool or persistentVolumeClaim"))]
pub struct SnapshotSource {
    /// A PgmlCluster instance: all volumes behind it are captured, with standby.signal
    /// stamped in its data directory first (unless `standbySignal: Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSource>,
    /// A ZfsPool: every member volume is captured at one instant (EC2 CreateSnapshots on
    /// the node's instance), which with ZFS's copy-on-write gives a consistent pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_pool: Option<LocalRef>,
    /// A PersistentVolumeClaim bound to an EBS CSI volume with ext4 (the non-ZFS path).
    /// Captured with fsfreeze around the snapshot request under `consistency: Auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<LocalRef>,
}

/// Whether to create `standby.signal` in the data directory before the capture.
impl SnapshotSource {
    /// The source as the spec names it, e.g. `PgmlCluster/main (main-2)`, `ZfsPool/tank`
    /// or `PersistentVolumeClaim/data`: what `status.source` shows before the operator
    /// has resolved it.
    pub fn describe(&self) -> String {
        match (&self.cluster, &self.zfs_pool, &self.persistent_volume_claim) {
            (Some(c), _, _) => match &c.instance {
                Some(i) => format!("PgmlCluster/{} ({i})", c.name),
                None => format!("PgmlCluster/{}", c.name),
            },
            (None, Some(p), _) => format!("ZfsPool/{}", p.name),
            (None, None, Some(p)) => format!("PersistentVolumeClaim/{}", p.name),
            (None, None, None) => "none".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StandbySignal {
    /// Yes for cluster sources, and for pools or PVCs that hold a PostgreSQL data
    /// directory; no otherwise.
    #[default]
    Auto,
    /// Always stamp it; fail if no data directory is found.
    Always,
    /// Never stamp it: a restore starts as a primary. Only for disaster recovery of a
    /// lone instance; a restored primary cannot rejoin as a replica without pg_rewind.
    Never,
}

/// How writes are paused around the capture.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Consistency {
    /// Nothing on ZFS (copy-on-write keeps the pool consistent when all members are captured
    /// at one instant); fsfreeze on ext4.
    #[default]
    Auto,
    /// Do nothing: crash-consistent at best.
    #[serde(rename = "None")]
    NoPause,
    /// Freeze the file system with fsfreeze(8) from just before the snapshot request until
    /// AWS has recorded the point in time. ext4 sources only; ZFS has no fsfreeze.
    Fsfreeze,
}

/// What happens to the AWS snapshots when the EbsSnapshot object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the AWS snapshots with the object. The default, so the object is the one
    /// handle on what the snapshots cost and retention works by deleting objects.
    #[default]
    Delete,
    /// Keep the AWS snapshots (tagged with the object's namespace and name) after the
    /// object is gone, e.g. before deleting a namespace.
    Retain,
}

/// A set of EBS snapshots of every volume behind a database instance, a ZFS pool or an ext4
/// PVC, captured at one instant, ready to restore a replica or recover a cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pgml.io",
    version = "v1alpha1",
    kind = "EbsSnapshot",
    doc = "A point-in-time set of EBS snapshots of every volume behind a PgmlCluster instance, ZfsPool or ext4 PVC, taken with standby.signal in place so a restore starts as a replica.",
    plural = "ebssnapshots",
    namespaced,
    status = "EbsSnapshotStatus",
    shortname = "ebss",
    shortname = "ebssnap",
    category = "pgml",
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".status.source",
        description = "What is snapshotted: Kind/name (instance), from the spec until the source is resolved"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Volumes",
        type_ = "integer",
        json_path = ".status.volumeCount",
        description = "EBS snapshots in the set"
    ),
    printcolumn(
        name = "Captured",
        type_ = "date",
        json_path = ".status.captureTime",
        priority = 1
    ),
    printcolumn(
        name = "Size(GiB)",
        type_ = "integer",
        json_path = ".status.sizeGiB",
        description = "Total GiB of the captured volumes",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.consistency == 'Fsfreeze' && has(self.source.zfsPool))")
        .message("consistency Fsfreeze does not apply to a ZfsPool: ZFS has no fsfreeze, and capturing all members at one instant keeps it consistent")
        .field_path(".consistency"),
    validation = Rule::new(fixed("source"))
        .message("source cannot change; create another EbsSnapshot").field_path(".source"),
    validation = Rule::new(fixed("standbySignal"))
        .message("standbySignal cannot change after creation").field_path(".standbySignal"),
    validation = Rule::new(fixed("consistency"))
        .message("consistency cannot change after creation").field_path(".consistency"),
)]
pub struct EbsSnapshotSpec {
    /// What to snapshot: exactly one of `cluster` (a PgmlCluster instance), `zfsPool` or
    /// `persistentVolumeClaim`. Fixed once created, down to the cluster's `instance`.
    pub source: SnapshotSource,

    /// Stamp `standby.signal` in the PostgreSQL data directory before the capture and
    /// remove it after, so a restore starts as a replica instead of promoting itself:
    /// `Auto` (default: yes when the source holds a database), `Always` or `Never`.
    /// Fixed once created.
    #[serde(default)]
    pub standby_signal: StandbySignal,

    /// How writes are paused: `Auto` (default: nothing on ZFS, fsfreeze on ext4), `None`
    /// or `Fsfreeze` (ext4 only).
    /// Fixed once created.
    #[serde(default)]
    pub consistency: Consistency,

    /// Longest time the file system may stay frozen (1–60 seconds, default 10). If AWS has
    /// not taken the point in time by then, the file system is thawed and the snapshot
    /// fails rather than stall the database.
    #[serde(default = "default_freeze_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub freeze_timeout_seconds: i32,

    /// What happens to the AWS snapshots when this object is deleted: `Delete` (default,
    /// so retention and cleanup work by deleting objects) or `Retain`. Changing `Retain` to
    /// `Delete` (also by removing the field) needs the annotation
    /// `pgml.io/allow-delete-policy: "true"` in the same update (the
    /// ValidatingAdmissionPolicy `retain-to-delete.pgml.io`, installed with the CRDs).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Extra AWS tags on each snapshot, on top of the volume's tags and the operator's
    /// `pgml.io/*` tags. Keys starting with `aws:` or `pgml.io/` are reserved.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    #[schemars(schema_with = "tags_schema")]
    pub tags: Tags,
}

fn default_freeze_timeout() -> i32 {
    10
}

/// Where a snapshot is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SnapshotPhase {
    /// Waiting for the source to be ready.
    Pending,
    /// Stamping standby.signal, syncing, freezing.
    Preparing,
    /// The snapshot request is being made; the point in time is being taken.
    Capturing,
    /// Point in time taken, writes resumed; AWS is copying blocks to S3.
    Finalizing,
    /// Every snapshot in the set is completed and restorable.
    Completed,
    /// The set could not be taken; see the Ready condition.
    Failed,
}

/// What was captured and how.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbsSnapshotStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pending, Preparing, Capturing, Finalizing, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SnapshotPhase>,

    /// Standard conditions: Ready (True once Completed), Progressing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The source in one line, e.g. `PgmlCluster/main (main-2)` or `ZfsPool/pg-data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,

    /// Node whose agent prepares the capture (stamps standby.signal, freezes ext4). The
    /// operator also labels the object `pgml.io/node=<node>` so each agent watches only its
    /// own node's snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// What the node agent did to prepare the capture (written by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldStatus>,

    /// The ZfsPool actually captured (for cluster sources, the instance's pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_pool: Option<String>,

    /// Pool layout at capture time (raid0, raidz1); a restore must use the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,

    /// ZFS pool GUID at capture time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_guid: Option<String>,

    /// EC2 instance the volumes were attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,

    /// Availability zone of the volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,

    /// Number of EBS snapshots in the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_count: Option<i32>,

    /// One EBS snapshot per member volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["memberIndex"]))]
    pub snapshots: Vec<MemberSnapshot>,

    /// The instant captured: when the snapshot request was made (EBS snapshots are
    /// point-in-time at the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_time: Option<Time>,

    /// When the last snapshot in the set completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// The consistency method actually used: None or Fsfreeze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,

    /// How long writes were frozen, in milliseconds (Fsfreeze only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_millis: Option<i64>,

    /// standby.signal handling around the capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_signal: Option<StandbySignalStatus>,

    /// PostgreSQL's WAL position (LSN) at the capture, when the source is a database. A
    /// replica restored from this set replays from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,

    /// Total size of the captured volumes in GiB.
    #[serde(rename = "sizeGiB", default, skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<i64>,

    /// Bytes changed since the previous snapshot of the same volumes (EBS
    /// ListChangedBlocks), which is roughly what this set adds to the bill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_bytes: Option<i64>,

    /// The EbsSnapshot that `changedBytes` is measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_snapshot: Option<String>,
}

/// One member volume's EBS snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberSnapshot {
    /// The pool member index this snapshot restores (0 for a PVC).
    pub member_index: i32,
    /// Volume the snapshot was taken of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// EBS snapshot ID (`snap-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// EBS snapshot state: pending, completed, error, recoverable or recovering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Progress as AWS reports it, e.g. `42%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Size of the source volume in GiB.
    #[serde(rename = "sizeGiB", default, skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<i64>,
}

/// Where the node agent's hold on the source is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HoldState {
    /// Prepared (standby.signal stamped, file system frozen as asked) until `deadline`:
    /// the operator may capture now.
    Held,
    /// Undone after the capture (or after the object went away).
    Released,
    /// The deadline passed before the capture: undone; the capture must not happen.
    Expired,
    /// The agent could not prepare (no data directory under `standbySignal: Always`,
    /// fsfreeze refused, source not mounted); see `message`.
    Failed,
}

/// The node agent's hold on the source around the capture. Written only by the agent
/// (field manager `pgml-agent`); see docs/design/ebssnapshot.md.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldStatus {
    /// Held, Released, Expired or Failed.
    pub state: HoldState,
    /// When the source was prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_at: Option<Time>,
    /// The hold ends by itself at this instant, whoever is alive: the file system is thawed
    /// and standby.signal removed. The operator captures only before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// When the hold was undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// The file system (ext4) is frozen while Held.
    #[serde(default)]
    pub frozen: bool,
    /// Where the source is mounted on the node (the pool's datasets or the ext4 mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Why the hold failed or expired, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What was done with standby.signal.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StandbySignalStatus {
    /// standby.signal was present in the data directory at the capture instant.
    pub stamped: bool,
    /// It was removed again after the capture (false while a removal is pending, so a
    /// primary is never left thinking it is a standby at its next restart).
    pub removed: bool,
    /// The data directory it was written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// It was already there (the source is a standby): left in place, never removed.
    #[serde(default)]
    pub already_present: bool,
}
