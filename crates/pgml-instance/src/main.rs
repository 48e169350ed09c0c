//! pgml-instance: the entry point of each PgmlCluster instance Pod. It owns the PostgreSQL
//! process and its data directory and reports what it sees in its Pod's annotation
//! `pgml.io/instance-status` (docs/design/pgmlcluster.md, "The instance manager's contract").

mod backrest;
mod decide;
mod health;
mod manager;
mod metrics;
mod mounts;
mod postgres;
mod programs;
mod report;
mod restore;
mod settings;
mod view;
mod wal;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use pgml_runtime::{LogFormat, Shutdown, init_logging};

use crate::manager::{Identity, Manager};
use crate::postgres::{Pg, drop_to_postgres};

/// The shortest time between two looks brought forward by a change.
const MIN_GAP: Duration = Duration::from_millis(300);

#[derive(Parser, Debug)]
#[command(name = "pgml-instance", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run and supervise this instance's PostgreSQL until SIGTERM.
    Run(Args),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// This instance's Pod (downward API); also the instance's name.
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: String,
    /// The PgmlCluster this instance belongs to.
    #[arg(long, env = "CLUSTER_NAME")]
    cluster_name: String,
    /// PostgreSQL's data directory.
    #[arg(long, env = "PGDATA")]
    pgdata: PathBuf,
    #[arg(long, env = "PGPORT", default_value_t = 5432)]
    pgport: u16,
    /// The host other instances reach this one at (default: POD_IP).
    #[arg(long, env = "PGML_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    #[arg(long, env = "POD_IP", hide = true)]
    pod_ip: Option<String>,
    /// PostgreSQL's bin folder (default: `pg_config --bindir`, else
    /// /usr/lib/postgresql/15/bin).
    #[arg(long, env = "PGML_PG_BIN")]
    pg_bin: Option<PathBuf>,
    /// Folder of the server's Unix socket.
    #[arg(long, env = "PGML_SOCKET_DIR", default_value = "/tmp")]
    socket_dir: PathBuf,
    #[arg(long, env = "PGML_LISTEN_ADDRESSES", default_value = "*")]
    listen_addresses: String,
    /// The superuser initdb creates and this process connects as.
    #[arg(long, env = "PGML_SUPERUSER", default_value = "postgres")]
    superuser: String,
    /// pg_hba method for local (socket) connections at initdb.
    #[arg(long, env = "PGML_LOCAL_AUTH", default_value = "peer")]
    local_auth: String,
    /// pg_hba method for TCP connections (replication included) at initdb.
    #[arg(long, env = "PGML_HOST_AUTH", default_value = "scram-sha-256")]
    host_auth: String,
    /// The replication Secret, mounted (`username`, `password`); optional.
    #[arg(
        long,
        env = "PGML_REPLICATION_SECRET_DIR",
        default_value = "/etc/pgml/replication"
    )]
    replication_secret_dir: PathBuf,
    /// The cluster's ConfigMap: its `postgresql.conf` is included before this process's own
    /// settings, its `pg_hba.conf` is the `hba_file`, its `pg_ident.conf` the `ident_file`.
    /// Files absent: initdb's own are used.
    #[arg(long, env = "PGML_CONFIG_DIR", default_value = "/etc/pgml/config")]
    config_dir: PathBuf,
    /// The Secrets, mounted: `superuser/{username,password}` sets the superuser's password;
    /// `app/{username,password}` is the application database's owner.
    #[arg(long, env = "PGML_SECRETS_DIR", default_value = "/etc/pgml/secrets")]
    secrets_dir: PathBuf,
    /// The ZFS dataset PGDATA must be on (`<pool>/pgdata`); nothing starts, initialises or
    /// copies a database while it is not (the operator sets it for ZFS storage).
    #[arg(long, env = "PGML_EXPECT_DATASET")]
    expect_dataset: Option<String>,
    /// Where WAL lives, outside PGDATA: a folder on the pool's `pgwal` dataset (the
    /// operator sets it when the pool's template has one). `initdb --waldir` there, and
    /// `PGDATA/pg_wal` made a link to it before any start (a restored or copied PGDATA).
    /// Unset: WAL stays in PGDATA.
    #[arg(long, env = "PGML_WAL_DIR")]
    wal_dir: Option<PathBuf>,
    /// The ZFS dataset the WAL directory must be on (`<pool>/pgwal`); nothing starts,
    /// initialises or moves WAL while it is not.
    #[arg(long, env = "PGML_EXPECT_WAL_DATASET")]
    expect_wal_dataset: Option<String>,
    /// Where runtime files that must stay out of PGDATA go (the replication passfile);
    /// default: this program's own folder (the Pod's emptyDir it was copied into).
    #[arg(long, env = "PGML_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Seconds between two looks; the PgmlCluster or a Pod of the cluster changing brings
    /// the next one forward.
    #[arg(long, env = "PGML_INTERVAL_SECONDS", default_value_t = 2)]
    interval_seconds: u64,
    /// Where `/metrics` (PostgreSQL's figures) and the probes' `/healthz`, `/readyz` and
    /// `/startupz` are served.
    #[arg(long, env = "PGML_STATUS_ADDRESS", default_value = "0.0.0.0:9187")]
    status_address: String,
    #[arg(long, env = "PGML_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    #[arg(long, env = "PGML_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn simple(s: &str, what: &str, extra: &str) -> anyhow::Result<()> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    {
        bail!("{what} {s:?} has characters it may not have");
    }
    Ok(())
}

