//! Deletion behind the `pgml.io/volumes` finalizer: wait for the agent to release the pool
//! (or for the node to be gone), detach every volume, delete them for `Delete`, leave them
//! detached and tagged for `Retain`. Already gone is success.
//!
//! Only volumes whose own tags say they are this pool's and this installation's are
//! touched ([`crate::runtime::ownership`]); one of the pool's without an installation tag
//! holds the finalizer until an administrator adopts it. With the Node object gone, a
//! volume is force-detached only from an instance EC2 says is stopped or terminated. What
//! to do is [`super::plan::delete`]'s to decide, what is seen
//! [`super::observe::deletion`]'s; here it is done.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::runtime::controller::Action;
use pgml_api::common::Time;
use pgml_api::zfspool::{PoolPhase, ReclaimPolicy, ZfsPoolStatus};
use pgml_api::{ZfsPool, condition as c};
use pgml_aws::Volume;

use super::apply::commit;
use super::build;
use super::observe;
use super::plan::delete::{Seen, Step, next_step, still_running};
use super::status::{self, reason};
use crate::runtime::Error;
use crate::runtime::{Context, conditions, events};

pub async fn cleanup(pool: &ZfsPool, ctx: &Context) -> Result<Action, Error> {
    let observed = pool.status.clone().unwrap_or_default();
    let uid = pool
        .metadata
        .uid
        .as_deref()
        .ok_or(Error::Incomplete("uid"))?;
    let waited = pool
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| (conditions::now().0.as_second() - t.0.as_second()).max(0) as u64)
        .unwrap_or(0);
    let seen = observe::deletion(ctx, pool, uid).await?;
    for (warning, note) in &seen.left_alone {
        tracing::warn!(pool_uid = %uid, %note, "volume left alone");
        events::publish(ctx, pool, true, warning, note.clone()).await;
    }

    let policy = pool.spec.template.reclaim_policy;
    let step = next_step(
        &seen,
        policy,
        Duration::from_secs(waited),
        ctx.settings.pool.release_timeout,
    );
    let why = explain(&step, pool, &ctx.settings.installation);
    let trouble = degraded(&step, pool, waited, &still_running(&seen));
    let now = conditions::now();
    let new = deleting_status(pool, &observed, &seen.volumes, &step, &why, trouble, &now);
    commit(ctx, pool, &observed, &observed, &new).await?;
    act(ctx, pool, step, why, &seen, uid).await
}

/// What deletion waits for or does, for Progressing (empty once done).
fn explain(step: &Step, pool: &ZfsPool, installation: &str) -> String {
    match step {
        Step::WaitForAgent { .. } => format!(
            "waiting for the node agent on {} to {} pool {} (PoolReleased)",
            pool.spec.node_name,
            if pool.spec.template.reclaim_policy == ReclaimPolicy::Delete {
                "destroy"
            } else {
                "export"
            },
            pool.pool_name()
        ),
        Step::Detach(v) => format!("detaching {} volume(s)", v.len()),
        Step::WaitForDetach(v) => format!("waiting for {} volume(s) to detach", v.len()),
        Step::Delete(v) => format!("deleting {} volume(s)", v.len()),
        Step::WaitForAdoption(v) => format!(
            "waiting for volume(s) {} of this pool, made before the operator tagged its \
             installation, to be adopted (aws ec2 create-tags --resources {} --tags \
             Key={},Value={installation}) or the finalizer removed by hand",
            v.join(", "),
            v.join(" "),
            pgml_api::common::keys::INSTALLATION,
        ),
        Step::Done => String::new(),
    }
}

/// Degraded during deletion (pure): the agent overdue, or the node gone while EC2 says its
/// instance still runs (no force detach then).
fn degraded(
    step: &Step,
    pool: &ZfsPool,
    waited: u64,
    running: &[(String, String, Vec<String>)],
) -> Option<(&'static str, String)> {
    if let Step::WaitForAgent { overdue: true } = step {
        let msg = format!(
            "deletion has waited {waited}s for the node agent on {} to release pool {}; the volumes stay attached until it does (or the node is gone)",
            pool.spec.node_name,
            pool.pool_name()
        );
        return Some((reason::AGENT_NOT_RELEASING, msg));
    }
    if running.is_empty() {
        return None;
    }
    let each: Vec<String> = running
        .iter()
        .map(|(i, state, vols)| format!("instance {i} is {state} (volume(s) {})", vols.join(", ")))
        .collect();
    let msg = format!(
        "the Node object {} is gone but EC2 says {}: detached without force, since a force \
         detach under a running instance's mounted filesystem can lose data; if the detach \
         does not finish, stop or terminate the instance",
        pool.spec.node_name,
        each.join("; ")
    );
    Some((reason::INSTANCE_STILL_RUNNING, msg))
}

