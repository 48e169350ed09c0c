//! pgBackRest WAL archiving with real PostgreSQL 15 and real pgBackRest 2.45 against the
//! simulated S3 (moto behind the sandbox's HTTPS front), with the configuration and
//! commands `pgml_operator::pgbackrest` renders, and the `ContinuousArchiving` condition
//! computed from the real `pg_stat_archiver`.
//!
//! 1. The rendered `pgbackrest.conf` (instance-role credentials) says
//!    `repo1-s3-key-type=auto` and holds no key, secret or token.
//! 2. PostgreSQL runs on a simulated node (a folder of the node: a pool adds nothing to
//!    archiving) with `archive_mode=on` and the rendered `archive_command`;
//!    `stanza-create`, then WAL switches: `archived_count` grows, `failed_count` stays 0,
//!    the segments are objects in the bucket (listed through the sandbox's S3 API), the
//!    condition is True; one full backup, and `pgbackrest info` shows it.
//! 3. The file is rendered again for a bucket that does not exist (moto answers 404
//!    NoSuchBucket, which pgBackRest reports as error 103, no valid repository: its
//!    `archive.info` is missing): `failed_count` grows, `last_failed_wal` is set, the
//!    condition is False and names the segment; rendered back for the real bucket, the
//!    archive catches up and it is True.
//!
//! **The instance role without EC2.** `auto` takes the instance role's temporary
//! credentials from the metadata service (IMDSv2 at 169.254.169.254). The host's network is
//! not changed to fake it: the PostgreSQL server and the `pgbackrest` commands run in a
//! network namespace of the test's own ([`NodeImds`]: `unshare -n`, loopback carrying
//! 169.254.169.254), where `tests/testbed/sandbox/imds.py` answers as EC2's IMDS does (role
//! `pgml-node-role`, whose credentials are moto's test keys) and pipes 127.0.0.1:<port> to
//! the sandbox's HTTPS front of S3. So the rendered file is used exactly as rendered, key
//! type `auto` included, and the test checks that the IMDS was asked. The one thing given
//! through pgBackRest's environment is the sandbox's CA
//! (`PGBACKREST_REPO1_STORAGE_CA_FILE`: pgBackRest speaks HTTPS only, and the front's
//! certificate is signed by a CA made at sandbox start). The endpoint
//! (`https://127.0.0.1:<port>`) is the spec's `s3.endpoint`, rendered as an S3-compatible
//! store (path-style URIs, `repo1-storage-port`).
//!
//! **The instance manager's part** ([`the_instance_manager_archives_and_backs_up`]): the
//! real `pgml-instance run` (in the node, as `cluster_data.rs` runs it) bootstraps the
//! primary of a PgmlCluster whose spec has `backups.pgbackrest` (the test writes the status
//! the controller would), with the ConfigMap's two files in its `PGML_CONFIG_DIR`:
//! `pgbackrest.conf` exactly as the controller renders it (`pg1-path`, `pg1-port`,
//! `pg1-socket-path` of the Pod, not of this server: the manager gives pgBackRest its own
//! through `PGBACKREST_PG1_*`), and the `archive_command` line with the file's path here
//! instead of the Pod's `/etc/pgml/config`. The file first names a bucket S3 refuses:
//! `stanza-create` fails, the report's `message` carries pgBackRest's error while the server
//! stays ready, and once the file is fixed the retry makes the stanza. The manager, not
//! the test, runs `stanza-create` and the scheduled backups and reports `archiver` and
//! `lastBackup` in its Pod's annotation. The manager talks to the sandbox's apiserver on
//! the host's loopback, which the metadata service's network namespace cannot reach, so
//! here pgBackRest gets the sandbox's test credentials (moto's fake keys) through the
//! manager's environment — `PGBACKREST_REPO1_S3_KEY_TYPE=shared`,
//! `PGBACKREST_REPO1_S3_KEY`/`_KEY_SECRET`, which override the file's `auto` — never in a
//! file; the PostgreSQL server it starts inherits them (its `archive_command` works only
//! if it does).

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::instance_pod;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use pgml_api::cluster::{
    BackupRetention, BackupSchedule, CredentialsMode, PgBackRest, S3Credentials, S3Repository,
};
use pgml_api::instance::{InstanceReport, STATUS_ANNOTATION};
use pgml_api::{PgmlCluster, PgmlClusterSpec};
use pgml_operator::cluster::config;
use pgml_operator::pgbackrest::{
    self, ArchiverStats, ArchivingCondition, PgTarget, archive_command, continuous_archiving,
    render_config,
};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{
    NodeImds, TEST_ACCESS_KEY, TEST_SECRET_KEY, s3_create_bucket, s3_list_keys,
};
use pgml_testbed::kube::{TestNamespace, client, ensure_crds};
use pgml_testbed::pg::{Postgres, SOCKET_DIR, free_port};
use pgml_testbed::procs::{self, Proc};
use pgml_testbed::sandbox::NodeInfo;
use serde_json::json;

