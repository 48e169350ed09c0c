//! Plain data the adapter exchanges with controllers (no SDK types leak out).

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeType {
    Gp3,
    Io2,
}

impl VolumeType {
    pub fn as_str(&self) -> &'static str {
        match self {
            VolumeType::Gp3 => "gp3",
            VolumeType::Io2 => "io2",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    pub availability_zone: String,
    pub instance_type: String,
    pub state: String,
    /// Volume IDs attached to the instance, by device name.
    pub block_devices: BTreeMap<String, String>,
    pub root_device_name: Option<String>,
}

/// EBS limits of an instance type (DescribeInstanceTypes → EbsInfo).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceTypeLimits {
    pub instance_type: String,
    pub baseline_iops: Option<i64>,
    pub maximum_iops: Option<i64>,
    pub baseline_throughput_mibps: Option<i64>,
    pub maximum_throughput_mibps: Option<i64>,
    pub maximum_ebs_attachments: Option<i64>,
    pub nvme_supported: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateVolume {
    pub availability_zone: String,
    pub volume_type: VolumeType,
    pub size_gib: i32,
    pub iops: Option<i32>,
    pub throughput_mibps: Option<i32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub volume_initialization_rate_mibps: Option<i32>,
    pub tags: BTreeMap<String, String>,
    pub client_token: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModifyVolume {
    pub volume_id: String,
    pub size_gib: Option<i32>,
    pub iops: Option<i32>,
    pub throughput_mibps: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachmentState {
    Attaching,
    Attached,
    Detaching,
    Detached,
    Busy,
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub instance_id: String,
    pub device: String,
    pub state: AttachmentState,
}

/// An EBS volume's state, as EC2 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
    /// A word this version does not know (or none: empty), kept as it came.
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

    /// Being deleted or deleted: the volume no longer counts.
    pub fn is_gone(&self) -> bool {
        matches!(self, VolumeState::Deleting | VolumeState::Deleted)
    }
}

impl From<&str> for VolumeState {
    fn from(s: &str) -> VolumeState {
        VolumeState::parse(s)
    }
}

impl PartialEq<&str> for VolumeState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub volume_id: String,
    pub availability_zone: String,
    pub state: VolumeState,
    pub volume_type: String,
    pub size_gib: i32,
    pub iops: Option<i32>,
    pub throughput_mibps: Option<i32>,
    pub encrypted: bool,
    pub snapshot_id: Option<String>,
    pub attachments: Vec<Attachment>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSnapshotSet {
    pub instance_id: String,
    /// Attached data volumes to leave out (everything attached that is not a pool member).
    pub exclude_volume_ids: Vec<String>,
    pub description: String,
    /// Tags every snapshot of the set gets in the same call (on top of its volume's tags,
    /// copied with CopyTagsFromSource), so the set can be found by them from the start.
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub volume_id: String,
    /// `pending`, `completed`, `error`, `recoverable`, `recovering`.
    pub state: String,
    pub progress: Option<String>,
    pub volume_size_gib: Option<i32>,
    /// When EBS took the point in time (the request), in seconds since the epoch.
    pub start_time: Option<i64>,
    /// Why the snapshot is in `error`, when AWS says.
    pub state_message: Option<String>,
    pub tags: BTreeMap<String, String>,
}
