//! Deletion's decisions (pure): which of the volumes found are ours to touch, what to do
//! next (wait for the agent, detach, delete, wait for an unadopted volume to be adopted),
//! and whether a detach is forced. [`crate::zfspool::cleanup`] carries them out.

use std::collections::BTreeMap;
use std::time::Duration;

use pgml_api::zfspool::ReclaimPolicy;
use pgml_aws::{AttachmentState, Volume};

use crate::runtime::ownership::{self, Ownership};
use crate::zfspool::build;

/// What EC2 says of an instance a volume of the pool is attached to (looked at only once
/// the pool's Node object is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    /// EC2's state: `pending`, `running`, `stopping`, `stopped`, `shutting-down`,
    /// `terminated`.
    Is(String),
    /// EC2 does not know the instance (`InvalidInstanceID.NotFound`): terminated long
    /// enough ago to be forgotten.
    Unknown,
}

impl InstanceState {
    /// Whether nothing on the instance can write to an attached volume any more: it is
    /// `stopped` or `terminated`, or EC2 has forgotten it. Not `stopping` or
    /// `shutting-down`: the OS may still be flushing and unmounting, and the next look
    /// (seconds later) finds it stopped or terminated.
    pub fn halted(&self) -> bool {
        match self {
            InstanceState::Unknown => true,
            InstanceState::Is(s) => matches!(s.as_str(), "stopped" | "terminated"),
        }
    }

    fn name(&self) -> &str {
        match self {
            InstanceState::Is(s) => s,
            InstanceState::Unknown => "unknown to EC2",
        }
    }
}

/// Whether to force the detach from an instance. Only with the Node object gone (no agent
/// will release the pool) and the instance halted: a force detach under a running
/// instance's mounted filesystem can lose data, AWS warns. With the node there, the agent
/// has released the pool and a plain detach suffices.
pub fn force_detach(node_gone: bool, instance: Option<&InstanceState>) -> bool {
    node_gone && instance.is_some_and(InstanceState::halted)
}

/// Everything deletion observed.
#[derive(Debug, Default)]
pub struct Seen {
    /// The volumes whose tags say they are this pool's and this installation's.
    pub volumes: Vec<Volume>,
    /// The pool's volumes without an installation tag: left alone until adopted.
    pub unadopted: Vec<String>,
    /// The Warning (reason, note) of each volume left alone.
    pub left_alone: Vec<(&'static str, String)>,
    /// The agent has released the pool.
    pub released: bool,
    /// The pool's Node object is gone.
    pub node_gone: bool,
    /// With the node gone: EC2's state of each instance a volume is attached to.
    pub instances: BTreeMap<String, InstanceState>,
}

/// One DetachVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detach {
    pub volume: String,
    pub instance: String,
    pub force: bool,
}

/// What deletion does next, decided from what was observed (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The agent still holds the pool on a live node.
    WaitForAgent { overdue: bool },
    /// Detach these.
    Detach(Vec<Detach>),
    /// Some volumes are still detaching: look again.
    WaitForDetach(Vec<String>),
    /// Delete these detached volumes (`Delete` policy).
    Delete(Vec<String>),
    /// Ours are done; these of the pool have no installation tag: wait until an
    /// administrator adopts them (or removes the finalizer).
    WaitForAdoption(Vec<String>),
    /// Nothing left to do: the finalizer may go.
    Done,
}

