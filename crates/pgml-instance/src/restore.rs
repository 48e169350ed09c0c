//! Restoring the cluster's database from a pgBackRest repository (`bootstrap.pgbackrest`),
//! as pure functions: the `pgbackrest restore` arguments, the recovery settings the
//! managed include carries while the first instance replays the source's WAL, what
//! `pgbackrest info` says of the destination repository, and why a replay that stopped
//! failed, from the server's log.
//!
//! The source repository is only ever read: `pgbackrest-bootstrap.conf` (rendered by the
//! controller into the cluster's ConfigMap) names it, and the commands here name that
//! file. This cluster's own repository (`pgbackrest.conf`) must hold no stanza before the
//! database is made: a restored cluster that archived into another's stanza would mix two
//! histories of WAL.

use std::path::Path;

use anyhow::{Context, bail};
use pgml_api::cluster::RecoveryTarget;

use crate::decide::Restore;

/// The source repository's file, in the ConfigMap's folder.
pub const SOURCE_CONFIG_FILE: &str = "pgbackrest-bootstrap.conf";

/// Lines of PostgreSQL's log that say why recovery stopped short of its target.
const TARGET_FAILURES: &[&str] = &[
    "recovery ended before configured recovery target was reached",
    "requested recovery stop point is before consistent recovery point",
    "recovery target timeline",
    "could not find redo location",
];

fn checked<'a>(what: &str, v: &'a str, ok: impl Fn(char) -> bool) -> anyhow::Result<&'a str> {
    if v.is_empty() || !v.chars().all(ok) {
        bail!("{what} {v:?} has characters that cannot be passed on");
    }
    Ok(v)
}

/// The source's stanza, checked to be a cluster's name (it goes on a command line and into
/// the include file).
fn stanza_of(r: &Restore) -> anyhow::Result<&str> {
    checked("stanza", &r.stanza, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })
}

/// The time as PostgreSQL and pgBackRest both read it: `YYYY-MM-DD HH:MM:SS[.ffffff]+00`
/// (pgBackRest picks the backup set by it, and does not read RFC 3339's `T` and `Z`).
pub fn target_time(rfc3339: &str) -> anyhow::Result<String> {
    let t: k8s_openapi::jiff::Timestamp = rfc3339
        .parse()
        .with_context(|| format!("recoveryTarget.time {rfc3339:?} is not an RFC 3339 time"))?;
    let micros = t.subsec_microsecond();
    let whole = t.strftime("%Y-%m-%d %H:%M:%S").to_string();
    Ok(if micros == 0 && t.subsec_nanosecond() == 0 {
        format!("{whole}+00")
    } else {
        format!("{whole}.{:06}+00", t.subsec_nanosecond() / 1000)
    })
}

/// pgBackRest's `--type` and `--target` for a recovery target (None: `default`, the end
/// of the archive).
fn kind(t: Option<&RecoveryTarget>) -> anyhow::Result<(&'static str, Option<String>)> {
    let Some(t) = t else {
        return Ok(("default", None));
    };
    Ok(if let Some(time) = &t.time {
        ("time", Some(target_time(time)?))
    } else if let Some(lsn) = &t.lsn {
        let l = checked("recoveryTarget.lsn", lsn, |c| {
            c.is_ascii_hexdigit() || c == '/'
        })?;
        ("lsn", Some(l.to_string()))
    } else if let Some(name) = &t.name {
        let n = checked("recoveryTarget.name", name, |c| {
            c.is_ascii_alphanumeric() || "_.:-".contains(c)
        })?;
        ("name", Some(n.to_string()))
    } else if let Some(xid) = &t.xid {
        (
            "xid",
            Some(checked("recoveryTarget.xid", xid, |c| c.is_ascii_digit())?.to_string()),
        )
    } else {
        ("immediate", None)
    })
}

fn timeline(t: Option<&RecoveryTarget>) -> anyhow::Result<Option<&str>> {
    t.and_then(|t| t.timeline.as_deref())
        .map(|tl| checked("recoveryTarget.timeline", tl, |c| c.is_ascii_alphanumeric()))
        .transpose()
}

