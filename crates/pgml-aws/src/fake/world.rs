//! The fake's EC2: instances, volumes and their attachments, client tokens; how a volume
//! looks to a describe and moves on. (What the volume actions do is in `volumes.rs`, the
//! snapshots in `snapshots.rs`.)

use std::collections::{BTreeMap, BTreeSet};

use super::snapshots::SnapRec;
use super::{Ec2Error, Timing, glob};
use crate::{
    Attachment, AttachmentState, CreateVolume, Instance, InstanceTypeLimits, Volume, VolumeState,
};

/// The root device of every instance the fake makes.
pub const ROOT_DEVICE: &str = "/dev/xvda";

pub(super) struct InstanceRec {
    pub zone: String,
    pub instance_type: String,
    pub state: String,
}

/// Where a volume is in its life. The counters are how many more describes of the volume
/// show the state before it moves on.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Phase {
    Creating(u32),
    Ready,
    Deleting(u32),
    Failed,
}

pub(super) struct AttRec {
    pub instance: String,
    pub device: String,
    pub state: AttachmentState,
    pub left: u32,
}

pub(super) struct VolRec {
    /// Everything but `state` and `attachments`, which are rendered from the rest.
    pub base: Volume,
    pub phase: Phase,
    pub attachments: Vec<AttRec>,
    /// Describes left before a modification in flight completes.
    pub modifying: Option<u32>,
}

/// What a ClientToken made: the request (less the token) and the first answer.
pub(super) struct TokenRec {
    pub request: CreateVolume,
    pub answer: Volume,
}

#[derive(Default)]
pub(super) struct World {
    pub timing: Timing,
    next_id: u64,
    pub instances: BTreeMap<String, InstanceRec>,
    pub types: BTreeMap<String, InstanceTypeLimits>,
    pub volumes: BTreeMap<String, VolRec>,
    pub tokens: BTreeMap<String, TokenRec>,
    /// Volumes whose attachments stay `attaching` until released.
    pub stuck: BTreeSet<String>,
    pub snapshots: BTreeMap<String, SnapRec>,
    pub snapshot_faults: Vec<super::snapshots::SnapFault>,
    pub changed: BTreeMap<(String, String), i64>,
}

pub(super) fn not_found(kind: &str, id: &str) -> Ec2Error {
    match kind {
        "volume" => Ec2Error::new(
            "InvalidVolume.NotFound",
            format!("The volume '{id}' does not exist."),
        ),
        "snapshot" => Ec2Error::new(
            "InvalidSnapshot.NotFound",
            format!("The snapshot '{id}' does not exist."),
        ),
        _ => Ec2Error::new(
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        ),
    }
}

