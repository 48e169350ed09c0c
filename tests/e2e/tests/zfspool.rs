//! ZfsPool end to end with the real binaries: the operator on the host and one agent inside
//! each simulated node's mount namespace, as they run in a cluster. A platform engineer
//! applies ZfsPools and gets healthy RAID0 and RAIDZ1 pools of the volumes the operator
//! provisioned — also when the operator is killed at random moments while it provisions.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use pgml_api::ZfsPool;
use pgml_api::common::keys;
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{volume_ids, volumes_tagged};
use pgml_testbed::kube::{TestNamespace, client};
use pgml_testbed::nodes::{node_dialect, node_zfs};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{has_condition, wait_for, wait_gone};
use pgml_zfs::{Health, ObservedLayout, PoolName};
use rand::Rng;

const READY_TIMEOUT: Duration = Duration::from_secs(180);

struct Pool {
    name: String,
    node: usize,
    layout: &'static str,
    count: usize,
    volumes: &'static str,
}

fn manifest(p: &Pool, node: &NodeInfo, reclaim: &str) -> ZfsPool {
    let text = format!(
        "apiVersion: pgml.io/v1alpha1\nkind: ZfsPool\nmetadata: {{name: {}}}\nspec:\n  nodeName: {}\n  layout: {}\n  reclaimPolicy: {reclaim}\n  volumes: {{count: {}, {}}}\n",
        p.name, node.name, p.layout, p.count, p.volumes
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The operator and one agent per node, all watching only the test's namespace.
struct Fleet {
    operator: Proc,
    agents: Vec<Proc>,
}

impl Fleet {
    fn start(sb: &Sandbox, ns: &str) -> Fleet {
        Fleet {
            operator: procs::operator(sb, ns),
            agents: sb.nodes.iter().map(|n| procs::agent(sb, n, ns)).collect(),
        }
    }

    fn logs(&self) -> String {
        let mut s = format!("--- operator log: {}\n", self.operator.log_path().display());
        for a in &self.agents {
            s += &format!("--- agent log: {}\n", a.log_path().display());
        }
        s
    }
}

/// The pool as its node sees it: `zpool status` parsed, checked against the object.
fn check_on_node(sb: &Sandbox, p: &Pool, obj: &ZfsPool) {
    let node = &sb.nodes[p.node];
    let d = node_dialect(node).unwrap();
    let status = obj.status.as_ref().expect("status");
    let pool_name = PoolName::new(status.pool_name.clone().expect("status.poolName")).unwrap();
    let out = node_zfs(node, &pgml_zfs::command::status(d, Some(&pool_name))).unwrap();
    let st = &pgml_zfs::parse_status(&out).unwrap()[0];
    assert_eq!(st.state, Health::Online, "{out}");
    let want_layout = if p.layout == "raidz1" {
        ObservedLayout::Raidz1
    } else {
        ObservedLayout::Stripe
    };
    assert_eq!(st.layout(), want_layout, "{out}");
    let on_node: BTreeSet<String> = st
        .members()
        .iter()
        .filter_map(|m| m.ebs_volume_id())
        .collect();
    let in_status: BTreeSet<String> = status
        .volumes
        .iter()
        .filter_map(|v| v.volume_id.clone())
        .collect();
    assert_eq!(on_node.len(), p.count, "members by-id on the node: {out}");
    assert_eq!(
        on_node, in_status,
        "the pool's members are exactly the volumes in status"
    );
}

/// Every volume the operator made for the namespace is in some pool's status, and each
/// pool has exactly its count (no duplicates, nothing forgotten).
async fn check_nothing_leaked(sb: &Sandbox, ns: &str, pools: &[ZfsPool]) {
    let in_status: BTreeSet<String> = pools
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.volumes.iter().filter_map(|v| v.volume_id.clone()))
        })
        .collect();
    let in_moto: BTreeSet<String> = volume_ids(&volumes_tagged(sb, keys::NAMESPACE, ns).await);
    assert_eq!(
        in_moto, in_status,
        "volumes in moto vs. volumes in the pools' status"
    );
    for p in pools {
        let uid = p.metadata.uid.clone().unwrap();
        let want = p.spec.template.volumes.count as usize;
        assert_eq!(
            volumes_tagged(sb, keys::POOL_UID, &uid).await.len(),
            want,
            "volumes of {:?}",
            p.metadata.name
        );
    }
}

/// Waits until the pool is `Ready=True`; `what` names the wait in the panic.
async fn wait_ready(api: &Api<ZfsPool>, name: &str, what: &str) -> ZfsPool {
    wait_for(api, name, what, READY_TIMEOUT, |o: &ZfsPool| {
        has_condition(o, "Ready", "True")
    })
    .await
}

