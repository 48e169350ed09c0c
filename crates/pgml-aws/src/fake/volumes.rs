//! What EC2 answers to each volume action (CreateVolume, AttachVolume, DetachVolume,
//! ModifyVolume, DeleteVolume), its codes and messages as EC2 words them.

use std::collections::BTreeSet;

use super::Ec2Error;
use super::world::{AttRec, Phase, TokenRec, VolRec, World, not_found};
use crate::{AttachmentState, CreateVolume, ModifyVolume, Volume, VolumeState};

impl World {
    pub fn create_volume(&mut self, req: &CreateVolume) -> Result<Volume, Ec2Error> {
        let request = CreateVolume {
            client_token: String::new(),
            ..req.clone()
        };
        if let Some(seen) = self.tokens.get(&req.client_token) {
            if seen.request != request {
                return Err(Ec2Error::new(
                    "IdempotentParameterMismatch",
                    format!(
                        "The client token {} was used before with other parameters.",
                        req.client_token
                    ),
                ));
            }
            // The volume made the first time, as it is now (`deleted` once gone).
            let id = seen.answer.volume_id.clone();
            let mut answer = seen.answer.clone();
            match self.render(&id, false) {
                Some(v) => {
                    answer = Volume {
                        attachments: vec![],
                        ..v
                    }
                }
                None => answer.state = VolumeState::Deleted,
            }
            return Ok(answer);
        }
        self.check_create(req)?;
        let id = self.new_id("vol");
        let (iops, throughput) = match req.volume_type {
            crate::VolumeType::Gp3 => (req.iops.or(Some(3000)), req.throughput_mibps.or(Some(125))),
            crate::VolumeType::Io2 => (req.iops, None),
        };
        let base = Volume {
            volume_id: id.clone(),
            availability_zone: req.availability_zone.clone(),
            state: VolumeState::Other(String::new()),
            volume_type: req.volume_type.as_str().into(),
            size_gib: req.size_gib,
            iops,
            throughput_mibps: throughput,
            encrypted: req.encrypted || req.kms_key_id.is_some(),
            snapshot_id: req.snapshot_id.clone(),
            attachments: vec![],
            tags: req.tags.clone(),
        };
        let answer = Volume {
            state: VolumeState::Creating,
            ..base.clone()
        };
        let creating = self.timing.creating;
        self.volumes.insert(
            id.clone(),
            VolRec {
                base,
                phase: if creating == 0 {
                    Phase::Ready
                } else {
                    Phase::Creating(creating)
                },
                attachments: vec![],
                modifying: None,
            },
        );
        if !req.client_token.is_empty() {
            self.tokens.insert(
                req.client_token.clone(),
                TokenRec {
                    request,
                    answer: answer.clone(),
                },
            );
        }
        Ok(answer)
    }

