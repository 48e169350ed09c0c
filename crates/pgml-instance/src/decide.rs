//! What to do next, from what this instance sees of itself and of its cluster: the rules of
//! docs/design/pgmlcluster.md ("The instance manager's contract"), in their order, as a pure
//! function. The caller observes, calls [`decide`], carries out the one action, and looks
//! again.

use std::collections::BTreeMap;

use crate::report::{InstanceReport, Lsn, Role};

/// This instance's PostgreSQL, as found on disk and by asking it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Local {
    /// PGDATA holds a cluster (`PG_VERSION`).
    pub initialized: bool,
    /// A postmaster of this PGDATA runs.
    pub running: bool,
    /// `postmaster.pid` is there (whether or not its postmaster runs).
    pub pid_file: bool,
    pub standby_signal: bool,
    /// `recovery.signal` is there: archive recovery (a restore's replay) is under way.
    pub recovery_signal: bool,
    /// Why the restore of the cluster's database failed here (this manager saw it:
    /// a target never reached, a destination archive not empty); nothing more is tried.
    pub restore_failed: Option<String>,
    /// What PostgreSQL answered, when it runs and answers.
    pub sql: Option<Sql>,
    /// The final LSN when this instance stopped cleanly as a primary (a demotion, or a
    /// clean shutdown found at start-up) and has not started since.
    pub demoted_lsn: Option<Lsn>,
    /// PGDATA's own system identifier (`pg_controldata`), read while it is initialized and
    /// no postmaster runs; None when not read or unreadable.
    pub pgdata_system_identifier: Option<String>,
    /// Why PGDATA (or the WAL directory) is not on the storage it should be on (the pool's
    /// dataset not mounted there, say after a reboot); None when it is, or when nothing is
    /// expected.
    pub storage_problem: Option<String>,
    /// `PGDATA/pg_wal` as a start needs it (looked at while PGDATA is initialized and no
    /// postmaster runs).
    pub wal: WalState,
}

/// Where PGDATA's WAL is, against where it should be ([`crate::wal`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WalState {
    /// `pg_wal` is the link to this instance's WAL directory, or (without one) in PGDATA.
    #[default]
    Ready,
    /// `pg_wal` is to be made the link to the WAL directory (WAL moved there, a copy's
    /// link pointed here) before a start; what the next step is.
    Misplaced(String),
    /// PostgreSQL must not start on it: why (a link to WAL that is not on this instance).
    Problem(String),
}

/// What the running server answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sql {
    pub in_recovery: bool,
    pub current_lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub timeline: Option<u32>,
    pub streaming: bool,
    /// `pg_control_system().system_identifier`.
    pub system_identifier: Option<String>,
    /// WAL replay is paused (at a recovery target with `recovery_target_action = pause`).
    pub replay_paused: bool,
}

/// Another instance of the cluster, as its Pod shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Peer {
    /// The controller fenced it (`pgml.io/fenced: "true"` on its Pod).
    pub fenced: bool,
    /// Its manager's last report, if any.
    pub report: Option<InstanceReport>,
}

impl Peer {
    fn fenced(&self) -> bool {
        self.fenced || self.report.as_ref().is_some_and(|r| r.fenced)
    }

    /// Runs as a primary and nothing stops it: the one state in which no other instance may
    /// promote or start as primary.
    fn acting_primary(&self) -> bool {
        !self.fenced() && self.report.as_ref().is_some_and(|r| r.acting_primary())
    }
}

/// The cluster, as this instance reads it (PgmlCluster status and the cluster's Pods).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub me: String,
    /// Its own Pod carries `pgml.io/fenced: "true"`.
    pub fenced: bool,
    pub target_primary: Option<String>,
    pub current_primary: Option<String>,
    /// `status.instances[].name`.
    pub instances: Vec<String>,
    /// `spec.replicas.seedFrom: PgBasebackup`.
    pub seed_from_basebackup: bool,
    /// The application database (`bootstrap.initdb.database`, default `app`; not a rule's
    /// input: the primary makes it).
    pub app_database: String,
    /// `spec.replicas.maximumLagBytes` (not a rule's input: the readiness of a replica).
    pub maximum_lag_bytes: Option<u64>,
    /// `status.systemIdentifier`: the database this cluster holds, recorded by the
    /// controller once its primary ran. None: never bootstrapped (the only case where
    /// `initdb` is allowed).
    pub system_identifier: Option<String>,
    /// `spec.backups.pgbackrest.schedule` (not a rule's input: the primary's backups).
    pub backup_schedule: pgml_api::cluster::BackupSchedule,
    /// `bootstrap.pgbackrest` (and `recoveryTarget`): how the first instance restores the
    /// cluster's database from a repository; None for `initdb` or a snapshot alone.
    pub restore: Option<Restore>,
    /// Every other instance whose Pod exists, by name. An instance missing here is gone.
    pub peers: BTreeMap<String, Peer>,
}