/// Creates the pools (reclaimPolicy Delete, so the test leaves nothing behind).
async fn create_all(api: &Api<ZfsPool>, sb: &Sandbox, pools: &[Pool]) {
    for p in pools {
        api.create(
            &PostParams::default(),
            &manifest(p, &sb.nodes[p.node], "Delete"),
        )
        .await
        .unwrap();
    }
}

async fn delete_all(api: &Api<ZfsPool>, names: &[String]) {
    for n in names {
        let _ = api.delete(n, &DeleteParams::default()).await;
    }
    for n in names {
        wait_gone(api, n, READY_TIMEOUT).await;
    }
}

#[tokio::test]
async fn raid0_and_raidz1_pools_reach_ready() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpool").await;
    let fleet = Fleet::start(sb, ns.name());
    let api: Api<ZfsPool> = ns.api();
    let pools = [
        Pool {
            name: "stripe".into(),
            node: 0,
            layout: "raid0",
            count: 4,
            volumes: "type: gp3, sizeGiB: 1",
        },
        Pool {
            name: "parity".into(),
            node: 1,
            layout: "raidz1",
            count: 5,
            volumes: "type: gp3, sizeGiB: 1",
        },
        Pool {
            name: "fast".into(),
            node: 2,
            layout: "raidz1",
            count: 3,
            volumes: "type: io2, sizeGiB: 4, iops: 4000",
        },
    ];
    create_all(&api, sb, &pools).await;
    let mut ready = Vec::new();
    for p in &pools {
        let obj = wait_ready(&api, &p.name, "Ready").await;
        check_on_node(sb, p, &obj);
        let s = obj.status.as_ref().unwrap();
        assert_eq!(s.health.as_deref(), Some("ONLINE"));
        assert!(s.size_bytes.unwrap_or(0) > 0, "size reported");
        ready.push(obj);
    }
    check_nothing_leaked(sb, ns.name(), &ready).await;

    // `kubectl describe` tells the story: conditions and the operator's events.
    let out = std::process::Command::new(sb.kubectl())
        .args([
            "--kubeconfig",
            &sb.kube.kubeconfig.display().to_string(),
            "-n",
            ns.name(),
        ])
        .args(["describe", "zfspool", "parity"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Ready",
        "VolumesAttached",
        "PoolImported",
        "VolumeCreated",
        "ONLINE",
    ] {
        assert!(
            text.contains(needle),
            "kubectl describe lacks {needle}:\n{text}\n{}",
            fleet.logs()
        );
    }

    let names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
    delete_all(&api, &names).await;
    assert!(
        volumes_tagged(sb, keys::NAMESPACE, ns.name())
            .await
            .is_empty(),
        "Delete left volumes"
    );
    drop(fleet);
    ns.cleanup().await;
}

#[tokio::test]
async fn operator_killed_at_random_moments_while_provisioning() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "zpkill").await;
    let mut fleet = Fleet::start(sb, ns.name());
    let api: Api<ZfsPool> = ns.api();
    let pools: Vec<Pool> = (0..3)
        .map(|i| Pool {
            name: format!("crash{i}"),
            node: i,
            layout: if i == 1 { "raidz1" } else { "raid0" },
            count: 4,
            volumes: "type: gp3, sizeGiB: 1",
        })
        .collect();
    create_all(&api, sb, &pools).await;
    // SIGKILL at 20 random moments in the first seconds, when creates and attaches happen.
    let mut kills = 0;
    for _ in 0..20 {
        let ms = rand::rng().random_range(50..600);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        fleet.operator.kill();
        kills += 1;
        fleet.operator.start();
    }
    assert_eq!(kills, 20);
    let mut ready = Vec::new();
    for p in &pools {
        let obj = wait_ready(&api, &p.name, "Ready after the kills").await;
        check_on_node(sb, p, &obj);
        ready.push(obj);
    }
    check_nothing_leaked(sb, ns.name(), &ready).await;

    // The same with the agents killed while they build.
    let more: Vec<Pool> = (0..3)
        .map(|i| Pool {
            name: format!("agentcrash{i}"),
            node: i,
            layout: "raidz1",
            count: 3,
            volumes: "type: gp3, sizeGiB: 1",
        })
        .collect();
    create_all(&api, sb, &more).await;
    for _ in 0..10 {
        let ms = rand::rng().random_range(100..900);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        for a in &mut fleet.agents {
            a.kill();
            a.start();
        }
    }
    for p in &more {
        let obj = wait_ready(&api, &p.name, "Ready after agent kills").await;
        check_on_node(sb, p, &obj);
        ready.push(obj);
    }
    check_nothing_leaked(sb, ns.name(), &ready).await;

    let names: Vec<String> = pools.iter().chain(&more).map(|p| p.name.clone()).collect();
    delete_all(&api, &names).await;
    assert!(
        volumes_tagged(sb, keys::NAMESPACE, ns.name())
            .await
            .is_empty(),
        "Delete left volumes"
    );
    drop(fleet);
    ns.cleanup().await;
}
