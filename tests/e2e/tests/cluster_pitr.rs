//! Issue 18, restore from pgBackRest to a point in time (`spec.bootstrap.pgbackrest` and
//! `recoveryTarget`), with the real operator, node agents and the instance managers run by
//! the test bed's kubelet on real PostgreSQL 15 and pgBackRest 2.45 against the sandbox's
//! S3 (moto behind its HTTPS front; credentials as in `cluster_pgbackrest.rs`).
//!
//! A source cluster archives WAL and takes a full backup; rows are written after it in
//! batches: batch 1, a restore point, batch 2, the time t2, batch 3. Seven clusters are
//! then made from its repository, at once:
//! - to the time t2, with a repository of its own: exactly batches 0–2, a new timeline,
//!   writes accepted and archived in its own stanza, never in the source's;
//! - from an EBS snapshot set taken before batch 1, with the repository's WAL to t2:
//!   exactly batches 0–2 (the snapshot is the base, only WAL is read);
//! - to the restore point, made by `kubectl pgml restore --cluster` (its `--dry-run`
//!   manifest checked first): exactly batches 0–1;
//! - `immediate`: exactly batch 0, the rows of the backup;
//! - to a time after the archive's end: Failed (`RestoreFailed`, PostgreSQL's reason),
//!   never promoted, no database identity recorded;
//! - to a time before the first backup: Failed (no backup can be the base), nothing
//!   restored;
//! - into a repository path that already holds the source's stanza: Failed, refused
//!   before anything was restored, nothing written there.
//!
//! The source keeps its rows and its archive holds nothing of another timeline. Then ten
//! more restores, each with the operator or the first instance's container killed at a
//! random moment (see [`kills`]).

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::{
    ClusterFixture, TIMEOUT, apply_cluster, kubectl_pgml, rows_and_sum, zfs_cluster,
};
use pgml_api::PgmlCluster;
use pgml_api::cluster::ClusterPhase;
use pgml_api::common::condition as c;
use pgml_api::instance::{InstanceReport, Role, STATUS_ANNOTATION};
use pgml_testbed::Sandbox;
use pgml_testbed::aws::{s3_create_bucket, s3_list_keys};
use pgml_testbed::pg::Postgres;
use pgml_testbed::sandbox::NodeInfo;
use serde_json::{Value, json};

const SOURCE: &str = "src";

fn volumes() -> Value {
    json!({"count": 1, "type": "gp3", "sizeGiB": 1})
}

fn phase(cl: &PgmlCluster) -> Option<ClusterPhase> {
    cl.status.as_ref().and_then(|s| s.phase)
}

fn batch(pg: &Postgres, from: u32, to: u32) -> String {
    pg.sql(&format!(
        "INSERT INTO written (id, payload) SELECT i, md5(i::text) FROM generate_series({from}, {to}) i"
    ))
    .unwrap();
    rows_and_sum(pg)
}

struct Repo {
    bucket: String,
    endpoint: String,
    region: String,
}

impl Repo {
    fn s3(&self, path: Option<&str>) -> Value {
        let mut s3 =
            json!({"bucket": self.bucket, "region": self.region, "endpoint": self.endpoint});
        if let Some(p) = path {
            s3["path"] = json!(p);
        }
        s3
    }
}

/// A one-instance cluster on `node`, restored from the source's repository to `target`,
/// with a repository of its own at `own_path` (`Some("")`: the default path) or none.
fn restored(name: &str, node: &NodeInfo, repo: &Repo, target: Value, own: Option<&str>) -> Value {
    let mut extra = json!({
        "nodeSelector": {"kubernetes.io/hostname": node.name},
        "bootstrap": {
            "pgbackrest": {"stanza": SOURCE, "s3": repo.s3(None), "credentials": {"mode": "InstanceRole"}},
            "recoveryTarget": target,
        },
    });
    if let Some(path) = own {
        let path = (!path.is_empty()).then_some(path);
        extra["backups"] =
            json!({"pgbackrest": {"s3": repo.s3(path), "credentials": {"mode": "InstanceRole"}}});
    }
    zfs_cluster(name, 1, volumes(), extra)
}

