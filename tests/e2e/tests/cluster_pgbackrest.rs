//! pgBackRest through the whole chain: the real operator renders `pgbackrest.conf` and the
//! archive lines into `C-config`, the test bed's kubelet (`pgml_testbed::kubelet`) runs the
//! instance manager from the operator's Pod with that ConfigMap as files, the manager makes
//! the stanza and reports `pg_stat_archiver`, and the controller turns it into the
//! `ContinuousArchiving` condition. Real PostgreSQL 15 and pgBackRest 2.45 against the
//! sandbox's S3 (moto behind its HTTPS front).
//!
//! One run: a one-instance cluster on a ZfsPool with `backups.pgbackrest` (instance-role
//! credentials) becomes Healthy; its ConfigMap has `pgbackrest.conf`; once WAL segments are
//! switched, `ContinuousArchiving` turns True (reason `WalArchived`). The spec's bucket is
//! then patched to one S3 refuses (it does not exist): the controller renders the file
//! again, the kubelet rewrites it, and the condition turns False (`ArchivingFailing`,
//! naming the segment), with a Warning Event `ArchivingFailing`. The spec's `* * * * *`
//! incremental schedule: before the patch, `LastBackupSucceeded` True (`BackupCompleted`)
//! with `status.lastBackup` and the backup in the bucket; after it, False
//! (`BackupFailed`, pgBackRest's error). Last, an `http://` endpoint (which pgBackRest
//! cannot use): `SpecValid` False with the reason, a Warning `PgBackRestConfigInvalid`, and
//! the ConfigMap left as it was.
//!
//! What the test bed changes, and why:
//! - Credentials: the managers reach the apiserver on the host's loopback, so they cannot
//!   run in the metadata service's network namespace (see `pgbackrest.rs`); pgBackRest gets
//!   moto's test keys through the managers' environment (`PGBACKREST_REPO1_S3_KEY_TYPE=shared`,
//!   `PGBACKREST_REPO1_S3_KEY`/`_KEY_SECRET`, passed by the kubelet as extra variables),
//!   never in a file or object, plus the sandbox's CA.
//! - The Pod's `/etc/pgml/config`: the kubelet writes the ConfigMap's files under the Pod's
//!   folder on the node and translates paths in the environment, not inside
//!   `postgresql.conf`, whose `archive_command` names `/etc/pgml/config/pgbackrest.conf`.
//!   The test binds the Pod's folder there in the node's mount namespace (private: the host
//!   does not see it), as the container's mount would. `pg1-path`/`pg1-port` are the Pod's
//!   in the file; the manager points pgBackRest at its server (`PGBACKREST_PG1_*`).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use pgml_api::cluster::ClusterPhase;
use pgml_api::common::{Condition, condition as c};
use pgml_api::{PgmlCluster, ZfsPool};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{TEST_ACCESS_KEY, TEST_SECRET_KEY, s3_create_bucket, s3_list_keys};
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::kubelet::Kubelet;
use pgml_testbed::nodes::node_exec;
use pgml_testbed::procs;
use pgml_testbed::sandbox::NodeInfo;
use pgml_testbed::wait::{try_wait_for, wait_gone};
use serde_json::{Value, json};

const CLUSTER: &str = "arch";
const TIMEOUT: Duration = Duration::from_secs(240);
/// Where the Pod mounts the ConfigMap (and `archive_command` reads pgbackrest.conf).
const POD_CONFIG_DIR: &str = "/etc/pgml/config";

fn manifest(node: &NodeInfo, bucket: &str, endpoint: &str, region: &str) -> Value {
    json!({
        "apiVersion": "pgml.io/v1alpha1",
        "kind": "PgmlCluster",
        "metadata": {"name": CLUSTER},
        "spec": {
            "instances": 1,
            "nodeSelector": {"kubernetes.io/hostname": node.name},
            "storage": {"zfs": {"template": {
                "volumes": {"count": 2, "type": "gp3", "sizeGiB": 1},
                "layout": "raid0",
                "reclaimPolicy": "Delete",
            }}},
            "backups": {"pgbackrest": {
                "s3": {"bucket": bucket, "region": region, "endpoint": endpoint},
                "credentials": {"mode": "InstanceRole"},
                "schedule": {"incremental": "* * * * *"},
            }},
        },
    })
}