/// `pgbackrest restore` of the source into `into` (a folder beside PGDATA, renamed onto
/// it once complete): the set named, else the one pgBackRest picks for the target (the
/// newest that ended before a time target). The recovery settings it writes are replaced
/// by the manager's ([`recovery_conf`]) before the first start.
pub fn restore_args(config_dir: &Path, r: &Restore, into: &Path) -> anyhow::Result<Vec<String>> {
    let stanza = stanza_of(r)?;
    let mut args = vec![
        format!("--config={}", config_dir.join(SOURCE_CONFIG_FILE).display()),
        format!("--stanza={stanza}"),
        format!("--pg1-path={}", into.display()),
        "--log-level-console=warn".into(),
        "restore".into(),
    ];
    if let Some(set) = &r.backup_set {
        let set = checked("backupSet", set, |c| {
            c.is_ascii_alphanumeric() || "-_".contains(c)
        })?;
        args.push(format!("--set={set}"));
    }
    let (ty, target) = kind(r.target.as_ref())?;
    args.push(format!("--type={ty}"));
    if let Some(t) = target {
        args.push(format!("--target={t}"));
    }
    if r.target.as_ref().and_then(|t| t.exclusive) == Some(true) {
        args.push("--target-exclusive".into());
    }
    if let Some(tl) = timeline(r.target.as_ref())? {
        args.push(format!("--target-timeline={tl}"));
    }
    if r.target.is_some() {
        args.push("--target-action=pause".into());
    }
    Ok(args)
}

/// The settings of the replay, appended to the managed include (read last, so they win
/// over the cluster's own `restore_command`): the source's `archive-get`, the target, and
/// a pause there. Written only before a start in recovery; the next start of this
/// instance (as a primary, or after a demotion) writes the include without them.
pub fn recovery_conf(config_dir: &Path, r: &Restore) -> anyhow::Result<String> {
    let stanza = stanza_of(r)?;
    let config = config_dir.join(SOURCE_CONFIG_FILE);
    let config = checked("configuration path", &config.to_string_lossy(), |c| {
        c.is_ascii_alphanumeric() || "/._-".contains(c)
    })?
    .to_string();
    let mut out = format!(
        "# The restore of bootstrap.pgbackrest: WAL of stanza {stanza}, read only.\n\
         restore_command = 'pgbackrest --config={config} --stanza={stanza} archive-get %f \"%p\"'\n"
    );
    let (ty, target) = kind(r.target.as_ref())?;
    match (ty, target) {
        ("default", _) => {}
        ("immediate", _) => out += "recovery_target = 'immediate'\n",
        (ty, Some(v)) => out += &format!("recovery_target_{ty} = '{v}'\n"),
        (_, None) => {}
    }
    if r.target.is_some() {
        if r.target.as_ref().and_then(|t| t.exclusive) == Some(true) {
            out += "recovery_target_inclusive = off\n";
        }
        out += "recovery_target_action = 'pause'\n";
    }
    if let Some(tl) = timeline(r.target.as_ref())? {
        out += &format!("recovery_target_timeline = '{tl}'\n");
    }
    Ok(out)
}

/// What `pgbackrest info --output=json` (of the whole repository, no stanza named) says
/// is there: None when no stanza is, else each stanza with its state, backups and
/// database system identifiers. Any stanza counts: the path is this cluster's alone, and a
/// restored cluster archiving beside its source's stanza (or in place of it, under the
/// same name) would mix two histories.
pub fn stanzas_in_repository(json: &str) -> anyhow::Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("pgbackrest info printed no JSON")?;
    let list = v
        .as_array()
        .context("pgbackrest info printed no list of stanzas")?;
    let held: Vec<String> = list
        .iter()
        // A stanza named in the file but absent from the repository (code 1), or the
        // repository unreadable (`[invalid]`, code 99: a missing bucket, no access): no
        // stanza seen there.
        .filter(|e| {
            let code = e["status"]["code"].as_i64();
            code != Some(1) && code != Some(99) && e["name"] != "[invalid]"
        })
        .map(|e| {
            let name = e["name"].as_str().unwrap_or("?");
            let ids: Vec<String> = e["db"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["system-id"].as_u64())
                .map(|id| id.to_string())
                .collect();
            let backups = e["backup"].as_array().map_or(0, Vec::len);
            let status = e["status"]["message"].as_str().unwrap_or("unknown");
            format!(
                "stanza {name} ({status}; {backups} backups; database system identifier {})",
                if ids.is_empty() {
                    "unknown".into()
                } else {
                    ids.join(", ")
                }
            )
        })
        .collect();
    Ok((!held.is_empty()).then(|| format!("it already holds {}", held.join(", "))))
}

