//! The capture: the one CreateSnapshots request, how long it may take, and what its answer
//! (or its silence) means for the set.

use std::collections::BTreeMap;
use std::time::Duration;

use pgml_api::snapshot::{EbsSnapshotStatus, MemberSnapshot};
use pgml_aws::{AwsError, CreateSnapshotSet, ErrorKind, Snapshot, Volume};

use super::{Failure, SnapRef, reason, recorded, set_tags};

/// The request for the members `s` records, on the instance it records: tagged as the
/// object's, every attached data volume that is not a member excluded (the root volume is
/// left out by ExcludeBootVolume). `attached`: the volumes attached to the instance;
/// `root`: its root device. A member not attached fails the capture.
pub fn capture_request(
    id: &SnapRef,
    s: &EbsSnapshotStatus,
    user_tags: &BTreeMap<String, String>,
    attached: &[Volume],
    root: Option<&str>,
) -> Result<CreateSnapshotSet, Failure> {
    let instance_id = s.instance_id.clone().unwrap_or_default();
    let on_instance = |v: &Volume| v.attachments.iter().any(|a| a.instance_id == instance_id);
    for m in &s.snapshots {
        let on = attached
            .iter()
            .any(|v| Some(v.volume_id.as_str()) == m.volume_id.as_deref() && on_instance(v));
        if !on {
            let message = format!(
                "member {} ({}) is not attached to instance {instance_id}",
                m.member_index,
                m.volume_id.as_deref().unwrap_or("?")
            );
            return Err(Failure::set_deleted(reason::CAPTURE_FAILED, message));
        }
    }
    let member = |v: &Volume| {
        s.snapshots
            .iter()
            .any(|m| m.volume_id.as_deref() == Some(&v.volume_id))
    };
    let is_root = |v: &Volume| {
        v.attachments
            .iter()
            .any(|a| a.instance_id == instance_id && Some(a.device.as_str()) == root)
    };
    let exclude_volume_ids = attached
        .iter()
        .filter(|v| !member(v) && !is_root(v))
        .map(|v| v.volume_id.clone())
        .collect();
    Ok(CreateSnapshotSet {
        exclude_volume_ids,
        description: format!(
            "pgml-operator: EbsSnapshot {}/{} of {}",
            id.namespace,
            id.name,
            s.source.as_deref().unwrap_or("?")
        ),
        tags: set_tags(
            id,
            s.zfs_pool.as_deref(),
            s.pool_guid.as_deref(),
            s.layout.as_deref(),
            user_tags,
        ),
        instance_id,
    })
}

/// How long the call may take: until the hold's `deadline` (seconds) from `started_ms`,
/// measured to the millisecond (the deadline is a whole second, as stored, and a second's
/// slack could let a capture postdate the release); `capture_timeout` without a hold.
pub fn capture_bound(
    deadline: Option<i64>,
    started_ms: i64,
    capture_timeout: Duration,
) -> Duration {
    match deadline {
        Some(d) => Duration::from_millis((d * 1000 - started_ms).max(0) as u64),
        None => capture_timeout,
    }
}

/// How the CreateSnapshots call ended.
#[derive(Clone, Debug)]
pub enum Answer {
    Snapshots(Vec<Snapshot>),
    Failed(AwsError),
    /// No answer within the bound.
    TimedOut,
}

/// When the call was made and answered (milliseconds), against what.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The hold's deadline, in seconds (none without a hold).
    pub deadline: Option<i64>,
    pub bound: Duration,
    pub started_ms: i64,
    pub returned_ms: i64,
}

impl Timing {
    /// The answer came at or after the hold's deadline: the capture may postdate the
    /// release.
    pub fn late(&self) -> bool {
        self.deadline.is_some_and(|d| self.returned_ms >= d * 1000)
    }
}

/// What the answer means.
#[derive(Clone, Debug)]
pub enum Captured {
    /// The set, in member order, and snapshots of volumes that are not members (to
    /// delete) before it is recorded.
    Set {
        members: Vec<MemberSnapshot>,
        extra: Vec<String>,
    },
    /// Throttled, a blip, or no answer without a hold: the error ends the reconcile (backoff
    /// by its class) and the restart path in Capturing looks for what the call made.
    Retry(AwsError),
    /// The capture failed; the set (whatever the call made) is deleted.
    Fail(Failure),
}

