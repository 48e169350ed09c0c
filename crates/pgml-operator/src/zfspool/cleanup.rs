//! Deletion behind the `pgml.io/volumes` finalizer: wait for the agent to release the pool
//! (or for the node to be gone), detach every volume, delete them for `Delete`, leave them
//! detached and tagged for `Retain`. Already gone is success.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::runtime::controller::Action;
use pgml_api::common::Time;
use pgml_api::zfspool::{PoolPhase, ReclaimPolicy, ZfsPoolStatus};
use pgml_api::{ZfsPool, condition as c};
use pgml_aws::{AttachmentState, Volume};

use super::apply::commit;
use super::build;
use super::observe;
use super::status::{self, reason};
use crate::runtime::Error;
use crate::runtime::{Context, conditions, events};

/// What deletion does next, decided from what was observed (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The agent still holds the pool on a live node.
    WaitForAgent { overdue: bool },
    /// Detach these (volume, instance) pairs; `force` when the node is gone.
    Detach(Vec<(String, String)>),
    /// Some volumes are still detaching: look again.
    WaitForDetach(Vec<String>),
    /// Delete these detached volumes (`Delete` policy).
    Delete(Vec<String>),
    /// Nothing left to do: the finalizer may go.
    Done,
}

pub fn next_step(
    volumes: &[Volume],
    policy: ReclaimPolicy,
    released: bool,
    node_gone: bool,
    waited: Duration,
    timeout: Duration,
) -> Step {
    if !released && !node_gone {
        return Step::WaitForAgent {
            overdue: waited > timeout,
        };
    }
    let live: Vec<&Volume> = volumes.iter().filter(|v| !v.state.is_gone()).collect();
    let mut detach = vec![];
    let mut detaching = vec![];
    for v in &live {
        for a in &v.attachments {
            match a.state {
                AttachmentState::Detached => {}
                AttachmentState::Detaching => detaching.push(v.volume_id.clone()),
                _ => detach.push((v.volume_id.clone(), a.instance_id.clone())),
            }
        }
    }
    if !detach.is_empty() {
        return Step::Detach(detach);
    }
    if !detaching.is_empty() {
        return Step::WaitForDetach(detaching);
    }
    match policy {
        ReclaimPolicy::Retain => Step::Done,
        ReclaimPolicy::Delete if live.is_empty() => Step::Done,
        ReclaimPolicy::Delete => Step::Delete(live.iter().map(|v| v.volume_id.clone()).collect()),
    }
}

pub async fn cleanup(pool: &ZfsPool, ctx: &Context) -> Result<Action, Error> {
    let observed = pool.status.clone().unwrap_or_default();
    let uid = pool
        .metadata
        .uid
        .as_deref()
        .ok_or(Error::Incomplete("uid"))?;
    let node_gone = observe::node(ctx, &pool.spec.node_name).await?.is_none();
    let waited = pool
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| (conditions::now().0.as_second() - t.0.as_second()).max(0) as u64)
        .unwrap_or(0);
    let seen = volumes(ctx, uid, &observed, node_gone).await?;

    let policy = pool.spec.template.reclaim_policy;
    let step = next_step(
        &seen.volumes,
        policy,
        seen.released,
        node_gone,
        Duration::from_secs(waited),
        ctx.settings.pool.release_timeout,
    );
    let why = explain(&step, pool);
    let now = conditions::now();
    let new = deleting_status(pool, &observed, &seen.volumes, &step, &why, waited, &now);
    commit(ctx, pool, &observed, &observed, &new).await?;
    act(ctx, pool, step, why, node_gone, &seen.volumes, uid).await
}

/// The pool's volumes, and whether the agent released the pool.
struct Seen {
    volumes: Vec<Volume>,
    released: bool,
}

/// Every volume of the pool, once they may be touched (released, or the node gone): by
/// tag, plus any the status lists (members and the volumes they replaced) that the tag
/// search missed, so nothing is left unaccounted for.
async fn volumes(
    ctx: &Context,
    uid: &str,
    observed: &ZfsPoolStatus,
    node_gone: bool,
) -> Result<Seen, Error> {
    // A pool whose status never recorded a volume has nothing for the agent to release;
    // the tag search below still catches a volume created just before a crash.
    let never_provisioned = observed
        .volumes
        .iter()
        .all(|v| v.volume_id.is_none() && v.replaced_volume_id.is_none());
    let released = status::is_true(observed, c::POOL_RELEASED);
    let mut volumes = if released || node_gone || never_provisioned {
        ctx.ec2.find_volumes(&build::pool_filter(uid)).await?
    } else {
        vec![]
    };
    let released = released || (never_provisioned && volumes.is_empty());
    if released || node_gone {
        let unlisted: Vec<String> = observed
            .volumes
            .iter()
            .flat_map(|v| [v.volume_id.clone(), v.replaced_volume_id.clone()])
            .flatten()
            .filter(|id| !volumes.iter().any(|v| &v.volume_id == id))
            .collect();
        if !unlisted.is_empty() {
            let (ours, foreign): (Vec<Volume>, Vec<Volume>) = ctx
                .ec2
                .describe_volumes(&unlisted)
                .await?
                .into_iter()
                .partition(|v| build::is_ours(v, uid));
            for v in &foreign {
                tracing::warn!(volume = %v.volume_id, pool_uid = %uid, "status names a volume whose tags are not this pool's: left alone");
            }
            volumes.extend(ours);
        }
    }
    Ok(Seen { volumes, released })
}

/// What deletion waits for or does, for Progressing (empty once done).
fn explain(step: &Step, pool: &ZfsPool) -> String {
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
        Step::Done => String::new(),
    }
}