/// The backup set to restore when the spec names none and pgBackRest would not pick the
/// right one itself (it picks by time for `time` targets, else takes the newest, which may
/// begin after the target): for an `lsn` target the newest backup that ended at or before
/// it; for a `name` or `xid` target (whose position no backup records) the oldest kept, from
/// which every later point can be replayed. `Ok(None)`: leave it to pgBackRest. `Err`: no
/// backup can be the base (the restore fails for good), or `info` is not what it should be.
pub fn pick_set(
    info_json: &str,
    stanza: &str,
    target: Option<&RecoveryTarget>,
) -> anyhow::Result<Option<String>> {
    let Some(t) = target.filter(|t| t.lsn.is_some() || t.name.is_some() || t.xid.is_some()) else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(info_json).context("pgbackrest info printed no JSON")?;
    let entry = v
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == stanza))
        .with_context(|| format!("pgbackrest info does not list stanza {stanza}"))?;
    let backups: Vec<&serde_json::Value> =
        entry["backup"].as_array().into_iter().flatten().collect();
    let label = |b: &serde_json::Value| b["label"].as_str().map(str::to_string);
    if let Some(lsn) = &t.lsn {
        let want = crate::report::Lsn::parse(lsn)
            .with_context(|| format!("recoveryTarget.lsn {lsn:?} is not an LSN"))?;
        let fits = backups.iter().rev().find(|b| {
            b["lsn"]["stop"]
                .as_str()
                .and_then(crate::report::Lsn::parse)
                .is_some_and(|stop| stop <= want)
        });
        return match fits {
            Some(b) => Ok(label(b)),
            None => bail!(
                "no backup of stanza {stanza} ends at or before lsn {lsn}: a target before the first backup cannot be reached"
            ),
        };
    }
    match backups.first() {
        Some(b) => Ok(label(b)),
        None => bail!("stanza {stanza} has no backup to restore"),
    }
}

/// Why a failed `pgbackrest restore` can never succeed, if it cannot: no backup set can be
/// the base (error 075: none in the repository, none that ended before a time target, the
/// named set missing). Anything else (the repository unreachable…) is tried again.
pub fn no_base(error: &str) -> Option<String> {
    error.contains("[075]").then(|| {
        format!("no backup of the repository can be the base of this restore: {error}; nothing was restored. A time target before the first backup cannot be reached; create the cluster again with another target or backupSet")
    })
}