pub fn judge_capture(answer: Answer, t: &Timing, members: &[MemberSnapshot]) -> Captured {
    let late = t.late();
    let snaps = match answer {
        Answer::TimedOut if t.deadline.is_some() => {
            let message = format!(
                "CreateSnapshots did not answer within the hold ({} ms): the capture may postdate the release, so the set is deleted",
                t.bound.as_millis()
            );
            return Captured::Fail(Failure::set_deleted(
                reason::HOLD_DEADLINE_EXCEEDED,
                message,
            ));
        }
        Answer::TimedOut => {
            return Captured::Retry(AwsError::new(
                "CreateSnapshots",
                ErrorKind::Transient,
                "Timeout",
                format!("no answer in {}s", t.bound.as_secs()),
            ));
        }
        Answer::Failed(e) if e.is_retryable() && !late => return Captured::Retry(e),
        Answer::Failed(e) => {
            let why = if late {
                reason::HOLD_DEADLINE_EXCEEDED
            } else {
                reason::CAPTURE_FAILED
            };
            return Captured::Fail(Failure::set_deleted(why, e.to_string()));
        }
        Answer::Snapshots(s) => s,
    };
    if late {
        let message = format!(
            "CreateSnapshots answered after the hold's deadline ({} ms after the request): the capture may postdate the release, so the set is deleted",
            t.returned_ms - t.started_ms
        );
        return Captured::Fail(Failure::set_deleted(
            reason::HOLD_DEADLINE_EXCEEDED,
            message,
        ));
    }
    match assign(&snaps, members) {
        Ok((members, extra)) => Captured::Set { members, extra },
        Err(missing) => Captured::Fail(Failure::set_deleted(
            reason::CAPTURE_FAILED,
            format!("CreateSnapshots left out members {missing:?}; the set is deleted"),
        )),
    }
}

