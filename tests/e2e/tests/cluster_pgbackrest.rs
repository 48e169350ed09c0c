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

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::{ClusterFixture, TIMEOUT, zfs_cluster};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::DeleteParams;
use pgml_api::PgmlCluster;
use pgml_api::cluster::ClusterPhase;
use pgml_api::common::{Condition, condition as c};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{TEST_SECRET_KEY, s3_create_bucket, s3_list_keys};
use pgml_testbed::pg::Postgres;
use pgml_testbed::sandbox::NodeInfo;
use serde_json::{Value, json};

const CLUSTER: &str = "arch";

fn manifest(node: &NodeInfo, bucket: &str, endpoint: &str, region: &str) -> Value {
    let volumes = json!({"count": 2, "type": "gp3", "sizeGiB": 1});
    zfs_cluster(
        CLUSTER,
        1,
        volumes,
        json!({
            "nodeSelector": {"kubernetes.io/hostname": node.name},
            "backups": {"pgbackrest": {
                "s3": {"bucket": bucket, "region": region, "endpoint": endpoint},
                "credentials": {"mode": "InstanceRole"},
                "schedule": {"incremental": "* * * * *"},
            }},
        }),
    )
}

fn condition<'a>(cl: &'a PgmlCluster, type_: &str) -> Option<&'a Condition> {
    cl.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
}

/// Inserts `rows` rows into table `t` and switches WAL: a segment to archive.
fn make_wal(pg: &Postgres, rows: u32) {
    pg.sql(&format!(
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
    ))
    .unwrap();
    pg.sql("SELECT pg_switch_wal()").unwrap();
}

/// Runs `each_pass` (which makes WAL to archive), then reads the cluster, every 2 s until
/// its ContinuousArchiving condition is `status` (up to [`TIMEOUT`]); the cluster then.
async fn wait_archiving(f: &ClusterFixture, status: &str, each_pass: impl Fn()) -> PgmlCluster {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        each_pass();
        let cl = f.clusters().get(CLUSTER).await.unwrap();
        if condition(&cl, c::CONTINUOUS_ARCHIVING).is_some_and(|x| x.status == status) {
            return cl;
        }
        assert!(
            Instant::now() < deadline,
            "ContinuousArchiving never {status}: {:?}\n{}",
            cl.status,
            f.logs()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_archiving_true_then_false_on_a_refused_bucket() {
    let started = Instant::now();
    let sb = Sandbox::get();
    let s3 = sb.s3_tls();
    let node = &sb.nodes[2];
    let run = format!("{:08x}", rand::random::<u32>());
    let bucket = format!("pgml-arch-{run}");
    let refused = format!("pgml-arch-refused-{run}");
    s3_create_bucket(sb, &bucket).unwrap();

    let mut f = ClusterFixture::start("pgbr-arch", CLUSTER, &[2], &[])
        .await
        .with_s3_kubelet(30);
    let ns = &f.ns;
    f.apply(&manifest(node, &bucket, &s3.endpoint, &sb.region))
        .await;
    let pod_name = format!("{CLUSTER}-1");

    // The Pod's config folder at /etc/pgml/config in the node, once the kubelet wrote it.
    let inst = f.instance(&pod_name).await;
    let bound = f.bind_pod_config(node, &pod_name).await;
    let config_dir = bound.dir.clone();

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

    f.wait_cluster("Healthy", |cl| {
        cl.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(ClusterPhase::Healthy))
    })
    .await;
    let healthy_at = started.elapsed();

    // WAL switched until the condition says it is archived.
    let pg = inst.postgres();
    pg.sql("CREATE TABLE t (id int, v text)").unwrap();
    let cl = wait_archiving(&f, "True", || make_wal(&pg, 1000)).await;
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
    let cl = f
        .wait_cluster("LastBackupSucceeded True", |cl| {
            condition(cl, c::LAST_BACKUP_SUCCEEDED).is_some_and(|x| x.status == "True")
        })
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
    f.apply(&manifest(node, &refused, &s3.endpoint, &sb.region))
        .await;
    let cl = wait_archiving(&f, "False", || {
        let rewritten = std::fs::read_to_string(format!("{config_dir}/pgbackrest.conf"))
            .unwrap_or_default()
            .contains(&refused);
        if rewritten {
            make_wal(&pg, 100);
        }
    })
    .await;
    let cond = condition(&cl, c::CONTINUOUS_ARCHIVING).unwrap();
    assert_eq!(cond.reason, "ArchivingFailing", "{cond:?}");
    let failed = cl.status.as_ref().unwrap().archiving.clone().unwrap();
    let failed_wal = failed.last_failed_wal.clone().expect("lastFailedWal");
    assert!(cond.message.contains(&failed_wal), "{cond:?}");
    println!("ContinuousArchiving: False ({})", cond.message);
    let false_at = started.elapsed();
    let e = f
        .wait_event_within("ArchivingFailing", Duration::from_secs(30), |e| {
            e.reason.as_deref() == Some("ArchivingFailing")
        })
        .await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));

    // The next scheduled backup fails on that bucket too.
    let cl = f
        .wait_cluster("LastBackupSucceeded False", |cl| {
            condition(cl, c::LAST_BACKUP_SUCCEEDED).is_some_and(|x| x.status == "False")
        })
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
    f.apply(&manifest(
        node,
        &refused,
        "http://127.0.0.1:9000",
        &sb.region,
    ))
    .await;
    let cl = f
        .wait_cluster("SpecValid False", |cl| {
            condition(cl, c::SPEC_VALID).is_some_and(|x| x.status == "False")
        })
        .await;
    let cond = condition(&cl, c::SPEC_VALID).unwrap();
    assert!(cond.message.contains("HTTPS only"), "{cond:?}");
    assert_eq!(cond.observed_generation, cl.metadata.generation);
    f.wait_event_within(
        "Warning PgBackRestConfigInvalid",
        Duration::from_secs(30),
        |e| {
            e.reason.as_deref() == Some("PgBackRestConfigInvalid")
                && e.type_.as_deref() == Some("Warning")
        },
    )
    .await;
    let after = cm.get(&format!("{CLUSTER}-config")).await.unwrap().data;
    assert_eq!(
        after, before,
        "the ConfigMap changed on a spec it cannot render"
    );
    println!("SpecValid: False ({})", cond.message);

    // Clean up: the manager stopped, the bind undone, the cluster and its pool deleted.
    f.shutdown_kubelet();
    drop(bound);
    f.delete_cluster(&DeleteParams::default()).await;
    f.wait_pools_gone(&[&pod_name]).await;
    f.finish().await;
}