/// The line of PostgreSQL's log that says the replay cannot reach its target, if any.
pub fn target_failure(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("FATAL"))
        .find(|l| TARGET_FAILURES.iter().any(|f| l.contains(f)))
        .map(|l| {
            let msg = l.split_once("FATAL:").map_or(l, |(_, m)| m).trim();
            format!("the restore cannot reach bootstrap.recoveryTarget: PostgreSQL said \"{msg}\"; nothing was promoted. Create the cluster again with a target inside the archive")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore(target: Option<RecoveryTarget>) -> Restore {
        Restore {
            stanza: "src".into(),
            backup_set: None,
            on_snapshot: false,
            target,
        }
    }

    #[test]
    fn times_are_written_the_way_pgbackrest_reads_them() {
        assert_eq!(
            target_time("2026-12-07T10:15:00Z").unwrap(),
            "2026-12-07 10:15:00+00"
        );
        assert_eq!(
            target_time("2026-12-07T11:15:00.25+01:00").unwrap(),
            "2026-12-07 10:15:00.250000+00"
        );
        assert!(target_time("yesterday").is_err());
    }

    #[test]
    fn a_time_target_picks_its_set_and_pauses_there() {
        let t = RecoveryTarget {
            time: Some("2026-12-07T10:15:00Z".into()),
            exclusive: Some(true),
            ..Default::default()
        };
        let args = restore_args(
            Path::new("/etc/pgml/config"),
            &restore(Some(t.clone())),
            Path::new("/d/.x"),
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "--config=/etc/pgml/config/pgbackrest-bootstrap.conf",
                "--stanza=src",
                "--pg1-path=/d/.x",
                "--log-level-console=warn",
                "restore",
                "--type=time",
                "--target=2026-12-07 10:15:00+00",
                "--target-exclusive",
                "--target-action=pause",
            ]
        );
        let conf = recovery_conf(Path::new("/etc/pgml/config"), &restore(Some(t))).unwrap();
        assert!(conf.contains("restore_command = 'pgbackrest --config=/etc/pgml/config/pgbackrest-bootstrap.conf --stanza=src archive-get %f \"%p\"'"), "{conf}");
        assert!(conf.contains("recovery_target_time = '2026-12-07 10:15:00+00'\n"));
        assert!(conf.contains("recovery_target_inclusive = off\n"));
        assert!(conf.contains("recovery_target_action = 'pause'\n"));
    }

    #[test]
    fn each_kind_of_target_and_none() {
        let conf = |t: RecoveryTarget| recovery_conf(Path::new("/c"), &restore(Some(t))).unwrap();
        let name = conf(RecoveryTarget {
            name: Some("before-migration".into()),
            ..Default::default()
        });
        assert!(name.contains("recovery_target_name = 'before-migration'"));
        let imm = conf(RecoveryTarget {
            immediate: Some(true),
            timeline: Some("current".into()),
            ..Default::default()
        });
        assert!(
            imm.contains("recovery_target = 'immediate'")
                && imm.contains("recovery_target_timeline = 'current'")
        );
        let lsn = conf(RecoveryTarget {
            lsn: Some("0/3000060".into()),
            ..Default::default()
        });
        assert!(lsn.contains("recovery_target_lsn = '0/3000060'"));
        let xid = conf(RecoveryTarget {
            xid: Some("742".into()),
            ..Default::default()
        });
        assert!(xid.contains("recovery_target_xid = '742'"));
        // No target: the end of the archive, PostgreSQL promotes itself, no pause.
        let end = recovery_conf(Path::new("/c"), &restore(None)).unwrap();
        assert!(!end.contains("recovery_target"), "{end}");
        let args = restore_args(Path::new("/c"), &restore(None), Path::new("/x")).unwrap();
        assert!(
            args.contains(&"--type=default".to_string())
                && !args.iter().any(|a| a.starts_with("--target"))
        );
    }

    #[test]
    fn nothing_unchecked_reaches_the_files_or_the_command() {
        let bad = RecoveryTarget {
            name: Some("x'; DROP".into()),
            ..Default::default()
        };
        assert!(recovery_conf(Path::new("/c"), &restore(Some(bad.clone()))).is_err());
        assert!(restore_args(Path::new("/c"), &restore(Some(bad)), Path::new("/x")).is_err());
        let mut r = restore(None);
        r.stanza = "a b".into();
        assert!(recovery_conf(Path::new("/c"), &r).is_err());
        assert!(recovery_conf(Path::new("/c'x"), &restore(None)).is_err());
    }

    #[test]
    fn an_empty_repository_and_one_with_a_stanza() {
        assert_eq!(stanzas_in_repository("[]").unwrap(), None);
        let missing = r#"[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"dst","repo":[{"cipher":"none","key":1,"status":{"code":1,"message":"missing stanza path"}}],"status":{"code":1,"lock":{"backup":{"held":false}},"message":"missing stanza path"}}]"#;
        assert_eq!(stanzas_in_repository(missing).unwrap(), None);
        let there = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000004","min":"000000010000000000000001"}],"backup":[{"label":"20261207-101500F"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7447123456789012345,"version":"15"}],"name":"src","status":{"code":0,"message":"ok"}}]"#;
        let said = stanzas_in_repository(there).unwrap().unwrap();
        assert!(
            said.contains(
                "stanza src (ok; 1 backups; database system identifier 7447123456789012345)"
            ),
            "{said}"
        );
        assert!(stanzas_in_repository("oops").is_err());
        assert!(stanzas_in_repository("{}").is_err());
        // What pgBackRest 2.45 prints for a bucket that does not exist: nothing seen.
        let unreadable = r#"[{"backup":[],"db":[],"name":"[invalid]","repo":[{"cipher":"none","key":1,"status":{"code":99,"message":"[103]: unable to find a valid repository"}}],"status":{"code":99,"message":"other"}}]"#;
        assert_eq!(stanzas_in_repository(unreadable).unwrap(), None);
    }

    #[test]
    fn the_set_of_a_target_pgbackrest_would_not_pick_itself() {
        let info = r#"[{"name":"src","status":{"code":0,"message":"ok"},"backup":[
            {"label":"20261207-100000F","type":"full","lsn":{"start":"0/2000028","stop":"0/2000138"}},
            {"label":"20261207-110000F","type":"full","lsn":{"start":"0/5000028","stop":"0/5000100"}},
            {"label":"20261207-120000F","type":"full","lsn":{"start":"0/9000028","stop":"0/9000100"}}]}]"#;
        let t = |f: fn(&mut RecoveryTarget)| {
            let mut t = RecoveryTarget::default();
            f(&mut t);
            t
        };
        let lsn = t(|t| t.lsn = Some("0/6000000".into()));
        assert_eq!(
            pick_set(info, "src", Some(&lsn)).unwrap().as_deref(),
            Some("20261207-110000F")
        );
        let exact = t(|t| t.lsn = Some("0/9000100".into()));
        assert_eq!(
            pick_set(info, "src", Some(&exact)).unwrap().as_deref(),
            Some("20261207-120000F")
        );
        let early = t(|t| t.lsn = Some("0/1000000".into()));
        assert!(
            pick_set(info, "src", Some(&early))
                .unwrap_err()
                .to_string()
                .contains("before the first backup")
        );
        let name = t(|t| t.name = Some("before".into()));
        assert_eq!(
            pick_set(info, "src", Some(&name)).unwrap().as_deref(),
            Some("20261207-100000F")
        );
        let xid = t(|t| t.xid = Some("742".into()));
        assert_eq!(
            pick_set(info, "src", Some(&xid)).unwrap().as_deref(),
            Some("20261207-100000F")
        );
        // pgBackRest's own choice: time, immediate, none.
        let time = t(|t| t.time = Some("2026-12-07T11:30:00Z".into()));
        assert_eq!(pick_set(info, "src", Some(&time)).unwrap(), None);
        assert_eq!(pick_set(info, "src", None).unwrap(), None);
        assert!(pick_set(r#"[{"name":"src","backup":[]}]"#, "src", Some(&name)).is_err());
    }

    #[test]
    fn no_backup_before_the_target_is_final_other_errors_are_not() {
        let e = "pgbackrest restore: ERROR: [075]: unable to find backup set with stop time less than '2000-01-01 00:00:00+00'";
        assert!(no_base(e).unwrap().contains("before the first backup"));
        assert_eq!(
            no_base("pgbackrest restore: ERROR: [039]: HTTP request failed"),
            None
        );
    }

    #[test]
    fn the_fatal_line_of_a_target_never_reached() {
        let log = "2026-12-07 10:00:00 UTC [12] LOG:  restored log file \"000000010000000000000005\" from archive\n\
                   2026-12-07 10:00:01 UTC [12] FATAL:  recovery ended before configured recovery target was reached\n";
        let f = target_failure(log).unwrap();
        assert!(
            f.contains("\"recovery ended before configured recovery target was reached\""),
            "{f}"
        );
        assert_eq!(
            target_failure("LOG: database system is ready\nFATAL: terminating connection"),
            None
        );
    }
}
