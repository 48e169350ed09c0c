//! How a test steers the fake: the world it starts from, faults of state, and looks at the
//! world that neither count as calls nor move a transition on.

use super::FakeEc2;
use super::snapshots::SnapFault;
use super::world::{AttRec, Phase, ROOT_DEVICE, VolRec, World};
use crate::{AttachmentState, Instance, InstanceTypeLimits, Snapshot, Volume, VolumeState};

impl FakeEc2 {
    // ---- the world -------------------------------------------------------------------

    /// A running instance in `zone` with an 8 GiB root volume at [`ROOT_DEVICE`]; returns
    /// the root volume's ID. A type not described by [`FakeEc2::set_instance_type`] gets
    /// [`default_limits`].
    pub fn add_instance(&self, id: &str, zone: &str, instance_type: &str) -> String {
        self.world(|w| w.add_instance(id, zone, instance_type))
    }

    /// What DescribeInstanceTypes answers for `limits.instance_type`.
    pub fn set_instance_type(&self, limits: InstanceTypeLimits) {
        self.world(|w| w.types.insert(limits.instance_type.clone(), limits));
    }

    /// DescribeInstanceTypes no longer knows `instance_type` (newer than the region's
    /// catalogue): EC2 answers `InvalidInstanceType`.
    pub fn forget_instance_type(&self, instance_type: &str) {
        self.world(|w| {
            w.types.remove(instance_type);
        });
    }

    pub fn set_instance_state(&self, id: &str, state: &str) {
        self.world(|w| {
            if let Some(i) = w.instances.get_mut(id) {
                i.state = state.to_string();
            }
        });
    }

    /// Terminates an instance as EC2 does: its volumes are detached, its root volume
    /// deleted.
    pub fn terminate_instance(&self, id: &str) {
        self.world(|w| {
            if let Some(i) = w.instances.get_mut(id) {
                i.state = "terminated".into();
            }
            w.volumes.retain(|_, v| {
                let root = v
                    .attachments
                    .iter()
                    .any(|a| a.instance == id && a.device == ROOT_DEVICE);
                v.attachments.retain(|a| a.instance != id);
                !root
            });
        });
    }

    /// A volume that exists already, as given: its `state` (`creating`, `deleting` and
    /// `error` are kept; anything else is settled) and its attachments.
    pub fn insert_volume(&self, v: Volume) {
        self.world(|w| {
            let phase = match v.state {
                VolumeState::Creating => Phase::Creating(w.timing.creating.max(1)),
                VolumeState::Deleting => Phase::Deleting(w.timing.deleting.max(1)),
                VolumeState::Error => Phase::Failed,
                _ => Phase::Ready,
            };
            let attachments = v
                .attachments
                .iter()
                .map(|a| AttRec {
                    instance: a.instance_id.clone(),
                    device: a.device.clone(),
                    state: a.state,
                    left: 1,
                })
                .collect();
            w.volumes.insert(
                v.volume_id.clone(),
                VolRec {
                    base: v,
                    phase,
                    attachments,
                    modifying: None,
                },
            );
        });
    }

    /// What ListChangedBlocks counts between two snapshots (0 unless set).
    pub fn set_changed_bytes(&self, first: &str, second: &str, bytes: i64) {
        self.world(|w| w.changed.insert((first.into(), second.into()), bytes));
    }

    /// Ends every transition now (stuck attachments stay stuck).
    pub fn settle(&self) {
        self.world(World::settle);
    }

    // ---- faults of state -------------------------------------------------------------

    /// Attachments of `volume_id` (made or in progress) stay `attaching` until
    /// [`FakeEc2::release_attachments`]: EC2 accepted them but never finishes.
    pub fn stick_attachments(&self, volume_id: &str) {
        self.world(|w| {
            w.stuck.insert(volume_id.to_string());
            if let Some(v) = w.volumes.get_mut(volume_id) {
                for a in &mut v.attachments {
                    if a.state == AttachmentState::Attached {
                        a.state = AttachmentState::Attaching;
                    }
                }
            }
        });
    }

    pub fn release_attachments(&self, volume_id: &str) {
        self.world(|w| {
            w.stuck.remove(volume_id);
            if let Some(v) = w.volumes.get_mut(volume_id) {
                for a in &mut v.attachments {
                    if a.state == AttachmentState::Attaching && a.left == 0 {
                        a.state = AttachmentState::Attached;
                    }
                }
            }
        });
    }

    /// The volume fails: state `error` from now on (attachments kept).
    pub fn fail_volume(&self, volume_id: &str) {
        self.world(|w| {
            if let Some(v) = w.volumes.get_mut(volume_id) {
                v.phase = Phase::Failed;
            }
        });
    }

    /// The volume vanishes (someone else deleted it, force-detached first): EC2 no longer
    /// knows it.
    pub fn lose_volume(&self, volume_id: &str) {
        self.world(|w| w.volumes.remove(volume_id));
    }

    /// The next `n` snapshots made (of `volume_id`, or of any volume) end in `error` with
    /// `message` instead of `completed`.
    pub fn fail_next_snapshots(&self, n: usize, volume_id: Option<&str>, message: &str) {
        self.world(|w| {
            w.snapshot_faults.push(SnapFault {
                left: n,
                volume: volume_id.map(str::to_string),
                message: message.to_string(),
            })
        });
    }

    /// Snapshot `id` ends in `error` (at once when it has already ended).
    pub fn fail_snapshot(&self, id: &str, message: &str) {
        self.world(|w| {
            if let Some(s) = w.snapshots.get_mut(id) {
                s.error = Some(message.to_string());
            }
        });
    }

    // ---- looks (not recorded; no transition counts them) -----------------------------

    pub fn volume(&self, id: &str) -> Option<Volume> {
        self.world(|w| w.render(id, false))
    }

    /// Every volume EC2 knows (root volumes included), in ID order.
    pub fn volumes(&self) -> Vec<Volume> {
        self.world(|w| {
            let ids: Vec<String> = w.volumes.keys().cloned().collect();
            ids.iter().filter_map(|id| w.render(id, false)).collect()
        })
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.world(|w| w.instance(id))
    }

    pub fn snapshot(&self, id: &str) -> Option<Snapshot> {
        self.world(|w| w.snapshot(id))
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.world(|w| {
            let ids: Vec<String> = w.snapshots.keys().cloned().collect();
            ids.iter().filter_map(|id| w.snapshot(id)).collect()
        })
    }

    /// The description CreateSnapshots gave snapshot `id`.
    pub fn snapshot_description(&self, id: &str) -> Option<String> {
        self.world(|w| w.snapshots.get(id).map(|s| s.description.clone()))
    }
}