/// A restore from a pgBackRest repository, as the spec asks it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restore {
    /// The source's stanza.
    pub stanza: String,
    /// `backupSet`: the set `pgbackrest restore --set` takes.
    pub backup_set: Option<String>,
    /// The base is `bootstrap.snapshot` (only WAL comes from the repository).
    pub on_snapshot: bool,
    pub target: Option<pgml_api::cluster::RecoveryTarget>,
}

impl View {
    /// Never bootstrapped, and this instance is to make the database from a repository.
    pub fn restores(&self) -> Option<&Restore> {
        self.restore
            .as_ref()
            .filter(|_| self.system_identifier.is_none() && self.meant_primary())
    }
}

impl View {
    fn is_target(&self) -> bool {
        self.target_primary.as_deref() == Some(self.me.as_str())
    }

    /// It is `targetPrimary` and no other instance is or was primary (`currentPrimary`
    /// unset or itself).
    pub fn meant_primary(&self) -> bool {
        self.is_target() && self.current_primary.as_deref().is_none_or(|c| c == self.me)
    }

    /// The instances a primary keeps a replication slot for: every other one in
    /// `status.instances` but the fenced (rebuilt from a snapshot, never resumed: a slot
    /// would hold WAL for it for ever).
    pub fn slot_holders(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter(|i| **i != self.me)
            .filter(|i| !self.peers.get(*i).is_some_and(Peer::fenced))
            .cloned()
            .collect()
    }

    /// Another instance that runs as primary, unfenced and not demoted.
    fn other_acting_primary(&self) -> Option<&str> {
        self.peers
            .iter()
            .find(|(_, p)| p.acting_primary())
            .map(|(n, _)| n.as_str())
    }

    /// The WAL position an acting primary last reported (what a replica is behind of).
    pub fn primary_lsn(&self) -> Option<crate::report::Lsn> {
        self.other_acting_primary()
            .and_then(|n| self.peers.get(n))
            .and_then(|p| p.report.as_ref())
            .and_then(|r| r.lsn.as_deref())
            .and_then(crate::report::Lsn::parse)
    }

    /// The address to stream from: an acting primary's, the target first, then the
    /// current primary, then any.
    pub fn primary_address(&self) -> Option<String> {
        let order = [
            self.target_primary.as_deref(),
            self.current_primary.as_deref(),
        ];
        let pick = |name: &str| {
            self.peers
                .get(name)
                .filter(|p| p.acting_primary())
                .and_then(|p| p.report.as_ref())
                .map(|r| r.address.clone())
                .filter(|a| !a.is_empty())
        };
        order
            .iter()
            .flatten()
            .filter(|n| **n != self.me)
            .find_map(|n| pick(n))
            .or_else(|| self.other_acting_primary().and_then(pick))
    }
}

/// How PostgreSQL is to be started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAs {
    /// Without `standby.signal` (a stray one is removed first).
    Primary,
    /// With `standby.signal`, `primary_conninfo` to this address (none known: empty, and
    /// set by a reload once a primary reports), the slot and `recovery_target_timeline`.
    Replica { primary: Option<String> },
    /// The first instance of a cluster never bootstrapped, on PGDATA restored from a
    /// snapshot (`standby.signal` stamped): a standby with no upstream and none of the
    /// source's replication slots, promoted once it answers (a new timeline).
    Restored,
    /// The first instance of a cluster never bootstrapped, on a base restored from a
    /// pgBackRest backup or a snapshot: archive recovery (`recovery.signal`, no
    /// `standby.signal`, none of the source's slots) with the source repository's
    /// `restore_command` and `bootstrap.recoveryTarget`, pausing there; promoted once
    /// paused (or promoted by PostgreSQL itself at the end of the archive, without a
    /// target).
    Recovery,
}

