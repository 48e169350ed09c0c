//! The fake's snapshots: CreateSnapshots over an instance's volumes, their states, tag
//! searches, deletion, CreateTags and the EBS direct API's changed bytes.

use std::collections::BTreeMap;

use super::Ec2Error;
use super::world::{ROOT_DEVICE, World, not_found, tags_match};
use crate::{AttachmentState, CreateSnapshotSet, Snapshot};

pub(super) struct SnapRec {
    /// Everything but `state` and `progress`, which are rendered from the rest.
    pub base: Snapshot,
    /// Describes left showing `pending`.
    pub left: u32,
    /// Ends in `error` with this message instead of `completed`.
    pub error: Option<String>,
    pub done: bool,
    pub description: String,
}

impl SnapRec {
    pub fn state(&self) -> &'static str {
        match (self.done, &self.error) {
            (false, _) => "pending",
            (true, None) => "completed",
            (true, Some(_)) => "error",
        }
    }

    fn render(&mut self, advance: bool) -> Snapshot {
        let shown = Snapshot {
            state: self.state().into(),
            progress: Some(if self.done { "100%" } else { "0%" }.into()),
            state_message: self.error.clone().filter(|_| self.done),
            ..self.base.clone()
        };
        if advance && !self.done {
            self.left = self.left.saturating_sub(1);
            self.done = self.left == 0;
        }
        shown
    }

    pub fn settle(&mut self) {
        self.left = 0;
        self.done = true;
    }
}

/// The next `left` snapshots (of `volume`, or of any volume) end in `error`.
pub(super) struct SnapFault {
    pub left: usize,
    pub volume: Option<String>,
    pub message: String,
}

impl World {
    /// EC2 CreateSnapshots with ExcludeBootVolume and CopyTagsFromSource=volume: one
    /// snapshot of each volume attached to the instance, the request's tags over the
    /// volume's. The answer says `pending`.
    pub fn create_snapshot_set(
        &mut self,
        req: &CreateSnapshotSet,
        now: i64,
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        let instance = self.describe_instance(&req.instance_id)?;
        let sources: Vec<(String, i32, BTreeMap<String, String>)> = instance
            .block_devices
            .iter()
            .filter(|(device, id)| *device != ROOT_DEVICE && !req.exclude_volume_ids.contains(id))
            .filter_map(|(_, id)| {
                let v = self.volumes.get(id)?;
                let attached = v
                    .attachments
                    .iter()
                    .any(|a| a.instance == req.instance_id && a.state == AttachmentState::Attached);
                attached.then(|| (id.clone(), v.base.size_gib, v.base.tags.clone()))
            })
            .collect();
        let mut made = Vec::new();
        for (volume_id, size, mut tags) in sources {
            tags.extend(req.tags.clone());
            let id = self.new_id("snap");
            let error = self.take_snapshot_fault(&volume_id);
            let left = self.timing.snapshot_pending;
            let mut rec = SnapRec {
                base: Snapshot {
                    snapshot_id: id.clone(),
                    volume_id,
                    state: String::new(),
                    progress: None,
                    volume_size_gib: Some(size),
                    start_time: Some(now),
                    state_message: None,
                    tags,
                },
                left,
                error,
                done: left == 0,
                description: req.description.clone(),
            };
            made.push(Snapshot {
                state: "pending".into(),
                progress: Some("0%".into()),
                ..rec.render(false)
            });
            self.snapshots.insert(id, rec);
        }
        Ok(made)
    }

    fn take_snapshot_fault(&mut self, volume: &str) -> Option<String> {
        let f = self
            .snapshot_faults
            .iter_mut()
            .find(|f| f.left > 0 && f.volume.as_deref().is_none_or(|v| v == volume))?;
        f.left -= 1;
        let message = f.message.clone();
        self.snapshot_faults.retain(|f| f.left > 0);
        Some(message)
    }

    pub fn describe_snapshots(&mut self, keep: impl Fn(&SnapRec) -> bool) -> Vec<Snapshot> {
        self.snapshots
            .values_mut()
            .filter(|s| keep(s))
            .map(|s| s.render(true))
            .collect()
    }

    pub fn find_snapshots(&mut self, tags: &[(String, String)]) -> Vec<Snapshot> {
        self.describe_snapshots(|s| tags_match(&s.base.tags, tags))
    }

    pub fn snapshot(&mut self, id: &str) -> Option<Snapshot> {
        self.snapshots.get_mut(id).map(|s| s.render(false))
    }

    pub fn delete_snapshot(&mut self, id: &str) -> Result<(), Ec2Error> {
        if let Some(v) = self.volumes.values().find(|v| {
            v.base.snapshot_id.as_deref() == Some(id)
                && matches!(v.phase, super::world::Phase::Creating(_))
        }) {
            return Err(Ec2Error::new(
                "InvalidSnapshot.InUse",
                format!("The snapshot {id} is in use by volume {}", v.base.volume_id),
            ));
        }
        self.snapshots
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| not_found("snapshot", id))
    }

    /// ListChangedBlocks (EBS direct API): what the test set, else 0; a snapshot EC2 does
    /// not have is a 404.
    pub fn changed_bytes(&self, first: &str, second: &str) -> Result<i64, Ec2Error> {
        for id in [first, second] {
            if !self.snapshots.contains_key(id) {
                return Err(Ec2Error {
                    code: Some("ResourceNotFoundException".into()),
                    status: Some(404),
                    message: format!("snapshot {id} does not exist"),
                });
            }
        }
        Ok(self
            .changed
            .get(&(first.to_string(), second.to_string()))
            .copied()
            .unwrap_or(0))
    }

    /// CreateTags: every resource must exist (nothing is tagged otherwise); tags on
    /// instances are accepted and not kept (the adapter's Instance has none).
    pub fn create_tags(
        &mut self,
        ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        for id in ids {
            let known = match id.split_once('-').map(|(p, _)| p) {
                Some("vol") => self.volumes.contains_key(id),
                Some("snap") => self.snapshots.contains_key(id),
                Some("i") => self.instances.contains_key(id),
                _ => {
                    return Err(Ec2Error::new(
                        "InvalidID",
                        format!("The ID '{id}' is not valid"),
                    ));
                }
            };
            if !known {
                let kind = match &id[..id.find('-').unwrap_or(0)] {
                    "vol" => "volume",
                    "snap" => "snapshot",
                    _ => "instance",
                };
                return Err(not_found(kind, id));
            }
        }
        for (k, v) in tags {
            for id in ids {
                if let Some(vol) = self.volumes.get_mut(id) {
                    vol.base.tags.insert(k.clone(), v.clone());
                } else if let Some(s) = self.snapshots.get_mut(id) {
                    s.base.tags.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(())
    }
}
