//! The instance manager's own endpoint, on a 2-instance PgmlCluster run by the operator, the
//! agents and the test bed's kubelet (real PostgreSQL 15, the operator's pg_hba.conf and
//! pg_ident.conf: the managers run as root and reach their server with the driver through
//! the `pgml-local` map):
//!
//! - `/metrics` says role, timeline, positions, per-database and per-standby figures;
//! - with replay paused on the replica and WAL written on the primary, the replica's lag
//!   (its own `replica_lag_bytes`, the primary's `replication_lag_bytes` for it) grows past
//!   `spec.replicas.maximumLagBytes` and its `/readyz` fails saying how far behind it is;
//!   replay resumed, the lag shrinks back and `/readyz` passes again;
//! - `/healthz` passes throughout (liveness never follows PostgreSQL);
//! - the application database named in `bootstrap.initdb` (`shop`, owned by `shopper`) is
//!   made by the primary's manager, and the `-app` Secret's URI logs in to it over TCP with
//!   its password; the test bed's PostgreSQL offers no `pgml` extension, which the
//!   `PgmlExtension` condition says (`NotAvailable`).

mod cluster_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_common::{ClusterFixture, TIMEOUT, zfs_cluster};
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use pgml_api::cluster::ClusterPhase;
use pgml_testbed::kubelet::Instance;
use pgml_testbed::procs::http_get;
use pgml_testbed::wait::condition;
use serde_json::json;

const CLUSTER: &str = "mtr";
/// `spec.replicas.maximumLagBytes`.
const MAX_LAG: f64 = 1024.0 * 1024.0;

fn status(i: &Instance) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], i.status_port))
}

fn get(i: &Instance, path: &str) -> (u16, String) {
    http_get(status(i), path).unwrap_or_else(|e| (0, format!("{e:#}")))
}

/// The value of the series `name` (with exactly these labels, `name{…}` as rendered).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok())?
    })
}

/// Polls `i`'s `/metrics` until `ok` holds of it; panics with the last answer and the log.
async fn wait_metrics(i: &Instance, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (code, body) = get(i, "/metrics");
        if code == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what}: not within {TIMEOUT:?}; last /metrics ({code}):\n{body}\n--- log:\n{}",
            i.pod,
            f_log(i)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn f_log(i: &Instance) -> String {
    std::fs::read_to_string(&i.log)
        .map(|l| {
            let lines: Vec<&str> = l.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        })
        .unwrap_or_default()
}

