//! pgml-agent: the node agent that builds and watches ZFS pools on EBS volumes.

use std::path::PathBuf;

use clap::Parser;
use pgml_runtime::{LogFormat, init_logging, shutdown_signal};

/// The node side of pgml-operator: finds the node's EBS volumes by volume ID, builds
/// RAID0/RAIDZ1 ZFS pools on them, and reports pool health. Runs as a DaemonSet, one per
/// node, and touches only the ZfsPools of its own node.
#[derive(Parser, Debug)]
#[command(name = "pgml-agent", version, about, long_about)]
struct Args {
    /// The Kubernetes node this agent runs on (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Where the node's by-id device links are (EBS NVMe devices appear there as
    /// nvme-Amazon_Elastic_Block_Store_vol…).
    #[arg(long, env = "PGML_DEV_DIR", default_value = "/dev/disk/by-id")]
    dev_dir: PathBuf,

    /// The host folder under which pool datasets are mounted.
    #[arg(long, env = "PGML_MOUNT_ROOT", default_value = "/var/lib/pgml")]
    mount_root: PathBuf,

    /// The zpool program.
    #[arg(long, env = "PGML_ZPOOL", default_value = "zpool")]
    zpool: PathBuf,

    /// The zfs program.
    #[arg(long, env = "PGML_ZFS", default_value = "zfs")]
    zfs: PathBuf,

    /// Log line format.
    #[arg(long, env = "PGML_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,

    /// Log filter when RUST_LOG is not set.
    #[arg(long, env = "PGML_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format, &args.log_level);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %args.node_name,
        dev_dir = %args.dev_dir.display(),
        mount_root = %args.mount_root.display(),
        "starting pgml-agent"
    );
    let client = kube::Client::try_default().await?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    if nodes.get_opt(&args.node_name).await?.is_none() {
        anyhow::bail!(
            "node {} does not exist in the cluster; check NODE_NAME",
            args.node_name
        );
    }
    tracing::info!("node found; waiting for work");

    shutdown_signal().await;
    tracing::info!("stopped");
    Ok(())
}
