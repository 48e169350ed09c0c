//! Prompt notice of pool health. Every `--health-poll-seconds` the agent looks at the pools
//! of its node's ZfsPools (one `zpool status`, and whether each member's by-id link is
//! there) and, when a pool's health, a member's state or a member's device changed since
//! the last look, has the controller reconcile that ZfsPool at once instead of at the next
//! resync. The look talks to no API server; only the reconcile it triggers writes, and
//! only what changed.
//!
//! The poll is the baseline: zfs-fuse has no `zpool events`, and a poll needs nothing to
//! stay connected. Where OpenZFS has `zpool events -f`, [`follow_events`] wakes the poll as
//! soon as ZFS reports a state change, so the look comes early; what it finds is judged the
//! same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::{ObjectRef, Store};
use pgml_api::zfspool::ZfsPool;
use pgml_zfs::{Dialect, PoolStatus, command};
use tokio::sync::Notify;

use crate::devices::Lookup;
use crate::reconcile::Ctx;

/// What one look saw of one ZfsPool's pool: compared between looks, never written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// `zpool status` state of the pool by its name; `None` when it is not imported.
    pub pool: Option<String>,
    /// Each leaf (its volume ID, else its name) and its state.
    pub members: Vec<(String, String)>,
    pub resilvering: bool,
    /// Per member index of the status: its device link is there.
    pub devices: Vec<bool>,
}

/// One look at every ZfsPool of the node.
pub type Look = HashMap<ObjectRef<ZfsPool>, Health>;

