//! Tests of the fake itself: that it answers as EC2 does (states, tokens, attachments, tags,
//! snapshots), that its rules fire as asked, and that it records what was called.

mod injection;
mod instances;
mod snapshots;
mod volumes;

use std::collections::BTreeMap;

use crate::{CreateVolume, Ec2, VolumeType};

pub const ZONE: &str = "us-east-1a";
pub const NODE: &str = "i-0000000000000a001";

/// The ID of a volume made by [`request`]`(token, size_gib, pool)`, which must succeed.
pub async fn created(fake: &super::FakeEc2, token: &str, size_gib: i32, pool: &str) -> String {
    fake.create_volume(&request(token, size_gib, pool))
        .await
        .unwrap()
        .volume_id
}

/// A gp3 volume request in [`ZONE`], tagged `pool=<pool>`.
pub fn request(token: &str, size_gib: i32, pool: &str) -> CreateVolume {
    CreateVolume {
        availability_zone: ZONE.into(),
        volume_type: VolumeType::Gp3,
        size_gib,
        iops: None,
        throughput_mibps: None,
        encrypted: true,
        kms_key_id: None,
        snapshot_id: None,
        volume_initialization_rate_mibps: None,
        tags: tags(&[("pool", pool)]),
        client_token: token.into(),
    }
}

pub fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn filter(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
