//! Plan: what a reconcile does next, decided from what [`super::observe`] found. Pure: no
//! client, no clock (time comes in as an argument). Each function takes observed facts and
//! returns data — the EC2 calls to make and in which order, the problems to report, how an
//! EC2 answer is taken, when to look again — which [`super::apply`] carries out, so every
//! decision is tested here without a server. The pure builders of [`super::build`] and the
//! repair decision of [`super::repair`] are its vocabulary.
//!
//! - [`adopt`]: which volumes found may be members (their tags, never the search that
//!   found them), and when the pool waits for an administrator to adopt one;
//! - [`replace`]: which lost member is replaced (recorded before anything is created),
//!   where the repair stands, and what becomes of the volumes members replaced;
//! - [`create`]: which members to create, with which request, and what an answer records;
//! - [`attach`]: which members to attach, when an attachment counts as stuck, how each
//!   AttachVolume answer — its EC2 error code — is taken, device names included;
//! - [`grow`]: which members to grow within AWS's modification budget, and how each
//!   ModifyVolume answer is taken;
//! - [`delete`]: during deletion, which volumes are ours to touch, what to do next, and
//!   whether a detach is forced;
//! - here: why a reconcile stops before EC2 ([`Halt`]) and when to look again
//!   ([`requeue`]).

