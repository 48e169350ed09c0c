//! Rolling updates: a new Pod spec (image, resources, scheduling), or PostgreSQL
//! parameters that wait for a restart, reach the instances one at a time, replicas
//! first, each back and ready before the next; then a
//! switchover to an updated replica (or, `primaryUpdateStrategy: Supervised`, a wait for a
//! human to do it), and the old primary, a replica by then, last. Pure.
//!
//! A Pod's spec cannot change in place: an instance is updated by deleting its Pod, which
//! the plan makes again with the cluster's spec on the same node, over the same data (and
//! its PostgreSQL starts with the parameters as they are now).

use pgml_api::cluster::PrimaryUpdateStrategy;

use super::roles::{Member, PodState};

/// The facts of one decision.
pub struct Input<'a> {
    pub members: &'a [Member],
    /// The instances whose live Pod runs an older spec than the cluster's, with the first
    /// field that differs.
    pub outdated: &'a [(String, String)],
    pub current: Option<&'a str>,
    pub target: Option<&'a str>,
    /// `spec.primary`.
    pub wanted: Option<&'a str>,
    pub strategy: PrimaryUpdateStrategy,
}

/// The next step of the roll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing runs an older spec.
    Done,
    /// Delete this instance's Pod now (`why`: what differs); it is made again updated.
    Restart { instance: String, why: String },
    /// Every replica is updated: switch over to this one, the old primary goes last.
    Switchover(String),
    /// The next step waits, for this reason.
    Wait(String),
}

/// The roll and how far it is, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    pub step: Step,
    /// "k of n instances updated", when the roll is under way.
    pub progress: Option<String>,
}

fn is_outdated(i: &Input, name: &str) -> Option<String> {
    i.outdated
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, at)| at.clone())
}

/// Back and serving: its Pod Running and its manager reporting ready.
fn settled(m: &Member) -> bool {
    m.pod == PodState::Running && m.ready()
}

pub fn decide(i: &Input) -> Rollout {
    let n = i.members.len();
    let updated = n - i.outdated.len().min(n);
    let progress = (!i.outdated.is_empty()).then(|| format!("{updated} of {n} instances updated"));
    let step = step(i);
    Rollout { step, progress }
}

fn step(i: &Input) -> Step {
    if i.outdated.is_empty() {
        return Step::Done;
    }
    // A fenced instance serves nothing: its Pod goes first, whatever else is going on.
    if let Some(m) = i
        .members
        .iter()
        .find(|m| m.fenced && is_outdated(i, &m.name).is_some())
    {
        let why = is_outdated(i, &m.name).unwrap_or_default();
        return Step::Restart {
            instance: m.name.clone(),
            why,
        };
    }
    if i.current != i.target {
        return Step::Wait("a change of primary is under way".into());
    }
    let Some(current) = i.current else {
        return Step::Wait("no primary yet".into());
    };
    if let Some(m) = i.members.iter().find(|m| !m.fenced && !settled(m)) {
        return Step::Wait(format!("waiting for {} to be ready", m.name));
    }
    // Replicas first: the least advanced, of least use to a failover, first.
    let replica = i
        .members
        .iter()
        .filter(|m| m.name != current && !m.fenced)
        .filter_map(|m| Some((m, is_outdated(i, &m.name)?)))
        .min_by_key(|(m, _)| (m.replay(), m.name.clone()));
    if let Some((m, why)) = replica {
        return Step::Restart {
            instance: m.name.clone(),
            why,
        };
    }
    let Some(why) = is_outdated(i, current) else {
        return Step::Done;
    };
    primary_step(i, current, why)
}

