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

use std::time::{Duration, Instant};

use pgml_api::cluster::{
    BackupRetention, CredentialsMode, PgBackRest, S3Credentials, S3Repository,
};
use pgml_operator::pgbackrest::{
    self, ArchiverStats, ArchivingCondition, PgTarget, archive_command, continuous_archiving,
    render_config,
};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{NodeImds, s3_create_bucket, s3_list_keys};
use pgml_testbed::pg::{Postgres, SOCKET_DIR, free_port};

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
    let config_arg = format!("--config={config}");
    let stanza_arg = format!("--stanza={}", pgbackrest::stanza(CLUSTER));
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
    println!(
        "{}: {} ({})",
        ArchivingCondition::TYPE,
        cond.status,
        cond.message
    );

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
    println!(
        "{}: {} ({})",
        ArchivingCondition::TYPE,
        cond.status,
        cond.message
    );
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
    println!(
        "{}: {} ({})",
        ArchivingCondition::TYPE,
        cond.status,
        cond.message
    );
    println!(
        "pgbackrest e2e: setup {setup:?}, archiving seen at {archived_at:?}, full backup \
         {backup_time:?}, failure seen at {failed_at:?}, caught up at {:?}",
        t0.elapsed()
    );

    pg.stop("fast").unwrap();
    drop(imds);
    let _ = std::fs::remove_dir_all(&conf_dir);
    let _ = pgml_testbed::nodes::node_exec_ok(
        node,
        &[
            "rm",
            "-rf",
            &format!("{}/pgbr-{run}", node.mnt_dir.display()),
        ],
    );
}