/// Carries out `step`. Anything but done is `Waiting`: the finalizer stays (after the
/// deletes too while an unadopted volume waits).
async fn act(
    ctx: &Context,
    pool: &ZfsPool,
    step: Step,
    why: String,
    seen: &Seen,
    uid: &str,
) -> Result<Action, Error> {
    match step {
        Step::WaitForAgent { .. } => Err(Error::waiting(why, ctx.settings.requeue.progress)),
        Step::Detach(detach) => {
            for d in &detach {
                ctx.ec2
                    .detach_volume(&d.volume, &d.instance, d.force)
                    .await?;
                tracing::info!(volume = %d.volume, instance = %d.instance, force = d.force, "detach requested");
            }
            Err(Error::waiting(why, Duration::from_secs(2)))
        }
        Step::WaitForDetach(_) => Err(Error::waiting(why, Duration::from_secs(2))),
        Step::Delete(ids) => {
            for id in &ids {
                ctx.ec2.delete_volume(id).await?;
            }
            let note = format!("deleted {} volume(s): {}", ids.len(), ids.join(", "));
            events::publish(ctx, pool, false, "VolumesDeleted", note).await;
            if seen.unadopted.is_empty() {
                Ok(Action::await_change())
            } else {
                Err(Error::waiting(why, Duration::from_secs(2)))
            }
        }
        Step::WaitForAdoption(_) => Err(Error::waiting(why, ctx.settings.requeue.ready)),
        Step::Done => {
            let volumes = &seen.volumes;
            if pool.spec.template.reclaim_policy == ReclaimPolicy::Retain && !volumes.is_empty() {
                let ids: Vec<&str> = volumes.iter().map(|v| v.volume_id.as_str()).collect();
                let note = format!(
                    "kept {} volume(s) detached and tagged pgml.io/pool-uid={uid}: {}",
                    ids.len(),
                    ids.join(", ")
                );
                events::publish(ctx, pool, false, "VolumesRetained", note).await;
            }
            Ok(Action::await_change())
        }
    }
}