    fn check_create(&self, req: &CreateVolume) -> Result<(), Ec2Error> {
        let zones: BTreeSet<&str> = self.instances.values().map(|i| i.zone.as_str()).collect();
        if !zones.is_empty() && !zones.contains(req.availability_zone.as_str()) {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!("Invalid availability zone: [{}]", req.availability_zone),
            ));
        }
        let max = match req.volume_type {
            crate::VolumeType::Gp3 => 16384,
            crate::VolumeType::Io2 => 65536,
        };
        let floor = match req.volume_type {
            crate::VolumeType::Gp3 => 1,
            crate::VolumeType::Io2 => 4,
        };
        if !(floor..=max).contains(&req.size_gib) {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!(
                    "Volume of {}GiB is out of range for volume type {}",
                    req.size_gib,
                    req.volume_type.as_str()
                ),
            ));
        }
        if req.volume_type == crate::VolumeType::Io2 && req.iops.is_none() {
            return Err(Ec2Error::new(
                "MissingParameter",
                "The request must contain the parameter iops",
            ));
        }
        if let Some(snap) = &req.snapshot_id {
            let s = self
                .snapshots
                .get(snap)
                .ok_or_else(|| not_found("snapshot", snap))?;
            let state = s.state();
            if state != "completed" {
                return Err(Ec2Error::new(
                    "IncorrectState",
                    format!("Snapshot '{snap}' is in state '{state}'."),
                ));
            }
            let least = s.base.volume_size_gib.unwrap_or(0);
            if least > req.size_gib {
                return Err(Ec2Error::new(
                    "InvalidParameterValue",
                    format!(
                        "Volume of {}GiB is smaller than snapshot '{snap}', expect size >= {least}GiB",
                        req.size_gib
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn attach(
        &mut self,
        vol: &str,
        instance: &str,
        device: &str,
    ) -> Result<AttachmentState, Ec2Error> {
        let i = self.describe_instance(instance)?;
        if !matches!(i.state.as_str(), "running" | "stopped") {
            return Err(Ec2Error::new(
                "IncorrectInstanceState",
                format!("The instance '{instance}' is not in a valid state for this operation."),
            ));
        }
        let limit = self
            .types
            .get(&i.instance_type)
            .and_then(|l| l.maximum_ebs_attachments);
        let v = self
            .volumes
            .get(vol)
            .ok_or_else(|| not_found("volume", vol))?;
        if v.phase != Phase::Ready {
            return Err(Ec2Error::new(
                "IncorrectState",
                format!("{vol} is not 'available'."),
            ));
        }
        if !v.attachments.is_empty() {
            return Err(Ec2Error::new(
                "VolumeInUse",
                format!("{vol} is already attached to an instance"),
            ));
        }
        if v.base.availability_zone != i.availability_zone {
            return Err(Ec2Error::new(
                "InvalidVolume.ZoneMismatch",
                format!(
                    "The volume '{vol}' is not in the same availability zone as instance '{instance}'"
                ),
            ));
        }
        let name = device.strip_prefix("/dev/").unwrap_or_default();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!(
                    "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
                ),
            ));
        }
        if i.block_devices.contains_key(device) {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!(
                    "Invalid value '{device}' for unixDevice. Attachment point {device} is already in use"
                ),
            ));
        }
        if limit.is_some_and(|max| i.block_devices.len() as i64 >= max) {
            return Err(Ec2Error::new(
                "AttachmentLimitExceeded",
                format!("The instance '{instance}' has reached its limit of attached volumes"),
            ));
        }
        let left = self.timing.attaching;
        let stuck = self.stuck.contains(vol);
        let v = self.volumes.get_mut(vol).expect("checked above");
        v.attachments.push(AttRec {
            instance: instance.to_string(),
            device: device.to_string(),
            state: if left == 0 && !stuck {
                AttachmentState::Attached
            } else {
                AttachmentState::Attaching
            },
            left,
        });
        Ok(AttachmentState::Attaching)
    }

    pub fn detach(&mut self, vol: &str, instance: &str) -> Result<(), Ec2Error> {
        let left = self.timing.detaching;
        let v = self
            .volumes
            .get_mut(vol)
            .ok_or_else(|| not_found("volume", vol))?;
        if v.attachments.is_empty() {
            return Err(Ec2Error::new(
                "IncorrectState",
                format!("Volume '{vol}' is in the 'available' state."),
            ));
        }
        let Some(pos) = v.attachments.iter().position(|a| a.instance == instance) else {
            return Err(Ec2Error::new(
                "InvalidAttachment.NotFound",
                format!("The volume '{vol}' is not attached to instance '{instance}'"),
            ));
        };
        let a = &mut v.attachments[pos];
        if a.state == AttachmentState::Detaching {
            return Ok(());
        }
        if left == 0 {
            v.attachments.remove(pos);
        } else {
            a.state = AttachmentState::Detaching;
            a.left = left;
        }
        Ok(())
    }

    pub fn modify(&mut self, req: &ModifyVolume) -> Result<(), Ec2Error> {
        let left = self.timing.modifying;
        let vol = &req.volume_id;
        let v = self
            .volumes
            .get_mut(vol)
            .ok_or_else(|| not_found("volume", vol))?;
        if v.phase != Phase::Ready {
            return Err(Ec2Error::new(
                "IncorrectState",
                format!("The volume '{vol}' is not in the 'available' or 'in-use' state."),
            ));
        }
        if v.modifying.is_some() {
            return Err(Ec2Error::new(
                "IncorrectModificationState",
                format!("Volume {vol} is already being modified."),
            ));
        }
        if req.size_gib.is_none() && req.iops.is_none() && req.throughput_mibps.is_none() {
            return Err(Ec2Error::new(
                "InvalidParameterCombination",
                "At least one of Size, Iops, Throughput or VolumeType must be given.",
            ));
        }
        if req.size_gib.is_some_and(|s| s < v.base.size_gib) {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!(
                    "New size cannot be smaller than existing size of {} GiB.",
                    v.base.size_gib
                ),
            ));
        }
        v.base.size_gib = req.size_gib.unwrap_or(v.base.size_gib);
        v.base.iops = req.iops.or(v.base.iops);
        v.base.throughput_mibps = req.throughput_mibps.or(v.base.throughput_mibps);
        v.modifying = (left > 0).then_some(left);
        Ok(())
    }

    pub fn delete(&mut self, vol: &str) -> Result<(), Ec2Error> {
        let left = self.timing.deleting;
        let v = self
            .volumes
            .get_mut(vol)
            .ok_or_else(|| not_found("volume", vol))?;
        if let Some(a) = v.attachments.first() {
            return Err(Ec2Error::new(
                "VolumeInUse",
                format!("Volume {vol} is currently attached to {}", a.instance),
            ));
        }
        if matches!(v.phase, Phase::Deleting(_)) {
            return Ok(());
        }
        if left == 0 {
            self.volumes.remove(vol);
        } else {
            v.phase = Phase::Deleting(left);
        }
        Ok(())
    }
}
