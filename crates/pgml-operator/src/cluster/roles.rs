//! Who is primary: bootstrap, switchover on request, failover when the primary is lost.
//! Pure: the reconcile gathers the facts, this decides, the reconcile writes.

use std::time::Duration;

use pgml_api::instance::Role;

use super::reported::{Reported, parse_lsn};

/// The state of an instance's Pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    Absent,
    /// Being deleted.
    Terminating,
    Pending,
    Running,
    /// Failed, Succeeded or Unknown: its containers are not coming back; or Running with
    /// its PostgreSQL container not running (exited, waiting to restart).
    Down,
}

/// What the decision needs of one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub pod: PodState,
    /// The node's Ready condition (`None`: never reported).
    pub node_ready: Option<bool>,
    pub reported: Option<Reported>,
    /// Fenced by the controller (recorded in status).
    pub fenced: bool,
    /// Why its node is going away (`NodeFacts::leaving`), if it is.
    pub leaving: Option<String>,
}

impl Member {
    /// Ready to serve: its manager says so, and it is not fenced nor on its way out.
    pub fn ready(&self) -> bool {
        !self.fenced
            && !matches!(
                self.pod,
                PodState::Absent | PodState::Terminating | PodState::Down
            )
            && self.node_ready != Some(false)
            && self.reported.as_ref().is_some_and(|r| r.ready && !r.fenced)
    }

    /// A replica that could be promoted.
    pub fn promotable(&self) -> bool {
        self.ready() && self.reported.as_ref().is_some_and(|r| !r.is_primary())
    }

    /// A replica a planned switchover may go to: promotable, on a node that stays.
    pub fn switchover_target(&self) -> bool {
        self.promotable() && self.leaving.is_none()
    }

    /// A replica that can take over from a lost primary: running in recovery, its Pod and
    /// node up, not fenced. Not necessarily streaming: a replica stops streaming when its
    /// primary dies, which is when this is asked.
    pub fn can_take_over(&self) -> bool {
        !self.fenced
            && self.pod == PodState::Running
            && self.node_ready != Some(false)
            && self
                .reported
                .as_ref()
                .is_some_and(|r| r.running && !r.fenced && r.role == Role::Replica)
    }

    pub fn replay(&self) -> u64 {
        self.reported
            .as_ref()
            .and_then(|r| r.position())
            .and_then(parse_lsn)
            .unwrap_or(0)
    }
}

/// Whether the primary is lost: its Pod gone, being deleted or down (its PostgreSQL
/// container not running included), its node NotReady,
/// or its manager reporting PostgreSQL not running (and not because it was asked to stop).
/// A Pod still starting (Pending, nothing reported) is not lost.
pub fn lost(m: &Member) -> bool {
    matches!(
        m.pod,
        PodState::Absent | PodState::Terminating | PodState::Down
    ) || m.node_ready == Some(false)
        || m.reported
            .as_ref()
            .is_some_and(|r| !r.running && !r.demoted && !r.fenced)
}

/// The replica a failover promotes: of those that can take over, the one with the highest
/// replay LSN (ties: the lowest instance name, for a stable choice).
pub fn failover_candidate<'a>(members: &'a [Member], current: &str) -> Option<&'a Member> {
    most_advanced(members, current, Member::can_take_over)
}

/// Of the instances but `current` that `fits`, the one with the highest replay LSN (ties:
/// the lowest name, for a stable choice).
fn most_advanced<'a>(
    members: &'a [Member],
    current: &str,
    fits: impl Fn(&Member) -> bool,
) -> Option<&'a Member> {
    members
        .iter()
        .filter(|m| m.name != current && fits(m))
        .max_by(|a, b| {
            a.replay()
                .cmp(&b.replay())
                .then_with(|| b.name.cmp(&a.name))
        })
}