pub mod adopt;
pub mod attach;
pub mod create;
pub mod delete;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Requeue;
    use crate::zfspool::fixtures::*;
    use crate::zfspool::status::RepairView;
    use pgml_aws::InstanceTypeLimits;
    use pgml_aws::VolumeState;

    const R: Requeue = Requeue {
        ready: Duration::from_secs(60),
        progress: Duration::from_secs(5),
    };

    fn template(yaml: &str) -> ZfsPoolTemplate {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn an_invalid_spec_halts_until_it_changes() {
        let ok = template("volumes: {count: 2, sizeGiB: 10}");
        assert_eq!(invalid_spec(&ok), None);
        let bad = template(
            "volumes: {count: 2, sizeGiB: 10}\nfilesystemProperties: {sharenfs: 'on', compression: zzz}",
        );
        let h = invalid_spec(&bad).unwrap();
        assert_eq!(
            (h.spec_error, h.reason, h.requeue),
            (Some("InvalidZfsProperty"), "InvalidSpec", None)
        );
        // Every error in one message.
        assert!(
            h.message.contains("compression") && h.message.contains("sharenfs"),
            "{}",
            h.message
        );
        assert!(h.message.contains("; "), "{}", h.message);
        let s = h.status(&ZfsPoolStatus::default(), Some(4), &t(10));
        assert_eq!(s.phase, Some(PoolPhase::Failed));
        assert_eq!(s.observed_generation, Some(4));
        let valid = status::condition(&s, c::SPEC_VALID).unwrap();
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            (c::FALSE, "InvalidZfsProperty")
        );
        assert_eq!(
            status::condition(&s, c::READY).unwrap().reason,
            "InvalidSpec"
        );
    }

    #[test]
    fn a_blocked_restore_is_looked_at_again_soon_only_while_the_snapshot_may_complete() {
        let blocked = |waiting: bool| restore::Blocked {
            spec_error: (!waiting).then_some("RestoreMismatch"),
            reason: "RestoreMismatch",
            message: "m".into(),
            waiting,
        };
        let h = restore_blocked(blocked(true), &R);
        assert_eq!((h.requeue, h.spec_error), (Some(R.progress), None));
        let h = restore_blocked(blocked(false), &R);
        assert_eq!(
            (h.requeue, h.spec_error),
            (Some(R.ready), Some("RestoreMismatch"))
        );
        let s = h.status(&ZfsPoolStatus::default(), Some(1), &t(1));
        assert_eq!(s.phase, Some(PoolPhase::Failed));
        let s =
            restore_blocked(blocked(true), &R).status(&ZfsPoolStatus::default(), Some(1), &t(1));
        assert_eq!(s.phase, Some(PoolPhase::Pending));
        assert_eq!(status::condition(&s, c::SPEC_VALID), None);
    }

    #[test]
    fn an_unresolved_node_is_looked_at_again_slowly() {
        let u = Unresolved {
            reason: status::reason::NODE_NOT_FOUND,
            message: "node x does not exist".into(),
        };
        assert_eq!(
            unresolved(u, &R),
            Halt {
                spec_error: None,
                reason: status::reason::NODE_NOT_FOUND,
                message: "node x does not exist".into(),
                requeue: Some(R.ready),
            }
        );
    }

    fn target(max: Option<i64>, devices: &[(&str, &str)]) -> Target {
        Target {
            instance: instance(devices),
            described: std::time::Instant::now(),
            limits: max.map(|m| InstanceTypeLimits {
                maximum_ebs_attachments: Some(m),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_pool_that_does_not_fit_the_instance_halts_and_looks_again_much_later() {
        let spec: EbsVolumes = serde_yaml::from_str("{count: 4, sizeGiB: 10}").unwrap();
        let root = ("/dev/xvda", "vol-root");
        // One member attached already: it is ours, so it does not take a slot.
        let ours = on(
            vol("vol-a", 0, VolumeState::InUse),
            INSTANCE,
            "/dev/xvdba",
            pgml_aws::AttachmentState::Attached,
        );
        let m = members(vec![Some(ours), None, None, None]);
        let devices = [root, ("/dev/xvdba", "vol-a")];
        assert_eq!(no_room(&spec, &target(Some(5), &devices), &m, &R), None);
        // Unknown limits: not checked.
        assert_eq!(no_room(&spec, &target(None, &devices), &m, &R), None);
        let other = ("/dev/xvdbz", "vol-other-pool");
        let h = no_room(&spec, &target(Some(5), &[root, other, devices[1]]), &m, &R).unwrap();
        assert_eq!(
            (h.spec_error, h.reason),
            (Some("TooManyVolumes"), "TooManyVolumes")
        );
        assert_eq!(h.requeue, Some(R.ready * 5));
        assert!(h.message.contains("m7i.large"), "{}", h.message);
    }

    #[test]
    fn requeue_is_slow_once_settled_or_blocked_and_quick_while_moving() {
        let m = members(vec![Some(vol("vol-a", 0, VolumeState::InUse))]);
        let ready = |phase| ZfsPoolStatus {
            phase: Some(phase),
            conditions: vec![pgml_api::common::Condition {
                type_: c::READY.into(),
                status: c::TRUE.into(),
                reason: "PoolOnline".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: t(1),
            }],
            ..Default::default()
        };
        let moving = ZfsPoolStatus {
            phase: Some(PoolPhase::Attaching),
            ..Default::default()
        };
        let f = facts(&m);
        assert_eq!(requeue(&f, &ready(PoolPhase::Online), &R), R.ready);
        assert_eq!(requeue(&f, &ready(PoolPhase::Resizing), &R), R.progress);
        assert_eq!(requeue(&f, &moving, &R), R.progress);

        let with = |change: &dyn Fn(&mut Facts)| {
            let mut f = facts(&m);
            change(&mut f);
            requeue(&f, &moving, &R)
        };
        assert_eq!(with(&|f| f.budget_wait = Some("spent".into())), R.ready);
        for blocked in [
            RepairView::Manual(vec![]),
            RepairView::TooMany(vec![]),
            RepairView::Raid0(vec![]),
        ] {
            assert_eq!(with(&|f| f.repair = blocked.clone()), R.ready);
        }
        let replacing = RepairView::Replacing {
            index: 0,
            old: "vol-o".into(),
            new: None,
            attached: false,
        };
        assert_eq!(with(&|f| f.repair = replacing.clone()), R.progress);
        let problem = |reason| {
            move |f: &mut Facts| {
                f.attach_problem = Some(AttachProblem {
                    reason,
                    message: "m".into(),
                })
            }
        };
        // A lasting attachment is still awaited at the progress pace; the rest need a
        // change.
        assert_eq!(with(&problem(status::reason::ATTACHMENT_STUCK)), R.progress);
        for r in [
            status::reason::ATTACHED_ELSEWHERE,
            status::reason::ATTACHMENT_LIMIT,
            status::reason::VOLUME_IN_USE,
        ] {
            assert_eq!(with(&problem(r)), R.ready, "{r}");
        }
    }

    #[test]
    fn entries_are_found_or_added() {
        let mut v = vec![VolumeStatus {
            index: 1,
            volume_id: Some("vol-b".into()),
            ..Default::default()
        }];
        entry_mut(&mut v, 1).generation = 3;
        entry_mut(&mut v, 0).generation = 1;
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].index, v[0].generation), (1, 3));
        assert_eq!(
            (v[1].index, v[1].generation, v[1].volume_id.as_deref()),
            (0, 1, None)
        );
    }
}
