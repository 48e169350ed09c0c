//! The instances as the reconcile sees them: recorded (or just placed) instances, what
//! the role decision needs of each, and their status entries. Pure.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use pgml_api::cluster::{InstanceRole, InstanceStatus};

use super::names;
use super::observe::{Observed, deleting};
use super::reported::{Reported, lag_bytes};
use super::roles::{Member, PodState};

/// An instance as recorded in status (or adopted from its objects) or just placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub n: u32,
    pub name: String,
    pub node: String,
    pub zone: Option<String>,
    pub seeded_from: Option<String>,
    pub fenced: bool,
}

/// The instance a new one is seeded from: a ready replica, else the primary when ready.
pub fn donor(members: &[Member], current: Option<&str>, new: &str) -> Option<String> {
    let replica = members
        .iter()
        .filter(|m| m.name != new && Some(m.name.as_str()) != current && m.promotable())
        .map(|m| m.name.clone())
        .min_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    replica.or_else(|| {
        members
            .iter()
            .find(|m| Some(m.name.as_str()) == current && m.ready())
            .map(|m| m.name.clone())
    })
}

pub fn pod_state(pod: Option<&Pod>) -> PodState {
    let Some(p) = pod else {
        return PodState::Absent;
    };
    if deleting(p) {
        return PodState::Terminating;
    }
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") if container_down(p) => PodState::Down,
        Some("Running") => PodState::Running,
        Some("Failed" | "Succeeded" | "Unknown") => PodState::Down,
        _ => PodState::Pending,
    }
}

/// The Pod runs (phase Running) but its PostgreSQL container does not: it exited (killed,
/// crashed) and the kubelet reports it terminated, or waiting to be started again
/// (CrashLoopBackOff). Phase Running says only that a container ran once; the instance
/// manager, which would report the loss, is that container.
fn container_down(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == names::CONTAINER))
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_none() && (s.terminated.is_some() || s.waiting.is_some()))
}

pub fn members(recs: &[Rec], w: &Observed) -> Vec<Member> {
    recs.iter()
        .map(|r| {
            let pod = w.pods.get(&r.name);
            Member {
                name: r.name.clone(),
                pod: pod_state(pod),
                node_ready: match w.node(&r.node) {
                    Some(n) => n.ready,
                    None => Some(false),
                },
                leaving: w.node(&r.node).and_then(|n| n.leaving()),
                reported: pod.and_then(|p| {
                    Reported::parse(
                        p.annotations()
                            .get(names::INSTANCE_STATUS)
                            .map(String::as_str),
                    )
                }),
                fenced: r.fenced,
            }
        })
        .collect()
}

/// Where the pool's `pgdata` dataset is mounted, once its agent reports it mounted at its
/// place (the PersistentVolume's `local.path`, which can never change afterwards). Status
/// is the agent's word, so the path is taken only when it can be nothing but that
/// dataset's place: absolute, plain (no `.`, `..`, empty parts or unusual characters) and
/// ending with the dataset's mount point from the pool's spec (`/<pool>/pgdata` unless
/// set), below the agent's mount root — never `/`, `/etc` or another pool's folder.
pub fn pgdata_mount(pool: &pgml_api::ZfsPool) -> Option<String> {
    dataset_mount(pool, super::names::PGDATA_DATASET)
}

/// [`pgdata_mount`] for the dataset `name` (`pgwal`).
pub fn dataset_mount(pool: &pgml_api::ZfsPool, name: &str) -> Option<String> {
    let path = pool
        .status
        .as_ref()?
        .datasets
        .iter()
        .find(|d| d.name == name && d.mounted)
        .and_then(|d| d.mount_path.clone())?;
    let spec = pool.spec.template.datasets.iter().find(|d| d.name == name);
    let want = match spec {
        Some(d) => pool.mount_point(d),
        None => format!("/{}/{name}", pool.pool_name()),
    };
    plain_path_ending(&path, &want).then_some(path)
}