const CLUSTER: &str = "main";
const WAIT: Duration = Duration::from_secs(90);

fn spec(bucket: &str, endpoint: &str) -> PgBackRest {
    PgBackRest {
        s3: S3Repository {
            bucket: bucket.to_string(),
            region: Sandbox::get().region.clone(),
            path: None,
            endpoint: Some(endpoint.to_string()),
        },
        credentials: S3Credentials {
            mode: CredentialsMode::InstanceRole,
            service_account_role_arn: None,
        },
        schedule: Default::default(),
        retention: BackupRetention { full: 2 },
    }
}

/// Writes the rendered file where the archive command reads it (readable by `postgres`;
/// the nodes share /tmp with the host).
fn write_config(path: &str, conf: &str) {
    std::fs::write(path, conf).unwrap();
    let mut perm = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(path, perm).unwrap();
}

/// The rendered file must say where credentials come from and never hold one.
fn assert_no_secret(conf: &str) {
    assert!(
        conf.lines().any(|l| l == "repo1-s3-key-type=auto"),
        "instance role → key type auto:\n{conf}"
    );
    for l in conf.lines().filter(|l| !l.starts_with('#')) {
        let key = l.split('=').next().unwrap_or("");
        assert!(
            !matches!(
                key,
                "repo1-s3-key" | "repo1-s3-key-secret" | "repo1-s3-token"
            ) && !key.contains("secret")
                && !key.contains("token"),
            "a credential line in the rendered file: {l}"
        );
    }
    assert!(
        !conf.contains("testing"),
        "moto's keys in the file:\n{conf}"
    );
}

fn stats(pg: &Postgres) -> ArchiverStats {
    let row = pg.sql(ArchiverStats::QUERY).expect("pg_stat_archiver");
    ArchiverStats::parse_row(&row).unwrap_or_else(|| panic!("pg_stat_archiver row {row:?}"))
}

/// Makes some WAL and switches to a new segment (which the archiver then pushes).
fn switch_wal(pg: &Postgres) -> String {
    pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
        .unwrap();
    pg.sql("SELECT pg_walfile_name(pg_switch_wal())").unwrap()
}

