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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Class, Error};
    use crate::zfspool::fixtures::*;
    use pgml_api::common::Condition;
    use pgml_aws::AttachmentState as Ec2;
    use pgml_aws::VolumeState;

    const TIMEOUT: Duration = Duration::from_secs(300);

    fn volumes_attached(status: &str, since: i64) -> ZfsPoolStatus {
        ZfsPoolStatus {
            conditions: vec![Condition {
                type_: c::VOLUMES_ATTACHED.into(),
                status: status.into(),
                reason: "Attaching".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: t(since),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_wait_counts_from_when_volumes_attached_turned_false() {
        assert_eq!(waited(&ZfsPoolStatus::default(), &t(500)), 0);
        assert_eq!(waited(&volumes_attached(c::TRUE, 100), &t(500)), 0);
        assert_eq!(waited(&volumes_attached(c::FALSE, 100), &t(500)), 400);
    }

    /// Every member state, one per slot: what the pass does about each, in order.
    #[test]
    fn available_members_are_attached_and_the_others_reported_or_left() {
        let m = members(vec![
            Some(on(
                vol("vol-0", 0, VolumeState::InUse),
                INSTANCE,
                "/dev/xvdba",
                Ec2::Attached,
            )),
            Some(vol("vol-1", 1, VolumeState::Available)),
            Some(vol("vol-2", 2, VolumeState::Creating)),
            Some(vol("vol-3", 3, VolumeState::Error)),
            Some(on(
                vol("vol-4", 4, VolumeState::InUse),
                INSTANCE,
                "/dev/xvdbb",
                Ec2::Attaching,
            )),
            Some(on(
                vol("vol-5", 5, VolumeState::InUse),
                "i-9",
                "/dev/xvdbc",
                Ec2::Attached,
            )),
            None,
            Some(on(
                vol("vol-7", 7, VolumeState::InUse),
                INSTANCE,
                "/dev/xvdbd",
                Ec2::Detaching,
            )),
            Some(vol("vol-8", 8, VolumeState::Available)),
        ]);
        let attach = |index: usize| Todo::Attach {
            index,
            volume_id: format!("vol-{index}"),
        };
        let elsewhere = Todo::Report(AttachProblem {
            reason: reason::ATTACHED_ELSEWHERE,
            message: "member 5 (vol-5) is attached to instance i-9, not i-1 of node node-a; the operator does not take volumes from other instances".into(),
        });
        // Within the timeout, an attachment in progress is awaited quietly.
        assert_eq!(
            todo(&m, INSTANCE, "node-a", 300, TIMEOUT),
            vec![attach(1), elsewhere.clone(), attach(8)]
        );
        // Past it, an attaching member is reported (a detaching one is not).
        let stuck = Todo::Report(AttachProblem {
            reason: reason::ATTACHMENT_STUCK,
            message:
                "member 4 (vol-4) has been attaching to i-1 for over 300s; EC2 has not finished it"
                    .into(),
        });
        assert_eq!(
            todo(&m, INSTANCE, "node-a", 301, TIMEOUT),
            vec![attach(1), stuck, elsewhere, attach(8)]
        );
    }

    #[test]
    fn no_free_device_name_is_an_attachment_limit() {
        assert_eq!(
            no_device(INSTANCE, 3),
            AttachProblem {
                reason: reason::ATTACHMENT_LIMIT,
                message: "no free device name on i-1 for member 3".into(),
            }
        );
    }

    fn failed(result: Result<Ec2, AwsError>) -> (Device, Class) {
        let a = answer(result);
        let device = a.device();
        match a {
            Answer::Failed(e) => (device, Error::from(e).class()),
            other => panic!("not a failure: {other:?}"),
        }
    }

    fn refused(code: &str, message: &str) -> (Device, AttachProblem) {
        let a = answer(Err(ec2_error("AttachVolume", code, message)));
        let device = a.device();
        match a {
            Answer::Refused(p) => (device, p),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_attach_ec2_took_is_recorded_as_answered() {
        for (state, want) in [
            (Ec2::Attaching, AttachmentState::Attaching),
            (Ec2::Attached, AttachmentState::Attached),
            (Ec2::Busy, AttachmentState::Busy),
        ] {
            let a = answer(Ok(state));
            assert_eq!(a.device(), Device::Answered);
            assert!(matches!(a, Answer::Took(s) if s == want), "{a:?}");
        }
    }

    #[test]
    fn limits_and_volumes_in_use_are_reported_and_free_their_device_name() {
        let (device, p) = refused("AttachmentLimitExceeded", "too many");
        assert_eq!(device, Device::Released);
        assert_eq!(p.reason, reason::ATTACHMENT_LIMIT);
        assert_eq!(
            p.message,
            "EC2 AttachVolume failed (AttachmentLimitExceeded): too many"
        );
        let (device, p) = refused("VolumeInUse", "vol-1 is already attached to an instance");
        assert_eq!(
            (device, p.reason),
            (Device::Released, reason::VOLUME_IN_USE)
        );
        assert!(
            p.message.contains("vol-1 is already attached"),
            "{}",
            p.message
        );
    }

    #[test]
    fn a_device_name_in_use_is_kept_out_and_retried_with_another() {
        let e = ec2_error(
            "AttachVolume",
            "InvalidParameterValue",
            "Invalid value '/dev/xvdba' for unixDevice. Attachment point /dev/xvdba is already in use",
        );
        let a = answer(Err(e));
        assert!(matches!(a, Answer::DeviceTaken), "{a:?}");
        assert_eq!(a.device(), Device::Taken);
        // Another bad parameter is a failure of the spec's kind, not a retry.
        let e = ec2_error(
            "AttachVolume",
            "InvalidParameterValue",
            "Value (x) for parameter device is invalid",
        );
        assert_eq!(failed(Err(e)), (Device::Released, Class::InvalidSpec));
    }

    #[test]
    fn every_other_answer_fails_the_pass_with_its_class_and_frees_the_name() {
        let cases = [
            ("RequestLimitExceeded", Class::Throttled),
            ("InternalError", Class::Transient),
            ("Unavailable", Class::Transient),
            // A volume or instance in a state that passes (detaching, stopping).
            ("IncorrectState", Class::Transient),
            ("InvalidVolume.NotFound", Class::Transient),
            ("InvalidInstanceID.NotFound", Class::Transient),
            ("UnauthorizedOperation", Class::Permanent),
        ];
        for (code, class) in cases {
            let e = ec2_error("AttachVolume", code, "m");
            assert_eq!(failed(Err(e)), (Device::Released, class), "{code}");
        }
        assert_eq!(
            failed(Err(no_answer("AttachVolume"))),
            (Device::Released, Class::Transient)
        );
    }

    #[test]
    fn a_look_after_attaching_records_the_state_until_attached() {
        let v = |s| {
            on(
                vol("vol-0", 0, VolumeState::InUse),
                INSTANCE,
                "/dev/xvdba",
                s,
            )
        };
        assert_eq!(progress(&v(Ec2::Attached), INSTANCE), Progress::Attached);
        assert_eq!(
            progress(&v(Ec2::Attaching), INSTANCE),
            Progress::Pending(AttachmentState::Attaching)
        );
        assert_eq!(
            progress(&v(Ec2::Detaching), INSTANCE),
            Progress::Pending(AttachmentState::Detaching)
        );
        // Taken by another instance meanwhile, or detached: the next reconcile judges.
        assert_eq!(progress(&v(Ec2::Attached), "i-9"), Progress::Leave);
        let free = vol("vol-0", 0, VolumeState::Available);
        assert_eq!(progress(&free, INSTANCE), Progress::Leave);
    }

    #[test]
    fn set_records_a_members_attachment_only() {
        let m = members(vec![Some(vol("vol-0", 0, VolumeState::Available)), None]);
        let mut f = facts(&m);
        set(&mut f.volumes, 0, AttachmentState::Attaching);
        set(&mut f.volumes, 1, AttachmentState::Attached);
        assert_eq!(entry(&f, 0).attachment(), Some(AttachmentState::Attaching));
        assert_eq!(
            f.volumes.len(),
            1,
            "no entry is made for a member without one"
        );
    }
}
