//! Plan: what a reconcile does next, decided from what [`super::observe`] found. Pure: no
//! client, no clock (time comes in as an argument). Each function takes observed facts and
//! returns data — the EC2 calls to make and in which order, the problems to report, how an
//! EC2 answer is taken, when to look again — which [`super::apply`] carries out, so every
//! decision is tested here without a server. The pure builders of [`super::build`] and the
//! repair decision of [`super::repair`] are its vocabulary.
//!
//! - [`replace`]: which lost member is replaced (recorded before anything is created),
//!   where the repair stands, and what becomes of the volumes members replaced;
//! - [`create`]: which members to create, with which request, and what an answer records;
//! - [`attach`]: which members to attach, when an attachment counts as stuck, how each
//!   AttachVolume answer — its EC2 error code — is taken, device names included;
//! - [`grow`]: which members to grow within AWS's modification budget, and how each
//!   ModifyVolume answer is taken;
//! - here: why a reconcile stops before EC2 ([`Halt`]) and when to look again
//!   ([`requeue`]).

pub mod attach;
pub mod create;
pub mod grow;
pub mod replace;

use std::time::Duration;

use pgml_api::EbsVolumes;
use pgml_api::common::{Time, condition as c};
use pgml_api::validate;
use pgml_api::zfspool::{PoolPhase, VolumeStatus, ZfsPoolStatus, ZfsPoolTemplate};

use super::build::{self, Members};
use super::observe::{Target, Unresolved};
use super::restore;
use super::status::{self, AttachProblem, Facts};
use crate::runtime::Requeue;

/// Why a reconcile stops before it changes anything in EC2: Ready and Progressing False
/// with `reason` (and SpecValid False with `spec_error`, when the spec is at fault), then
/// a look again after `requeue` (`None`: when the spec changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub spec_error: Option<&'static str>,
    pub reason: &'static str,
    pub message: String,
    pub requeue: Option<Duration>,
}

impl Halt {
    /// The status to write: the observed one, blocked.
    pub fn status(
        &self,
        observed: &ZfsPoolStatus,
        generation: Option<i64>,
        now: &Time,
    ) -> ZfsPoolStatus {
        let spec_error = self.spec_error.map(|r| (r, self.message.as_str()));
        status::blocked(
            observed,
            generation,
            spec_error,
            self.reason,
            &self.message,
            now,
        )
    }
}

/// The spec fails the operator's own checks (what the schema cannot say): wait for a
/// change.
pub fn invalid_spec(template: &ZfsPoolTemplate) -> Option<Halt> {
    let errors = validate::check_pool_template(template);
    let first = errors.first()?;
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Some(Halt {
        spec_error: Some(first.reason()),
        reason: "InvalidSpec",
        message,
        requeue: None,
    })
}

/// `restoreFrom` cannot go on: a snapshot that may still complete is looked at again at
/// the progress pace, anything else slowly.
pub fn restore_blocked(b: restore::Blocked, r: &Requeue) -> Halt {
    Halt {
        spec_error: b.spec_error,
        reason: b.reason,
        message: b.message,
        requeue: Some(if b.waiting { r.progress } else { r.ready }),
    }
}

/// The node or its instance cannot be used yet.
pub fn unresolved(u: Unresolved, r: &Requeue) -> Halt {
    Halt {
        spec_error: None,
        reason: u.reason,
        message: u.message,
        requeue: Some(r.ready),
    }
}

/// The instance cannot attach as many volumes as the spec asks for, beside what it has
/// that is not the pool's. `None` also when the type's limit is unknown.
pub fn no_room(
    volumes: &EbsVolumes,
    target: &Target,
    members: &Members,
    r: &Requeue,
) -> Option<Halt> {
    let max = target
        .limits
        .as_ref()
        .and_then(|l| l.maximum_ebs_attachments);
    let free = build::free_attachments(max, &target.instance, members)?;
    let e = validate::check_attachments(volumes, free, &target.instance.instance_type).err()?;
    Some(Halt {
        spec_error: Some(e.reason()),
        reason: e.reason(),
        message: e.to_string(),
        // Slots free up when other volumes detach: look again later.
        requeue: Some(r.ready * 5),
    })
}

/// When to look again after a reconcile that wrote `new`: slowly once settled, or when
/// blocked on something EC2 or a user must change; at the progress pace otherwise (an
/// attachment that lasts is still awaited at that pace).
pub fn requeue(facts: &Facts, new: &ZfsPoolStatus, r: &Requeue) -> Duration {
    let ready = status::is_true(new, c::READY);
    let stuck = facts.budget_wait.is_some()
        || facts.repair.blocked()
        || facts
            .attach_problem
            .as_ref()
            .is_some_and(AttachProblem::blocks);
    let settled = ready && new.phase != Some(PoolPhase::Resizing);
    if settled || stuck {
        r.ready
    } else {
        r.progress
    }
}

/// The entry of member `index` in `volumes`, added when missing.
pub fn entry_mut(volumes: &mut Vec<VolumeStatus>, index: usize) -> &mut VolumeStatus {
    let pos = match volumes.iter().position(|v| v.index == index as i32) {
        Some(p) => p,
        None => {
            volumes.push(VolumeStatus {
                index: index as i32,
                ..Default::default()
            });
            volumes.len() - 1
        }
    };
    &mut volumes[pos]
}