/// Only the primary runs an older spec.
fn primary_step(i: &Input, current: &str, why: String) -> Step {
    let others = i.members.iter().filter(|m| m.name != current && !m.fenced);
    let target = others
        .filter(|m| m.switchover_target())
        .max_by_key(|m| (m.replay(), std::cmp::Reverse(m.name.clone())));
    match (i.strategy, target) {
        (PrimaryUpdateStrategy::Supervised, _) => Step::Wait(format!(
            "every replica is updated; primary {current} waits for a switchover (primaryUpdateStrategy: Supervised): kubectl pgml promote <replica>, or set spec.primary"
        )),
        (_, _) if i.wanted == Some(current) => Step::Wait(format!(
            "spec.primary keeps {current} the primary: unset it or name an updated replica to finish the update"
        )),
        (_, Some(t)) => Step::Switchover(t.name.clone()),
        // The only instance: restarted in place (it cannot be switched away from).
        (_, None) if i.members.iter().all(|m| m.name == current || m.fenced) => Step::Restart {
            instance: current.into(),
            why,
        },
        (_, None) => Step::Wait(format!(
            "primary {current} waits for a ready replica on a node that stays to switch over to"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, role: &str, lsn: &str) -> Member {
        crate::cluster::roles::test_member(name, role, true, lsn)
    }

    fn three() -> Vec<Member> {
        vec![
            m("c-1", "primary", "0/900"),
            m("c-2", "replica", "0/700"),
            m("c-3", "replica", "0/500"),
        ]
    }

    fn outdated(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "spec.containers[0].image".to_string()))
            .collect()
    }

    fn input<'a>(ms: &'a [Member], out: &'a [(String, String)]) -> Input<'a> {
        Input {
            members: ms,
            outdated: out,
            current: Some("c-1"),
            target: Some("c-1"),
            wanted: None,
            strategy: PrimaryUpdateStrategy::Unsupervised,
        }
    }

    fn restart(name: &str) -> Step {
        Step::Restart {
            instance: name.into(),
            why: "spec.containers[0].image".into(),
        }
    }

    #[test]
    fn replicas_one_at_a_time_least_advanced_first_then_a_switchover() {
        let mut ms = three();
        let all = outdated(&["c-1", "c-2", "c-3"]);
        let r = decide(&input(&ms, &all));
        assert_eq!(r.step, restart("c-3"));
        assert_eq!(r.progress.as_deref(), Some("0 of 3 instances updated"));

        // c-3's Pod made again, not ready yet: the next waits.
        ms[2].pod = PodState::Pending;
        let two = outdated(&["c-1", "c-2"]);
        let r = decide(&input(&ms, &two));
        assert_eq!(r.step, Step::Wait("waiting for c-3 to be ready".into()));
        assert_eq!(r.progress.as_deref(), Some("1 of 3 instances updated"));
        ms[2].pod = PodState::Running;
        ms[2].reported.as_mut().unwrap().ready = false;
        assert!(matches!(decide(&input(&ms, &two)).step, Step::Wait(_)));
        ms[2].reported.as_mut().unwrap().ready = true;
        assert_eq!(decide(&input(&ms, &two)).step, restart("c-2"));

        // Only the primary: a switchover to the most advanced updated replica.
        let one = outdated(&["c-1"]);
        assert_eq!(
            decide(&input(&ms, &one)).step,
            Step::Switchover("c-2".into())
        );
        // Under way: waits; done, the old primary is a replica to restart.
        let mut i = input(&ms, &one);
        i.target = Some("c-2");
        assert!(matches!(decide(&i).step, Step::Wait(w) if w.contains("change of primary")));
        let i = Input {
            current: Some("c-2"),
            target: Some("c-2"),
            ..input(&ms, &one)
        };
        assert_eq!(decide(&i).step, restart("c-1"));
        assert_eq!(decide(&input(&ms, &[])).step, Step::Done);
        assert_eq!(decide(&input(&ms, &[])).progress, None);
    }

    #[test]
    fn supervised_or_a_pinned_primary_waits_for_a_human() {
        let ms = three();
        let one = outdated(&["c-1"]);
        let mut i = input(&ms, &one);
        i.strategy = PrimaryUpdateStrategy::Supervised;
        assert!(matches!(decide(&i).step, Step::Wait(w) if w.contains("Supervised")));
        let mut i = input(&ms, &one);
        i.wanted = Some("c-1");
        assert!(matches!(decide(&i).step, Step::Wait(w) if w.contains("spec.primary keeps c-1")));
        // Replicas roll under Supervised too.
        let all = outdated(&["c-1", "c-2"]);
        let mut i = input(&ms, &all);
        i.strategy = PrimaryUpdateStrategy::Supervised;
        assert_eq!(decide(&i).step, restart("c-2"));
    }

    #[test]
    fn a_single_instance_restarts_in_place_and_a_fenced_one_goes_first() {
        let ms = vec![m("c-1", "primary", "0/900")];
        let one = outdated(&["c-1"]);
        assert_eq!(decide(&input(&ms, &one)).step, restart("c-1"));

        let mut ms = three();
        ms[1].fenced = true;
        ms[1].reported.as_mut().unwrap().ready = false;
        // A fenced, not-ready instance holds nothing back and is restarted first.
        let all = outdated(&["c-1", "c-2", "c-3"]);
        assert_eq!(decide(&input(&ms, &all)).step, restart("c-2"));
        let two = outdated(&["c-1", "c-3"]);
        assert_eq!(decide(&input(&ms, &two)).step, restart("c-3"));
        // c-3 is the only one to switch over to.
        let one = outdated(&["c-1"]);
        assert_eq!(
            decide(&input(&ms, &one)).step,
            Step::Switchover("c-3".into())
        );
    }

    #[test]
    fn no_switchover_to_a_replica_on_a_leaving_node() {
        let mut ms = three();
        ms[1].leaving = Some("node n-2 is cordoned".into());
        ms[2].leaving = Some("node n-3 is cordoned".into());
        let one = outdated(&["c-1"]);
        assert!(
            matches!(decide(&input(&ms, &one)).step, Step::Wait(w) if w.contains("ready replica"))
        );
        ms[2].leaving = None;
        assert_eq!(
            decide(&input(&ms, &one)).step,
            Step::Switchover("c-3".into())
        );
    }
}