fn condition<'a>(cl: &'a PgmlCluster, type_: &str) -> Option<&'a Condition> {
    cl.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
}

/// The node's mount namespace binds `dir` at the Pod's config folder.
fn bind_config(node: &NodeInfo, dir: &str) {
    std::fs::create_dir_all(POD_CONFIG_DIR).expect("creating the mount point");
    let out = node_exec(node, &["mount", "--bind", dir, POD_CONFIG_DIR]).expect("nsenter mount");
    assert!(
        out.status.success(),
        "mount {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Undoes the bind when dropped (a failing test included).
struct Unbind<'a>(&'a NodeInfo);

impl Drop for Unbind<'_> {
    fn drop(&mut self) {
        let _ = node_exec(self.0, &["umount", POD_CONFIG_DIR]);
        let _ = std::fs::remove_dir(POD_CONFIG_DIR);
        let _ = std::fs::remove_dir("/etc/pgml");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_archiving_true_then_false_on_a_refused_bucket() {
    let started = Instant::now();
    let sb = Sandbox::get();
    let s3 = sb.s3_tls();
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    let ns = TestNamespace::new(&client, "pgbr-arch").await;
    let node = &sb.nodes[2];
    let run = format!("{:08x}", rand::random::<u32>());
    let bucket = format!("pgml-arch-{run}");
    let refused = format!("pgml-arch-refused-{run}");
    s3_create_bucket(sb, &bucket).unwrap();

    let mut operator = procs::operator(sb, ns.name());
    let mut agent = procs::agent(sb, node, ns.name());
    let ca = s3.ca_file.to_string_lossy().into_owned();
    let mut kubelet = Kubelet::start(
        sb,
        client.clone(),
        ns.name(),
        &[
            ("PGBACKREST_REPO1_STORAGE_CA_FILE", &ca),
            ("PGBACKREST_REPO1_S3_KEY_TYPE", "shared"),
            ("PGBACKREST_REPO1_S3_KEY", TEST_ACCESS_KEY),
            ("PGBACKREST_REPO1_S3_KEY_SECRET", TEST_SECRET_KEY),
        ],
    );
    let logs = |k: &Kubelet| {
        format!(
            "--- operator log: {}\n--- agent log: {}\n{}",
            operator.log_path().display(),
            agent.log_path().display(),
            k.logs(30)
        )
    };
    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let apply = |m: Value| {
        let clusters = clusters.clone();
        async move {
            clusters
                .patch(
                    CLUSTER,
                    &PatchParams::apply("kubectl").force(),
                    &Patch::Apply(&m),
                )
                .await
                .expect("applying the PgmlCluster")
        }
    };
    apply(manifest(node, &bucket, &s3.endpoint, &sb.region)).await;
    let pod_name = format!("{CLUSTER}-1");

    // The Pod's config folder at /etc/pgml/config in the node, once the kubelet wrote it.
    let inst = kubelet.wait_instance(&pod_name, TIMEOUT).await;
    // The kubelet's folder of this Pod: `<node>/pods/<namespace>/<pod>-<uid prefix>`.
    let uid = pods.get(&pod_name).await.unwrap().uid().unwrap();
    let pods_dir = node.root.join("pods").join(ns.name());
    let pod_dir = std::fs::read_dir(&pods_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&format!("{pod_name}-")))
                .is_some_and(|u| uid.starts_with(u))
        })
        .unwrap_or_else(|| panic!("no folder of {pod_name} in {}", pods_dir.display()));
    let config_dir = format!("{}{POD_CONFIG_DIR}", pod_dir.display());
    assert!(
        std::path::Path::new(&config_dir)
            .join("pgbackrest.conf")
            .is_file(),
        "the kubelet did not write pgbackrest.conf in {config_dir}"
    );
    bind_config(node, &config_dir);
    let _unbind = Unbind(node);

    let cm: Api<ConfigMap> = ns.api();
    let data = cm
        .get(&format!("{CLUSTER}-config"))
        .await
        .unwrap()
        .data
        .unwrap_or_default();
    let file = data
        .get("pgbackrest.conf")
        .expect("pgbackrest.conf in C-config");
    assert!(file.contains("repo1-s3-key-type=auto\n"), "{file}");
    assert!(
        !file.contains(TEST_SECRET_KEY) && !file.contains("key-secret"),
        "{file}"
    );
    assert!(
        data["postgresql.conf"].contains(
            "archive_command = 'pgbackrest --config=/etc/pgml/config/pgbackrest.conf --stanza=arch archive-push %p'"
        ),
        "{}",
        data["postgresql.conf"]
    );

    let wait = |what: &'static str, ok: Box<dyn Fn(&PgmlCluster) -> bool + Send + Sync>| {
        let clusters = clusters.clone();
        let context = logs(&kubelet);
        async move {
            try_wait_for(
                &clusters,
                CLUSTER,
                what,
                TIMEOUT,
                Duration::from_millis(500),
                || context.clone(),
                ok,
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
        }
    };
    wait(
        "Healthy",
        Box::new(|cl| {
            cl.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(ClusterPhase::Healthy))
        }),
    )
    .await;
    let healthy_at = started.elapsed();

    // WAL switched until the condition says it is archived.
    let pg = inst.postgres();
    pg.sql("CREATE TABLE t (id int, v text)").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let cl = loop {
        pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
            .unwrap();
        pg.sql("SELECT pg_switch_wal()").unwrap();
        let cl = clusters.get(CLUSTER).await.unwrap();
        if condition(&cl, c::CONTINUOUS_ARCHIVING).is_some_and(|x| x.status == "True") {
            break cl;
        }
        assert!(
            Instant::now() < deadline,
            "ContinuousArchiving never True: {:?}\n{}",
            cl.status,
            logs(&kubelet)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let cond = condition(&cl, c::CONTINUOUS_ARCHIVING).unwrap();
    assert_eq!(cond.reason, "WalArchived", "{cond:?}");
    assert_eq!(cond.observed_generation, cl.metadata.generation);
    let archived = cl.status.as_ref().unwrap().archiving.clone().unwrap();
    let wal = archived.last_archived_wal.clone().unwrap();
    let keys = s3_list_keys(
        sb,
        &bucket,
        &format!("pgbackrest/{}/{CLUSTER}/archive/{CLUSTER}/", ns.name()),
    )
    .unwrap();
    assert!(
        keys.iter().any(|k| k.contains(&wal)),
        "{wal} not in the bucket: {keys:?}"
    );
    println!("ContinuousArchiving: True ({})", cond.message);
    let true_at = started.elapsed();

    // The `* * * * *` incremental schedule: the manager's backup reaches the status.
    let cl = wait(
        "LastBackupSucceeded True",
        Box::new(|cl| condition(cl, c::LAST_BACKUP_SUCCEEDED).is_some_and(|x| x.status == "True")),
    )
    .await;
    let cond = condition(&cl, c::LAST_BACKUP_SUCCEEDED).unwrap();
    assert_eq!(cond.reason, "BackupCompleted", "{cond:?}");
    let last = cl.status.as_ref().unwrap().last_backup.clone().unwrap();
    assert!(last.succeeded, "{last:?}");
    assert_eq!(last.backup_type.as_deref(), Some("incr"), "{last:?}");
    assert!(last.completion_time.is_some(), "{last:?}");
    let backups = s3_list_keys(
        sb,
        &bucket,
        &format!("pgbackrest/{}/{CLUSTER}/backup/{CLUSTER}/", ns.name()),
    )
    .unwrap();
    assert!(
        backups.iter().any(|k| k.ends_with("backup.manifest")),
        "no backup in the bucket: {backups:?}"
    );
    println!(
        "LastBackupSucceeded: True ({}); lastBackup {last:?}",
        cond.message
    );
    let backup_at = started.elapsed();

    // The bucket patched to one S3 refuses: re-rendered, rewritten, failing.
    apply(manifest(node, &refused, &s3.endpoint, &sb.region)).await;
    let deadline = Instant::now() + TIMEOUT;
    let cl = loop {
        let cl = clusters.get(CLUSTER).await.unwrap();
        let rewritten = std::fs::read_to_string(format!("{config_dir}/pgbackrest.conf"))
            .unwrap_or_default()
            .contains(&refused);
        if rewritten {
            pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100) g")
                .unwrap();
            pg.sql("SELECT pg_switch_wal()").unwrap();
        }
        if condition(&cl, c::CONTINUOUS_ARCHIVING).is_some_and(|x| x.status == "False") {
            break cl;
        }
        assert!(
            Instant::now() < deadline,
            "ContinuousArchiving never False: {:?}\n{}",
            cl.status,
            logs(&kubelet)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let cond = condition(&cl, c::CONTINUOUS_ARCHIVING).unwrap();
    assert_eq!(cond.reason, "ArchivingFailing", "{cond:?}");
    let failed = cl.status.as_ref().unwrap().archiving.clone().unwrap();
    let failed_wal = failed.last_failed_wal.clone().expect("lastFailedWal");
    assert!(cond.message.contains(&failed_wal), "{cond:?}");
    println!("ContinuousArchiving: False ({})", cond.message);
    let false_at = started.elapsed();
    let events: Api<Event> = ns.api();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = events.list(&ListParams::default()).await.unwrap().items;
        if let Some(e) = list
            .iter()
            .find(|e| e.reason.as_deref() == Some("ArchivingFailing"))
        {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            break;
        }
        assert!(Instant::now() < deadline, "no ArchivingFailing Event");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The next scheduled backup fails on that bucket too.
    let cl = wait(
        "LastBackupSucceeded False",
        Box::new(|cl| condition(cl, c::LAST_BACKUP_SUCCEEDED).is_some_and(|x| x.status == "False")),
    )
    .await;
    let cond = condition(&cl, c::LAST_BACKUP_SUCCEEDED).unwrap();
    assert_eq!(cond.reason, "BackupFailed", "{cond:?}");
    assert!(cond.message.contains("ERROR"), "{cond:?}");
    assert!(
        !cl.status
            .as_ref()
            .unwrap()
            .last_backup
            .as_ref()
            .unwrap()
            .succeeded
    );
    println!("LastBackupSucceeded: False ({})", cond.message);
    println!(
        "cluster pgBackRest: Healthy at {healthy_at:?}, ContinuousArchiving True at \
         {true_at:?}, LastBackupSucceeded True at {backup_at:?}, bucket patched then, \
         ContinuousArchiving False at {false_at:?}, LastBackupSucceeded False at {:?}",
        started.elapsed()
    );

    // An endpoint pgBackRest cannot use (http://, which the schema lets through): SpecValid
    // False with the renderer's reason, a Warning, and the ConfigMap left as it was.
    let before = cm.get(&format!("{CLUSTER}-config")).await.unwrap().data;
    apply(manifest(
        node,
        &refused,
        "http://127.0.0.1:9000",
        &sb.region,
    ))
    .await;
    let cl = wait(
        "SpecValid False",
        Box::new(|cl| condition(cl, c::SPEC_VALID).is_some_and(|x| x.status == "False")),
    )
    .await;
    let cond = condition(&cl, c::SPEC_VALID).unwrap();
    assert!(cond.message.contains("HTTPS only"), "{cond:?}");
    assert_eq!(cond.observed_generation, cl.metadata.generation);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.reason.as_deref() == Some("PgBackRestConfigInvalid")
                && e.type_.as_deref() == Some("Warning")
        })
    {
        assert!(
            Instant::now() < deadline,
            "no Warning PgBackRestConfigInvalid"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = cm.get(&format!("{CLUSTER}-config")).await.unwrap().data;
    assert_eq!(
        after, before,
        "the ConfigMap changed on a spec it cannot render"
    );
    println!("SpecValid: False ({})", cond.message);

    // Clean up: the manager stopped, the bind undone, the cluster and its pool deleted.
    kubelet.shutdown();
    drop(_unbind);
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&clusters, CLUSTER, TIMEOUT).await;
    let pools: Api<ZfsPool> = ns.api();
    wait_gone(&pools, &pod_name, TIMEOUT).await;
    operator.stop(Duration::from_secs(10));
    agent.stop(Duration::from_secs(10));
    ns.cleanup().await;
}
