//! Values the plan tests share.

use std::collections::BTreeMap;

use pgml_api::snapshot::{EbsSnapshotSpec, HoldState, HoldStatus, MemberSnapshot};
use pgml_aws::Snapshot;

use super::SnapRef;

pub fn spec(yaml: &str) -> EbsSnapshotSpec {
    serde_yaml::from_str(yaml).unwrap()
}

pub fn snap_ref() -> SnapRef {
    SnapRef {
        namespace: "ns".into(),
        name: "nightly".into(),
        uid: "u-1".into(),
        installation: "prod-a".into(),
    }
}

pub fn snap(id: &str, vol: &str, state: &str, start: i64) -> Snapshot {
    Snapshot {
        snapshot_id: id.into(),
        volume_id: vol.into(),
        state: state.into(),
        progress: None,
        volume_size_gib: Some(1),
        start_time: Some(start),
        state_message: None,
        tags: BTreeMap::new(),
    }
}

/// Members `0..n` on volumes `vol-<i>`, 1 GiB each, no snapshot yet.
pub fn members(n: i32) -> Vec<MemberSnapshot> {
    (0..n)
        .map(|i| MemberSnapshot {
            member_index: i,
            volume_id: Some(format!("vol-{i}")),
            size_gib: Some(1),
            ..Default::default()
        })
        .collect()
}

/// [`members`] with snapshot `snap-<i>` each.
pub fn captured(n: i32) -> Vec<MemberSnapshot> {
    members(n)
        .into_iter()
        .map(|m| MemberSnapshot {
            snapshot_id: Some(format!("snap-{}", m.member_index)),
            ..m
        })
        .collect()
}

pub fn held(state: HoldState) -> HoldStatus {
    HoldStatus {
        state,
        held_at: None,
        deadline: None,
        released_at: None,
        frozen: false,
        mount_path: None,
        message: Some("why".into()),
    }
}
