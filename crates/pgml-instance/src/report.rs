//! What an instance reports in its own Pod's annotation `pgml.io/instance-status`, read by
//! the controller and by the other instances' managers.

use serde::{Deserialize, Serialize};

use crate::decide::Local;

/// The Pod annotation this process writes (and only this one).
pub const STATUS_ANNOTATION: &str = "pgml.io/instance-status";
/// Set to `"true"` on an instance's Pod by the controller: stop PostgreSQL, never start it.
pub const FENCED_ANNOTATION: &str = "pgml.io/fenced";
/// The label that selects every Pod of a cluster.
pub const CLUSTER_LABEL: &str = "pgml.io/cluster";

/// What PostgreSQL is doing on an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Running and accepting writes (not in recovery).
    Primary,
    /// Running in recovery (a standby).
    Replica,
    /// Not running, or not answering yet.
    #[default]
    None,
}

/// The annotation's JSON.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub role: Role,
    /// A postmaster of this PGDATA runs.
    pub running: bool,
    /// Primary: accepts writes. Replica: streams from the primary.
    pub ready: bool,
    /// `pg_current_wal_lsn()` on a primary, the replay LSN on a replica; once `demoted`,
    /// the final LSN (the shutdown checkpoint) a new primary must have replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// The WAL receiver streams (`pg_stat_wal_receiver.status = streaming`).
    pub streaming: bool,
    /// `host:port` other instances replicate from.
    pub address: String,
    pub standby_signal: bool,
    pub fenced: bool,
    /// Stopped cleanly as a primary (switchover) and will not start as one again.
    pub demoted: bool,
    /// RFC 3339 time of this report.
    #[serde(default)]
    pub updated: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl InstanceReport {
    /// The same report but for its time stamp and WAL positions: what decides whether it
    /// must be rewritten now (positions move at every look on a busy primary; they go out
    /// with the periodic rewrite, or with any other change such as `demoted`).
    pub fn same_as(&self, other: &InstanceReport) -> bool {
        let strip = |r: &InstanceReport| InstanceReport {
            updated: String::new(),
            lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            ..r.clone()
        };
        strip(self) == strip(other)
    }

    /// Runs as a primary, as far as its report says.
    pub fn acting_primary(&self) -> bool {
        self.role == Role::Primary && self.running && !self.fenced && !self.demoted
    }
}

/// The report for what was just observed. `role` is what the running server says;
/// `ready` = a primary answering, or a replica streaming; `lsn` = written on a primary,
/// replayed on a replica, the final one once demoted (stopped cleanly as a primary).
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

    #[test]
    fn report_json_is_camel_case_and_round_trips() {
        let r = InstanceReport {
            role: Role::Replica,
            running: true,
            replay_lsn: Some("0/5000000".into()),
            standby_signal: true,
            address: "10.0.0.5:5432".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["role"], "replica");
        assert_eq!(v["replayLsn"], "0/5000000");
        assert_eq!(v["standbySignal"], true);
        assert!(v.get("lsn").is_none());
        let back: InstanceReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_time_stamp_or_positions_alone_are_no_change() {
        let a = InstanceReport {
            updated: "2026-01-01T00:00:00Z".into(),
            lsn: Some("0/1".into()),
            ..Default::default()
        };
        let mut b = a.clone();
        b.updated = "2026-01-01T00:00:10Z".into();
        b.lsn = Some("0/2".into());
        b.replay_lsn = Some("0/2".into());
        assert!(a.same_as(&b));
        b.demoted = true;
        assert!(!a.same_as(&b));
        b.demoted = false;
        b.ready = true;
        assert!(!a.same_as(&b));
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
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = build_for(&primary);
        assert_eq!((r.role, r.ready, r.running), (Role::Primary, true, true));
        assert_eq!((r.lsn.as_deref(), r.timeline), (Some("0/5000000"), Some(2)));
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
            ..primary.clone()
        };
        assert_eq!(build_for(&stopped).role, Role::None);
    }

    #[test]
    fn slot_names() {
        assert_eq!(slot_name("main-2"), "main_2");
    }
}