async fn wait_ready(i: &Instance, code: u16, why: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (c, body) = get(i, "/readyz");
        if c == code && body.contains(why) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{}: /readyz never answered {code} with {why:?}; last: {c} {body}",
            i.pod
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_readiness_follow_replication_lag() {
    let f = ClusterFixture::start("mtr", CLUSTER, &[0, 1, 2], &[])
        .await
        .with_kubelet(&[], 30);
    let volumes = json!({"count": 1, "type": "gp3", "sizeGiB": 1});
    let extra = json!({
        "replicas": {"maximumLagBytes": MAX_LAG as i64},
        "bootstrap": {"initdb": {"database": "shop", "owner": "shopper"}},
    });
    f.apply(&zfs_cluster(CLUSTER, 2, volumes, extra)).await;
    let (p, r) = (format!("{CLUSTER}-1"), format!("{CLUSTER}-2"));
    f.wait_cluster("Healthy with a streaming replica", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(ClusterPhase::Healthy) && s.ready_instances == Some(2))
    })
    .await;
    f.wait_roles(&[(&p, "primary"), (&r, "replica")]).await;
    let (primary, replica) = (f.instance(&p).await, f.instance(&r).await);

    // The application database, through the Secret's URI (TCP, scram-sha-256).
    let secrets: kube::Api<Secret> = f.ns.api();
    let app = secrets.get(&format!("{CLUSTER}-app")).await.unwrap();
    let field = |k: &str| String::from_utf8(app.data.as_ref().unwrap()[k].0.clone()).unwrap();
    assert_eq!(
        (field("username"), field("dbname")),
        ("shopper".into(), "shop".into())
    );
    let uri = field("uri");
    assert!(uri.ends_with("/shop"), "{uri}");
    let local = format!(
        "postgresql://shopper:{}@127.0.0.1:{}/shop",
        field("password"),
        primary.port
    );
    let deadline = Instant::now() + TIMEOUT;
    let who = loop {
        let out = std::process::Command::new(format!("{}/psql", pgml_testbed::pg::PG_BIN))
            .args([
                "-X",
                "-At",
                "-c",
                "SELECT current_user || '@' || current_database()",
                &local,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if got == "shopper@shop" || Instant::now() > deadline {
            break format!("{got}{}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(who, "shopper@shop");
    let c = f
        .wait_cluster("PgmlExtension says the image has no pgml", |c| {
            condition(c, "PgmlExtension")
                .is_some_and(|x| x["status"] == "False" && x["reason"] == "NotAvailable")
        })
        .await;
    let cond = condition(&c, "PgmlExtension").unwrap();
    assert!(
        cond["message"].as_str().unwrap().contains("database shop"),
        "{cond}"
    );
    assert_eq!(c.status.unwrap().pgml_version, None);

    // Role, timeline, positions and the databases, from the driver's reads.
    let m = wait_metrics(&primary, "the primary's figures", |m| {
        value(m, "pgml_postgres_up") == Some(1.0)
            && value(m, "pgml_postgres_in_recovery") == Some(0.0)
            && value(
                m,
                r#"pgml_postgres_database_xact_commit{datname="postgres"}"#,
            )
            .is_some_and(|v| v > 0.0)
            && value(m, &standby_series(&r)).is_some()
    })
    .await;
    assert!(
        value(&m, "pgml_postgres_timeline").is_some_and(|t| t >= 1.0),
        "{m}"
    );
    assert!(
        value(&m, "pgml_postgres_wal_lsn_bytes").is_some_and(|l| l > 0.0),
        "{m}"
    );
    assert!(
        value(
            &m,
            &format!(
                r#"pgml_postgres_slot_retained_wal_bytes{{slot_name="{}",active="true"}}"#,
                r.replace('-', "_")
            )
        )
        .is_some(),
        "the replica's slot: {m}"
    );
    assert_eq!(value(&m, "pgml_postgres_ready"), Some(1.0), "{m}");
    wait_metrics(&replica, "the replica's figures", |m| {
        value(m, "pgml_postgres_in_recovery") == Some(1.0)
            && value(m, "pgml_postgres_replica_lag_bytes").is_some_and(|l| l < MAX_LAG)
    })
    .await;
    wait_ready(&replica, 200, "ok").await;

    // Replay paused, WAL written: the lag grows past the bound, the replica is not ready.
    let rpg = replica.postgres();
    let ppg = primary.postgres();
    rpg.sql("SELECT pg_wal_replay_pause()").unwrap();
    ppg.sql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g",
    )
    .unwrap();
    let m = wait_metrics(&replica, "the replica's lag past the bound", |m| {
        value(m, "pgml_postgres_replica_lag_bytes").is_some_and(|l| l > MAX_LAG)
    })
    .await;
    let paused_lag = value(&m, "pgml_postgres_replica_lag_bytes").unwrap();
    let why = wait_ready(&replica, 503, "bytes behind").await;
    assert!(why.contains("maximumLagBytes"), "{why}");
    wait_metrics(&primary, "the primary's view of the standby's lag", |m| {
        value(m, &standby_series(&r)).is_some_and(|l| l > MAX_LAG)
    })
    .await;
    assert_eq!(
        get(&replica, "/healthz").0,
        200,
        "liveness does not follow the lag"
    );
    wait_metrics(&replica, "not ready in the metrics too", |m| {
        value(m, "pgml_postgres_ready") == Some(0.0)
    })
    .await;

    // Resumed: the lag shrinks back under the bound, ready again.
    rpg.sql("SELECT pg_wal_replay_resume()").unwrap();
    let m = wait_metrics(&replica, "the lag back under the bound", |m| {
        value(m, "pgml_postgres_replica_lag_bytes").is_some_and(|l| l < MAX_LAG)
    })
    .await;
    assert!(value(&m, "pgml_postgres_replica_lag_bytes").unwrap() < paused_lag);
    wait_ready(&replica, 200, "ok").await;
    wait_metrics(&primary, "the primary sees the standby caught up", |m| {
        value(m, &standby_series(&r)).is_some_and(|l| l < MAX_LAG)
    })
    .await;
    assert_eq!(
        rpg.sql("SELECT count(*) FROM filler").unwrap(),
        "40000",
        "the replica replayed what was written while it was paused"
    );

    f.delete_cluster(&DeleteParams::default()).await;
    f.wait_pools_gone(&[&p, &r]).await;
    f.finish().await;
}

/// The primary's lag series of standby `name`.
fn standby_series(name: &str) -> String {
    format!(
        r#"pgml_postgres_replication_lag_bytes{{application_name="{name}",state="streaming",sync_state="async"}}"#
    )
}
