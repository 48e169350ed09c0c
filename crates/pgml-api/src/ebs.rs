//! The EBS volumes behind a ZFS pool: type, size, performance, encryption, and the limits AWS
//! enforces (checked at admission by the CEL rules on [`EbsVolumes`]).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Tags, fixed, is_empty_map, tags_schema, yes};

/// AWS limits per volume type (AWS EBS user guide, general-purpose and provisioned-IOPS pages,
/// as of 2025).
pub mod limits {
    pub const GP3_MIN_GIB: i64 = 1;
    pub const GP3_MAX_GIB: i64 = 65_536;
    pub const GP3_BASELINE_IOPS: i64 = 3_000;
    pub const GP3_MAX_IOPS: i64 = 80_000;
    pub const GP3_IOPS_PER_GIB: i64 = 500;
    pub const GP3_BASELINE_MIBPS: i64 = 125;
    pub const GP3_MAX_MIBPS: i64 = 2_000;
    /// Throughput may be at most IOPS / 4 MiB/s (0.25 MiB/s per provisioned IOPS).
    pub const GP3_IOPS_PER_MIBPS: i64 = 4;
    pub const IO2_MIN_GIB: i64 = 4;
    pub const IO2_MAX_GIB: i64 = 65_536;
    pub const IO2_MIN_IOPS: i64 = 100;
    pub const IO2_MAX_IOPS: i64 = 256_000;
    pub const IO2_IOPS_PER_GIB: i64 = 1_000;
    /// io2 Block Express delivers 0.256 MiB/s per provisioned IOPS, up to this ceiling.
    pub const IO2_MAX_MIBPS: i64 = 4_000;
    /// Most volumes one pool may have. The instance type's attachment limit is usually lower
    /// and is checked by the operator against the node's instance type.
    pub const MAX_VOLUMES: i32 = 24;
}

/// EBS volume type. Only the two types that make sense for a database are offered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// General purpose SSD: 3000 IOPS and 125 MiB/s included at any size, more provisioned
    /// independently of size. What most deployments want.
    #[default]
    Gp3,
    /// Provisioned IOPS SSD (Block Express): up to 256000 IOPS and 1000 IOPS per GiB, higher
    /// durability, priced per IOPS.
    Io2,
}

impl VolumeType {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Gp3 => "gp3",
            VolumeType::Io2 => "io2",
        }
    }
}

/// The EBS volumes a pool is built from. All volumes of a pool are identical; `count` of them
/// are created in the node's availability zone and attached to the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'io2' || self.sizeGiB >= 4")
        .message("io2 volumes must be at least 4 GiB").field_path(".sizeGiB"),
    validation = Rule::new("self.type != 'gp3' || !has(self.iops) || (self.iops >= 3000 && self.iops <= 80000)")
        .message("gp3 IOPS must be between 3000 and 80000").field_path(".iops"),
    validation = Rule::new("self.type != 'gp3' || !has(self.iops) || self.iops <= 3000 || self.iops <= self.sizeGiB * 500")
        .message("gp3 allows at most 500 IOPS per GiB above the 3000 baseline: grow sizeGiB or lower iops").field_path(".iops"),
    validation = Rule::new("self.type != 'gp3' || !has(self.throughputMiBps) || self.throughputMiBps * 4 <= (has(self.iops) ? self.iops : 3000)")
        .message("gp3 throughput may be at most IOPS/4 MiB/s (0.25 MiB/s per IOPS; 750 MiB/s at the 3000 IOPS baseline)").field_path(".throughputMiBps"),
    validation = Rule::new("self.type != 'io2' || has(self.iops)")
        .message("io2 volumes need iops").field_path(".iops"),
    validation = Rule::new("self.type != 'io2' || !has(self.iops) || self.iops <= self.sizeGiB * 1000")
        .message("io2 allows at most 1000 IOPS per GiB: grow sizeGiB or lower iops").field_path(".iops"),
    validation = Rule::new("self.type != 'io2' || !has(self.throughputMiBps)")
        .message("throughputMiBps applies to gp3 only; io2 throughput follows its IOPS").field_path(".throughputMiBps"),
    validation = Rule::new("!has(self.kmsKeyId) || self.encrypted")
        .message("kmsKeyId needs encrypted: true").field_path(".kmsKeyId"),
    validation = Rule::new("self.sizeGiB >= oldSelf.sizeGiB")
        .message("volumes can grow but never shrink: sizeGiB cannot decrease").field_path(".sizeGiB"),
    validation = Rule::new("self.count >= oldSelf.count")
        .message("the volume count can grow but never shrink").field_path(".count"),
    validation = Rule::new(fixed("encrypted"))
        .message("encrypted cannot change once the volumes exist").field_path(".encrypted"),
    validation = Rule::new(fixed("kmsKeyId"))
        .message("kmsKeyId cannot change once the volumes exist: setting, changing and removing it are all refused").field_path(".kmsKeyId"),
)]
pub struct EbsVolumes {
    /// Number of EBS volumes in the pool (1–24). `raid0` stripes across all of them
    /// (throughput and IOPS add up); `raidz1` needs at least 3 and survives the loss of one.
    /// It can grow (for raid0, a new volume is added to the stripe) but never shrink. The
    /// node's instance type limits how many volumes it can attach; the operator checks that.
    #[serde(default = "default_count")]
    #[schemars(range(min = 1, max = 24))]
    pub count: i32,