/// The one next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fenced and running: `pg_ctl stop -m immediate`.
    StopImmediate,
    Initdb,
    /// `pgbackrest restore` of `bootstrap.pgbackrest` into the empty PGDATA.
    RestoreBackup,
    Basebackup {
        from: String,
    },
    /// Make `PGDATA/pg_wal` the link to this instance's WAL directory (stopped, before a
    /// start).
    PlaceWal,
    Start {
        /// `postmaster.pid` is there but no postmaster of this PGDATA runs.
        remove_stale_pid: bool,
        /// Remove `standby.signal` first (only ever for [`StartAs::Primary`]).
        remove_standby_signal: bool,
        start_as: StartAs,
    },
    Promote,
    /// CHECKPOINT, stop fast, report the final LSN, write `standby.signal`.
    Demote,
    /// Running as a replica: keep `primary_conninfo` pointed at this primary (reload when
    /// it changes). `note` says what it waits for, if anything.
    Follow {
        primary: Option<String>,
        note: Option<String>,
    },
    /// Running as the primary: keep a slot per other instance.
    Primary,
    /// Nothing to do until something changes; why.
    Wait(String),
}

/// The next step for this instance (rules 1–6 of the contract, in order).
pub fn decide(view: &View, local: &Local) -> Action {
    // 1. Fenced: stop at once, never start.
    if view.fenced {
        return if local.running {
            Action::StopImmediate
        } else {
            Action::Wait("fenced: PostgreSQL stays stopped".into())
        };
    }
    // Nothing starts, initialises or copies a database on storage that is not PGDATA's own:
    // an empty folder on the root disk would become a new database, a wrong dataset
    // another instance's. A running server is left alone (its files are open).
    if !local.running
        && let Some(why) = &local.storage_problem
    {
        return Action::Wait(why.clone());
    }
    // 2. Empty PGDATA.
    if !local.initialized {
        if local.running {
            return Action::Wait("a postmaster runs on an empty PGDATA".into());
        }
        if view.meant_primary() {
            if let Some(other) = view.other_acting_primary() {
                return Action::Wait(format!("{other} runs as primary: no initdb"));
            }
            // A database was made once: an empty PGDATA now is storage that is missing
            // (a pool not imported after a reboot leaves an empty mount point), never a
            // reason to make a new, empty database that would take the clients' writes.
            if let Some(id) = &view.system_identifier {
                return Action::Wait(format!(
                    "PGDATA is empty but the cluster was bootstrapped (system identifier {id}): not running initdb; is the pool imported and mounted?"
                ));
            }
            if let Some(why) = &local.restore_failed {
                return Action::Wait(why.clone());
            }
            return match view.restores() {
                Some(r) if !r.on_snapshot => Action::RestoreBackup,
                // The snapshot's pool is restored by the controller: PGDATA empty means it
                // is not mounted yet, never a reason for initdb.
                Some(_) => Action::Wait(
                    "empty PGDATA: waiting for the pool restored from bootstrap.snapshot".into(),
                ),
                None => Action::Initdb,
            };
        }
        if view.seed_from_basebackup {
            return match view.primary_address() {
                Some(from) => Action::Basebackup { from },
                None => Action::Wait("empty PGDATA: waiting for a primary to copy".into()),
            };
        }
        return Action::Wait("empty PGDATA: waiting to be seeded from a snapshot".into());
    }
    // 3. Before any start.
    if !local.running {
        return start(view, local);
    }
    let Some(sql) = &local.sql else {
        return Action::Wait("PostgreSQL is starting".into());
    };
    if !sql.in_recovery {
        // 5. Demote when another is to be primary, once it streams from here (only WAL
        // sent before the stop reaches it: a target that is not connected could never
        // replay up to the final LSN, and would wait for ever); 6. else keep the slots.
        return match view.target_primary.as_deref() {
            Some(t) if t != view.me => {
                let streams = view
                    .peers
                    .get(t)
                    .and_then(|p| p.report.as_ref())
                    .is_some_and(|r| r.running && r.streaming && r.role == Role::Replica);
                if streams {
                    Action::Demote
                } else {
                    Action::Wait(format!(
                        "{t} is to be primary: waiting for it to stream before demoting"
                    ))
                }
            }
            _ => Action::Primary,
        };
    }
    // 4. Promote, once the old primary cannot write any more; a restore once its replay
    // reached the target (without one, PostgreSQL ends recovery itself).
    let primary = view.primary_address();
    if local.recovery_signal && view.restores().is_some() {
        let at = sql
            .replay_lsn
            .map(|l| l.to_string())
            .unwrap_or_else(|| "nothing yet".into());
        return match view.restores().and_then(|r| r.target.as_ref()) {
            Some(_) if sql.replay_paused => Action::Promote,
            Some(t) => Action::Wait(format!(
                "replaying the archive's WAL up to the recovery target {} (replayed {at})",
                t.describe()
            )),
            None => Action::Wait(format!(
                "replaying the archive's WAL to its end (replayed {at})"
            )),
        };
    }
    if view.is_target() {
        return match promotion_blocker(view, sql) {
            None => Action::Promote,
            Some(note) => Action::Follow {
                primary,
                note: Some(note),
            },
        };
    }
    Action::Follow {
        primary,
        note: None,
    }
}