/// Deletion progress in status (pure): phase Deleting, Progressing with what it waits
/// for, Degraded with `trouble` ([`degraded`]), and the volumes' states as EC2 now reports
/// them.
fn deleting_status(
    pool: &ZfsPool,
    observed: &ZfsPoolStatus,
    volumes: &[Volume],
    step: &Step,
    why: &str,
    trouble: Option<(&'static str, String)>,
    now: &Time,
) -> ZfsPoolStatus {
    let stamp = conditions::Stamp {
        generation: pool.metadata.generation,
        now,
    };
    let mut s = status::owned_view(observed);
    let old = s.conditions.clone();
    s.phase = Some(PoolPhase::Deleting);
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        conditions::set_condition(
            &mut s.conditions,
            &old,
            type_,
            status,
            reason,
            message,
            stamp,
        )
    };
    if !why.is_empty() {
        let r = match step {
            Step::WaitForAgent { .. } => reason::WAITING_FOR_RELEASE,
            _ => reason::DELETING,
        };
        set(c::PROGRESSING, true, r, why.to_string());
        set(
            c::READY,
            false,
            reason::DELETING,
            "the pool is being deleted".into(),
        );
    }
    if let Some((r, msg)) = trouble {
        set(c::DEGRADED, true, r, msg);
    }
    let by_id: BTreeMap<&str, &Volume> =
        volumes.iter().map(|v| (v.volume_id.as_str(), v)).collect();
    let instance = s.instance_id.clone().unwrap_or_default();
    for vs in &mut s.volumes {
        if let Some(v) = vs.volume_id.as_deref().and_then(|id| by_id.get(id)) {
            let fresh =
                build::volume_status(vs.index as usize, v, &instance, vs.modification.clone());
            vs.state = fresh.state;
            vs.attachment_state = fresh.attachment_state;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfspool::fixtures::vol_in as vol;
    use crate::zfspool::plan::delete::Detach;
    use pgml_aws::AttachmentState;

    fn pool(policy: &str) -> ZfsPool {
        serde_yaml::from_str(&format!(
            "{{apiVersion: pgml.io/v1alpha1, kind: ZfsPool, metadata: {{name: tank, generation: 3}}, spec: {{nodeName: node-a, reclaimPolicy: {policy}, volumes: {{count: 1, sizeGiB: 10}}}}}}"
        ))
        .unwrap()
    }

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn progress_says_what_deletion_waits_for() {
        let wait = Step::WaitForAgent { overdue: false };
        assert_eq!(
            explain(&wait, &pool("Delete"), "prod-a"),
            "waiting for the node agent on node-a to destroy pool tank (PoolReleased)"
        );
        assert_eq!(
            explain(&wait, &pool("Retain"), "prod-a"),
            "waiting for the node agent on node-a to export pool tank (PoolReleased)"
        );
        let two = vec!["vol-a".to_string(), "vol-b".into()];
        let p = pool("Delete");
        assert_eq!(
            explain(&Step::Delete(two.clone()), &p, "prod-a"),
            "deleting 2 volume(s)"
        );
        assert_eq!(
            explain(&Step::WaitForDetach(two), &p, "prod-a"),
            "waiting for 2 volume(s) to detach"
        );
        let pair = vec![Detach {
            volume: "vol-a".into(),
            instance: "i-1".into(),
            force: false,
        }];
        assert_eq!(
            explain(&Step::Detach(pair), &p, "prod-a"),
            "detaching 1 volume(s)"
        );
        assert_eq!(explain(&Step::Done, &p, "prod-a"), "");
        let why = explain(
            &Step::WaitForAdoption(vec!["vol-old".into()]),
            &pool("Delete"),
            "prod-a",
        );
        assert!(
            why.contains("vol-old")
                && why.contains("--resources vol-old --tags Key=pgml.io/installation,Value=prod-a"),
            "{why}"
        );
    }

    #[test]
    fn the_deleting_status_reports_an_overdue_agent_and_fresh_attachments() {
        let p = pool("Retain");
        let observed = ZfsPoolStatus {
            instance_id: Some("i-1".into()),
            volumes: vec![pgml_api::zfspool::VolumeStatus {
                index: 0,
                volume_id: Some("vol-a".into()),
                state: Some("in-use".into()),
                attachment_state: Some("attached".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let detaching = [vol("vol-a", "in-use", Some(AttachmentState::Detaching))];
        let step = Step::WaitForDetach(vec!["vol-a".into()]);
        let why = explain(&step, &p, "prod-a");
        let trouble = degraded(&step, &p, 10, &[]);
        let s = deleting_status(&p, &observed, &detaching, &step, &why, trouble, &at(100));
        assert_eq!(s.phase, Some(PoolPhase::Deleting));
        assert_eq!(s.volumes[0].attachment_state.as_deref(), Some("detaching"));
        let progressing = status::condition(&s, c::PROGRESSING).unwrap();
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            (c::TRUE, reason::DELETING)
        );
        assert_eq!(progressing.observed_generation, Some(3));
        assert_eq!(status::condition(&s, c::DEGRADED), None);

        let overdue = Step::WaitForAgent { overdue: true };
        let why = explain(&overdue, &p, "prod-a");
        let trouble = degraded(&overdue, &p, 700, &[]);
        let s = deleting_status(&p, &observed, &[], &overdue, &why, trouble, &at(100));
        let progressing = status::condition(&s, c::PROGRESSING).unwrap();
        assert_eq!(progressing.reason, reason::WAITING_FOR_RELEASE);
        let d = status::condition(&s, c::DEGRADED).unwrap();
        assert_eq!(d.reason, reason::AGENT_NOT_RELEASING);
        assert!(d.message.contains("waited 700s"), "{}", d.message);
        assert_eq!(s.volumes[0].attachment_state.as_deref(), Some("attached"));

        // The node gone, its instance still running: Degraded says why nothing is forced.
        let running = [(
            "i-1".to_string(),
            "running".to_string(),
            vec!["vol-a".to_string()],
        )];
        let step = Step::WaitForDetach(vec!["vol-a".into()]);
        let trouble = degraded(&step, &p, 10, &running);
        let s = deleting_status(&p, &observed, &detaching, &step, "…", trouble, &at(100));
        let d = status::condition(&s, c::DEGRADED).unwrap();
        assert_eq!(d.reason, reason::INSTANCE_STILL_RUNNING);
        assert_eq!(
            d.message,
            "the Node object node-a is gone but EC2 says instance i-1 is running (volume(s) \
             vol-a): detached without force, since a force detach under a running instance's \
             mounted filesystem can lose data; if the detach does not finish, stop or \
             terminate the instance"
        );
        let notices = status::notices(&observed, &s);
        assert!(
            notices.contains(&(
                true,
                reason::INSTANCE_STILL_RUNNING.into(),
                d.message.clone()
            )),
            "a Warning Event once: {notices:?}"
        );

        // Done: nothing to say but the phase.
        let s = deleting_status(&p, &observed, &[], &Step::Done, "", None, &at(100));
        assert_eq!(s.phase, Some(PoolPhase::Deleting));
        assert!(s.conditions.is_empty());
    }
}