    /// EBS volume type: `gp3` (default; most deployments) or `io2` (provisioned IOPS, for
    /// when "money is no object"). Can be changed later; the operator then modifies each
    /// volume in place.
    #[serde(rename = "type", default)]
    pub volume_type: VolumeType,

    /// Size of EACH volume in GiB (gp3: 1–65536, io2: 4–65536). Usable pool size is about
    /// count × sizeGiB for raid0 and (count − 1) × sizeGiB for raidz1. Volumes can grow
    /// (EBS modifies them online and the pool expands) but never shrink.
    #[serde(rename = "sizeGiB")]
    #[schemars(range(min = 1, max = 65536))]
    pub size_gib: i64,

    /// Provisioned IOPS of EACH volume. gp3: 3000–80000, at most 500 per GiB above the 3000
    /// that every gp3 volume gets; unset means the 3000 baseline. io2: required, 100–256000,
    /// at most 1000 per GiB. A raid0 pool delivers about count × iops, capped by the
    /// instance type's EBS limit (see status.performance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 256000))]
    pub iops: Option<i64>,

    /// Provisioned throughput of EACH gp3 volume in MiB/s: 125–2000 and at most iops / 4.
    /// Unset means the 125 MiB/s baseline. Not settable on io2, whose throughput follows
    /// its IOPS.
    #[serde(
        rename = "throughputMiBps",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 125, max = 2000))]
    pub throughput_mibps: Option<i64>,

    /// Encrypt the volumes at rest (default true). Cannot be changed once the volumes
    /// exist: EBS cannot encrypt or decrypt a volume in place.
    #[serde(default = "yes")]
    pub encrypted: bool,

    /// KMS key for encryption: a key ID, key ARN, alias name (`alias/…`) or alias ARN.
    /// Unset means the account's default EBS key. Only with `encrypted: true`. Fixed once
    /// the volumes exist: it cannot be changed, added or removed later (the volumes keep
    /// the key they were created with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        regex(
            pattern = r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/[A-Za-z0-9/_-]+|alias/[A-Za-z0-9/_-]+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
        )
    )]
    pub kms_key_id: Option<String>,

    /// Extra AWS tags put on every volume (and copied to its snapshots). Keys starting
    /// with `aws:` or `pgml.io/` are reserved. At most 40.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    #[schemars(schema_with = "tags_schema")]
    pub tags: Tags,
}

fn default_count() -> i32 {
    1
}

impl EbsVolumes {
    /// IOPS each volume gets: the provisioned value, or gp3's baseline.
    pub fn effective_iops(&self) -> i64 {
        match (self.iops, self.volume_type) {
            (Some(iops), _) => iops,
            (None, VolumeType::Gp3) => limits::GP3_BASELINE_IOPS,
            // io2 without IOPS is rejected at admission; 0 keeps this total.
            (None, VolumeType::Io2) => 0,
        }
    }

    /// Throughput each volume gets in MiB/s.
    pub fn effective_throughput_mibps(&self) -> i64 {
        match self.volume_type {
            VolumeType::Gp3 => self.throughput_mibps.unwrap_or(limits::GP3_BASELINE_MIBPS),
            // 0.256 MiB/s per IOPS on Block Express.
            VolumeType::Io2 => (self.effective_iops() * 256 / 1000).min(limits::IO2_MAX_MIBPS),
        }
    }
}
