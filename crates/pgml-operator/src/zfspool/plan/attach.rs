//! Attaching members: which members get an AttachVolume, which are reported instead
//! (attached to another instance, attaching for too long), how each answer is taken —
//! the EC2 error codes the controller tells apart — and what becomes of the device name
//! picked for it.

use std::time::Duration;

use pgml_api::common::{Time, condition as c};
use pgml_api::zfspool::{AttachmentState, VolumeStatus, ZfsPoolStatus};
use pgml_aws::{AwsError, Volume};

use crate::zfspool::build::{self, AttachStep, Members};
use crate::zfspool::status::{self, AttachProblem, reason};

/// How long the pool has waited for its volumes: since VolumesAttached turned False (0
/// while it is True or unset).
pub fn waited(observed: &ZfsPoolStatus, now: &Time) -> i64 {
    status::condition(observed, c::VOLUMES_ATTACHED)
        .filter(|c| c.status == c::FALSE)
        .map(|c| now.0.as_second() - c.last_transition_time.0.as_second())
        .unwrap_or(0)
}

/// What the attach pass does about one member, in member order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Todo {
    /// Report this on VolumesAttached (the last one reported in a pass is the one shown).
    Report(AttachProblem),
    /// Pick a device name for member `index`'s volume and attach it.
    Attach { index: usize, volume_id: String },
}

/// The members to attach (available), and those to report: attached to another
/// instance (never taken from it), or attaching for longer than `timeout` since the pool
/// started waiting (`waited` seconds; still awaited). Attached, attaching within the
/// timeout, creating and failed members need nothing now.
pub fn todo(
    members: &Members,
    instance_id: &str,
    node_name: &str,
    waited: i64,
    timeout: Duration,
) -> Vec<Todo> {
    let mut out = Vec::new();
    for (i, slot) in members.slots.iter().enumerate() {
        let Some(v) = slot else { continue };
        match build::attach_step(v, instance_id) {
            AttachStep::Attached | AttachStep::NotReady(_) => {}
            AttachStep::InProgress(state) => {
                if state == pgml_aws::AttachmentState::Attaching
                    && waited > timeout.as_secs() as i64
                {
                    out.push(Todo::Report(AttachProblem {
                        reason: reason::ATTACHMENT_STUCK,
                        message: format!(
                            "member {i} ({}) has been attaching to {instance_id} for over {}s; EC2 has not finished it",
                            v.volume_id,
                            timeout.as_secs()
                        ),
                    }));
                }
            }
            AttachStep::Elsewhere(other) => out.push(Todo::Report(AttachProblem {
                reason: reason::ATTACHED_ELSEWHERE,
                message: format!(
                    "member {i} ({}) is attached to instance {other}, not {instance_id} of node {node_name}; the operator does not take volumes from other instances",
                    v.volume_id
                ),
            })),
            AttachStep::Attach => out.push(Todo::Attach {
                index: i,
                volume_id: v.volume_id.clone(),
            }),
        }
    }
    out
}

/// No device name is free on the instance for member `index`.
pub fn no_device(instance_id: &str, index: usize) -> AttachProblem {
    AttachProblem {
        reason: reason::ATTACHMENT_LIMIT,
        message: format!("no free device name on {instance_id} for member {index}"),
    }
}

/// One AttachVolume to make: member `index`'s volume on `device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub index: usize,
    pub volume_id: String,
    pub device: String,
}

/// How an AttachVolume answer is taken.
#[derive(Debug)]
pub enum Answer {
    /// EC2 took it: the member's attachment state as answered (looked at again until
    /// `attached`).
    Took(AttachmentState),
    /// EC2 will not attach it now, for a reason the user should see on VolumesAttached:
    /// the instance's attachment limit, or the volume in use elsewhere.
    Refused(AttachProblem),
    /// The device name is in use on the instance (our view of it was stale): the next
    /// pass picks another name. Not an error.
    DeviceTaken,
    /// Anything else (throttling, 5xx, not found, a state that may pass): the pass fails
    /// with it once every answer is recorded, and the error's class sets the backoff.
    Failed(AwsError),
}

/// What becomes of the device name picked for an attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// EC2 answered: the name stays reserved a while (until describes show it).
    Answered,
    /// Free again.
    Released,
    /// Someone else holds it: kept out of the next picks.
    Taken,
}

impl Answer {
    pub fn device(&self) -> Device {
        match self {
            Answer::Took(_) => Device::Answered,
            Answer::DeviceTaken => Device::Taken,
            Answer::Refused(_) | Answer::Failed(_) => Device::Released,
        }
    }
}

/// Takes EC2's answer to one AttachVolume.
pub fn answer(result: Result<pgml_aws::AttachmentState, AwsError>) -> Answer {
    let e = match result {
        Ok(state) => return Answer::Took(build::attachment(state)),
        Err(e) => e,
    };
    match e.code.as_str() {
        "AttachmentLimitExceeded" => Answer::Refused(AttachProblem {
            reason: reason::ATTACHMENT_LIMIT,
            message: e.to_string(),
        }),
        "VolumeInUse" => Answer::Refused(AttachProblem {
            reason: reason::VOLUME_IN_USE,
            message: e.to_string(),
        }),
        "InvalidParameterValue" if e.message.contains("already in use") => Answer::DeviceTaken,
        _ => Answer::Failed(e),
    }
}

/// Where a member stands after a look at its volume following AttachVolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Attached: look no more.
    Attached,
    /// Attaching (or detaching) on our instance: record it, look again.
    Pending(AttachmentState),
    /// Anything else is the next reconcile's to judge.
    Leave,
}

pub fn progress(v: &Volume, instance_id: &str) -> Progress {
    match build::attach_step(v, instance_id) {
        AttachStep::Attached => Progress::Attached,
        AttachStep::InProgress(state) => Progress::Pending(build::attachment(state)),
        _ => Progress::Leave,
    }
}

/// Records member `index`'s attachment state.
pub fn set(volumes: &mut [VolumeStatus], index: usize, state: AttachmentState) {
    if let Some(v) = volumes.iter_mut().find(|v| v.index == index as i32) {
        v.set_attachment(state);
    }
}