/// `path` is absolute, every part of it a plain name, and it ends with `suffix` (itself
/// absolute) at a part boundary.
fn plain_path_ending(path: &str, suffix: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let plain = rest.split('/').all(|p| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    plain && suffix.starts_with('/') && path.ends_with(suffix)
}

/// The status entries of the instances.
pub fn instance_statuses(
    recs: &[Rec],
    members: &[Member],
    current: Option<&str>,
    pools: &std::collections::BTreeMap<String, pgml_api::ZfsPool>,
) -> Vec<InstanceStatus> {
    let primary_lsn = members
        .iter()
        .find(|m| Some(m.name.as_str()) == current)
        .and_then(|m| m.reported.as_ref())
        .filter(|r| r.is_primary())
        .and_then(|r| r.lsn.clone());
    recs.iter()
        .zip(members)
        .map(|(r, m)| {
            let is_primary = current == Some(r.name.as_str());
            let lsn = m
                .reported
                .as_ref()
                .and_then(|x| x.position())
                .map(String::from);
            let lag = match (&primary_lsn, &lsn, is_primary) {
                (Some(p), Some(l), false) => lag_bytes(p, l),
                _ => None,
            };
            InstanceStatus {
                name: r.name.clone(),
                node: Some(r.node.clone()),
                availability_zone: r.zone.clone(),
                pool: Some(r.name.clone()),
                role: if r.fenced {
                    None
                } else if is_primary {
                    Some(InstanceRole::Primary)
                } else {
                    Some(InstanceRole::Replica)
                },
                ready: m.ready(),
                lsn,
                lag_bytes: lag,
                seeded_from: r.seeded_from.clone(),
                fenced: r.fenced,
                node_leaving: m.leaving.clone(),
                pool_health: pools
                    .get(&r.name)
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.health.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u32) -> Rec {
        Rec {
            n,
            name: format!("c-{n}"),
            node: format!("node-{n}"),
            zone: Some(format!("z{n}")),
            seeded_from: None,
            fenced: false,
        }
    }

    fn member(name: &str, role: &str, ready: bool, lsn: &str) -> Member {
        crate::cluster::roles::test_member(name, role, ready, lsn)
    }

    #[test]
    fn the_pv_path_waits_for_pgdata_mounted() {
        let pool = |datasets: serde_json::Value| -> pgml_api::ZfsPool {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
                "metadata": {"name": "c-2"},
                "spec": {"nodeName": "n2", "volumes": {"sizeGiB": 10}},
                "status": {"datasets": datasets}
            }))
            .unwrap()
        };
        let p = pool(
            serde_json::json!([{"name": "pgdata", "mountPath": "/mnt/c-2/pgdata", "mounted": false}]),
        );
        assert_eq!(pgdata_mount(&p), None, "not mounted yet");
        let p = pool(serde_json::json!([
            {"name": "pgwal", "mountPath": "/mnt/c-2/pgwal", "mounted": true},
            {"name": "pgdata", "mountPath": "/mnt/c-2/pgdata", "mounted": true}
        ]));
        assert_eq!(pgdata_mount(&p).as_deref(), Some("/mnt/c-2/pgdata"));
        assert_eq!(
            dataset_mount(&p, "pgwal").as_deref(),
            Some("/mnt/c-2/pgwal")
        );
        // pgwal's place is its own: pgdata's path reported for it is not taken.
        let p = pool(serde_json::json!([
            {"name": "pgwal", "mountPath": "/mnt/c-2/pgdata", "mounted": true}
        ]));
        assert_eq!(dataset_mount(&p, "pgwal"), None);
        assert_eq!(pgdata_mount(&pool(serde_json::json!([]))), None);
        // A path the agent reports is used only when it is that dataset's own place.
        for bad in [
            "/",
            "/etc",
            "/mnt/c-3/pgdata",
            "mnt/c-2/pgdata",
            "/mnt/../c-2/pgdata",
            "/mnt//c-2/pgdata",
            "/mnt/c-2/pgdata/",
            "/mnt/c-2/pgwal",
            "/mnt/x y/c-2/pgdata",
            "/c-2/pgdata/../../etc",
        ] {
            let p =
                pool(serde_json::json!([{"name": "pgdata", "mountPath": bad, "mounted": true}]));
            assert_eq!(pgdata_mount(&p), None, "{bad}");
        }
        let p = pool(
            serde_json::json!([{"name": "pgdata", "mountPath": "/c-2/pgdata", "mounted": true}]),
        );
        assert_eq!(pgdata_mount(&p).as_deref(), Some("/c-2/pgdata"));
    }

    #[test]
    fn statuses_carry_roles_positions_and_lag() {
        let mut recs = vec![rec(1), rec(2), rec(3)];
        recs[2].fenced = true;
        let ms = vec![
            member("c-1", "primary", true, "1/0"),
            member("c-2", "replica", true, "0/FFFFFF00"),
            member("c-3", "primary", false, "0/10"),
        ];
        let pool: pgml_api::ZfsPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "ZfsPool",
            "metadata": {"name": "c-2"},
            "spec": {"nodeName": "n2", "volumes": {"sizeGiB": 10}},
            "status": {"health": "DEGRADED"}
        }))
        .unwrap();
        let pools = [("c-2".to_string(), pool)].into();
        let s = instance_statuses(&recs, &ms, Some("c-1"), &pools);
        assert_eq!(s[1].pool_health.as_deref(), Some("DEGRADED"));
        assert_eq!(s[0].pool_health, None, "not reported yet");
        assert_eq!(s[0].role, Some(InstanceRole::Primary));
        assert_eq!(s[0].lsn.as_deref(), Some("1/0"));
        assert_eq!(s[0].lag_bytes, None);
        assert_eq!(s[1].role, Some(InstanceRole::Replica));
        assert_eq!(s[1].lag_bytes, Some(0x100));
        assert!(s[1].ready);
        assert_eq!(s[2].role, None, "a fenced instance has no role");
        assert!(s[2].fenced);
        assert_eq!(s[2].availability_zone.as_deref(), Some("z3"));
    }

    #[test]
    fn a_running_pod_whose_postgres_container_exited_is_down() {
        let pod = |container: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "c-1"},
                "status": {"phase": "Running", "containerStatuses": [
                    {"name": "postgres", "image": "i", "imageID": "", "ready": false,
                     "restartCount": 1, "state": serde_json::from_str::<serde_json::Value>(container).unwrap()}
                ]}
            }))
            .unwrap()
        };
        assert_eq!(
            pod_state(Some(&pod(r#"{"running": {}}"#))),
            PodState::Running
        );
        assert_eq!(
            pod_state(Some(&pod(r#"{"terminated": {"exitCode": 137}}"#))),
            PodState::Down
        );
        assert_eq!(
            pod_state(Some(&pod(r#"{"waiting": {"reason": "CrashLoopBackOff"}}"#))),
            PodState::Down
        );
        let no_status: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "c-1"}, "status": {"phase": "Running"}}),
        )
        .unwrap();
        assert_eq!(pod_state(Some(&no_status)), PodState::Running);
    }

    #[test]
    fn the_donor_is_a_ready_replica_else_the_ready_primary() {
        let ms = vec![
            member("c-1", "primary", true, "0/5"),
            member("c-2", "replica", false, "0/5"),
            member("c-3", "replica", true, "0/5"),
        ];
        assert_eq!(donor(&ms, Some("c-1"), "c-4").as_deref(), Some("c-3"));
        assert_eq!(donor(&ms[..2], Some("c-1"), "c-4").as_deref(), Some("c-1"));
        let mut down = ms[..1].to_vec();
        down[0].reported.as_mut().unwrap().ready = false;
        assert_eq!(donor(&down, Some("c-1"), "c-2"), None);
    }
}