/// An old primary a change can go back to: not fenced, its Pod and node up, and either
/// still serving as primary or stopped by a demotion (its manager then starts it as primary
/// again once it is the target).
fn intact_old_primary(m: &Member) -> bool {
    !m.fenced
        && matches!(m.pod, PodState::Running | PodState::Pending)
        && m.node_ready != Some(false)
        && m.reported
            .as_ref()
            .is_some_and(|r| !r.fenced && (r.demoted || r.serves_as_primary()))
}

/// What kind of change of primary is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Switchover,
    Failover,
}

/// The facts of one decision.
pub struct Input<'a> {
    /// The first instance: primary at bootstrap.
    pub first: &'a str,
    pub current: Option<&'a str>,
    pub target: Option<&'a str>,
    /// `spec.primary`.
    pub wanted: Option<&'a str>,
    pub members: &'a [Member],
    /// How long the instance that matters has been lost (`None`: it is not): the current
    /// primary when no change is under way, else the target.
    pub lost_for: Option<Duration>,
    pub grace: Duration,
}

/// The decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    pub current: Option<String>,
    pub target: Option<String>,
    /// Instances to fence now.
    pub fence: Vec<String>,
    /// A change that started now: (kind, from, to).
    pub started: Option<(Transition, String, String)>,
    /// The target reported itself primary: (from, to).
    pub completed: Option<(Option<String>, String)>,
    /// Why a requested or needed change waits (for the status message).
    pub waiting: Option<String>,
}

impl Input<'_> {
    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

pub fn decide(i: &Input) -> Roles {
    let mut r = Roles {
        current: i.current.map(Into::into),
        target: i.target.map(Into::into),
        ..Roles::default()
    };
    match (i.current, i.target) {
        // Bootstrap: the first instance.
        (None, None) => {
            r.current = Some(i.first.into());
            r.target = Some(i.first.into());
        }
        (None, Some(t)) => r.current = Some(t.into()),
        (Some(c), Some(t)) if t != c => changing(i, c, t, &mut r),
        (Some(c), _) => match (i.lost_for, i.wanted.filter(|w| *w != c)) {
            (Some(lost_for), _) => failover(i, c, lost_for, &mut r),
            (None, wanted) => match i.member(c).and_then(|m| m.leaving.as_deref()) {
                Some(why) => leave(i, c, why, wanted, &mut r),
                None => {
                    if let Some(wanted) = wanted {
                        switchover(i, c, wanted, &mut r);
                    }
                }
            },
        },
    }
    r
}

/// The primary's node is going away (a drain, a disruption taint): switched over, before
/// its Pod is evicted (its PodDisruptionBudget holds the eviction meanwhile), to the
/// instance `spec.primary` names when that one can take it, else to the most advanced
/// ready replica on a node that stays.
fn leave(i: &Input, current: &str, why: &str, wanted: Option<&str>, r: &mut Roles) {
    let wanted = wanted
        .and_then(|w| i.member(w))
        .filter(|m| m.switchover_target());
    let best = || most_advanced(i.members, current, Member::switchover_target);
    match wanted.or_else(best) {
        Some(to) => {
            r.target = Some(to.name.clone());
            r.started = Some((Transition::Switchover, current.into(), to.name.clone()));
        }
        None => {
            r.waiting = Some(format!(
                "{why}: primary {current} stays until a ready replica on another node can take over (its PodDisruptionBudget holds the eviction)"
            ))
        }
    }
}

/// A change under way from `current` to `target`: complete once the target serves as
/// primary; see [`target_lost`] when it is lost itself.
fn changing(i: &Input, current: &str, target: &str, r: &mut Roles) {
    let promoted = i
        .member(target)
        .and_then(|m| m.reported.as_ref())
        .is_some_and(Reported::serves_as_primary);
    if promoted {
        r.current = Some(target.into());
        r.completed = Some((Some(current.into()), target.into()));
    } else if let Some(lost_for) = i.lost_for {
        target_lost(i, current, target, lost_for, r);
    }
}