fn run_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("this program's path has no folder"))?,
    };
    simple(&dir.to_string_lossy(), "PGML_RUN_DIR", "/._-")?;
    Ok(dir)
}

fn pg_bin(given: Option<PathBuf>) -> PathBuf {
    if let Some(b) = given {
        return b;
    }
    std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.join("pg_ctl").exists())
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Run(args) = Cli::parse().command;
    init_logging(args.log_format, &args.log_level);
    let shutdown = Shutdown::install();
    let host = args
        .advertise_host
        .clone()
        .or(args.pod_ip.clone())
        .context("PGML_ADVERTISE_HOST (or POD_IP) is needed: other instances stream from it")?;
    simple(&host, "PGML_ADVERTISE_HOST", ".-:_")?;
    simple(&args.listen_addresses, "PGML_LISTEN_ADDRESSES", ".-:_*, ")?;
    simple(&args.superuser, "PGML_SUPERUSER", "_")?;
    simple(&args.local_auth, "PGML_LOCAL_AUTH", "-")?;
    simple(&args.host_auth, "PGML_HOST_AUTH", "-")?;
    if let Some(w) = &args.wal_dir
        && (!w.is_absolute() || w.starts_with(&args.pgdata) || args.pgdata.starts_with(w))
    {
        bail!(
            "PGML_WAL_DIR {} must be an absolute path outside PGDATA {} (and not above it)",
            w.display(),
            args.pgdata.display()
        );
    }
    let socket = args.socket_dir.to_string_lossy();
    simple(&socket, "PGML_SOCKET_DIR", "/._-")?;
    let pg = Pg {
        bin: pg_bin(args.pg_bin.clone()),
        data: args.pgdata.clone(),
        wal_dir: args.wal_dir.clone(),
        port: args.pgport,
        socket_dir: args.socket_dir.clone(),
        listen_addresses: args.listen_addresses.clone(),
        superuser: args.superuser.clone(),
        local_auth: args.local_auth.clone(),
        host_auth: args.host_auth.clone(),
        config_dir: Some(args.config_dir.clone()),
        drop_to: drop_to_postgres()?,
        run_dir: run_dir(args.run_dir.clone())?,
        db: Default::default(),
    };
    // Every program this process will run, there before anything is started.
    let uses_pgbackrest = ["pgbackrest.conf", "pgbackrest-bootstrap.conf"]
        .iter()
        .any(|f| args.config_dir.join(f).exists());
    let missing = programs::missing(
        &pg.bin,
        &std::env::var_os("PATH").unwrap_or_default(),
        pg.drop_to.is_some(),
        uses_pgbackrest,
    );
    if !missing.is_empty() {
        bail!(
            "the image lacks programs the instance manager runs: {} (PGML_PG_BIN is {})",
            missing.join(", "),
            pg.bin.display()
        );
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        instance = %args.pod_name,
        cluster = %args.cluster_name,
        pgdata = %pg.data.display(),
        wal_dir = ?pg.wal_dir.as_ref().map(|w| w.display().to_string()),
        port = pg.port,
        pg_bin = %pg.bin.display(),
        "starting pgml-instance"
    );
    let client = pgml_runtime::kube_client("pgml-instance", env!("CARGO_PKG_VERSION")).await?;
    let changed = view::watch_changes(client.clone(), &args.pod_namespace, &args.cluster_name);
    let mut m = Manager::new(
        pg,
        client,
        &args.pod_namespace,
        Identity {
            cluster: args.cluster_name.clone(),
            instance: args.pod_name.clone(),
            address: format!("{host}:{}", args.pgport),
            replication_secret: args.replication_secret_dir.clone(),
            superuser_secret: args.secrets_dir.join("superuser"),
            app_secret: args.secrets_dir.join("app"),
        },
    );
    m.expect_dataset = args.expect_dataset.clone();
    m.expect_wal_dataset = args.expect_wal_dataset.clone();
    let (metrics, registry) = metrics::Metrics::new();
    m.metrics = metrics;
    let last = m.probes.clone();
    pgml_runtime::http::serve_with(
        &args.status_address,
        registry,
        std::sync::Arc::new(move |p| {
            let last = last.lock().expect("probes lock");
            health::judge(p, last.as_ref(), std::time::Instant::now())
        }),
    )
    .await
    .with_context(|| format!("serving the probes and metrics on {}", args.status_address))?;
    m.recover_demotion().await;
    let every = Duration::from_secs(args.interval_seconds.max(1));
    loop {
        tokio::select! {
            _ = m.tick() => {}
            _ = shutdown.requested() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // Its own report is a change too: a short pause keeps that from looping.
            _ = changed.notified() => tokio::time::sleep(MIN_GAP).await,
            _ = shutdown.requested() => break,
        }
    }
    m.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
