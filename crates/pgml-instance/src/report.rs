//! What an instance reports in its own Pod's annotation `pgml.io/instance-status`, read by
//! the controller and by the other instances' managers. The type is `pgml_api::instance`'s,
//! shared with the controller; here is how this process fills it in.

pub use pgml_api::instance::{
    CLUSTER_LABEL, FENCED_ANNOTATION, InstanceReport, Role, STATUS_ANNOTATION,
};

use crate::decide::Local;

/// The report for what was just observed. `role` is what the running server says;
/// `ready` = a primary answering, or a replica streaming; `lsn` = written on a primary,
/// replayed on a replica, the final one once demoted (stopped cleanly as a primary);
/// `systemIdentifier` = the running server's (absent when it is not running or not
/// answering: PGDATA's own is never reported, only what a server that runs says).
pub fn build(
    local: &Local,
    address: &str,
    fenced: bool,
    message: String,
    updated: String,
) -> InstanceReport {
    let sql = local.sql.as_ref().filter(|_| local.running);
    let role = match sql {
        Some(s) if s.in_recovery => Role::Replica,
        Some(_) => Role::Primary,
        None => Role::None,
    };
    let demoted = !local.running && local.demoted_lsn.is_some();
    let lsn = match (role, sql) {
        (Role::Primary, Some(s)) => s.current_lsn,
        (Role::Replica, Some(s)) => s.replay_lsn,
        _ if demoted => local.demoted_lsn,
        _ => None,
    };
    let fmt = |l: Option<Lsn>| l.map(|l| l.to_string());
    InstanceReport {
        role,
        running: local.running,
        ready: match role {
            Role::Primary => true,
            Role::Replica => sql.is_some_and(|s| s.streaming),
            Role::None => false,
        },
        lsn: fmt(lsn),
        receive_lsn: fmt(sql.and_then(|s| s.receive_lsn)),
        replay_lsn: fmt(sql.and_then(|s| s.replay_lsn)),
        timeline: sql.and_then(|s| s.timeline),
        streaming: sql.is_some_and(|s| s.streaming),
        address: address.to_string(),
        standby_signal: local.standby_signal,
        fenced,
        demoted,
        updated,
        message,
        archiver: None,
        last_backup: None,
        system_identifier: sql.and_then(|s| s.system_identifier.clone()),
        restore: None,
        app: None,
        pending_restart: Vec::new(),
    }
}

/// A WAL position (`X/Y` in hexadecimal), comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return None;
        }
        Some(Lsn((hi << 32) | lo))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The replication slot an instance streams through on the primary: its name with `-`
/// turned into `_` (slot names allow only lowercase letters, digits and `_`).
pub fn slot_name(instance: &str) -> String {
    instance.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses_compares_and_prints() {
        let a = Lsn::parse("0/3000060").unwrap();
        let b = Lsn::parse("1/0").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "0/3000060");
        assert_eq!(b.0, 1 << 32);
        assert_eq!(Lsn::parse("garbage"), None);
        assert_eq!(Lsn::parse("1/"), None);
        assert_eq!(Lsn::parse("100000000/0"), None);
    }

    use crate::decide::Sql;

    fn build_for(local: &Local) -> InstanceReport {
        build(local, "10.0.0.1:5432", false, String::new(), "t".into())
    }

    #[test]
    fn reports_a_primary_a_replica_a_demoted_and_a_stopped_instance() {
        let primary = Local {
            initialized: true,
            running: true,
            sql: Some(Sql {
                in_recovery: false,
                current_lsn: Lsn::parse("0/5000000"),
                timeline: Some(2),
                system_identifier: Some("7318791534227411232".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = build_for(&primary);
        assert_eq!((r.role, r.ready, r.running), (Role::Primary, true, true));
        assert_eq!((r.lsn.as_deref(), r.timeline), (Some("0/5000000"), Some(2)));
        assert_eq!(r.system_identifier.as_deref(), Some("7318791534227411232"));
        assert!(r.acting_primary());

        let mut replica = Local {
            initialized: true,
            running: true,
            standby_signal: true,
            sql: Some(Sql {
                in_recovery: true,
                receive_lsn: Lsn::parse("0/4000100"),
                replay_lsn: Lsn::parse("0/4000000"),
                streaming: false,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = build_for(&replica);
        assert_eq!(
            (r.role, r.ready),
            (Role::Replica, false),
            "not streaming: not ready"
        );
        assert_eq!(r.lsn.as_deref(), Some("0/4000000"));
        assert_eq!(r.receive_lsn.as_deref(), Some("0/4000100"));
        assert!(r.standby_signal);
        replica.sql.as_mut().unwrap().streaming = true;
        let r = build_for(&replica);
        assert!(r.ready && r.streaming);

        let demoted = Local {
            initialized: true,
            standby_signal: true,
            demoted_lsn: Lsn::parse("0/6000028"),
            ..Default::default()
        };
        let r = build_for(&demoted);
        assert_eq!((r.role, r.running, r.demoted), (Role::None, false, true));
        assert_eq!(r.lsn.as_deref(), Some("0/6000028"));
        assert!(!r.acting_primary());

        // Running but not answering yet: no role, not ready; a stale answer is ignored.
        let starting = Local {
            running: true,
            ..Default::default()
        };
        let r = build_for(&starting);
        assert_eq!((r.role, r.ready, r.running), (Role::None, false, true));
        let stopped = Local {
            running: false,
            pgdata_system_identifier: Some("7318791534227411232".into()),
            ..primary.clone()
        };
        let r = build_for(&stopped);
        assert_eq!(r.role, Role::None);
        assert_eq!(
            r.system_identifier, None,
            "only a running server's identifier is reported"
        );
    }

    #[test]
    fn slot_names() {
        assert_eq!(slot_name("main-2"), "main_2");
    }
}