/// The answer of the CreateSnapshots call sorted into the members: the members with their
/// snapshot, and snapshots of volumes that are not members (to delete). `Err` names the
/// members the answer left out.
pub fn assign(
    answer: &[Snapshot],
    members: &[MemberSnapshot],
) -> Result<(Vec<MemberSnapshot>, Vec<String>), Vec<i32>> {
    let mut set = Vec::new();
    let mut missing = Vec::new();
    for m in members {
        match answer
            .iter()
            .find(|s| Some(s.volume_id.as_str()) == m.volume_id.as_deref())
        {
            Some(s) => set.push(recorded(m, s)),
            None => missing.push(m.member_index),
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let extra = answer
        .iter()
        .filter(|s| {
            !members
                .iter()
                .any(|m| m.volume_id.as_deref() == Some(s.volume_id.as_str()))
        })
        .map(|s| s.snapshot_id.clone())
        .collect();
    Ok((set, extra))
}

/// The Finalizing message once the set is recorded.
pub fn captured_message(set: &[MemberSnapshot]) -> String {
    let ids: Vec<&str> = set
        .iter()
        .filter_map(|m| m.snapshot_id.as_deref())
        .collect();
    format!(
        "captured {} volumes ({}); AWS is copying the blocks",
        set.len(),
        ids.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use pgml_api::common::keys;
    use pgml_aws::{Attachment, AttachmentState};

    use super::super::fixtures::*;
    use super::*;

    fn volume(id: &str, instance: &str, device: &str) -> Volume {
        Volume {
            volume_id: id.into(),
            availability_zone: "us-east-1a".into(),
            state: "in-use".into(),
            volume_type: "gp3".into(),
            size_gib: 1,
            iops: None,
            throughput_mibps: None,
            encrypted: true,
            snapshot_id: None,
            attachments: vec![Attachment {
                instance_id: instance.into(),
                device: device.into(),
                state: AttachmentState::Attached,
            }],
            tags: BTreeMap::new(),
        }
    }

    fn planned() -> EbsSnapshotStatus {
        EbsSnapshotStatus {
            source: Some("ZfsPool/tank".into()),
            instance_id: Some("i-1".into()),
            zfs_pool: Some("tank".into()),
            pool_guid: Some("42".into()),
            layout: Some("raid0".into()),
            snapshots: members(2),
            ..Default::default()
        }
    }

    #[test]
    fn the_request_excludes_every_attached_volume_but_the_members_and_the_root() {
        let attached = [
            volume("vol-root", "i-1", "/dev/xvda"),
            volume("vol-0", "i-1", "/dev/xvdf"),
            volume("vol-other", "i-1", "/dev/xvdg"),
            volume("vol-1", "i-1", "/dev/xvdh"),
        ];
        let user = BTreeMap::from([("team".to_string(), "db".to_string())]);
        let req =
            capture_request(&snap_ref(), &planned(), &user, &attached, Some("/dev/xvda")).unwrap();
        assert_eq!(req.instance_id, "i-1");
        assert_eq!(req.exclude_volume_ids, ["vol-other"]);
        assert_eq!(
            req.description,
            "pgml-operator: EbsSnapshot ns/nightly of ZfsPool/tank"
        );
        assert_eq!(req.tags[keys::SNAPSHOT_UID], "u-1");
        assert_eq!(req.tags[keys::POOL_GUID], "42");
        assert_eq!(req.tags["team"], "db");
        // Without a known root device, the root volume is excluded by ID as well.
        let req = capture_request(&snap_ref(), &planned(), &user, &attached, None).unwrap();
        assert_eq!(req.exclude_volume_ids, ["vol-root", "vol-other"]);
    }

    #[test]
    fn a_member_not_attached_to_the_instance_fails_before_the_call() {
        let elsewhere = [
            volume("vol-0", "i-1", "/dev/xvdf"),
            volume("vol-1", "i-2", "/dev/xvdf"),
        ];
        let f = capture_request(&snap_ref(), &planned(), &BTreeMap::new(), &elsewhere, None)
            .unwrap_err();
        assert_eq!(
            f,
            Failure::set_deleted(
                reason::CAPTURE_FAILED,
                "member 1 (vol-1) is not attached to instance i-1"
            )
        );
        let gone = [volume("vol-1", "i-1", "/dev/xvdf")];
        let f =
            capture_request(&snap_ref(), &planned(), &BTreeMap::new(), &gone, None).unwrap_err();
        assert!(f.message.starts_with("member 0 (vol-0)"), "{}", f.message);
    }

    #[test]
    fn the_call_is_bounded_by_the_hold_to_the_millisecond() {
        let timeout = Duration::from_secs(60);
        assert_eq!(
            capture_bound(Some(100), 98_250, timeout),
            Duration::from_millis(1750)
        );
        assert_eq!(capture_bound(Some(100), 100_500, timeout), Duration::ZERO);
        assert_eq!(capture_bound(None, 98_250, timeout), timeout);
    }

    /// A call started at 98.0 s and answered at `returned_ms`, held until 100 s (or not).
    fn timing(hold: bool, returned_ms: i64) -> Timing {
        Timing {
            deadline: hold.then_some(100),
            bound: Duration::from_millis(2000),
            started_ms: 98_000,
            returned_ms,
        }
    }

    fn ec2_error(code: Option<&str>, status: Option<u16>) -> AwsError {
        AwsError::answered("CreateSnapshots", code, status, "DispatchFailure", "m")
    }

    /// Every EC2 answer the apply path tells apart, and what it does with each: the
    /// retryable ones (throttled, 5xx, no answer) end the reconcile to be retried, unless the
    /// hold is over; every other fails the capture.
    #[test]
    fn each_ec2_error_of_create_snapshots_is_retried_or_fails_the_capture() {
        let retried = [
            (
                Some("RequestLimitExceeded"),
                Some(503),
                ErrorKind::Throttled,
            ),
            (Some("Throttling"), Some(400), ErrorKind::Throttled),
            (Some("ThrottlingException"), Some(400), ErrorKind::Throttled),
            (Some("InternalError"), Some(500), ErrorKind::Transient),
            (Some("InternalFailure"), Some(500), ErrorKind::Transient),
            (Some("ServiceUnavailable"), Some(503), ErrorKind::Transient),
            (Some("Unavailable"), Some(503), ErrorKind::Transient),
            (Some("IncorrectState"), Some(400), ErrorKind::Transient),
            (Some("SomethingNew"), Some(502), ErrorKind::Transient),
            (None, None, ErrorKind::Transient),
        ];
        let failed = [
            (Some("SnapshotLimitExceeded"), Some(400)),
            (Some("InvalidParameterValue"), Some(400)),
            (Some("InvalidParameterCombination"), Some(400)),
            (Some("MissingParameter"), Some(400)),
            (Some("IdempotentParameterMismatch"), Some(400)),
            (Some("InvalidInstanceID.NotFound"), Some(400)),
            (Some("InvalidInstanceID.Malformed"), Some(400)),
            (Some("InvalidVolume.NotFound"), Some(400)),
            (Some("UnauthorizedOperation"), Some(403)),
            (Some("AuthFailure"), Some(401)),
            (Some("Blocked"), Some(403)),
            (Some("SomethingNew"), Some(400)),
        ];
        for hold in [false, true] {
            let in_time = timing(hold, 99_000);
            for (code, status, kind) in retried {
                let a = Answer::Failed(ec2_error(code, status));
                match judge_capture(a, &in_time, &members(2)) {
                    Captured::Retry(e) => assert_eq!(e.kind, kind, "{code:?}"),
                    other => panic!("{code:?}: {other:?}"),
                }
            }
            for (code, status) in failed {
                let e = ec2_error(code, status);
                let message = e.to_string();
                match judge_capture(Answer::Failed(e), &in_time, &members(2)) {
                    Captured::Fail(f) => assert_eq!(
                        f,
                        Failure::set_deleted(reason::CAPTURE_FAILED, message),
                        "{code:?}"
                    ),
                    other => panic!("{code:?}: {other:?}"),
                }
            }
        }
        // Any error answered at or after the hold's deadline: the capture may postdate the
        // release, retryable or not.
        let late = timing(true, 100_000);
        for (code, status) in retried.iter().map(|(c, s, _)| (*c, *s)).chain(failed) {
            match judge_capture(Answer::Failed(ec2_error(code, status)), &late, &members(2)) {
                Captured::Fail(f) => {
                    assert_eq!(
                        (f.why, f.delete),
                        (reason::HOLD_DEADLINE_EXCEEDED, true),
                        "{code:?}"
                    )
                }
                other => panic!("{code:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_answer_within_the_hold_fails_and_without_a_hold_is_retried() {
        let Captured::Fail(f) =
            judge_capture(Answer::TimedOut, &timing(true, 100_000), &members(1))
        else {
            panic!("not failed");
        };
        assert_eq!(f.why, reason::HOLD_DEADLINE_EXCEEDED);
        assert!(f.delete);
        assert!(f.message.contains("(2000 ms)"), "{}", f.message);
        let Captured::Retry(e) =
            judge_capture(Answer::TimedOut, &timing(false, 100_000), &members(1))
        else {
            panic!("not retried");
        };
        assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Transient, "Timeout"));
        assert_eq!(e.message, "no answer in 2s");
    }

    #[test]
    fn a_set_answered_late_is_deleted_and_in_time_recorded() {
        let answer = vec![
            snap("snap-b", "vol-1", "pending", 98),
            snap("snap-a", "vol-0", "pending", 98),
            snap("snap-x", "vol-other", "pending", 98),
        ];
        let Captured::Fail(f) = judge_capture(
            Answer::Snapshots(answer.clone()),
            &timing(true, 100_000),
            &members(2),
        ) else {
            panic!("not failed");
        };
        assert_eq!(f.why, reason::HOLD_DEADLINE_EXCEEDED);
        assert!(
            f.message.contains("(2000 ms after the request)"),
            "{}",
            f.message
        );
        // Just in time, or without a hold however long it took: the set.
        for t in [timing(true, 99_999), timing(false, 500_000)] {
            let Captured::Set { members, extra } =
                judge_capture(Answer::Snapshots(answer.clone()), &t, &members(2))
            else {
                panic!("not captured");
            };
            let ids: Vec<_> = members
                .iter()
                .map(|m| m.snapshot_id.clone().unwrap())
                .collect();
            assert_eq!(ids, ["snap-a", "snap-b"]);
            assert_eq!(extra, ["snap-x"]);
        }
    }

    #[test]
    fn an_answer_that_leaves_a_member_out_fails_the_set() {
        let answer = vec![snap("snap-a", "vol-0", "pending", 98)];
        let Captured::Fail(f) = judge_capture(
            Answer::Snapshots(answer),
            &timing(true, 99_000),
            &members(2),
        ) else {
            panic!("not failed");
        };
        assert_eq!(
            f,
            Failure::set_deleted(
                reason::CAPTURE_FAILED,
                "CreateSnapshots left out members [1]; the set is deleted"
            )
        );
    }

    #[test]
    fn the_answer_is_assigned_by_volume() {
        let m = members(2);
        let answer = vec![
            snap("snap-b", "vol-1", "pending", 1),
            snap("snap-a", "vol-0", "pending", 1),
            snap("snap-z", "vol-9", "pending", 1),
        ];
        let (set, extra) = assign(&answer, &m).unwrap();
        assert_eq!(set[0].snapshot_id.as_deref(), Some("snap-a"));
        assert_eq!(set[1].snapshot_id.as_deref(), Some("snap-b"));
        assert_eq!(extra, ["snap-z"]);
        assert_eq!(assign(&answer[..1], &m), Err(vec![0]));
    }

    #[test]
    fn the_captured_message_names_the_set() {
        assert_eq!(
            captured_message(&captured(2)),
            "captured 2 volumes (snap-0, snap-1); AWS is copying the blocks"
        );
    }
}