/// The instance being promoted is lost itself. Past the grace: back to the old primary
/// when it is intact (still serving, or demoted cleanly: it holds every committed
/// transaction, which a lagging replica may not), else the most advanced other ready
/// replica.
fn target_lost(i: &Input, current: &str, target: &str, lost_for: Duration, r: &mut Roles) {
    let grace = i.grace.as_secs();
    if let Some(old) = i.member(current).filter(|m| intact_old_primary(m)) {
        if lost_for >= i.grace {
            r.target = Some(old.name.clone());
            r.started = Some((Transition::Failover, target.into(), old.name.clone()));
        } else {
            r.waiting = Some(format!(
                "{target}, being promoted, is lost; {current} takes the primary role back after {grace}s unless it comes back"
            ));
        }
        return;
    }
    match failover_candidate(i.members, target) {
        Some(cand) if lost_for >= i.grace => {
            r.target = Some(cand.name.clone());
            r.started = Some((Transition::Failover, target.into(), cand.name.clone()));
        }
        Some(cand) => {
            r.waiting = Some(format!(
                "{target}, being promoted, is lost; promoting {} instead after {grace}s unless it comes back",
                cand.name
            ))
        }
        None => {
            r.waiting = Some(format!(
                "{target}, being promoted, is lost and no other ready replica can take over"
            ))
        }
    }
}

/// The primary is lost: past the grace, fenced, and the most advanced replica that can
/// take over is the target.
fn failover(i: &Input, current: &str, lost_for: Duration, r: &mut Roles) {
    let Some(cand) = failover_candidate(i.members, current) else {
        r.waiting = Some(format!(
            "primary {current} is lost and no ready replica can take over"
        ));
        return;
    };
    // A Pod gone from a leaving node is not made again there: nothing to wait for.
    let leaving = i.member(current).is_some_and(|m| m.leaving.is_some());
    if lost_for < i.grace && !leaving {
        r.waiting = Some(format!(
            "primary {current} is lost; failing over to {} after {}s unless it comes back",
            cand.name,
            i.grace.as_secs()
        ));
        return;
    }
    r.fence.push(current.into());
    r.target = Some(cand.name.clone());
    r.started = Some((Transition::Failover, current.into(), cand.name.clone()));
}

/// `spec.primary` names another instance: switched to once it is a ready replica on a
/// node that stays.
fn switchover(i: &Input, current: &str, wanted: &str, r: &mut Roles) {
    match i.member(wanted) {
        Some(Member {
            leaving: Some(why), ..
        }) => {
            r.waiting = Some(format!(
                "switchover to {wanted} waits: {why} (it is switched to once its node is back)"
            ))
        }
        Some(m) if m.promotable() => {
            r.target = Some(wanted.into());
            r.started = Some((Transition::Switchover, current.into(), wanted.into()));
        }
        Some(_) => {
            r.waiting = Some(format!(
                "switchover to {wanted} waits until it is a ready replica"
            ))
        }
        None => {
            r.waiting = Some(format!(
                "spec.primary names {wanted}, which is not an instance of this cluster"
            ))
        }
    }
}