/// Carries out `step`. Anything but done is `Waiting`: the finalizer stays.
async fn act(
    ctx: &Context,
    pool: &ZfsPool,
    step: Step,
    why: String,
    node_gone: bool,
    volumes: &[Volume],
    uid: &str,
) -> Result<Action, Error> {
    match step {
        Step::WaitForAgent { .. } => Err(Error::waiting(why, ctx.settings.requeue.progress)),
        Step::Detach(pairs) => {
            for (vol, instance) in &pairs {
                ctx.ec2.detach_volume(vol, instance, node_gone).await?;
                tracing::info!(volume = %vol, %instance, force = node_gone, "detach requested");
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
            Ok(Action::await_change())
        }
        Step::Done => {
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
/// for, Degraded once the agent is overdue, and the volumes' states as EC2 now reports
/// them.
fn deleting_status(
    pool: &ZfsPool,
    observed: &ZfsPoolStatus,
    volumes: &[Volume],
    step: &Step,
    why: &str,
    waited: u64,
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
    if let Step::WaitForAgent { overdue: true } = step {
        let msg = format!(
            "deletion has waited {waited}s for the node agent on {} to release pool {}; the volumes stay attached until it does (or the node is gone)",
            pool.spec.node_name,
            pool.pool_name()
        );
        set(c::DEGRADED, true, reason::AGENT_NOT_RELEASING, msg);
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
    use pgml_aws::Attachment;

    fn vol(id: &str, state: &str, att: Option<AttachmentState>) -> Volume {
        Volume {
            volume_id: id.into(),
            availability_zone: "z".into(),
            state: state.into(),
            volume_type: "gp3".into(),
            size_gib: 10,
            iops: None,
            throughput_mibps: None,
            encrypted: true,
            snapshot_id: None,
            attachments: att
                .map(|s| Attachment {
                    instance_id: "i-1".into(),
                    device: "/dev/xvdba".into(),
                    state: s,
                })
                .into_iter()
                .collect(),
            tags: Default::default(),
        }
    }

    const T: Duration = Duration::from_secs(600);

    #[test]
    fn waits_for_the_agent_unless_the_node_is_gone() {
        let v = [vol("vol-a", "in-use", Some(AttachmentState::Attached))];
        let s = |released, gone, waited| {
            next_step(
                &v,
                ReclaimPolicy::Retain,
                released,
                gone,
                Duration::from_secs(waited),
                T,
            )
        };
        assert_eq!(s(false, false, 10), Step::WaitForAgent { overdue: false });
        assert_eq!(s(false, false, 601), Step::WaitForAgent { overdue: true });
        let detach = Step::Detach(vec![("vol-a".into(), "i-1".into())]);
        assert_eq!(s(true, false, 10), detach);
        assert_eq!(s(false, true, 10), detach);
    }

    #[test]
    fn retain_stops_at_detached_and_delete_deletes() {
        let detached = [
            vol("vol-a", "available", None),
            vol("vol-b", "deleted", None),
        ];
        assert_eq!(
            next_step(&detached, ReclaimPolicy::Retain, true, false, T, T),
            Step::Done
        );
        assert_eq!(
            next_step(&detached, ReclaimPolicy::Delete, true, false, T, T),
            Step::Delete(vec!["vol-a".into()])
        );
        assert_eq!(
            next_step(&[], ReclaimPolicy::Delete, true, false, T, T),
            Step::Done
        );
        let detaching = [vol("vol-a", "in-use", Some(AttachmentState::Detaching))];
        assert_eq!(
            next_step(&detaching, ReclaimPolicy::Delete, true, false, T, T),
            Step::WaitForDetach(vec!["vol-a".into()])
        );
    }

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
            explain(&wait, &pool("Delete")),
            "waiting for the node agent on node-a to destroy pool tank (PoolReleased)"
        );
        assert_eq!(
            explain(&wait, &pool("Retain")),
            "waiting for the node agent on node-a to export pool tank (PoolReleased)"
        );
        let two = vec!["vol-a".to_string(), "vol-b".into()];
        let p = pool("Delete");
        assert_eq!(
            explain(&Step::Delete(two.clone()), &p),
            "deleting 2 volume(s)"
        );
        assert_eq!(
            explain(&Step::WaitForDetach(two), &p),
            "waiting for 2 volume(s) to detach"
        );
        let pair = vec![("vol-a".to_string(), "i-1".to_string())];
        assert_eq!(explain(&Step::Detach(pair), &p), "detaching 1 volume(s)");
        assert_eq!(explain(&Step::Done, &p), "");
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
        let why = explain(&step, &p);
        let s = deleting_status(&p, &observed, &detaching, &step, &why, 10, &at(100));
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
        let why = explain(&overdue, &p);
        let s = deleting_status(&p, &observed, &[], &overdue, &why, 700, &at(100));
        let progressing = status::condition(&s, c::PROGRESSING).unwrap();
        assert_eq!(progressing.reason, reason::WAITING_FOR_RELEASE);
        let degraded = status::condition(&s, c::DEGRADED).unwrap();
        assert_eq!(degraded.reason, reason::AGENT_NOT_RELEASING);
        assert!(
            degraded.message.contains("waited 700s"),
            "{}",
            degraded.message
        );
        assert_eq!(s.volumes[0].attachment_state.as_deref(), Some("attached"));

        // Done: nothing to say but the phase.
        let s = deleting_status(&p, &observed, &[], &Step::Done, "", 0, &at(100));
        assert_eq!(s.phase, Some(PoolPhase::Deleting));
        assert!(s.conditions.is_empty());
    }
}
