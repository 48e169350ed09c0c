//! pgml-operator: the controllers for PgmlCluster, ZfsPool and EbsSnapshot.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::Client;
use pgml_operator::{Context, Settings};
use pgml_runtime::{LogFormat, Shutdown, init_logging};

/// Runs PostgresML on EC2: provisions gp3/io2 EBS volumes for ZFS pools, orchestrates
/// standby.signal-aware EBS snapshots, and manages PostgresML clusters on them.
///
/// Kubernetes access comes from the in-cluster service account or KUBECONFIG; AWS access
/// from the standard chain (instance role, IRSA, Pod Identity) and AWS_REGION.
#[derive(Parser, Debug)]
#[command(name = "pgml-operator", version, about, long_about)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "PGML_WATCH_NAMESPACE")]
    namespace: Option<String>,

    /// Log line format.
    #[arg(long, env = "PGML_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,

    /// Log filter when RUST_LOG is not set (e.g. `info`, `pgml_operator=debug,info`).
    #[arg(long, env = "PGML_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// During a ZfsPool's deletion, how long to wait for the node agent to release the pool
    /// before reporting it Degraded (the volumes stay attached until the agent releases it
    /// or the node is gone), in seconds.
    #[arg(long, env = "PGML_RELEASE_TIMEOUT_SECONDS", default_value_t = 600)]
    release_timeout_seconds: u64,

    /// How long an EbsSnapshot waits for the node agent to hold its source (standby.signal,
    /// fsfreeze) before it fails with AgentNotResponding, in seconds.
    #[arg(long, env = "PGML_AGENT_TIMEOUT_SECONDS", default_value_t = 120)]
    agent_timeout_seconds: u64,

    /// How long an EbsSnapshot waits for a source that does not exist (applied in the same
    /// batch, say) before it fails with SourceNotFound, in seconds.
    #[arg(long, env = "PGML_SOURCE_TIMEOUT_SECONDS", default_value_t = 300)]
    source_timeout_seconds: u64,

    /// Image whose /usr/local/bin/pgml-instance the PgmlCluster Pods' init container copies
    /// in (the operator's own image). Default: ghcr.io/pgml/pgml-operator:<this version>.
    #[arg(long, env = "PGML_INSTANCE_IMAGE")]
    instance_image: Option<String>,

    /// How long a PgmlCluster's primary may be lost (Pod gone or down, node NotReady,
    /// PostgreSQL not running) before the operator fences it and promotes the most advanced
    /// ready replica, in seconds.
    #[arg(long, env = "PGML_FAILOVER_GRACE_SECONDS", default_value_t = 30)]
    failover_grace_seconds: u64,
}

const API_GROUP: &str = "pgml.io";
/// How long in-flight reconciles may run after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);
const KINDS: [&str; 3] = ["PgmlCluster", "ZfsPool", "EbsSnapshot"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format, &args.log_level);
    let shutdown = Shutdown::install();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), namespace = ?args.namespace, "starting pgml-operator");

    let client = Client::try_default().await?;
    check_crds(&client).await?;
    let aws = pgml_aws::sdk_config().await;
    let ec2 = Arc::new(pgml_aws::SdkEc2::new(&aws));
    let settings = Settings {
        namespace: args.namespace.clone(),
        release_timeout: Duration::from_secs(args.release_timeout_seconds),
        agent_timeout: Duration::from_secs(args.agent_timeout_seconds),
        source_timeout: Duration::from_secs(args.source_timeout_seconds),
        instance_image: args
            .instance_image
            .clone()
            .unwrap_or_else(pgml_operator::zfspool::default_instance_image),
        failover_grace: Duration::from_secs(args.failover_grace_seconds),
        ..Settings::default()
    };
    let ctx = Context::new(client, ec2, settings);
    tracing::info!("custom resources are served; waiting for work");
    // The stop request is awaited here, not inside the controller (kube polls its trigger
    // late); the controller then gets a grace period to finish the reconciles in flight
    // (each is idempotent, so one cut short is redone by the next process).
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let controller = pgml_operator::run_until(ctx, async move { stopped.notified().await });
    tokio::pin!(controller);
    tokio::select! {
        _ = &mut controller => {}
        _ = shutdown.requested() => {
            stop.notify_one();
            if tokio::time::timeout(GRACE, controller).await.is_err() {
                tracing::warn!(grace = ?GRACE, "reconciles still running after the grace period; stopping anyway");
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Fails start-up with a clear message when the CRDs are not installed, rather than
/// crash-looping on 404s later.
async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let discovery = kube::Discovery::new(client.clone())
        .filter(&[API_GROUP])
        .run()
        .await?;
    let served: Vec<String> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .map(|(ar, _)| ar.kind)
        .collect();
    let missing: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| !served.iter().any(|s| s == k))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the {API_GROUP} CRDs are not installed (missing: {}); apply crds/ first",
            missing.join(", ")
        );
    }
    Ok(())
}
