//! Issue 17: an instance that was ever primary never runs `initdb`. With the real operator,
//! a node agent and the instance manager run by the test bed's kubelet on real PostgreSQL
//! 15: a one-instance cluster bootstraps, the operator records the database's system
//! identifier in `status.systemIdentifier` before it labels the Pod primary (the `-rw`
//! Service), a row is written; then a reboot's state is made by hand: the instance stopped,
//! its pool exported (its agent stopped first, or it would import the pool back at once),
//! its pgdata mount point an empty folder on the node's root. The restarted manager must
//! wait and say why, never make a new database there; once the agent imports the pool
//! again the same database comes back with the row.

mod cluster_common;

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_common::{ClusterFixture, TIMEOUT, role_of, zfs_cluster};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::DeleteParams;
use pgml_api::cluster::ClusterPhase;
use pgml_api::instance::InstanceReport;
use pgml_api::{PgmlCluster, ZfsPool};
use pgml_testbed::nodes::{node_exec, node_exec_ok, node_path_exists};
use pgml_testbed::wait::wait_gone;
use serde_json::json;

const CLUSTER: &str = "ident";
/// The sandbox node the instance is pinned to (its agent is the only one started).
const NODE: usize = 1;
/// How long the manager is watched not making a database on the empty mount point.
const HOLD: Duration = Duration::from_secs(15);

fn report(p: &Pod) -> Option<InstanceReport> {
    InstanceReport::parse(
        p.annotations()
            .get("pgml.io/instance-status")
            .map(String::as_str),
    )
}

fn identifier(c: &PgmlCluster) -> Option<String> {
    c.status.as_ref()?.system_identifier.clone()
}