/// The pools whose health changed from `before` to `now`. A pool seen for the first time
/// is not a change: the controller reconciles every object it starts to watch.
pub fn changed(before: &Look, now: &Look) -> Vec<ObjectRef<ZfsPool>> {
    let mut out: Vec<ObjectRef<ZfsPool>> = now
        .iter()
        .filter(|(r, h)| before.get(*r).is_some_and(|b| b != *h))
        .map(|(r, _)| r.clone())
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// [`Health`] of the pool named `name` in `statuses` (`zpool status` of every pool), with
/// the member devices `devices`.
pub fn health_of(name: &str, statuses: &[PoolStatus], devices: Vec<bool>) -> Health {
    let st = statuses.iter().find(|p| p.name == name);
    Health {
        pool: st.map(|s| s.state.as_str().to_string()),
        members: st
            .map(|s| {
                s.members()
                    .iter()
                    .map(|v| {
                        (
                            v.ebs_volume_id().unwrap_or_else(|| v.name.clone()),
                            v.state
                                .as_ref()
                                .map_or("UNKNOWN", |s| s.as_str())
                                .to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        resilvering: st.is_some_and(PoolStatus::resilvering),
        devices,
    }
}

/// The pools of `zpool status` (no pool at all is an answer: none imported).
fn every_pool(out: &str) -> Result<Vec<PoolStatus>, pgml_zfs::ZfsError> {
    match pgml_zfs::parse_status(out) {
        Err(pgml_zfs::ZfsError::NoPools { .. }) => Ok(vec![]),
        other => other,
    }
}

/// `zpool status` of the pool named `name` alone: another pool on the node (not ours, or
/// in a state the parser does not know) never spoils the look at ours. One not imported
/// (or that cannot be read now) is absent from the answer.
async fn status_of(ctx: &Ctx, name: &str) -> Vec<PoolStatus> {
    let Ok(pool) = pgml_zfs::PoolName::new(name) else {
        return vec![];
    };
    match ctx
        .runner
        .ok(&command::status(ctx.dialect, Some(&pool)))
        .await
    {
        Ok(out) => every_pool(&out).unwrap_or_default(),
        Err(_) => vec![],
    }
}

/// One look: `zpool status` of each ZfsPool's pool, the device links of its members.
async fn look(ctx: &Ctx, pools: &[Arc<ZfsPool>]) -> anyhow::Result<Look> {
    let mut statuses = vec![];
    for p in pools {
        statuses.extend(status_of(ctx, &p.pool_name()).await);
    }
    Ok(pools
        .iter()
        .map(|p| {
            let devices = p
                .status
                .iter()
                .flat_map(|s| &s.volumes)
                .map(|v| {
                    v.volume_id
                        .as_deref()
                        .is_some_and(|id| matches!(ctx.discovery.find(id), Lookup::Found { .. }))
                })
                .collect();
            (
                ObjectRef::from_obj(&**p),
                health_of(&p.pool_name(), &statuses, devices),
            )
        })
        .collect())
}

/// Looks every `every` (or when `wake` is notified) until the process ends, sending each
/// ZfsPool whose health changed to `trigger`. A look is skipped while a reconcile runs
/// (it observes the node itself; zfs-fuse does not take concurrent commands well), and
/// the next one compares with the last look taken.
pub async fn poll(
    ctx: Arc<Ctx>,
    store: Store<ZfsPool>,
    every: Duration,
    wake: Arc<Notify>,
    trigger: UnboundedSender<ObjectRef<ZfsPool>>,
) {
    let mut last = Look::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => {}
        }
        let now = {
            let Ok(_quiet) = ctx.lock.try_lock() else {
                continue;
            };
            match look(&ctx, &store.state()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "health look failed; the resync still reconciles");
                    continue;
                }
            }
        };
        for r in changed(&last, &now) {
            tracing::info!(pool = %r.name, namespace = ?r.namespace, before = ?last.get(&r), now = ?now.get(&r), "pool health changed; reconciling now");
            if trigger.unbounded_send(r).is_err() {
                return;
            }
        }
        last = now;
    }
}

/// Event classes of `zpool events` that say a vdev or pool changed state (statechange,
/// removal, attach, resilver start and end, a probe that failed), as opposed to routine
/// ones (`history_event`, `config_sync`) and per-I/O ereports.
fn wakes(class: &str) -> bool {
    const CHANGES: &[&str] = &[
        "sysevent.fs.zfs.statechange",
        "sysevent.fs.zfs.vdev_remove",
        "sysevent.fs.zfs.vdev_attach",
        "sysevent.fs.zfs.vdev_online",
        "sysevent.fs.zfs.resilver_start",
        "sysevent.fs.zfs.resilver_finish",
        "resource.fs.zfs.statechange",
        "resource.fs.zfs.removed",
        "ereport.fs.zfs.probe_failure",
        "ereport.fs.zfs.vdev.open_failed",
        "ereport.fs.zfs.vdev.unknown",
    ];
    CHANGES.contains(&class)
}

/// The event class of one line of `zpool events -H`: the time, a tab, the class
/// (`Jun 30 1993 21:49:08.123456789<TAB>sysevent.fs.zfs.statechange`).
pub fn event_class(line: &str) -> Option<&str> {
    let (_, class) = line.split_once('\t')?;
    let class = class.trim();
    (!class.is_empty() && !class.contains(char::is_whitespace)).then_some(class)
}

/// Follows `zpool events -f -H` (OpenZFS only) and wakes the poll on each state change.
/// Gives up, leaving the poll alone, when the command cannot run or ends; the poll never
/// depended on it.
pub async fn follow_events(zpool: std::path::PathBuf, dialect: Dialect, wake: Arc<Notify>) {
    use tokio::io::AsyncBufReadExt;
    if dialect != Dialect::OpenZfs {
        return;
    }
    let child = tokio::process::Command::new(&zpool)
        .args(["events", "-f", "-H"])
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "cannot follow zpool events; pool health is polled only");
            return;
        }
    };
    let Some(stdout) = child.stdout.take() else {
        return;
    };
    tracing::info!("following zpool events");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if event_class(&line).is_some_and(wakes) {
            wake.notify_one();
        }
    }
    tracing::info!("zpool events -f ended; pool health is polled only");
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fx {
        ($f:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../pgml-zfs/tests/fixtures/",
                $f
            ))
        };
    }

    fn statuses(out: &str) -> Vec<PoolStatus> {
        every_pool(out).unwrap()
    }

    #[test]
    fn a_lost_member_a_missing_link_and_a_resilver_are_changes_and_nothing_else_is() {
        let r = ObjectRef::<ZfsPool>::new("tank").within("db");
        let other = ObjectRef::<ZfsPool>::new("other").within("db");
        let look = |out: &str, devices: Vec<bool>| -> Look {
            [(r.clone(), health_of("tank", &statuses(out), devices))].into()
        };
        // zfs-fuse, recorded live.
        let online = look(fx!("zfs-fuse/status-raidz1-online.txt"), vec![true; 5]);
        let degraded = look(fx!("zfs-fuse/status-raidz1-degraded.txt"), vec![true; 5]);
        let resilvering = look(fx!("zfs-fuse/status-raidz1-resilvering.txt"), vec![true; 5]);
        assert_eq!(online[&r].pool.as_deref(), Some("ONLINE"));
        assert_eq!(degraded[&r].pool.as_deref(), Some("DEGRADED"));
        assert!(
            degraded[&r]
                .members
                .contains(&("vol-0abc0000000000002".into(), "UNAVAIL".into())),
            "{:?}",
            degraded[&r]
        );
        assert!(resilvering[&r].resilvering);
        assert_eq!(changed(&online, &online.clone()), vec![]);
        assert_eq!(changed(&online, &degraded), vec![r.clone()]);
        assert_eq!(changed(&degraded, &resilvering), vec![r.clone()]);
        // The pool still shows ONLINE (no I/O yet) but a member's link went away.
        let mut gone = online.clone();
        gone.get_mut(&r).unwrap().devices[2] = false;
        assert_eq!(changed(&online, &gone), vec![r.clone()]);
        // Exported or not imported yet: the pool is absent from the output.
        let absent = look("no pools available\n", vec![true; 5]);
        assert_eq!(absent[&r].pool, None);
        assert_eq!(changed(&online, &absent), vec![r.clone()]);
        // A pool seen for the first time is not a change; one that left is not either.
        let mut two = online.clone();
        two.insert(other.clone(), online[&r].clone());
        assert_eq!(changed(&online, &two), vec![]);
        assert_eq!(changed(&two, &online), vec![]);
        // OpenZFS (`zpool status -P -p`): a member REMOVED.
        let oz_online = look(fx!("openzfs/status-P-raidz1-online.txt"), vec![]);
        let oz_removed = look(fx!("openzfs/status-P-raidz1-degraded-removed.txt"), vec![]);
        assert_eq!(oz_removed[&r].pool.as_deref(), Some("DEGRADED"));
        assert!(
            oz_removed[&r]
                .members
                .contains(&("vol-0f3c5a7e9b1d2468e".into(), "REMOVED".into())),
            "{:?}",
            oz_removed[&r]
        );
        assert_eq!(changed(&oz_online, &oz_removed), vec![r.clone()]);
    }

    /// `zpool events -H` lines as OpenZFS prints them (zpool_do_events_short: the time,
    /// a tab in scripted mode, the class).
    #[test]
    fn state_changes_wake_the_poll_and_routine_events_do_not() {
        let line = |class: &str| format!("Dec  7 2026 23:40:01.123456789\t{class}");
        for class in [
            "sysevent.fs.zfs.statechange",
            "resource.fs.zfs.statechange",
            "resource.fs.zfs.removed",
            "sysevent.fs.zfs.resilver_finish",
            "ereport.fs.zfs.probe_failure",
        ] {
            let l = line(class);
            assert_eq!(event_class(&l), Some(class));
            assert!(wakes(event_class(&l).unwrap()), "{class}");
        }
        for class in [
            "sysevent.fs.zfs.history_event",
            "sysevent.fs.zfs.config_sync",
            "ereport.fs.zfs.checksum",
            "ereport.fs.zfs.io",
        ] {
            assert!(!wakes(event_class(&line(class)).unwrap()), "{class}");
        }
        // Without -H (spaces, a header) nothing is read as a class.
        assert_eq!(event_class("TIME                           CLASS"), None);
        assert_eq!(
            event_class("Dec  7 2026 23:40:01.123456789 sysevent.fs.zfs.statechange"),
            None
        );
        assert_eq!(event_class("x\t"), None);
    }
}