/// What instance `pod`'s manager last reported.
async fn report_of(f: &ClusterFixture, pod: &str) -> InstanceReport {
    let p = f.pods().get(pod).await.unwrap();
    let ann = p.metadata.annotations.as_ref();
    InstanceReport::parse(
        ann.and_then(|a| a.get(STATUS_ANNOTATION))
            .map(String::as_str),
    )
    .unwrap_or_else(|| panic!("{pod} has no report"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restores_from_pgbackrest_and_their_refusals() {
    let started = Instant::now();
    let sb = Sandbox::get();
    let s3 = sb.s3_tls();
    // The source on one node, the copies that archive (or would) on another, neither one
    // whose config folder another test binds; the others on a third.
    let (na, nb, nc) = (&sb.nodes[0], &sb.nodes[1], &sb.nodes[2]);
    let bucket = format!("pgml-pitr-{:08x}", rand::random::<u32>());
    s3_create_bucket(sb, &bucket).unwrap();
    let repo = Repo {
        bucket: bucket.clone(),
        endpoint: s3.endpoint.clone(),
        region: sb.region.clone(),
    };
    let mut f = ClusterFixture::start("pitr", SOURCE, &[0, 1, 2], &[])
        .await
        .with_s3_kubelet(40);
    let ns = f.ns.name().to_string();

    // The source: archiving, a full backup every minute.
    f.apply(&zfs_cluster(
        SOURCE,
        1,
        volumes(),
        json!({
            "nodeSelector": {"kubernetes.io/hostname": na.name},
            "backups": {"pgbackrest": {
                "s3": repo.s3(None), "credentials": {"mode": "InstanceRole"},
                "schedule": {"full": "* * * * *"},
            }},
        }),
    ))
    .await;
    let src = f.instance(&format!("{SOURCE}-1")).await.postgres();
    let _unbind_a = f.bind_pod_config(na, &format!("{SOURCE}-1")).await;
    f.wait_cluster("the source Healthy", |cl| {
        phase(cl) == Some(ClusterPhase::Healthy)
    })
    .await;
    src.sql("CREATE TABLE written (id int PRIMARY KEY, payload text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())")
        .unwrap();
    let sum0 = batch(&src, 1, 50);
    f.wait_cluster("a full backup of the source", |cl| {
        cl.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|x| x.type_ == c::LAST_BACKUP_SUCCEEDED && x.status == "True")
        })
    })
    .await;
    // An EBS snapshot set of the source before batch 1: the base of a fast point in time.
    f.snapshot_completed("base", SOURCE).await;
    let sum1 = batch(&src, 51, 100);
    src.sql("SELECT pg_create_restore_point('after-batch-1')")
        .unwrap();
    let sum2 = batch(&src, 101, 150);
    let t2 = src
        .sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sum3 = batch(&src, 151, 200);
    // Everything written reaches the archive.
    let segment = src
        .sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    src.sql("SELECT pg_switch_wal()").unwrap();
    f.wait_cluster("the last segment archived", |cl| {
        cl.status
            .as_ref()
            .and_then(|s| s.archiving.as_ref())
            .and_then(|a| a.last_archived_wal.as_deref())
            .is_some_and(|w| w >= segment.as_str())
    })
    .await;
    println!(
        "source ready, rows written and archived at {:?}",
        started.elapsed()
    );

    // Seven restores at once.
    let clusters: kube::Api<PgmlCluster> = f.ns.api();
    let src_path = format!("/pgbackrest/{ns}/{SOURCE}");
    // After the archive's end (an hour from now), and before the first backup.
    let never = src
        .sql("SELECT to_char((clock_timestamp() + interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
        .unwrap();
    let copies = [
        ("at-t2", json!({"time": t2}), Some("")),
        ("at-name", json!({"name": "after-batch-1"}), None),
        ("snap-t2", json!({"time": t2}), None),
        ("at-start", json!({"immediate": true}), None),
        ("never", json!({"time": never}), None),
        ("too-early", json!({"time": "2000-01-01T00:00:00Z"}), None),
        ("clash", json!({"immediate": true}), Some(src_path.as_str())),
    ];
    // The restore point one through the plugin: its dry run prints the manifest (the
    // source's spec, the source's repository as the bootstrap, its own default path), then
    // it creates it.
    let plugin = |args: &[&str]| {
        let out = kubectl_pgml(&ns, args).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "kubectl pgml {args:?}: {stderr}");
        stdout
    };
    let ask = [
        "restore",
        "--cluster",
        "at-name",
        "--from",
        SOURCE,
        "--target-name",
        "after-batch-1",
    ];
    let dry = plugin(&[&ask[..], &["--dry-run"]].concat());
    let printed: PgmlCluster = serde_yaml::from_str(&dry).unwrap();
    let b = printed.spec.bootstrap.clone().unwrap();
    let src_repo = b.pgbackrest.unwrap();
    assert_eq!(
        (src_repo.stanza.as_str(), src_repo.s3.path.as_deref()),
        (SOURCE, Some(src_path.as_str()))
    );
    assert_eq!(
        b.recovery_target.unwrap().name.as_deref(),
        Some("after-batch-1")
    );
    assert_eq!(printed.spec.backups.pgbackrest.unwrap().s3.path, None);
    assert!(
        clusters.get_opt("at-name").await.unwrap().is_none(),
        "a dry run creates nothing"
    );
    let said = plugin(&ask);
    assert!(
        said.contains("pgmlcluster.pgml.io/at-name created from pgBackRest stanza src"),
        "{said}"
    );

    for (name, target, own) in &copies {
        if *name == "at-name" {
            continue;
        }
        let node = if own.is_some() || *name == "snap-t2" {
            nb
        } else {
            nc
        };
        let mut m = restored(name, node, &repo, target.clone(), *own);
        if *name == "snap-t2" {
            m["spec"]["bootstrap"]["snapshot"] = json!({"name": "base"});
        }
        apply_cluster(&clusters, &m).await;
    }
    let healthy = |cl: &PgmlCluster| phase(cl) == Some(ClusterPhase::Healthy);
    let failed = |cl: &PgmlCluster| phase(cl) == Some(ClusterPhase::Failed);

    // To t2: exactly batches 0–2, promoted on a new timeline, its own archive.
    let at_t2 = f.instance("at-t2-1").await;
    let _unbind_b = f.bind_pod_config(nb, "at-t2-1").await;
    f.wait_obj(&clusters, "at-t2", "Healthy", healthy).await;
    let cp = at_t2.postgres();
    assert_eq!(
        rows_and_sum(&cp),
        sum2,
        "restored to t2 = {t2}: batches 0-2 only"
    );
    assert_eq!(cp.sql("SELECT pg_is_in_recovery()").unwrap(), "f");
    cp.sql("CHECKPOINT").unwrap();
    let tl: u32 = cp
        .sql("SELECT timeline_id FROM pg_control_checkpoint()")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        tl >= 2,
        "promoted onto a new timeline, not the source's: {tl}"
    );
    // pgBackRest restores pg_wal as a directory: made a link to the pgwal dataset.
    f.assert_wal_on_pgwal("at-t2-1").await;
    batch(&cp, 1000, 1010);
    let seg = cp
        .sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    cp.sql("SELECT pg_switch_wal()").unwrap();
    let own = format!("pgbackrest/{ns}/at-t2/archive/at-t2/");
    let deadline = Instant::now() + TIMEOUT;
    while !s3_list_keys(sb, &bucket, &own)
        .unwrap()
        .iter()
        .any(|k| k.contains(&seg))
    {
        assert!(
            Instant::now() < deadline,
            "{seg} never in at-t2's own archive\n{}",
            f.logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The restore's progress was said on the way: phase Restoring with the base and target.
    f.wait_event("at-t2 Restoring", |e| {
        e.reason.as_deref() == Some("Restoring")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("at-t2")
            && e.note
                .as_deref()
                .is_some_and(|n| n.contains("pgBackRest stanza src") && n.contains("to time"))
    })
    .await;

    // The snapshot (taken before batch 1) as the base, the repository's WAL to t2.
    let cl = f.wait_obj(&clusters, "snap-t2", "Healthy", healthy).await;
    let fast = f.instance("snap-t2-1").await.postgres();
    assert_eq!(
        rows_and_sum(&fast),
        sum2,
        "snapshot + WAL to t2: batches 0-2"
    );
    assert!(
        cl.status.as_ref().unwrap().restore.is_none(),
        "restore status gone once serving"
    );
    assert_eq!(fast.sql("SELECT pg_is_in_recovery()").unwrap(), "f");
    f.assert_wal_on_pgwal("snap-t2-1").await;

    // To the restore point, and to the end of the backup.
    f.wait_obj(&clusters, "at-name", "Healthy", healthy).await;
    let named = f.instance("at-name-1").await.postgres();
    assert_eq!(
        rows_and_sum(&named),
        sum1,
        "restored to after-batch-1: batches 0-1"
    );
    f.wait_obj(&clusters, "at-start", "Healthy", healthy).await;
    let first = f.instance("at-start-1").await.postgres();
    assert_eq!(
        rows_and_sum(&first),
        sum0,
        "immediate: the backup's rows only"
    );

    // A target after the archive's end: Failed with PostgreSQL's reason, never promoted.
    let cl = f.wait_obj(&clusters, "never", "Failed", failed).await;
    let screen = plugin(&["status", "never"]);
    assert!(
        screen.contains("Restoring from: pgBackRest stanza src")
            && screen.contains("recovery ended before configured recovery target was reached"),
        "{screen}"
    );
    let st = cl.status.clone().unwrap();
    let ready = st.conditions.iter().find(|x| x.type_ == c::READY).unwrap();
    assert_eq!(ready.reason, "RestoreFailed", "{ready:?}");
    assert!(
        ready
            .message
            .contains("recovery ended before configured recovery target was reached"),
        "{ready:?}"
    );
    assert!(st.system_identifier.is_none(), "never promoted: {st:?}");
    assert!(
        st.restore
            .as_ref()
            .is_some_and(|r| r.failure.is_some() && !r.target_reached),
        "{st:?}"
    );
    let report = report_of(&f, "never-1").await;
    assert!(
        !report.running && report.role != Role::Primary,
        "stopped, never a primary: {report:?}"
    );

    // Before the first backup: no base, Failed at once, nothing restored.
    let cl = f.wait_obj(&clusters, "too-early", "Failed", failed).await;
    let st = cl.status.clone().unwrap();
    let ready = st.conditions.iter().find(|x| x.type_ == c::READY).unwrap();
    assert!(
        ready
            .message
            .contains("no backup of the repository can be the base")
            && ready.message.contains("2000-01-01 00:00:00+00"),
        "{ready:?}"
    );
    assert!(st.system_identifier.is_none(), "{st:?}");

    // Into the source's repository path: refused before anything is restored.
    let src_keys = |what: &str| {
        s3_list_keys(sb, &bucket, &format!("pgbackrest/{ns}/{SOURCE}/{what}/")).unwrap()
    };
    let cl = f.wait_obj(&clusters, "clash", "Failed", failed).await;
    let st = cl.status.clone().unwrap();
    let ready = st.conditions.iter().find(|x| x.type_ == c::READY).unwrap();
    assert!(
        ready.message.contains("is not empty") && ready.message.contains("stanza src"),
        "{ready:?}"
    );
    assert!(st.system_identifier.is_none(), "{st:?}");
    let report = report_of(&f, "clash-1").await;
    assert!(!report.running, "nothing started: {report:?}");

    // The source: its rows, and nothing of another timeline or stanza in its archive.
    assert_eq!(rows_and_sum(&src), sum3);
    let archive = src_keys("archive");
    assert!(
        archive.iter().all(
            |k| k.contains(&format!("/archive/{SOURCE}/15-1/0000000100"))
                || k.ends_with("archive.info")
                || k.ends_with("archive.info.copy")
        ),
        "the source's archive holds only its own timeline 1: {archive:?}"
    );
    assert!(
        s3_list_keys(
            sb,
            &bucket,
            &format!("pgbackrest/{ns}/{SOURCE}/archive/clash/")
        )
        .unwrap()
        .is_empty()
    );
    println!("seven restores checked at {:?}", started.elapsed());

    // Deleted, their pools' volumes go with them (the nodes' attachment slots are shared
    // by the whole suite).
    let mut pools = vec![format!("{SOURCE}-1")];
    for (name, ..) in &copies {
        clusters.delete(name, &Default::default()).await.unwrap();
        pools.push(format!("{name}-1"));
    }
    clusters.delete(SOURCE, &Default::default()).await.unwrap();
    f.wait_pools_gone(&pools).await;

    // The source is gone; its repository stays, and is restored from ten times more.
    kills(&mut f, &repo, nc, &sum1).await;
    println!("ten restores with kills checked at {:?}", started.elapsed());
}

/// The kill test of the repository path: ten restores to the restore point, each with the
/// operator SIGKILLed (started again after up to 1 s) or the first instance's container
/// crashed (manager and postmaster SIGKILLed, restarted after the kubelet's back-off) at a
/// seeded random moment: during the placement, the `pgbackrest restore`, the replay, the
/// pause or the promotion. Every one ends Healthy with exactly the rows to the restore
/// point on a new timeline (never promoted before the target, never started on a half
/// restored PGDATA), and is deleted with its pool. `PGML_PITR_SEED` replays the moments.
async fn kills(f: &mut ClusterFixture, repo: &Repo, node: &NodeInfo, want: &str) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("PGML_PITR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("pgBackRest restore kill test: seed {seed} (PGML_PITR_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let clusters: kube::Api<PgmlCluster> = f.ns.api();
    for i in 0..10 {
        let name = format!("kill{i}");
        let pod = format!("{name}-1");
        let m = restored(&name, node, repo, json!({"name": "after-batch-1"}), None);
        apply_cluster(&clusters, &m).await;
        // The operator's part is in the first seconds; the manager's restore, replay and
        // promotion take up to ~25 s here.
        let after =
            Duration::from_millis(rng.random_range(0..if i % 2 == 0 { 5000 } else { 25000 }));
        if i % 2 == 0 {
            let down = Duration::from_millis(rng.random_range(0..1000));
            tokio::time::sleep(after).await;
            f.operator.kill();
            tokio::time::sleep(down).await;
            f.operator.start();
            eprintln!("{name}: the operator killed {after:?} after the apply, down {down:?}");
        } else {
            // From the moment its manager runs: the restore, the replay, the promotion.
            f.instance(&pod).await;
            tokio::time::sleep(after).await;
            let crashed = f.kubelet.as_ref().unwrap().crash(&pod);
            eprintln!(
                "{name}: its container crashed ({crashed}) {after:?} after the manager started"
            );
        }
        let cl = f
            .wait_obj(&clusters, &name, "Healthy after a kill", |c| {
                phase(c) == Some(ClusterPhase::Healthy)
            })
            .await;
        assert!(cl.status.unwrap().system_identifier.is_some());
        // A crash after the promotion leaves the status Healthy until the next report: the
        // server answers again once the kubelet restarted the container.
        let pg = f.instance(&pod).await.postgres();
        let deadline = Instant::now() + TIMEOUT;
        while pg.sql("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} never answered again\n{}",
                f.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            rows_and_sum(&pg),
            want,
            "{name}: exactly the rows to the restore point"
        );
        assert_eq!(pg.sql("SELECT pg_is_in_recovery()").unwrap(), "f");
        pg.sql("CHECKPOINT").unwrap();
        let tl: u32 = pg
            .sql("SELECT timeline_id FROM pg_control_checkpoint()")
            .unwrap()
            .parse()
            .unwrap();
        assert!(tl >= 2, "{name}: promoted onto a new timeline: {tl}");
        drop(pg);
        clusters.delete(&name, &Default::default()).await.unwrap();
        f.wait_pools_gone(&[pod]).await;
    }
}