pub fn next_step(seen: &Seen, policy: ReclaimPolicy, waited: Duration, timeout: Duration) -> Step {
    if !seen.released && !seen.node_gone {
        return Step::WaitForAgent {
            overdue: waited > timeout,
        };
    }
    let live: Vec<&Volume> = seen.volumes.iter().filter(|v| !v.state.is_gone()).collect();
    let mut detach = vec![];
    let mut detaching = vec![];
    for v in &live {
        for a in &v.attachments {
            match a.state {
                AttachmentState::Detached => {}
                AttachmentState::Detaching => detaching.push(v.volume_id.clone()),
                _ => detach.push(Detach {
                    volume: v.volume_id.clone(),
                    instance: a.instance_id.clone(),
                    force: force_detach(seen.node_gone, seen.instances.get(&a.instance_id)),
                }),
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
        ReclaimPolicy::Delete if !live.is_empty() => {
            Step::Delete(live.iter().map(|v| v.volume_id.clone()).collect())
        }
        _ if !seen.unadopted.is_empty() => Step::WaitForAdoption(seen.unadopted.clone()),
        _ => Step::Done,
    }
}

/// With the Node object gone: the instances EC2 says still run (any state but halted)
/// with a volume of the pool on them, (instance, state, volumes). Their volumes get a
/// plain detach, never a forced one.
pub fn still_running(seen: &Seen) -> Vec<(String, String, Vec<String>)> {
    if !seen.node_gone {
        return vec![];
    }
    let mut on: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for v in seen.volumes.iter().filter(|v| !v.state.is_gone()) {
        for a in v
            .attachments
            .iter()
            .filter(|a| a.state != AttachmentState::Detached)
        {
            on.entry(&a.instance_id)
                .or_default()
                .push(v.volume_id.clone());
        }
    }
    on.into_iter()
        .filter_map(|(i, vols)| {
            let state = seen.instances.get(i)?;
            (!state.halted()).then(|| (i.to_string(), state.name().to_string(), vols))
        })
        .collect()
}

/// Sorts what the tag search and status found into the volumes that are ours, the IDs of
/// the pool's unadopted ones, and a Warning for each left alone.
pub fn sort_owned(found: Vec<Volume>, uid: &str, installation: &str, seen: &mut Seen) {
    let mut left = Vec::new();
    for v in found {
        let o = build::ownership(&v, uid, installation);
        if o == Ownership::Ours {
            seen.volumes.push(v);
        } else if !v.state.is_gone() {
            if o == Ownership::Unadopted {
                seen.unadopted.push(v.volume_id.clone());
            }
            left.push((v.volume_id, o));
        }
    }
    seen.left_alone = ownership::left_alone("volume", &left, installation);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfspool::fixtures::vol_in as vol;
    use pgml_api::common::keys;

    const T: Duration = Duration::from_secs(600);

    /// What deletion saw: `volumes`, all ours.
    fn seen(volumes: &[Volume], released: bool, node_gone: bool) -> Seen {
        Seen {
            volumes: volumes.to_vec(),
            released,
            node_gone,
            ..Seen::default()
        }
    }

    fn detach(volume: &str, force: bool) -> Detach {
        Detach {
            volume: volume.into(),
            instance: "i-1".into(),
            force,
        }
    }

    #[test]
    fn waits_for_the_agent_unless_the_node_is_gone() {
        let v = [vol("vol-a", "in-use", Some(AttachmentState::Attached))];
        let s = |released, gone, waited| {
            next_step(
                &seen(&v, released, gone),
                ReclaimPolicy::Retain,
                Duration::from_secs(waited),
                T,
            )
        };
        assert_eq!(s(false, false, 10), Step::WaitForAgent { overdue: false });
        assert_eq!(s(false, false, 601), Step::WaitForAgent { overdue: true });
        assert_eq!(
            s(true, false, 10),
            Step::Detach(vec![detach("vol-a", false)])
        );
    }

    #[test]
    fn with_the_node_gone_only_a_halted_instance_gets_a_force_detach() {
        let v = [vol("vol-a", "in-use", Some(AttachmentState::Attached))];
        let is = |s: &str| Some(InstanceState::Is(s.into()));
        // (node gone, what EC2 says of the instance, force)
        let table = [
            (true, is("running"), false),
            (true, is("pending"), false),
            (true, is("stopping"), false),
            (true, is("shutting-down"), false),
            (true, is("stopped"), true),
            (true, is("terminated"), true),
            (true, Some(InstanceState::Unknown), true),
            // Not looked at: never forced.
            (true, None, false),
            // The node there (the agent released the pool): a plain detach, whatever EC2
            // says.
            (false, is("terminated"), false),
            (false, Some(InstanceState::Unknown), false),
        ];
        for (gone, state, force) in table {
            assert_eq!(
                force_detach(gone, state.as_ref()),
                force,
                "{gone} {state:?}"
            );
            let mut s = seen(&v, !gone, gone);
            s.instances
                .extend(state.clone().map(|st| ("i-1".to_string(), st)));
            assert_eq!(
                next_step(&s, ReclaimPolicy::Delete, T, T),
                Step::Detach(vec![detach("vol-a", force)]),
                "{gone} {state:?}"
            );
            let running = still_running(&s);
            match state.filter(|st| gone && !st.halted()) {
                Some(st) => assert_eq!(
                    running,
                    [(
                        "i-1".to_string(),
                        st.name().to_string(),
                        vec!["vol-a".to_string()]
                    )]
                ),
                None => assert!(running.is_empty(), "{gone} {running:?}"),
            }
        }
    }

    #[test]
    fn retain_stops_at_detached_and_delete_deletes() {
        let detached = [
            vol("vol-a", "available", None),
            vol("vol-b", "deleted", None),
        ];
        let step = |v: &[Volume], policy| next_step(&seen(v, true, false), policy, T, T);
        assert_eq!(step(&detached, ReclaimPolicy::Retain), Step::Done);
        assert_eq!(
            step(&detached, ReclaimPolicy::Delete),
            Step::Delete(vec!["vol-a".into()])
        );
        assert_eq!(step(&[], ReclaimPolicy::Delete), Step::Done);
        let detaching = [vol("vol-a", "in-use", Some(AttachmentState::Detaching))];
        assert_eq!(
            step(&detaching, ReclaimPolicy::Delete),
            Step::WaitForDetach(vec!["vol-a".into()])
        );
    }

    #[test]
    fn only_volumes_tagged_as_ours_are_touched_and_an_unadopted_one_holds_the_finalizer() {
        let tagged = |id: &str, installation: Option<&str>, uid: &str| {
            let mut v = vol(id, "available", None);
            v.tags = [
                (keys::POOL_UID, uid),
                (keys::MANAGED_BY, keys::MANAGED_BY_VALUE),
            ]
            .into_iter()
            .chain(installation.map(|i| (keys::INSTALLATION, i)))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            v
        };
        let found = vec![
            tagged("vol-ours", Some("prod-a"), "uid-1"),
            tagged("vol-old", None, "uid-1"),
            tagged("vol-theirs", Some("prod-b"), "uid-1"),
            tagged("vol-other-pool", Some("prod-a"), "uid-2"),
        ];
        let mut s = seen(&[], true, false);
        sort_owned(found, "uid-1", "prod-a", &mut s);
        let ids: Vec<&str> = s.volumes.iter().map(|v| v.volume_id.as_str()).collect();
        assert_eq!(ids, ["vol-ours"]);
        assert_eq!(s.unadopted, ["vol-old"]);
        let reasons: Vec<&str> = s.left_alone.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            reasons,
            [
                ownership::reason::INSTALLATION_TAG_MISSING,
                ownership::reason::NOT_OURS
            ]
        );
        assert!(s.left_alone[0].1.contains("vol-old"));
        let theirs = &s.left_alone[1].1;
        assert!(
            theirs.contains("vol-theirs") && theirs.contains("vol-other-pool"),
            "{theirs}"
        );
        // Ours first; then the unadopted one holds the finalizer, whatever the policy.
        assert_eq!(
            next_step(&s, ReclaimPolicy::Delete, T, T),
            Step::Delete(vec!["vol-ours".into()])
        );
        s.volumes.clear();
        for policy in [ReclaimPolicy::Delete, ReclaimPolicy::Retain] {
            assert_eq!(
                next_step(&s, policy, T, T),
                Step::WaitForAdoption(vec!["vol-old".into()])
            );
        }
        // A gone volume is neither touched nor reported.
        let mut gone = tagged("vol-x", None, "uid-1");
        gone.state = "deleted".into();
        let mut s = seen(&[], true, false);
        sort_owned(vec![gone], "uid-1", "prod-a", &mut s);
        assert!(s.unadopted.is_empty() && s.left_alone.is_empty());
    }
}