impl World {
    /// A new ID like EC2's: the prefix and 17 hex digits.
    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:017x}", self.next_id)
    }

    pub fn add_instance(&mut self, id: &str, zone: &str, instance_type: &str) -> String {
        self.types
            .entry(instance_type.to_string())
            .or_insert_with(|| default_limits(instance_type));
        self.instances.insert(
            id.to_string(),
            InstanceRec {
                zone: zone.to_string(),
                instance_type: instance_type.to_string(),
                state: "running".into(),
            },
        );
        let root = self.new_id("vol");
        self.volumes.insert(
            root.clone(),
            VolRec {
                base: Volume {
                    volume_id: root.clone(),
                    availability_zone: zone.to_string(),
                    state: VolumeState::Other(String::new()),
                    volume_type: "gp3".into(),
                    size_gib: 8,
                    iops: Some(3000),
                    throughput_mibps: Some(125),
                    encrypted: false,
                    snapshot_id: None,
                    attachments: vec![],
                    tags: BTreeMap::new(),
                },
                phase: Phase::Ready,
                attachments: vec![AttRec {
                    instance: id.to_string(),
                    device: ROOT_DEVICE.into(),
                    state: AttachmentState::Attached,
                    left: 0,
                }],
                modifying: None,
            },
        );
        root
    }

    /// The instance as DescribeInstances shows it: every attachment (attaching and detaching
    /// ones too) in its block-device mapping.
    pub fn instance(&self, id: &str) -> Option<Instance> {
        let i = self.instances.get(id)?;
        let block_devices = self
            .volumes
            .iter()
            .flat_map(|(vid, v)| {
                v.attachments
                    .iter()
                    .filter(|a| a.instance == id)
                    .map(|a| (a.device.clone(), vid.clone()))
            })
            .collect();
        Some(Instance {
            instance_id: id.to_string(),
            availability_zone: i.zone.clone(),
            instance_type: i.instance_type.clone(),
            state: i.state.clone(),
            block_devices,
            root_device_name: Some(ROOT_DEVICE.into()),
        })
    }

    pub fn describe_instance(&self, id: &str) -> Result<Instance, Ec2Error> {
        if !id.starts_with("i-") {
            return Err(Ec2Error::new(
                "InvalidInstanceID.Malformed",
                format!("Invalid id: \"{id}\""),
            ));
        }
        self.instance(id).ok_or_else(|| not_found("instance", id))
    }

    pub fn instance_type_limits(&self, t: &str) -> Result<InstanceTypeLimits, Ec2Error> {
        // EC2 refuses a type it does not know (rather than answering an empty list).
        self.types.get(t).cloned().ok_or_else(|| {
            Ec2Error::new(
                "InvalidInstanceType",
                format!("The following supplied instance types do not exist: [{t}]"),
            )
        })
    }

    /// Volume `id` as a describe shows it; `advance` counts the describe towards the
    /// volume's next state (a look from the test does not).
    pub fn render(&mut self, id: &str, advance: bool) -> Option<Volume> {
        let stuck = self.stuck.contains(id);
        let v = self.volumes.get_mut(id)?;
        let shown = Volume {
            state: match v.phase {
                Phase::Creating(_) => VolumeState::Creating,
                Phase::Deleting(_) => VolumeState::Deleting,
                Phase::Failed => VolumeState::Error,
                Phase::Ready if v.attachments.is_empty() => VolumeState::Available,
                Phase::Ready => VolumeState::InUse,
            },
            attachments: v
                .attachments
                .iter()
                .map(|a| Attachment {
                    instance_id: a.instance.clone(),
                    device: a.device.clone(),
                    state: a.state,
                })
                .collect(),
            ..v.base.clone()
        };
        if advance {
            step(v, stuck);
            if v.phase == Phase::Deleting(0) {
                self.volumes.remove(id);
            }
        }
        Some(shown)
    }

    /// Every volume for which `keep` holds, as a describe shows them (in ID order).
    pub fn describe_where(&mut self, keep: impl Fn(&VolRec) -> bool) -> Vec<Volume> {
        let ids: Vec<String> = self
            .volumes
            .iter()
            .filter(|(_, v)| keep(v))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().filter_map(|id| self.render(id, true)).collect()
    }

    pub fn find_volumes(&mut self, tags: &[(String, String)]) -> Vec<Volume> {
        self.describe_where(|v| tags_match(&v.base.tags, tags))
    }

    /// Ends every transition now (stuck attachments stay stuck).
    pub fn settle(&mut self) {
        let ids: Vec<String> = self.volumes.keys().cloned().collect();
        for id in ids {
            let stuck = self.stuck.contains(&id);
            let v = self.volumes.get_mut(&id).expect("listed");
            if let Phase::Creating(n) | Phase::Deleting(n) = &mut v.phase {
                *n = 1;
            }
            v.modifying = v.modifying.map(|_| 1);
            for a in &mut v.attachments {
                a.left = 1;
            }
            step(v, stuck);
            if v.phase == Phase::Deleting(0) {
                self.volumes.remove(&id);
            }
        }
        for s in self.snapshots.values_mut() {
            s.settle();
        }
    }
}

/// One describe more of `v`: each transition with a count left moves one step closer.
/// `Deleting(0)` is left for the caller to remove.
fn step(v: &mut VolRec, stuck: bool) {
    match &mut v.phase {
        Phase::Creating(n) => {
            *n = n.saturating_sub(1);
            if *n == 0 {
                v.phase = Phase::Ready;
            }
        }
        Phase::Deleting(n) => *n = n.saturating_sub(1),
        Phase::Ready | Phase::Failed => {}
    }
    if let Some(n) = &mut v.modifying {
        *n = n.saturating_sub(1);
        if *n == 0 {
            v.modifying = None;
        }
    }
    for a in &mut v.attachments {
        a.left = a.left.saturating_sub(1);
        if a.left == 0 && a.state == AttachmentState::Attaching && !stuck {
            a.state = AttachmentState::Attached;
        }
    }
    v.attachments
        .retain(|a| !(a.state == AttachmentState::Detaching && a.left == 0));
}

/// The limits the fake gives an instance type nobody described: a Nitro instance's 28
/// attachment slots, NVMe, no published bandwidth.
pub fn default_limits(instance_type: &str) -> InstanceTypeLimits {
    InstanceTypeLimits {
        instance_type: instance_type.to_string(),
        maximum_ebs_attachments: Some(28),
        nvme_supported: true,
        ..Default::default()
    }
}

/// EC2's `tag:<key>` filters: every filter must match, its value a pattern (`*`, `?`).
pub fn tags_match(tags: &BTreeMap<String, String>, filters: &[(String, String)]) -> bool {
    filters
        .iter()
        .all(|(k, pattern)| tags.get(k).is_some_and(|v| glob(pattern, v)))
}
