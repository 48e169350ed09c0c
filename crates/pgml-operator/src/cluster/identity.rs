//! The database's identity: `status.systemIdentifier`, PostgreSQL's system identifier of
//! the cluster's database, recorded once from the primary's report and never changed nor
//! removed. The instance managers read it: unset, the cluster was never bootstrapped and
//! the first primary may run `initdb`; set, an empty PGDATA (a pool not imported after a
//! reboot leaves an empty mount point) is missing storage, never a reason to make a new
//! database, and a PGDATA holding another identifier is not started. Pure.
//!
//! Crash safety. A client writes to the primary through the `-rw` Service, which selects
//! the Pod labelled `pgml.io/role: primary`. A write accepted before the identifier is
//! durable could be lost for good: the node reboots, PGDATA comes back empty, and with no
//! identifier recorded the manager would run `initdb` again. So the primary's Pod gets the
//! label only once the identifier is in the stored status ([`routable`]), judged from the
//! status the reconcile read (what the apiserver had), never from the one it is about to
//! write; labels are applied before the status in a reconcile, so the write that records
//! the identifier lands, at the latest, one reconcile before the label (the status write
//! wakes that reconcile). A node lost in between loses a database no client could write
//! to through the Services. The status write itself never drops a recorded identifier:
//! [`to_record`] keeps a recorded one whatever the reports say, and the commit reads the
//! stored one again when the status it writes has none (its copy may be older than its own
//! last write).

use pgml_api::cluster::{ClusterPhase, PgmlClusterStatus};
use pgml_api::instance::is_system_identifier;

use super::roles::Member;

/// The identifier `status.systemIdentifier` is to hold: the recorded one, for ever; else
/// the one the primary (`current`) reports while it runs as primary, not fenced; else
/// none yet. A replica's report is never used (the primary's is the database's), nor a
/// value that is not a system identifier.
pub fn to_record(
    recorded: Option<&str>,
    current: Option<&str>,
    members: &[Member],
) -> Option<String> {
    if let Some(id) = recorded {
        return Some(id.to_string());
    }
    let primary = members.iter().find(|m| Some(m.name.as_str()) == current)?;
    if primary.fenced {
        return None;
    }
    let report = primary.reported.as_ref().filter(|r| r.acting_primary())?;
    report
        .system_identifier
        .clone()
        .filter(|id| is_system_identifier(id))
}

/// Whether the primary's Pod may carry `pgml.io/role: primary` (the `-rw` Service), from
/// the stored status: its database's identifier is recorded. Also a cluster that served
/// before the field existed (its phase says so, and its managers, which predate it, never
/// report one): its primary keeps being reachable.
pub fn routable(observed: &PgmlClusterStatus) -> bool {
    observed.system_identifier.is_some() || ever_served(observed.phase)
}

/// The cluster has served: a primary was ready at some point.
pub fn ever_served(phase: Option<ClusterPhase>) -> bool {
    use ClusterPhase as P;
    matches!(
        phase,
        Some(P::Healthy | P::Degraded | P::Scaling | P::Switchover | P::Failover | P::Upgrading)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::reported::Reported;
    use crate::cluster::roles::PodState;
    use pgml_api::instance::Role;

    const ID: &str = "7318791534227411232";

    fn member(name: &str, role: Role, running: bool, id: Option<&str>) -> Member {
        Member {
            name: name.into(),
            pod: PodState::Running,
            node_ready: Some(true),
            reported: Some(Reported {
                role,
                running,
                ready: running,
                system_identifier: id.map(Into::into),
                ..Reported::default()
            }),
            fenced: false,
            leaving: None,
        }
    }

    #[test]
    fn records_the_running_primarys_identifier() {
        let ms = [
            member("c-1", Role::Primary, true, Some(ID)),
            member("c-2", Role::Replica, true, Some(ID)),
        ];
        assert_eq!(to_record(None, Some("c-1"), &ms).as_deref(), Some(ID));
    }

    #[test]
    fn never_overwrites_a_recorded_identifier() {
        let other = "7318791534227411999";
        let ms = [member("c-1", Role::Primary, true, Some(other))];
        assert_eq!(to_record(Some(ID), Some("c-1"), &ms).as_deref(), Some(ID));
        // Nor forgets it when nothing reports one.
        assert_eq!(to_record(Some(ID), None, &[]).as_deref(), Some(ID));
        let stopped = [member("c-1", Role::None, false, None)];
        assert_eq!(
            to_record(Some(ID), Some("c-1"), &stopped).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn records_nothing_but_a_running_unfenced_primarys_valid_identifier() {
        // Not running yet, or stopped.
        let stopped = [member("c-1", Role::None, false, None)];
        assert_eq!(to_record(None, Some("c-1"), &stopped), None);
        // Not the primary the controller names.
        let ms = [
            member("c-1", Role::None, false, None),
            member("c-2", Role::Primary, true, Some(ID)),
        ];
        assert_eq!(to_record(None, Some("c-1"), &ms), None);
        assert_eq!(to_record(None, None, &ms), None);
        // A replica's.
        let replica = [member("c-1", Role::Replica, true, Some(ID))];
        assert_eq!(to_record(None, Some("c-1"), &replica), None);
        // Fenced (by the controller, or as it reports), or demoted.
        let mut fenced = member("c-1", Role::Primary, true, Some(ID));
        fenced.fenced = true;
        assert_eq!(to_record(None, Some("c-1"), &[fenced]), None);
        let mut demoted = member("c-1", Role::Primary, true, Some(ID));
        demoted.reported.as_mut().unwrap().demoted = true;
        assert_eq!(to_record(None, Some("c-1"), &[demoted]), None);
        // An older manager that reports none, or a value that is no identifier.
        let old = [member("c-1", Role::Primary, true, None)];
        assert_eq!(to_record(None, Some("c-1"), &old), None);
        let junk = [member("c-1", Role::Primary, true, Some("x; DROP"))];
        assert_eq!(to_record(None, Some("c-1"), &junk), None);
    }

    #[test]
    fn the_primary_is_routed_only_once_the_identifier_is_stored() {
        let mut s = PgmlClusterStatus {
            current_primary: Some("c-1".into()),
            target_primary: Some("c-1".into()),
            phase: Some(ClusterPhase::Creating),
            ..Default::default()
        };
        assert!(!routable(&s));
        s.phase = None;
        assert!(!routable(&s));
        s.system_identifier = Some(ID.into());
        assert!(routable(&s));
        // A cluster that served before the field existed keeps its primary reachable.
        let legacy = PgmlClusterStatus {
            phase: Some(ClusterPhase::Degraded),
            ..Default::default()
        };
        assert!(routable(&legacy));
    }
}