fn start(view: &View, local: &Local) -> Action {
    if let Some(why) = foreign_pgdata(view, local) {
        return Action::Wait(why);
    }
    // WAL where the pool puts it before PostgreSQL writes any more of it; never a start
    // on a data directory whose WAL is not here.
    match &local.wal {
        WalState::Ready => {}
        WalState::Misplaced(_) => return Action::PlaceWal,
        WalState::Problem(why) => return Action::Wait(why.clone()),
    }
    let remove_stale_pid = local.pid_file;
    if view.meant_primary() {
        if let Some(other) = view.other_acting_primary() {
            return Action::Wait(format!(
                "{other} still runs as primary: not starting as primary"
            ));
        }
        if view.system_identifier.is_none()
            && let Some(why) = &local.restore_failed
        {
            return Action::Wait(why.clone());
        }
        // Never bootstrapped, restoring from a repository, on the base it restored (or a
        // snapshot's, stamped as a standby) or in the middle of its replay: archive
        // recovery to the target.
        if view.restores().is_some()
            && (local.recovery_signal || local.standby_signal)
            && local.demoted_lsn.is_none()
        {
            return Action::Start {
                remove_stale_pid,
                remove_standby_signal: false,
                start_as: StartAs::Recovery,
            };
        }
        // Never bootstrapped, and PGDATA is a restored copy stamped as a standby: the
        // database of `bootstrap.snapshot`. It replays what it has, then rule 4 promotes
        // it; started as primary instead, it would carry on the source's timeline.
        if view.system_identifier.is_none() && local.standby_signal && local.demoted_lsn.is_none() {
            return Action::Start {
                remove_stale_pid,
                remove_standby_signal: false,
                start_as: StartAs::Restored,
            };
        }
        return Action::Start {
            remove_stale_pid,
            remove_standby_signal: local.standby_signal,
            start_as: StartAs::Primary,
        };
    }
    let primary = view.primary_address();
    if local.demoted_lsn.is_some() && primary.is_none() {
        return Action::Wait(format!(
            "demoted: waiting for {} to report role primary",
            view.target_primary.as_deref().unwrap_or("a new primary")
        ));
    }
    Action::Start {
        remove_stale_pid,
        remove_standby_signal: false,
        start_as: StartAs::Replica { primary },
    }
}

/// Why this PGDATA must not be started (None: it may): the cluster records its database's
/// identifier and PGDATA's is another (a data directory of another cluster, or one made
/// again by `initdb`), or cannot be read. Before bootstrap there is nothing to compare.
fn foreign_pgdata(view: &View, local: &Local) -> Option<String> {
    let want = view.system_identifier.as_deref()?;
    match local.pgdata_system_identifier.as_deref() {
        Some(have) if have == want => None,
        Some(have) => Some(format!(
            "PGDATA holds another database (system identifier {have}, the cluster's is {want}): a foreign or re-initialized data directory; not starting it"
        )),
        None => Some(format!(
            "PGDATA's system identifier could not be read (pg_controldata): not starting it before it is known to be the cluster's ({want})"
        )),
    }
}

/// Why this standby may not promote yet (None: it may). Never while another instance
/// acts as primary; the old primary must have demoted (its final LSN replayed here), been
/// fenced, or be gone.
fn promotion_blocker(view: &View, sql: &Sql) -> Option<String> {
    if let Some(other) = view.other_acting_primary() {
        return Some(format!(
            "{other} runs as primary: waiting for it to demote or be fenced"
        ));
    }
    let old = view.current_primary.as_deref().filter(|c| *c != view.me)?;
    let peer = view.peers.get(old)?; // gone
    if peer.fenced() {
        return None;
    }
    let Some(report) = peer.report.as_ref().filter(|r| r.demoted) else {
        return Some(format!(
            "waiting for {old} to demote or be fenced before promoting"
        ));
    };
    let Some(last) = report.lsn.as_deref().and_then(Lsn::parse) else {
        return Some(format!("{old} demoted without a final LSN"));
    };
    // The final LSN is where the shutdown checkpoint record starts: replayed once replay
    // has gone past it.
    match sql.replay_lsn {
        Some(r) if r > last => None,
        r => Some(format!(
            "replaying {old}'s WAL up to its final LSN {last} (at {})",
            r.map(|l| l.to_string()).unwrap_or_else(|| "nothing".into())
        )),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
