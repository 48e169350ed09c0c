use super::*;
use crate::report::Role;

fn view(me: &str, target: Option<&str>, current: Option<&str>) -> View {
    View {
        me: me.into(),
        target_primary: target.map(Into::into),
        current_primary: current.map(Into::into),
        instances: vec!["c-1".into(), "c-2".into()],
        ..Default::default()
    }
}

fn report(role: Role, running: bool, address: &str) -> InstanceReport {
    InstanceReport {
        role,
        running,
        address: address.into(),
        ..Default::default()
    }
}

fn with_peer(mut v: View, name: &str, fenced: bool, r: Option<InstanceReport>) -> View {
    v.peers.insert(name.into(), Peer { fenced, report: r });
    v
}

fn initialized() -> Local {
    Local {
        initialized: true,
        ..Default::default()
    }
}

fn standby(replay: &str) -> Local {
    Local {
        initialized: true,
        running: true,
        pid_file: true,
        standby_signal: true,
        sql: Some(Sql {
            in_recovery: true,
            replay_lsn: Lsn::parse(replay),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn primary_running() -> Local {
    Local {
        initialized: true,
        running: true,
        pid_file: true,
        sql: Some(Sql {
            in_recovery: false,
            current_lsn: Lsn::parse("0/5000000"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn fenced_stops_at_once_and_never_starts() {
    let mut v = view("c-1", Some("c-1"), Some("c-1"));
    v.fenced = true;
    assert_eq!(decide(&v, &primary_running()), Action::StopImmediate);
    assert!(matches!(decide(&v, &initialized()), Action::Wait(_)));
    assert!(matches!(decide(&v, &Local::default()), Action::Wait(_)));
}

#[test]
fn initdb_only_for_the_bootstrap_primary() {
    // No system identifier in status: the cluster was never bootstrapped (currentPrimary
    // is named before its first server ran).
    let empty = Local::default();
    assert_eq!(
        decide(&view("c-1", Some("c-1"), None), &empty),
        Action::Initdb
    );
    assert_eq!(
        decide(&view("c-1", Some("c-1"), Some("c-1")), &empty),
        Action::Initdb
    );
    // Someone else has been primary: never a new cluster beside theirs.
    assert!(matches!(
        decide(&view("c-1", Some("c-1"), Some("c-2")), &empty),
        Action::Wait(_)
    ));
    // Not the target: wait for a snapshot.
    assert!(matches!(
        decide(&view("c-2", Some("c-1"), Some("c-1")), &empty),
        Action::Wait(_)
    ));
    assert!(matches!(
        decide(&view("c-2", None, None), &empty),
        Action::Wait(_)
    ));
}

#[test]
fn basebackup_when_asked_for_and_a_primary_reports() {
    let mut v = view("c-2", Some("c-1"), Some("c-1"));
    v.seed_from_basebackup = true;
    assert!(matches!(decide(&v, &Local::default()), Action::Wait(_)));
    let v = with_peer(
        v,
        "c-1",
        false,
        Some(report(Role::Primary, true, "10.0.0.1:5432")),
    );
    assert_eq!(
        decide(&v, &Local::default()),
        Action::Basebackup {
            from: "10.0.0.1:5432".into()
        }
    );
}

#[test]
fn meant_primary_removes_a_stray_standby_signal_and_a_stale_pid() {
    // A bootstrapped cluster: its primary's PGDATA, with a snapshot's stamp left behind.
    let local = Local {
        initialized: true,
        pid_file: true,
        standby_signal: true,
        pgdata_system_identifier: Some("7318".into()),
        ..Default::default()
    };
    let mut v = view("c-1", Some("c-1"), Some("c-1"));
    v.system_identifier = Some("7318".into());
    assert_eq!(
        decide(&v, &local),
        Action::Start {
            remove_stale_pid: true,
            remove_standby_signal: true,
            start_as: StartAs::Primary
        }
    );
}

/// `bootstrap.snapshot`: the first instance of a cluster never bootstrapped, on a restored
/// copy stamped as a standby, starts as that standby (not as primary on the source's
/// timeline), and is promoted once it answers; an empty PGDATA there still runs initdb,
/// and a copy without the stamp starts as primary as before.
#[test]
fn a_restored_copy_starts_as_a_standby_and_is_promoted_once_it_answers() {
    let v = view("c-1", Some("c-1"), None);
    let restored = Local {
        initialized: true,
        standby_signal: true,
        pgdata_system_identifier: Some("7318".into()),
        ..Default::default()
    };
    assert_eq!(
        decide(&v, &restored),
        Action::Start {
            remove_stale_pid: false,
            remove_standby_signal: false,
            start_as: StartAs::Restored
        }
    );
    // Running and answering (consistent): promoted; nothing else acts as primary.
    assert_eq!(decide(&v, &standby("0/3000000")), Action::Promote);
    // Not while another instance acts as primary.
    let busy = with_peer(
        v.clone(),
        "c-2",
        false,
        Some(InstanceReport {
            role: Role::Primary,
            running: true,
            address: "10.0.0.2".into(),
            ..Default::default()
        }),
    );
    assert!(matches!(decide(&busy, &restored), Action::Wait(_)));
    // Without the stamp: as before, a primary.
    let unstamped = Local {
        standby_signal: false,
        ..restored.clone()
    };
    assert!(matches!(
        decide(&v, &unstamped),
        Action::Start {
            start_as: StartAs::Primary,
            ..
        }
    ));
    assert_eq!(decide(&v, &Local::default()), Action::Initdb);
    // Bootstrapped since (the identifier recorded): a stray stamp, started as primary.
    let mut done = v.clone();
    done.system_identifier = Some("7318".into());
    assert!(matches!(
        decide(&done, &restored),
        Action::Start {
            start_as: StartAs::Primary,
            remove_standby_signal: true,
            ..
        }
    ));
}

#[test]
fn standby_signal_is_kept_unless_meant_to_be_primary() {
    let local = Local {
        initialized: true,
        standby_signal: true,
        ..Default::default()
    };
    // A replica, a target whose old primary is not out of the way yet, no target at all.
    for v in [
        view("c-2", Some("c-1"), Some("c-1")),
        view("c-2", Some("c-2"), Some("c-1")),
        view("c-2", None, None),
    ] {
        match decide(&v, &local) {
            Action::Start {
                remove_standby_signal,
                start_as,
                ..
            } => {
                assert!(!remove_standby_signal, "{v:?}");
                assert!(matches!(start_as, StartAs::Replica { .. }), "{v:?}");
            }
            other => panic!("{v:?}: {other:?}"),
        }
    }
}

#[test]
fn stale_pid_removed_only_when_no_postmaster_runs() {
    // Running: whatever happens next, nothing is started, so the pid file is never touched.
    for (v, local) in [
        (view("c-1", Some("c-1"), Some("c-1")), primary_running()),
        (view("c-2", Some("c-1"), Some("c-1")), standby("0/1")),
        (
            view("c-1", Some("c-1"), Some("c-1")),
            Local {
                sql: None,
                ..primary_running()
            },
        ),
    ] {
        assert!(
            !matches!(decide(&v, &local), Action::Start { .. }),
            "{v:?} {local:?}"
        );
    }
    // Not running, no pid file: nothing to remove.
    match decide(&view("c-2", Some("c-1"), Some("c-1")), &initialized()) {
        Action::Start {
            remove_stale_pid, ..
        } => assert!(!remove_stale_pid),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_replica_starts_following_the_reported_primary() {
    let v = with_peer(
        view("c-2", Some("c-1"), Some("c-1")),
        "c-1",
        false,
        Some(report(Role::Primary, true, "127.0.0.1:5500")),
    );
    assert_eq!(
        decide(&v, &initialized()),
        Action::Start {
            remove_stale_pid: false,
            remove_standby_signal: false,
            start_as: StartAs::Replica {
                primary: Some("127.0.0.1:5500".into())
            }
        }
    );
    assert_eq!(
        decide(&v, &standby("0/1")),
        Action::Follow {
            primary: Some("127.0.0.1:5500".into()),
            note: None
        }
    );
}

#[test]
fn never_two_primaries_a_replica_waits_while_the_old_primary_runs() {
    let running_old = with_peer(
        view("c-2", Some("c-2"), Some("c-1")),
        "c-1",
        false,
        Some(report(Role::Primary, true, "127.0.0.1:5500")),
    );
    assert!(matches!(
        decide(&running_old, &standby("9/0")),
        Action::Follow { note: Some(_), .. }
    ));
    // Even when currentPrimary names nobody, an acting primary elsewhere blocks it.
    let unnamed = with_peer(
        view("c-2", Some("c-2"), None),
        "c-1",
        false,
        Some(report(Role::Primary, true, "127.0.0.1:5500")),
    );
    assert!(matches!(
        decide(&unnamed, &standby("9/0")),
        Action::Follow { note: Some(_), .. }
    ));
    // Nor does it start as primary, nor initdb, beside one.
    let stopped = Local {
        initialized: true,
        ..Default::default()
    };
    assert!(matches!(decide(&unnamed, &stopped), Action::Wait(_)));
    assert!(matches!(
        decide(&unnamed, &Local::default()),
        Action::Wait(_)
    ));
    // The old primary stopped but said nothing (a crash): wait for the controller to fence.
    let silent = with_peer(
        view("c-2", Some("c-2"), Some("c-1")),
        "c-1",
        false,
        Some(report(Role::None, false, "127.0.0.1:5500")),
    );
    assert!(matches!(
        decide(&silent, &standby("9/0")),
        Action::Follow { note: Some(_), .. }
    ));
    let no_report = with_peer(view("c-2", Some("c-2"), Some("c-1")), "c-1", false, None);
    assert!(matches!(
        decide(&no_report, &standby("9/0")),
        Action::Follow { note: Some(_), .. }
    ));
}

#[test]
fn switchover_promotes_once_the_final_lsn_is_replayed() {
    let mut demoted = report(Role::None, false, "127.0.0.1:5500");
    demoted.demoted = true;
    demoted.lsn = Some("0/6000028".into());
    let v = with_peer(
        view("c-2", Some("c-2"), Some("c-1")),
        "c-1",
        false,
        Some(demoted.clone()),
    );
    assert!(matches!(
        decide(&v, &standby("0/5FFFFF0")),
        Action::Follow { note: Some(_), .. }
    ));
    // Replay at the start of the checkpoint record has not replayed it yet.
    assert!(matches!(
        decide(&v, &standby("0/6000028")),
        Action::Follow { note: Some(_), .. }
    ));
    assert_eq!(decide(&v, &standby("0/60000A0")), Action::Promote);
    // Demoted without a final LSN proves nothing.
    demoted.lsn = None;
    let v = with_peer(
        view("c-2", Some("c-2"), Some("c-1")),
        "c-1",
        false,
        Some(demoted),
    );
    assert!(matches!(
        decide(&v, &standby("9/0")),
        Action::Follow { note: Some(_), .. }
    ));
}

#[test]
fn failover_promotes_when_the_old_primary_is_fenced_or_gone() {
    // Fenced by annotation while its stale report still says running primary.
    let fenced = with_peer(
        view("c-2", Some("c-2"), Some("c-1")),
        "c-1",
        true,
        Some(report(Role::Primary, true, "127.0.0.1:5500")),
    );
    assert_eq!(decide(&fenced, &standby("0/1")), Action::Promote);
    // Its Pod is gone.
    let gone = view("c-2", Some("c-2"), Some("c-1"));
    assert_eq!(decide(&gone, &standby("0/1")), Action::Promote);
}

#[test]
fn only_the_target_promotes() {
    let gone = view("c-2", Some("c-3"), Some("c-1"));
    assert!(matches!(
        decide(&gone, &standby("0/1")),
        Action::Follow { note: None, .. }
    ));
}

#[test]
fn demote_when_another_is_the_target_and_streams() {
    let mut streaming = report(Role::Replica, true, "127.0.0.1:5501");
    streaming.streaming = true;
    let v = with_peer(
        view("c-1", Some("c-2"), Some("c-1")),
        "c-2",
        false,
        Some(streaming.clone()),
    );
    assert_eq!(decide(&v, &primary_running()), Action::Demote);
    // Not connected (or not reporting, or gone): it could never get the final WAL.
    streaming.streaming = false;
    for v in [
        with_peer(
            view("c-1", Some("c-2"), Some("c-1")),
            "c-2",
            false,
            Some(streaming),
        ),
        with_peer(view("c-1", Some("c-2"), Some("c-1")), "c-2", false, None),
        view("c-1", Some("c-2"), Some("c-1")),
    ] {
        assert!(
            matches!(decide(&v, &primary_running()), Action::Wait(_)),
            "{v:?}"
        );
    }
    assert_eq!(
        decide(&view("c-1", Some("c-1"), Some("c-1")), &primary_running()),
        Action::Primary
    );
    // No target: the controller has no opinion; keep running.
    assert_eq!(
        decide(&view("c-1", None, None), &primary_running()),
        Action::Primary
    );
}

#[test]
fn demoted_waits_for_the_new_primary_then_follows_it() {
    let local = Local {
        initialized: true,
        standby_signal: true,
        demoted_lsn: Lsn::parse("0/6000028"),
        ..Default::default()
    };
    let waiting = with_peer(
        view("c-1", Some("c-2"), Some("c-1")),
        "c-2",
        false,
        Some(report(Role::Replica, true, "127.0.0.1:5501")),
    );
    assert!(matches!(decide(&waiting, &local), Action::Wait(_)));
    let promoted = with_peer(
        view("c-1", Some("c-2"), Some("c-1")),
        "c-2",
        false,
        Some(report(Role::Primary, true, "127.0.0.1:5501")),
    );
    assert_eq!(
        decide(&promoted, &local),
        Action::Start {
            remove_stale_pid: false,
            remove_standby_signal: false,
            start_as: StartAs::Replica {
                primary: Some("127.0.0.1:5501".into())
            }
        }
    );
}

#[test]
fn demoted_and_made_target_again_starts_as_primary() {
    let local = Local {
        initialized: true,
        standby_signal: true,
        demoted_lsn: Lsn::parse("0/6000028"),
        ..Default::default()
    };
    let v = view("c-1", Some("c-1"), Some("c-1"));
    assert_eq!(
        decide(&v, &local),
        Action::Start {
            remove_stale_pid: false,
            remove_standby_signal: true,
            start_as: StartAs::Primary
        }
    );
}

#[test]
fn never_follows_a_fenced_or_demoted_primary_or_itself() {
    let mut demoted = report(Role::Primary, true, "127.0.0.1:5500");
    demoted.demoted = true;
    let v = with_peer(
        view("c-2", Some("c-1"), Some("c-1")),
        "c-1",
        false,
        Some(demoted),
    );
    assert_eq!(v.primary_address(), None);
    let v = with_peer(
        view("c-2", Some("c-1"), Some("c-1")),
        "c-1",
        true,
        Some(report(Role::Primary, true, "127.0.0.1:5500")),
    );
    assert_eq!(v.primary_address(), None);
    // The target first, when two report primary (a moment of a switchover seen late).
    let v = with_peer(
        with_peer(
            view("c-3", Some("c-2"), Some("c-1")),
            "c-1",
            false,
            Some(report(Role::Primary, true, "a:1")),
        ),
        "c-2",
        false,
        Some(report(Role::Primary, true, "b:2")),
    );
    assert_eq!(v.primary_address().as_deref(), Some("b:2"));
}

#[test]
fn a_starting_server_is_left_alone() {
    let local = Local {
        sql: None,
        ..primary_running()
    };
    assert!(matches!(
        decide(&view("c-1", Some("c-2"), Some("c-1")), &local),
        Action::Wait(_)
    ));
}

#[test]
fn slots_for_every_other_instance_but_the_fenced() {
    let mut v = view("c-1", Some("c-1"), Some("c-1"));
    v.instances = vec!["c-1".into(), "c-2".into(), "c-3".into(), "c-4".into()];
    let v = with_peer(v, "c-2", false, None);
    let v = with_peer(v, "c-3", true, None);
    let mut fenced_report = report(Role::None, false, "x:1");
    fenced_report.fenced = true;
    let v = with_peer(v, "c-4", false, Some(fenced_report));
    assert_eq!(v.slot_holders(), ["c-2"]);
    // An instance whose Pod is not there (being recreated) keeps its slot.
    let mut v = view("c-1", Some("c-1"), Some("c-1"));
    v.instances = vec!["c-1".into(), "c-2".into()];
    assert_eq!(v.slot_holders(), ["c-2"]);
}

const ID: &str = "7318791534227411232";

fn bootstrapped(mut v: View) -> View {
    v.system_identifier = Some(ID.into());
    v
}

fn initialized_with(id: Option<&str>) -> Local {
    Local {
        initialized: true,
        pgdata_system_identifier: id.map(Into::into),
        ..Default::default()
    }
}

#[test]
fn a_bootstrapped_cluster_never_runs_initdb_on_an_empty_pgdata() {
    // The primary after a reboot whose pool was not imported: its mount point is an empty
    // folder. A new database there would take the clients' writes.
    for v in [
        bootstrapped(view("c-1", Some("c-1"), Some("c-1"))),
        bootstrapped(view("c-1", Some("c-1"), None)),
    ] {
        match decide(&v, &Local::default()) {
            Action::Wait(why) => {
                assert!(why.contains("not running initdb"), "{why}");
                assert!(why.contains(ID), "{why}");
                assert!(why.contains("is the pool imported and mounted?"), "{why}");
            }
            other => panic!("{v:?}: {other:?}"),
        }
    }
    // A replica waits as before (seeded by the controller), or copies the primary.
    let replica = bootstrapped(view("c-2", Some("c-1"), Some("c-1")));
    assert!(matches!(
        decide(&replica, &Local::default()),
        Action::Wait(_)
    ));
    let mut copies = with_peer(
        replica,
        "c-1",
        false,
        Some(report(Role::Primary, true, "10.0.0.1:5432")),
    );
    copies.seed_from_basebackup = true;
    assert_eq!(
        decide(&copies, &Local::default()),
        Action::Basebackup {
            from: "10.0.0.1:5432".into()
        }
    );
}

#[test]
fn a_data_directory_of_another_database_is_never_started() {
    for v in [
        bootstrapped(view("c-1", Some("c-1"), Some("c-1"))),
        bootstrapped(view("c-2", Some("c-1"), Some("c-1"))),
    ] {
        // Made again by initdb, or another cluster's.
        match decide(&v, &initialized_with(Some("7318791534227411999"))) {
            Action::Wait(why) => {
                assert!(
                    why.contains("7318791534227411999") && why.contains(ID),
                    "{why}"
                );
                assert!(why.contains("not starting"), "{why}");
            }
            other => panic!("{v:?}: {other:?}"),
        }
        // Unknown (pg_controldata failed): not proven to be the cluster's.
        assert!(
            matches!(decide(&v, &initialized_with(None)), Action::Wait(_)),
            "{v:?}"
        );
        // The cluster's own: started as before.
        assert!(
            matches!(
                decide(&v, &initialized_with(Some(ID))),
                Action::Start { .. }
            ),
            "{v:?}"
        );
    }
    assert_eq!(
        decide(
            &bootstrapped(view("c-1", Some("c-1"), Some("c-1"))),
            &initialized_with(Some(ID))
        ),
        Action::Start {
            remove_stale_pid: false,
            remove_standby_signal: false,
            start_as: StartAs::Primary
        }
    );
}

#[test]
fn before_bootstrap_there_is_nothing_to_compare() {
    let v = view("c-1", Some("c-1"), None);
    assert_eq!(decide(&v, &Local::default()), Action::Initdb);
    for id in [None, Some(ID)] {
        assert!(matches!(
            decide(&v, &initialized_with(id)),
            Action::Start {
                start_as: StartAs::Primary,
                ..
            }
        ));
    }
}

#[test]
fn a_running_server_is_not_checked_again() {
    // The comparison guards a start; a running server is left to the other rules.
    let v = bootstrapped(view("c-1", Some("c-1"), Some("c-1")));
    assert_eq!(decide(&v, &primary_running()), Action::Primary);
}

#[test]
fn nothing_starts_initialises_or_copies_on_storage_that_is_not_pgdatas_own() {
    let wrong = |l: Local| Local {
        storage_problem: Some(
            "PGDATA is on /dev/nvme0n1p1 (xfs), not on ZFS dataset p/pgdata".into(),
        ),
        ..l
    };
    let never_bootstrapped = view("c-1", Some("c-1"), None);
    let mut seeded_by_copy = view("c-2", Some("c-1"), Some("c-1"));
    seeded_by_copy.seed_from_basebackup = true;
    let seeded_by_copy = with_peer(
        seeded_by_copy,
        "c-1",
        false,
        Some(report(Role::Primary, true, "10.0.0.1:5432")),
    );
    // Without the problem: initdb, a copy, a start. With it: a wait that says why.
    for (v, l) in [
        (never_bootstrapped.clone(), Local::default()),
        (seeded_by_copy, Local::default()),
        (never_bootstrapped, initialized()),
    ] {
        assert!(!matches!(decide(&v, &l), Action::Wait(_)), "{v:?} {l:?}");
        match decide(&v, &wrong(l.clone())) {
            Action::Wait(why) => assert!(why.contains("not on ZFS dataset"), "{why}"),
            other => panic!("{v:?} {l:?}: {other:?}"),
        }
    }
    // A server already running is left alone.
    let v = view("c-1", Some("c-1"), Some("c-1"));
    assert_eq!(decide(&v, &wrong(primary_running())), Action::Primary);
}

fn restoring(on_snapshot: bool, target: bool) -> View {
    let mut v = view("c-1", Some("c-1"), Some("c-1"));
    v.restore = Some(crate::decide::Restore {
        stanza: "src".into(),
        backup_set: None,
        on_snapshot,
        target: target.then(|| pgml_api::cluster::RecoveryTarget {
            name: Some("before".into()),
            ..Default::default()
        }),
    });
    v
}

fn replaying(paused: bool) -> Local {
    Local {
        recovery_signal: true,
        standby_signal: false,
        sql: Some(Sql {
            in_recovery: true,
            replay_lsn: Lsn::parse("0/4000000"),
            replay_paused: paused,
            ..Default::default()
        }),
        ..standby("0/4000000")
    }
}

#[test]
fn a_repository_restore_replaces_initdb_and_is_never_promoted_before_its_target() {
    // Empty PGDATA: pgbackrest restore, not initdb; with a snapshot base, wait for the pool.
    assert_eq!(
        decide(&restoring(false, true), &Local::default()),
        Action::RestoreBackup
    );
    assert!(matches!(
        decide(&restoring(true, true), &Local::default()),
        Action::Wait(_)
    ));
    // Another instance, or a cluster already bootstrapped: no restore.
    let mut other = restoring(false, true);
    other.me = "c-2".into();
    assert!(matches!(decide(&other, &Local::default()), Action::Wait(_)));
    let mut done = restoring(false, true);
    done.system_identifier = Some("7447123456789012345".into());
    assert!(matches!(decide(&done, &Local::default()), Action::Wait(_)));
    // The restored base (recovery.signal) or a snapshot's (standby.signal): archive
    // recovery to the target.
    for signals in [(true, false), (false, true)] {
        let base = Local {
            initialized: true,
            recovery_signal: signals.0,
            standby_signal: signals.1,
            ..Default::default()
        };
        assert_eq!(
            decide(&restoring(signals.1, true), &base),
            Action::Start {
                remove_stale_pid: false,
                remove_standby_signal: false,
                start_as: StartAs::Recovery
            }
        );
    }
    // Replaying: wait; paused at the target: promote.
    let v = restoring(false, true);
    match decide(&v, &replaying(false)) {
        Action::Wait(why) => assert!(
            why.contains("name before") && why.contains("0/4000000"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(decide(&v, &replaying(true)), Action::Promote);
    // No target: PostgreSQL ends the recovery itself; the manager never promotes early.
    assert!(matches!(
        decide(&restoring(false, false), &replaying(false)),
        Action::Wait(_)
    ));
}

#[test]
fn a_failed_restore_is_never_started_nor_made_again() {
    let why = "the restore cannot reach bootstrap.recoveryTarget".to_string();
    let failed = Local {
        initialized: true,
        recovery_signal: true,
        restore_failed: Some(why.clone()),
        ..Default::default()
    };
    assert_eq!(
        decide(&restoring(false, true), &failed),
        Action::Wait(why.clone())
    );
    let empty = Local {
        restore_failed: Some(why.clone()),
        ..Default::default()
    };
    assert_eq!(
        decide(&restoring(false, true), &empty),
        Action::Wait(why.clone())
    );
    // A refused destination archive stops initdb the same way.
    assert_eq!(
        decide(&view("c-1", Some("c-1"), None), &empty),
        Action::Wait(why)
    );
}

#[test]
fn wal_is_placed_before_any_start_and_a_wal_problem_stops_it() {
    let misplaced = |l: Local| Local {
        wal: WalState::Misplaced("MoveFile".into()),
        ..l
    };
    let problem = |l: Local| Local {
        wal: WalState::Problem("PGDATA/pg_wal links to /elsewhere (it does not exist here)".into()),
        ..l
    };
    let primary = bootstrapped(view("c-1", Some("c-1"), Some("c-1")));
    let replica = with_peer(
        bootstrapped(view("c-2", Some("c-1"), Some("c-1"))),
        "c-1",
        false,
        Some(report(Role::Primary, true, "10.0.0.1:5432")),
    );
    // A restored copy (standby.signal, never bootstrapped), a replica, the primary: each
    // would start; first its WAL goes where the pool keeps it.
    let restored = Local {
        standby_signal: true,
        ..initialized()
    };
    for (v, l) in [
        (primary.clone(), initialized_with(Some(ID))),
        (replica.clone(), initialized_with(Some(ID))),
        (view("c-1", Some("c-1"), None), restored),
    ] {
        assert!(
            matches!(decide(&v, &l), Action::Start { .. }),
            "{v:?} {l:?}"
        );
        assert_eq!(decide(&v, &misplaced(l.clone())), Action::PlaceWal);
        match decide(&v, &problem(l.clone())) {
            Action::Wait(why) => assert!(why.contains("/elsewhere"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    // Never on a running server, a fenced one, storage that is not its own, or a data
    // directory of another database.
    assert_eq!(
        decide(&primary, &misplaced(primary_running())),
        Action::Primary
    );
    let mut fenced = primary.clone();
    fenced.fenced = true;
    assert!(matches!(
        decide(&fenced, &misplaced(initialized_with(Some(ID)))),
        Action::Wait(_)
    ));
    let not_ours = Local {
        storage_problem: Some("the WAL directory is on overlay".into()),
        ..misplaced(initialized_with(Some(ID)))
    };
    assert_eq!(
        decide(&primary, &not_ours),
        Action::Wait("the WAL directory is on overlay".into())
    );
    match decide(
        &primary,
        &misplaced(initialized_with(Some("7318791534227411999"))),
    ) {
        Action::Wait(why) => assert!(why.contains("another database"), "{why}"),
        other => panic!("{other:?}"),
    }
}