fn wait_stats(pg: &Postgres, what: &str, ok: impl Fn(&ArchiverStats) -> bool) -> ArchiverStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stats(pg);
        if ok(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: pg_stat_archiver never got there in {WAIT:?}: {s:?}\nserver log:\n{}",
                pg.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pgbackrest(
    pg: &Postgres,
    wrapper: &[&str],
    config: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> String {
    pgbackrest_of(CLUSTER, pg, wrapper, config, env, args)
}

/// [`pgbackrest`] for the stanza of cluster `cluster`.
fn pgbackrest_of(
    cluster: &str,
    pg: &Postgres,
    wrapper: &[&str],
    config: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> String {
    let config_arg = format!("--config={config}");
    let stanza_arg = format!("--stanza={}", pgbackrest::stanza(cluster));
    let mut argv = vec![pgbackrest::PROGRAM, &config_arg, &stanza_arg];
    argv.extend_from_slice(args);
    let out = pg
        .run_as_postgres_env(wrapper, &argv, env)
        .expect("pgbackrest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{argv:?} failed ({}): {text}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn wal_archiving_to_s3_and_the_archiving_condition() {
    let t0 = Instant::now();
    let sb = Sandbox::get();
    let s3 = sb.s3_tls();
    let node = &sb.nodes[0];
    let run = format!("{:08x}", rand::random::<u32>());
    let namespace = format!("pgbr-{run}");
    let bucket = format!("pgml-archive-{run}");
    let refused = format!("pgml-refused-{run}");
    s3_create_bucket(sb, &bucket).unwrap();

    // PostgreSQL on a folder of the node.
    let port = free_port();
    let data_dir = format!("{}/pgbr-{run}/pgdata", node.mnt_dir.display());
    let pg = Postgres::new(node, &data_dir, port);
    pg.initdb().unwrap();

    let conf_dir = format!("/tmp/pgml-pgbr-{run}");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let config = format!("{conf_dir}/{}", pgbackrest::CONFIG_KEY);
    let target = PgTarget {
        data_dir: data_dir.clone(),
        port,
        socket_dir: Some(SOCKET_DIR.to_string()),
    };
    let good = render_config(&namespace, CLUSTER, &spec(&bucket, &s3.endpoint), &target).unwrap();
    assert_no_secret(&good);
    assert!(good.contains(&format!("repo1-path=/pgbackrest/{namespace}/{CLUSTER}")));
    assert!(good.contains("repo1-s3-uri-style=path"), "{good}");
    write_config(&config, &good);

    let archive = archive_command(&config, CLUSTER).unwrap();
    pg.append_conf(
        "postgresql.conf",
        &[
            "archive_mode = on",
            &format!("archive_command = '{archive}'"),
        ],
    )
    .unwrap();
    // The instance role from a metadata service of the test's (see the module's
    // documentation); the sandbox's CA through the environment.
    let imds = NodeImds::start(s3.port).unwrap();
    let wrapper_owned = imds.wrapper();
    let wrapper: Vec<&str> = wrapper_owned.iter().map(String::as_str).collect();
    let ca = s3.ca_file.to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = vec![("PGBACKREST_REPO1_STORAGE_CA_FILE", &ca)];
    pg.start_with_env(&wrapper, &env).unwrap();
    let setup = t0.elapsed();

    pgbackrest(&pg, &wrapper, &config, &env, &["stanza-create"]);
    pg.sql("CREATE TABLE t (id int, v text)").unwrap();
    let before = stats(&pg);
    let mut switched = Vec::new();
    for _ in 0..3 {
        switched.push(switch_wal(&pg));
    }
    let last = switched.last().unwrap().clone();
    let ok = wait_stats(&pg, "archiving to the bucket", |s| {
        s.last_archived_wal.as_deref() == Some(last.as_str())
    });
    assert!(
        ok.archived_count >= before.archived_count + 3,
        "{before:?} → {ok:?}"
    );
    assert_eq!(ok.failed_count, 0, "{ok:?}\n{}", pg.log_tail());
    let cond = continuous_archiving(&ok);
    assert_eq!(cond.status, "True", "{cond:?}");
    print_condition(&cond);

    // The segments are objects in the bucket, under the repository path.
    let prefix = format!(
        "pgbackrest/{namespace}/{CLUSTER}/archive/{}/",
        pgbackrest::stanza(CLUSTER)
    );
    let keys = s3_list_keys(sb, &bucket, &prefix).unwrap();
    for wal in &switched {
        assert!(
            keys.iter()
                .any(|k| k.rsplit('/').next().unwrap().starts_with(wal.as_str())),
            "{wal} not in s3://{bucket}/{prefix}: {keys:?}"
        );
    }
    // The credentials came from the metadata service, as on EC2 with key type auto.
    assert!(
        imds.credentials_served() > 0,
        "pgBackRest never asked the metadata service:\n{}",
        std::fs::read_to_string(&imds.log).unwrap_or_default()
    );
    let archived_at = t0.elapsed();

    // One full backup, and what `info` says of it.
    let b0 = Instant::now();
    pgbackrest(&pg, &wrapper, &config, &env, &["backup", "--type=full"]);
    let backup_time = b0.elapsed();
    let info = pgbackrest(&pg, &wrapper, &config, &env, &["info", "--output=json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let backups = info[0]["backup"].as_array().expect("info: backup list");
    assert_eq!(backups.len(), 1, "{info:#}");
    assert_eq!(backups[0]["type"], "full", "{info:#}");
    assert_eq!(info[0]["status"]["code"], 0, "{info:#}");
    let keys = s3_list_keys(
        sb,
        &bucket,
        &format!("pgbackrest/{namespace}/{CLUSTER}/backup/"),
    )
    .unwrap();
    assert!(
        keys.iter().any(|k| k.ends_with("backup.manifest")),
        "no backup manifest in the bucket: {keys:?}"
    );

    // A bucket the simulated S3 refuses (it does not exist: NoSuchBucket).
    let bad = render_config(&namespace, CLUSTER, &spec(&refused, &s3.endpoint), &target).unwrap();
    assert_no_secret(&bad);
    write_config(&config, &bad);
    let before = stats(&pg);
    let failing_wal = switch_wal(&pg);
    let failing = wait_stats(&pg, "failing on the refused bucket", |s| {
        s.failed_count > before.failed_count
            && s.last_failed_wal.as_deref() == Some(failing_wal.as_str())
    });
    assert_eq!(failing.archived_count, before.archived_count, "{failing:?}");
    let cond = continuous_archiving(&failing);
    assert_eq!(cond.status, "False", "{cond:?}");
    assert_eq!(cond.reason, pgbackrest::reason::ARCHIVING_FAILING);
    assert!(cond.message.contains(&failing_wal), "{cond:?}");
    print_condition(&cond);
    assert!(
        std::fs::read_to_string(&pg.log)
            .unwrap_or_default()
            .contains("unable to find a valid repository"),
        "the server log says nothing of the failure:\n{}",
        pg.log_tail()
    );
    let failed_at = t0.elapsed();

    // Back to the real bucket: PostgreSQL retries the segment, the archive catches up.
    write_config(&config, &good);
    let next = switch_wal(&pg);
    let caught_up = wait_stats(&pg, "catching up", |s| {
        s.last_archived_wal.as_deref() == Some(next.as_str())
    });
    let cond = continuous_archiving(&caught_up);
    assert_eq!(cond.status, "True", "{cond:?}");
    let keys = s3_list_keys(sb, &bucket, &prefix).unwrap();
    assert!(
        keys.iter().any(|k| k
            .rsplit('/')
            .next()
            .unwrap()
            .starts_with(failing_wal.as_str())),
        "{failing_wal} not archived after the repair: {keys:?}"
    );
    print_condition(&cond);
    println!(
        "pgbackrest e2e: setup {setup:?}, archiving seen at {archived_at:?}, full backup \
         {backup_time:?}, failure seen at {failed_at:?}, caught up at {:?}",
        t0.elapsed()
    );

    pg.stop("fast").unwrap();
    drop(imds);
    remove_dirs(&conf_dir, node, &format!("pgbr-{run}"));
}

/// Prints the ContinuousArchiving condition (`--nocapture`).
fn print_condition(cond: &ArchivingCondition) {
    println!(
        "{}: {} ({})",
        ArchivingCondition::TYPE,
        cond.status,
        cond.message
    );
}

/// Removes a test's folders: `conf_dir` on the host, `dir` under the node's mount root.
fn remove_dirs(conf_dir: &str, node: &NodeInfo, dir: &str) {
    let _ = std::fs::remove_dir_all(conf_dir);
    let _ = pgml_testbed::nodes::node_exec_ok(
        node,
        &["rm", "-rf", &format!("{}/{dir}", node.mnt_dir.display())],
    );
}

/// A one-instance cluster with pgBackRest.
fn cluster_spec(pgbr: &PgBackRest) -> PgmlClusterSpec {
    serde_json::from_value(json!({
        "instances": 1,
        "storage": {"persistentVolumeClaim": {"size": "1Gi"}},
        "backups": {"pgbackrest": pgbr},
    }))
    .unwrap()
}

/// The instance's report in its Pod's annotation.
async fn report_of(pods: &Api<Pod>, name: &str) -> Option<InstanceReport> {
    let pod = pods.get(name).await.ok()?;
    let ann = pod.metadata.annotations?;
    InstanceReport::parse(ann.get(STATUS_ANNOTATION).map(String::as_str))
}

async fn wait_report(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    timeout: Duration,
    manager: &Proc,
    ok: impl Fn(&InstanceReport) -> bool,
) -> InstanceReport {
    let deadline = Instant::now() + timeout;
    loop {
        let r = report_of(pods, name).await;
        if let Some(r) = r.as_ref().filter(|r| ok(r)) {
            return r.clone();
        }
        if Instant::now() > deadline {
            let log = manager.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{what}: not reported in {timeout:?}; last report {r:?}\nmanager log ({}):\n{}",
                manager.log_path().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `pgbackrest info` of the stanza, as the test sees the repository (shared keys from the
/// environment, as the manager has them).
fn info(cluster: &str, pg: &Postgres, config: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let text = pgbackrest_of(cluster, pg, &[], config, env, &["info", "--output=json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("pgbackrest info: {e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_manager_archives_and_backs_up() {
    // A stanza of its own: pgBackRest's locks (/tmp/pgbackrest/<stanza>-*.lock) are per
    // stanza on the host, which the other test shares.
    const CLUSTER: &str = "mgr";
    let t0 = Instant::now();
    let sb = Sandbox::get();
    let s3 = sb.s3_tls();
    let node = &sb.nodes[1];
    let client = client().await;
    ensure_crds(&client, pgml_api::crds()).await;
    // No operator watches this namespace: the test writes what the controller would.
    let ns = TestNamespace::new(&client, "pgbr-mgr").await;
    let run = format!("{:08x}", rand::random::<u32>());
    let bucket = format!("pgml-mgr-{run}");
    let refused = format!("pgml-mgr-refused-{run}");
    s3_create_bucket(sb, &bucket).unwrap();
    let name = format!("{CLUSTER}-1");

    // The ConfigMap's files, where the Pod mounts them (PGML_CONFIG_DIR).
    let port = free_port();
    let pgdata = format!("{}/pgbr-mgr-{run}/pgdata", node.mnt_dir.display());
    let conf_dir = format!("/tmp/pgml-pgbr-mgr-{run}");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::set_permissions(
        &conf_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = format!("{conf_dir}/{}", pgbackrest::CONFIG_KEY);
    let mut pgbr = spec(&bucket, &s3.endpoint);
    pgbr.schedule = BackupSchedule {
        full: None,
        incremental: Some("* * * * *".into()),
    };
    // The file exactly as the controller puts it in the ConfigMap: pg1-path, pg1-port and
    // pg1-socket-path are the Pod's (/var/lib/postgresql/data/pgdata, 5432, /tmp); the
    // manager points pgBackRest at the server it runs through pgBackRest's environment.
    let rendered = |bucket: &str| {
        let mut s = cluster_spec(&pgbr);
        s.backups.pgbackrest.as_mut().unwrap().s3.bucket = bucket.into();
        config::archiving(ns.name(), CLUSTER, &s)
            .unwrap()
            .unwrap()
            .file
    };
    let good = rendered(&bucket);
    assert!(
        good.contains("pg1-path=/var/lib/postgresql/data/pgdata\n"),
        "{good}"
    );
    assert_no_secret(&good);
    // First a bucket S3 refuses: stanza-create fails and is retried.
    write_config(&config, &rendered(&refused));
    let archive = archive_command(&config, CLUSTER).unwrap();
    write_config(
        &format!("{conf_dir}/postgresql.conf"),
        &format!("archive_mode = 'on'\narchive_command = '{archive}'\n"),
    );

    // The manager, with pgBackRest's credentials in its environment only. Started once the
    // objects it reads exist; made first so that a failure kills it before the server's
    // handle is dropped.
    let pg = Postgres::new(node, &pgdata, port);
    let ca = s3.ca_file.to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = vec![
        ("PGBACKREST_REPO1_STORAGE_CA_FILE", &ca),
        ("PGBACKREST_REPO1_S3_KEY_TYPE", "shared"),
        ("PGBACKREST_REPO1_S3_KEY", TEST_ACCESS_KEY),
        ("PGBACKREST_REPO1_S3_KEY_SECRET", TEST_SECRET_KEY),
    ];
    let mut manager = procs::instance(sb, node, ns.name(), CLUSTER, &name, &pgdata, port);
    manager.kill();
    manager.set_env("PGML_CONFIG_DIR", &conf_dir);
    for (k, v) in &env {
        manager.set_env(k, v);
    }

    let clusters: Api<PgmlCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let cluster: PgmlCluster = serde_json::from_value(json!({
        "apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster",
        "metadata": {"name": CLUSTER},
        "spec": cluster_spec(&pgbr),
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    pods.create(&PostParams::default(), &instance_pod(CLUSTER, &name, node))
        .await
        .unwrap();
    let status = json!({"apiVersion": "pgml.io/v1alpha1", "kind": "PgmlCluster", "status": {
        "targetPrimary": name, "currentPrimary": name,
        "instances": [{"name": name, "node": node.name}],
    }});
    clusters
        .patch_status(
            CLUSTER,
            &PatchParams::apply("pgml-e2e-controller").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    manager.start();

    // Bootstrap; stanza-create fails on the refused bucket and says why in the report.
    let r = wait_report(&pods, &name, "primary/ready", WAIT, &manager, |r| {
        r.is_primary() && r.ready
    })
    .await;
    assert!(
        r.archiver.is_some(),
        "a primary with pgBackRest reports pg_stat_archiver: {r:?}"
    );
    let r = wait_report(&pods, &name, "stanza-create failing", WAIT, &manager, |r| {
        r.message.contains("stanza-create failed")
    })
    .await;
    assert!(r.message.contains("ERROR: ["), "{}", r.message);
    assert!(r.ready, "a failing stanza-create blocks nothing: {r:?}");
    println!("report message: {}", r.message);
    let stanza_failed_at = t0.elapsed();

    // The ConfigMap fixed: the next attempt (back-off) makes the stanza (archive.info in
    // the bucket) and the message goes.
    write_config(&config, &good);
    let prefix = format!("pgbackrest/{}/{CLUSTER}/archive/{CLUSTER}/", ns.name());
    let deadline = Instant::now() + WAIT;
    while !s3_list_keys(sb, &bucket, &prefix)
        .unwrap()
        .iter()
        .any(|k| k.ends_with("archive.info"))
    {
        assert!(
            Instant::now() < deadline,
            "the manager never made the stanza:\n{}",
            manager.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stanza_at = t0.elapsed();
    wait_report(
        &pods,
        &name,
        "the stanza message gone",
        WAIT,
        &manager,
        |r| !r.message.contains("stanza-create"),
    )
    .await;

    // Archiving through the server the manager started (its environment inherited).
    pg.sql("CREATE TABLE t (id int, v text)").unwrap();
    let before = report_of(&pods, &name).await.unwrap().archiver.unwrap();
    let mut last = String::new();
    for _ in 0..3 {
        last = switch_wal(&pg);
    }
    let r = wait_report(
        &pods,
        &name,
        "the switched WAL archived",
        WAIT,
        &manager,
        |r| {
            // This segment or anything archived after it: the every-minute backup may
            // archive its own segments and `.backup` file (`<segment>.<offset>.backup`)
            // after ours; WAL file names of one timeline sort in the order written.
            r.archiver.as_ref().is_some_and(|a| {
                a.last_archived_wal
                    .as_deref()
                    .is_some_and(|w| w >= last.as_str())
            })
        },
    )
    .await;
    let a = r.archiver.clone().unwrap();
    assert!(
        a.archived_count >= before.archived_count + 3,
        "{before:?} → {a:?}"
    );
    let cond = continuous_archiving(&a);
    assert_eq!(cond.status, "True", "{cond:?} from {a:?}");
    print_condition(&cond);
    let archived_at = t0.elapsed();

    // The scheduled backup (`* * * * *` incremental; the first is made full by pgBackRest,
    // there being no full one yet), then an incremental one the next minute.
    let r = wait_report(
        &pods,
        &name,
        "a scheduled backup",
        Duration::from_secs(150),
        &manager,
        |r| r.last_backup.is_some(),
    )
    .await;
    let b = r.last_backup.clone().unwrap();
    assert!(b.succeeded, "{b:?}\n{}", manager.log());
    assert_eq!(b.backup_type.as_str(), "incr", "{b:?}");
    let first_backup_at = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(150);
    let backups = loop {
        let i = info(CLUSTER, &pg, &config, &env);
        let list = i[0]["backup"].as_array().cloned().unwrap_or_default();
        if list.iter().any(|b| b["type"] == "incr") {
            assert_eq!(list[0]["type"], "full", "{i:#}");
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "no incremental backup listed: {i:#}\n{}",
            manager.log()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    println!(
        "pgbackrest info: {:?}",
        backups
            .iter()
            .map(|b| format!("{} {}", b["type"], b["label"]))
            .collect::<Vec<_>>()
    );
    let r = wait_report(
        &pods,
        &name,
        "the incremental backup reported",
        WAIT,
        &manager,
        |r| {
            r.last_backup
                .as_ref()
                .is_some_and(|x| x.finished != b.finished && x.succeeded)
        },
    )
    .await;
    println!("lastBackup: {:?}", r.last_backup);
    let incr_at = t0.elapsed();

    // The ConfigMap changed to a bucket S3 refuses: archiving fails and the report says
    // which segment.
    write_config(&config, &rendered(&refused));
    let failing_wal = switch_wal(&pg);
    let r = wait_report(&pods, &name, "archiving failing", WAIT, &manager, |r| {
        r.archiver
            .as_ref()
            .is_some_and(|a| continuous_archiving(a).status == "False")
    })
    .await;
    let a = r.archiver.clone().unwrap();
    assert_eq!(
        a.last_failed_wal.as_deref(),
        Some(failing_wal.as_str()),
        "{a:?}"
    );
    let cond = continuous_archiving(&a);
    assert_eq!(cond.reason, pgbackrest::reason::ARCHIVING_FAILING);
    assert!(cond.message.contains(&failing_wal), "{cond:?}");
    print_condition(&cond);
    let failed_at = t0.elapsed();

    // Back to the real bucket: caught up, True again.
    write_config(&config, &good);
    let r = wait_report(&pods, &name, "archiving caught up", WAIT, &manager, |r| {
        r.archiver
            .as_ref()
            .is_some_and(|a| continuous_archiving(a).status == "True")
    })
    .await;
    println!(
        "{}: True again ({})",
        ArchivingCondition::TYPE,
        continuous_archiving(r.archiver.as_ref().unwrap()).message
    );
    println!(
        "instance manager + pgBackRest: stanza-create failing at {stanza_failed_at:?}, \
         stanza at {stanza_at:?}, archived at {archived_at:?}, \
         first scheduled backup at {first_backup_at:?}, incremental at {incr_at:?}, failure \
         reported at {failed_at:?}, caught up at {:?}",
        t0.elapsed()
    );

    assert!(
        manager.stop(Duration::from_secs(60)),
        "the manager did not stop cleanly"
    );
    assert!(!pg.running(), "the manager stops PostgreSQL on SIGTERM");
    drop(pg);
    remove_dirs(&conf_dir, node, &format!("pgbr-mgr-{run}"));
}
