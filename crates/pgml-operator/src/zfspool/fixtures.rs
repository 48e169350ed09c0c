//! Plain values the controller's tests start from: volumes as EC2 describes them, a
//! pool's facts, EC2 errors as the adapter classifies them.

use pgml_api::common::{Time, keys};
use pgml_api::zfspool::VolumeStatus;
use pgml_aws::{Attachment, AttachmentState, AwsError, Instance, Volume, VolumeState};

use crate::zfspool::build::{self, Members};
use crate::zfspool::status::Facts;

pub const INSTANCE: &str = "i-1";

pub fn t(s: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
}

/// Volume `id`, tagged as member `index` (when given), 100 GiB gp3 at the baseline, not
/// attached.
pub fn vol(id: &str, index: impl Into<Option<usize>>, state: impl Into<VolumeState>) -> Volume {
    Volume {
        volume_id: id.into(),
        availability_zone: "us-east-1a".into(),
        state: state.into(),
        volume_type: "gp3".into(),
        size_gib: 100,
        iops: Some(3000),
        throughput_mibps: Some(125),
        encrypted: true,
        snapshot_id: None,
        attachments: vec![],
        tags: index
            .into()
            .map(|i| (keys::MEMBER_INDEX.to_string(), i.to_string()))
            .into_iter()
            .collect(),
    }
}

/// `v` attached (`state`) to `instance` on `device`.
pub fn on(mut v: Volume, instance: &str, device: &str, state: AttachmentState) -> Volume {
    v.state = VolumeState::InUse;
    v.attachments = vec![Attachment {
        instance_id: instance.into(),
        device: device.into(),
        state,
    }];
    v
}

/// Volume `id` as deletion reads it: in `state`, attached to [`INSTANCE`] in `att` when
/// given.
pub fn vol_in(id: &str, state: &str, att: Option<AttachmentState>) -> Volume {
    let v = vol(id, None, state);
    match att {
        Some(a) => Volume {
            state: state.into(),
            ..on(v, INSTANCE, "/dev/xvdba", a)
        },
        None => v,
    }
}

/// The members as slots hold them (`None`: no volume).
pub fn members(slots: Vec<Option<Volume>>) -> Members {
    Members {
        slots,
        ..Default::default()
    }
}

/// The facts of a pool of `slots.len()` members, each entry as EC2 reports its volume.
pub fn facts(m: &Members) -> Facts {
    Facts {
        generation: Some(1),
        node_name: "node-a".into(),
        pool_name: "tank".into(),
        count: m.slots.len(),
        instance_id: INSTANCE.into(),
        instance_type: "m7i.large".into(),
        availability_zone: "us-east-1a".into(),
        volumes: m
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some(build::volume_status(i, v.as_ref()?, INSTANCE, None)))
            .collect(),
        ..Default::default()
    }
}

/// The entry of member `index` in `facts`.
pub fn entry(facts: &Facts, index: i32) -> &VolumeStatus {
    facts.volumes.iter().find(|v| v.index == index).unwrap()
}

/// EC2's answer `code` (HTTP 400 unless it says otherwise), classified as the adapter
/// classifies it.
pub fn ec2_error(action: &'static str, code: &str, message: &str) -> AwsError {
    let status = match code {
        "RequestLimitExceeded" | "Unavailable" => 503,
        "InternalError" => 500,
        _ => 400,
    };
    AwsError::answered(action, Some(code), Some(status), "", message)
}

/// No answer at all (a reset connection).
pub fn no_answer(action: &'static str) -> AwsError {
    AwsError::answered(action, None, None, "DispatchFailure", "connection reset")
}

pub fn instance(devices: &[(&str, &str)]) -> Instance {
    Instance {
        instance_id: INSTANCE.into(),
        availability_zone: "us-east-1a".into(),
        instance_type: "m7i.large".into(),
        state: "running".into(),
        block_devices: devices
            .iter()
            .map(|(d, v)| (d.to_string(), v.to_string()))
            .collect(),
        root_device_name: Some("/dev/xvda".into()),
    }
}