fn healthy(c: &PgmlCluster) -> bool {
    c.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(ClusterPhase::Healthy) && s.ready_instances == Some(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bootstrapped_primary_with_an_empty_pgdata_waits_instead_of_initdb() {
    let started = Instant::now();
    let mut f = ClusterFixture::start("pgml-ident", CLUSTER, &[NODE], &[])
        .await
        .with_kubelet(&[], 25)
        .polling(Duration::from_millis(250));
    let node_name = f.sb.nodes[NODE].name.clone();
    let n1 = format!("{CLUSTER}-1");
    let volumes = json!({"count": 1, "type": "gp3", "sizeGiB": 1});
    let spec = json!({"nodeSelector": {"kubernetes.io/hostname": node_name}});
    f.apply(&zfs_cluster(CLUSTER, 1, volumes, spec)).await;

    // Bootstrap: the Pod is labelled primary only once the identifier is stored (the Pod
    // read first, the cluster after it: a label seen means the record came before).
    let deadline = Instant::now() + TIMEOUT;
    let id = loop {
        let pod = f.pods().get_opt(&n1).await.unwrap();
        let c = f.clusters().get(CLUSTER).await.unwrap();
        if pod.as_ref().and_then(role_of).as_deref() == Some("primary") {
            let id = identifier(&c);
            assert!(
                id.is_some(),
                "{n1} labelled primary before the identifier was recorded: {:?}",
                c.status
            );
            break id.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{n1} never labelled primary: {:?}\n{}",
            c.status,
            f.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    f.wait_cluster("Healthy", healthy).await;
    let i = f.instance(&n1).await;
    let pg = i.postgres();
    assert_eq!(
        pg.sql("SELECT system_identifier FROM pg_control_system()")
            .unwrap(),
        id,
        "the recorded identifier is the server's"
    );
    pg.sql("CREATE TABLE kept (note text NOT NULL)").unwrap();
    pg.sql("INSERT INTO kept VALUES ('written before the reboot')")
        .unwrap();
    drop(pg);
    eprintln!("bootstrapped ({id}) at {:?}", started.elapsed());

    // The reboot. The operator stopped first, so that the Pod is not made again before the
    // pool is gone; deleting the Pod stops its manager (PostgreSQL stopped fast).
    f.operator.stop(Duration::from_secs(10));
    f.pods()
        .delete(&n1, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&f.pods(), &n1, TIMEOUT).await;
    let kubelet = f.kubelet.as_ref().expect("the kubelet");
    let deadline = Instant::now() + TIMEOUT;
    while kubelet.instance(&n1).is_some() {
        assert!(
            Instant::now() < deadline,
            "the kubelet did not stop {n1}'s manager"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The pool not imported, as after a reboot (no cachefile): the agent stopped, or it
    // would import it back; then the mount point an empty folder on the node's root.
    f.agents[0].stop(Duration::from_secs(10));
    let pool: ZfsPool = f.ns.api().get(&n1).await.unwrap();
    let pool_name = pool
        .spec
        .pool_name
        .clone()
        .expect("the operator names the pool");
    let node = &i.node;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = node_exec(node, &["zpool", "export", &pool_name]).unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zpool export {pool_name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mount = Path::new(&i.pgdata)
        .parent()
        .expect("PGDATA is below the claim's mount")
        .to_str()
        .unwrap()
        .to_string();
    node_exec_ok(node, &["mkdir", "-p", &mount]).unwrap();
    assert_eq!(
        node_exec_ok(node, &["ls", "-A", &mount]).unwrap(),
        "",
        "the mount point is empty once the pool is exported"
    );
    let pg_version = format!("{}/PG_VERSION", i.pgdata);

    // The manager again (the operator makes the Pod again, the kubelet runs it): it waits.
    // Its log is appended to the first run's: only what follows is this run's.
    let log_from = std::fs::metadata(&i.log).map_or(0, |m| m.len() as usize);
    f.operator.start();
    let i2 = f.instance(&n1).await;
    assert_eq!(i2.pgdata, i.pgdata);
    // Two rules stop it, the first to see the state speaking: PGDATA is not on the pool's
    // dataset (the mount table), and PGDATA is empty though the cluster was bootstrapped
    // (status.systemIdentifier; unit-tested in decide_tests.rs). Here the mount check,
    // which also keeps a replica from being copied or started there.
    let dataset = format!("{pool_name}/pgdata");
    let says_why = |r: &InstanceReport| {
        r.message.contains(&format!("not on ZFS dataset {dataset}"))
            && r.message.contains("is the pool imported")
    };
    f.wait_pod(&n1, "a report saying why it does not start", |p| {
        report(p).is_some_and(|r| says_why(&r))
    })
    .await;
    let until = Instant::now() + HOLD;
    while Instant::now() < until {
        assert!(
            !node_path_exists(node, &pg_version).unwrap(),
            "a new database was made on the empty mount point\n{}",
            f.logs()
        );
        let r = report(&f.pods().get(&n1).await.unwrap()).expect("a report");
        assert!(!r.running && says_why(&r), "{r:?}\n{}", f.logs());
        let c = f.clusters().get(CLUSTER).await.unwrap();
        assert_eq!(identifier(&c).as_deref(), Some(id.as_str()), "kept");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(&i2.log).unwrap_or_default();
    let log = log
        .get(if i2.log == i.log { log_from } else { 0 }..)
        .unwrap_or_default();
    assert!(
        log.contains("starting pgml-instance"),
        "not this run's log:\n{log}"
    );
    assert!(
        !log.contains("empty PGDATA and bootstrap primary: initdb"),
        "the manager ran initdb:\n{log}"
    );
    f.wait_cluster("Degraded: the primary does not run", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(ClusterPhase::Degraded))
    })
    .await;
    eprintln!(
        "waited {HOLD:?} on an empty PGDATA at {:?}",
        started.elapsed()
    );

    // The agent imports the pool again: the same database, with its row.
    f.agents[0].start();
    f.wait_cluster("Healthy again", healthy).await;
    let pg = i2.postgres();
    assert_eq!(
        pg.sql("SELECT system_identifier FROM pg_control_system()")
            .unwrap(),
        id
    );
    assert_eq!(
        pg.sql("SELECT note FROM kept").unwrap(),
        "written before the reboot"
    );
    assert!(!pg.in_recovery().unwrap());
    f.wait_role(&n1, "primary").await;
    drop(pg);
    let c: PgmlCluster = f.clusters().get(CLUSTER).await.unwrap();
    assert_eq!(identifier(&c).as_deref(), Some(id.as_str()));
    eprintln!("back with its data at {:?}", started.elapsed());
    f.finish().await;
}
