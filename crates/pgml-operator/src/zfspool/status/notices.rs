//! The Events a status change deserves: the warnings a user must see once (not on every
//! reconcile), `PoolReady`, and the members newly attached.

use pgml_api::common::{Condition, condition as c};
use pgml_api::zfspool::ZfsPoolStatus;

use super::{condition, reason};

/// An Event the status change deserves: (warning?, reason, note).
pub type Notice = (bool, String, String);

/// Events for conditions that changed between the observed and the new status: the
/// warnings a user must see once (not on every reconcile) and `PoolReady`.
pub fn notices(observed: &ZfsPoolStatus, new: &ZfsPoolStatus) -> Vec<Notice> {
    let changed = |t: &str| -> Option<&Condition> {
        let n = condition(new, t)?;
        let o = condition(observed, t);
        (o.map(|o| (&o.status, &o.reason)) != Some((&n.status, &n.reason))).then_some(n)
    };
    let mut out = Vec::new();
    if let Some(n) = changed(c::SPEC_VALID).filter(|n| n.status == c::FALSE) {
        out.push((true, n.reason.clone(), n.message.clone()));
    }
    if let Some(n) = changed(c::READY) {
        if n.status == c::TRUE {
            out.push((false, "PoolReady".into(), n.message.clone()));
        } else if [
            reason::NODE_NOT_FOUND,
            reason::NODE_WITHOUT_PROVIDER_ID,
            reason::INSTANCE_NOT_FOUND,
            reason::SNAPSHOT_NOT_FOUND,
        ]
        .contains(&n.reason.as_str())
        {
            out.push((true, n.reason.clone(), n.message.clone()));
        }
    }
    if let Some(n) = changed(c::VOLUMES_ATTACHED).filter(|n| {
        [
            reason::ATTACHED_ELSEWHERE,
            reason::ATTACHMENT_LIMIT,
            reason::ATTACHMENT_STUCK,
            reason::VOLUME_IN_USE,
        ]
        .contains(&n.reason.as_str())
    }) {
        out.push((true, n.reason.clone(), n.message.clone()));
    }
    for t in [c::DEGRADED, c::PERFORMANCE_LIMITED] {
        if let Some(n) = changed(t).filter(|n| n.status == c::TRUE) {
            // A repair under way is news, not a warning (MemberLost was the warning).
            let progress =
                [reason::MEMBER_REPLACING, reason::RESILVERING].contains(&n.reason.as_str());
            out.push((!progress, n.reason.clone(), n.message.clone()));
        }
    }
    if let Some(n) = changed(c::PROGRESSING).filter(|n| n.reason == reason::MODIFICATION_BUDGET) {
        out.push((true, n.reason.clone(), n.message.clone()));
    }
    out
}

/// The members attached since `observed`, for the `VolumeAttached` Event: "member 0
/// (vol-…), member 2 (vol-…) attached to i-…".
pub fn attached_note(observed: &ZfsPoolStatus, new: &ZfsPoolStatus) -> Option<String> {
    let attached: Vec<String> = new
        .volumes
        .iter()
        .filter(|v| {
            let was = observed.volumes.iter().find(|o| o.index == v.index);
            v.is_attached() && !was.is_some_and(|o| o.is_attached())
        })
        .map(|v| {
            format!(
                "member {} ({})",
                v.index,
                v.volume_id.as_deref().unwrap_or("?")
            )
        })
        .collect();
    (!attached.is_empty()).then(|| {
        format!(
            "{} attached to {}",
            attached.join(", "),
            new.instance_id.as_deref().unwrap_or("?")
        )
    })
}