/// A member running on a Ready node, its manager reporting `role` at `lsn` (tests).
#[cfg(test)]
pub fn test_member(name: &str, role: &str, ready: bool, lsn: &str) -> Member {
    Member {
        name: name.into(),
        pod: PodState::Running,
        node_ready: Some(true),
        reported: Some(Reported {
            role: serde_json::from_value(serde_json::json!(role)).unwrap(),
            running: true,
            ready,
            lsn: Some(lsn.into()),
            replay_lsn: (role == "replica").then(|| lsn.into()),
            ..Reported::default()
        }),
        fenced: false,
        leaving: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(role: &str, ready: bool, running: bool, lsn: &str) -> Reported {
        Reported {
            role: serde_json::from_value(serde_json::json!(role)).unwrap(),
            ready,
            running,
            lsn: Some(lsn.into()),
            replay_lsn: (role == "replica").then(|| lsn.into()),
            ..Reported::default()
        }
    }

    fn m(name: &str, pod: PodState, reported: Option<Reported>) -> Member {
        Member {
            name: name.into(),
            pod,
            node_ready: Some(true),
            reported,
            fenced: false,
            leaving: None,
        }
    }

    fn three() -> Vec<Member> {
        vec![
            m(
                "c-1",
                PodState::Running,
                Some(rep("primary", true, true, "0/900")),
            ),
            m(
                "c-2",
                PodState::Running,
                Some(rep("replica", true, true, "0/500")),
            ),
            m(
                "c-3",
                PodState::Running,
                Some(rep("replica", true, true, "0/700")),
            ),
        ]
    }

    fn input<'a>(
        members: &'a [Member],
        current: Option<&'a str>,
        target: Option<&'a str>,
    ) -> Input<'a> {
        Input {
            first: "c-1",
            current,
            target,
            wanted: None,
            members,
            lost_for: None,
            grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn bootstrap_makes_the_first_instance_primary() {
        let r = decide(&input(&[], None, None));
        assert_eq!(r.current.as_deref(), Some("c-1"));
        assert_eq!(r.target.as_deref(), Some("c-1"));
    }

    #[test]
    fn switchover_targets_a_ready_replica_then_completes_when_it_reports_primary() {
        let mut ms = three();
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.wanted = Some("c-2");
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-2"));
        assert_eq!(r.current.as_deref(), Some("c-1"));
        assert_eq!(
            r.started,
            Some((Transition::Switchover, "c-1".into(), "c-2".into()))
        );

        // Not yet promoted: nothing changes.
        let r = decide(&input(&ms, Some("c-1"), Some("c-2")));
        assert_eq!((r.current.as_deref(), r.completed), (Some("c-1"), None));
        ms[1].reported = Some(rep("primary", true, true, "0/a00"));
        let r = decide(&input(&ms, Some("c-1"), Some("c-2")));
        assert_eq!(r.current.as_deref(), Some("c-2"));
        assert_eq!(r.completed, Some((Some("c-1".into()), "c-2".into())));

        // A replica that is not ready is not switched to.
        let mut ms = three();
        ms[2].reported.as_mut().unwrap().ready = false;
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.wanted = Some("c-3");
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-1"));
        assert!(r.waiting.unwrap().contains("c-3"));
    }

    #[test]
    fn a_primary_on_a_leaving_node_is_switched_away_from_to_a_replica_that_stays() {
        let mut ms = three();
        ms[0].leaving = Some("node n-1 is cordoned".into());
        // The most advanced replica (c-3) on a node that stays.
        let r = decide(&input(&ms, Some("c-1"), Some("c-1")));
        assert_eq!(
            r.started,
            Some((Transition::Switchover, "c-1".into(), "c-3".into()))
        );
        assert_eq!(r.target.as_deref(), Some("c-3"));
        // spec.primary naming a replica that can take it wins over the most advanced; one
        // naming the leaving primary itself does not hold it there.
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.wanted = Some("c-2");
        assert_eq!(decide(&i).target.as_deref(), Some("c-2"));
        i.wanted = Some("c-1");
        assert_eq!(decide(&i).target.as_deref(), Some("c-3"));
        // Not to a replica leaving too, nor one not ready.
        ms[2].leaving = Some("node n-3 is tainted karpenter.sh/disrupted:NoSchedule".into());
        ms[1].reported.as_mut().unwrap().ready = false;
        let r = decide(&input(&ms, Some("c-1"), Some("c-1")));
        assert_eq!((r.target.as_deref(), r.started), (Some("c-1"), None));
        let why = r.waiting.unwrap();
        assert!(
            why.contains("node n-1 is cordoned") && why.contains("PodDisruptionBudget"),
            "{why}"
        );
        // Once c-2 is ready it takes over.
        ms[1].reported.as_mut().unwrap().ready = true;
        let r = decide(&input(&ms, Some("c-1"), Some("c-1")));
        assert_eq!(r.target.as_deref(), Some("c-2"));
    }

    #[test]
    fn spec_primary_naming_an_instance_on_a_leaving_node_waits_for_the_node() {
        let mut ms = three();
        ms[1].leaving = Some("node n-2 is cordoned".into());
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.wanted = Some("c-2");
        let r = decide(&i);
        assert_eq!((r.target.as_deref(), r.started), (Some("c-1"), None));
        assert!(r.waiting.unwrap().contains("node n-2 is cordoned"));
        // After a drain moved the primary away, spec.primary does not pull it back to the
        // leaving node; it does once the node is back.
        let r = decide(&Input {
            wanted: Some("c-2"),
            ..input(&ms, Some("c-3"), Some("c-3"))
        });
        assert_eq!(r.target.as_deref(), Some("c-3"));
        ms[1].leaving = None;
        let r = decide(&Input {
            wanted: Some("c-2"),
            ..input(&ms, Some("c-3"), Some("c-3"))
        });
        assert_eq!(r.target.as_deref(), Some("c-2"));
    }

    #[test]
    fn a_lost_primary_on_a_leaving_node_fails_over_without_the_grace() {
        let mut ms = three();
        ms[0].leaving = Some("node n-1 is cordoned".into());
        ms[0].pod = PodState::Absent;
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        // No grace: its Pod is not made again on a leaving node (evicted with no budget).
        i.lost_for = Some(Duration::from_secs(0));
        let r = decide(&i);
        assert_eq!(r.fence, ["c-1"]);
        assert_eq!(
            r.started,
            Some((Transition::Failover, "c-1".into(), "c-3".into()))
        );
    }

    #[test]
    fn failover_waits_for_the_grace_then_fences_and_picks_the_most_advanced_replica() {
        let mut ms = three();
        ms[0].pod = PodState::Absent;
        assert!(lost(&ms[0]));
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.lost_for = Some(Duration::from_secs(10));
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-1"));
        assert!(r.fence.is_empty());
        assert!(r.waiting.is_some());
        i.lost_for = Some(Duration::from_secs(31));
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-3"));
        assert_eq!(r.current.as_deref(), Some("c-1"));
        assert_eq!(r.fence, ["c-1"]);
        assert_eq!(
            r.started,
            Some((Transition::Failover, "c-1".into(), "c-3".into()))
        );

        // The replicas stopped streaming when the primary died (not ready): still running
        // in recovery, they can take over.
        for x in &mut ms[1..] {
            let r = x.reported.as_mut().unwrap();
            (r.ready, r.streaming) = (false, false);
        }
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.lost_for = Some(Duration::from_secs(31));
        assert_eq!(decide(&i).target.as_deref(), Some("c-3"));

        // No replica running (or its container down): nothing to do but wait.
        ms[1].reported.as_mut().unwrap().running = false;
        ms[2].pod = PodState::Down;
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.lost_for = Some(Duration::from_secs(300));
        let r = decide(&i);
        assert!(r.fence.is_empty());
        assert_eq!(r.target.as_deref(), Some("c-1"));
    }

    #[test]
    fn a_target_lost_during_the_change_is_replaced_after_the_grace() {
        let mut ms = three();
        ms[0].fenced = true;
        ms[0].pod = PodState::Absent;
        ms[2].pod = PodState::Down;
        ms[2].reported.as_mut().unwrap().running = false;
        let mut i = input(&ms, Some("c-1"), Some("c-3"));
        i.lost_for = Some(Duration::from_secs(5));
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-3"));
        assert!(r.waiting.unwrap().contains("c-2"));
        i.lost_for = Some(Duration::from_secs(30));
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-2"));
        assert_eq!(r.current.as_deref(), Some("c-1"));
        assert!(r.fence.is_empty(), "c-1 stays fenced, nobody else is");
        assert_eq!(
            r.started,
            Some((Transition::Failover, "c-3".into(), "c-2".into()))
        );
    }

    #[test]
    fn a_switchover_whose_target_is_lost_goes_back_to_the_intact_old_primary() {
        let mut ms = three();
        // c-1 demoted for a switchover to c-2, which then died before promoting.
        ms[0].reported = Some(Reported {
            demoted: true,
            ..rep("none", false, false, "0/900")
        });
        ms[1].pod = PodState::Down;
        ms[1].reported.as_mut().unwrap().running = false;
        let mut i = input(&ms, Some("c-1"), Some("c-2"));
        i.lost_for = Some(Duration::from_secs(5));
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-2"));
        assert!(
            r.waiting
                .unwrap()
                .contains("c-1 takes the primary role back")
        );
        i.lost_for = Some(Duration::from_secs(30));
        let r = decide(&i);
        assert_eq!(
            r.target.as_deref(),
            Some("c-1"),
            "back to the demoted primary, not c-3"
        );
        assert_eq!(r.current.as_deref(), Some("c-1"));
        assert!(r.fence.is_empty());
        assert_eq!(
            r.started,
            Some((Transition::Failover, "c-2".into(), "c-1".into()))
        );

        let lost = |ms: &[Member]| {
            let mut i = input(ms, Some("c-1"), Some("c-2"));
            i.lost_for = Some(Duration::from_secs(30));
            decide(&i).target
        };
        // Still serving (not demoted yet): the same, the switchover is called off.
        ms[0].reported = Some(rep("primary", true, true, "0/900"));
        assert_eq!(lost(&ms).as_deref(), Some("c-1"));

        // An old primary that is gone itself is not gone back to.
        ms[0].pod = PodState::Absent;
        assert_eq!(lost(&ms).as_deref(), Some("c-3"));
    }

    #[test]
    fn a_target_without_a_current_primary_becomes_it() {
        let r = decide(&input(&three(), None, Some("c-2")));
        assert_eq!(
            (r.current.as_deref(), r.target.as_deref()),
            (Some("c-2"), Some("c-2"))
        );
        assert_eq!((r.started, r.completed), (None, None));
    }

    #[test]
    fn a_primary_that_is_not_an_instance_is_not_switched_to() {
        let ms = three();
        let mut i = input(&ms, Some("c-1"), Some("c-1"));
        i.wanted = Some("c-9");
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-1"));
        assert_eq!(
            r.waiting.as_deref(),
            Some("spec.primary names c-9, which is not an instance of this cluster")
        );
        // Naming the current primary is nothing to do.
        i.wanted = Some("c-1");
        assert_eq!(decide(&i), decide(&input(&ms, Some("c-1"), Some("c-1"))));
    }

    #[test]
    fn a_lost_target_with_no_one_to_take_over_waits() {
        let mut ms = three();
        ms[0].fenced = true;
        for m in &mut ms[1..] {
            m.pod = PodState::Down;
        }
        let mut i = input(&ms, Some("c-1"), Some("c-3"));
        i.lost_for = Some(Duration::from_secs(300));
        let r = decide(&i);
        assert_eq!(r.target.as_deref(), Some("c-3"));
        assert_eq!(
            r.waiting.as_deref(),
            Some("c-3, being promoted, is lost and no other ready replica can take over")
        );
        assert_eq!(r.started, None);
    }

    #[test]
    fn what_counts_as_lost() {
        let mut p = m("c-1", PodState::Pending, None);
        assert!(!lost(&p), "a starting pod is not lost");
        p.reported = Some(rep("primary", false, false, "0/1"));
        assert!(lost(&p));
        p.reported.as_mut().unwrap().demoted = true;
        assert!(!lost(&p), "a demoted primary stopped on purpose");
        let mut p = m(
            "c-1",
            PodState::Running,
            Some(rep("primary", true, true, "0/1")),
        );
        assert!(!lost(&p));
        p.node_ready = Some(false);
        assert!(lost(&p));
        p.node_ready = None;
        p.pod = PodState::Down;
        assert!(lost(&p));
    }

    #[test]
    fn ties_pick_the_lowest_name_and_fenced_replicas_never_win() {
        let mut ms = three();
        ms[2].reported = Some(rep("replica", true, true, "0/500"));
        assert_eq!(failover_candidate(&ms, "c-1").unwrap().name, "c-2");
        ms[1].fenced = true;
        assert_eq!(failover_candidate(&ms, "c-1").unwrap().name, "c-3");
    }
}
