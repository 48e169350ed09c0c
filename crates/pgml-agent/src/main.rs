//! pgml-agent: the node agent that builds and watches ZFS pools on EBS volumes.

mod decide;
mod devices;
mod exec;
mod hold;
mod judge;
mod observe;
mod permissions;
mod reconcile;
mod report;
mod stop;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use kube::runtime::{Controller, watcher};
use pgml_api::zfspool::ZfsPool;
use pgml_runtime::{LogFormat, Shutdown, init_logging};
use pgml_zfs::HostPath;

use crate::devices::Discovery;
use crate::exec::Runner;
use crate::reconcile::{Ctx, error_policy, reconcile};

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

    /// Watch only this namespace's ZfsPools (default: all namespaces). Tests run one agent
    /// per node and namespace; a DaemonSet leaves it unset.
    #[arg(long, env = "PGML_WATCH_NAMESPACE")]
    namespace: Option<String>,

    /// Where NVMe serial numbers are read (`<sys-block>/<nvmeXnY>/device/serial`).
    #[arg(long, env = "PGML_SYS_BLOCK", default_value = "/sys/block")]
    sys_block: PathBuf,

    /// Confirm each by-id link's NVMe serial equals its volume ID (Nitro). Links that do not
    /// point at a /dev/nvme* device (image files in the test bed) are never checked.
    #[arg(long, env = "PGML_CHECK_NVME_SERIAL", default_value_t = true, action = clap::ArgAction::Set)]
    check_nvme_serial: bool,

    /// Seconds between two health checks of a pool (also done on every change).
    #[arg(long, env = "PGML_RESYNC_SECONDS", default_value_t = 15)]
    resync_seconds: u64,

    /// Seconds between two looks at the health of the node's pools (`zpool status`, the
    /// members' device links; no API traffic). A pool whose health changed is reconciled at
    /// once, so a lost member shows in its status within seconds. On OpenZFS,
    /// `zpool events -f` wakes the look early as well.
    #[arg(long, env = "PGML_HEALTH_POLL_SECONDS", default_value_t = 2)]
    health_poll_seconds: u64,

    /// Seconds any zpool/zfs/blkid command may take before it is killed.
    #[arg(long, env = "PGML_COMMAND_TIMEOUT_SECONDS", default_value_t = 120)]
    command_timeout_seconds: u64,

    /// Where hold records are kept (one JSON file per EbsSnapshot UID being held): a host
    /// folder that survives agent restarts, so a restarted agent undoes what it did.
    #[arg(long, env = "PGML_STATE_DIR", default_value = "/var/lib/pgml-agent")]
    state_dir: PathBuf,

    /// The fsfreeze program (util-linux), for ext4 snapshot holds.
    #[arg(long, env = "PGML_FSFREEZE", default_value = "fsfreeze")]
    fsfreeze: PathBuf,

    /// The agent runs in a container that shares the node's PID namespace (the DaemonSet's
    /// hostPID): PVC sources of snapshot holds are found in the node's mount table
    /// (`/proc/1/mountinfo`) and reached through `/proc/1/root`, and the freeze guard moves
    /// into PID 1's cgroups, out of the container's, so a killed agent container cannot take
    /// it along while a file system is frozen.
    #[arg(long, env = "PGML_HOST_PID1", default_value_t = false, action = clap::ArgAction::Set)]
    host_pid1: bool,

    /// Log line format.
    #[arg(long, env = "PGML_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,

    /// Log filter when RUST_LOG is not set.
    #[arg(long, env = "PGML_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Where /healthz (liveness) and /metrics (Prometheus) are served. Port 0 picks a free
    /// port; the bound address is logged as `metrics_addr`.
    #[arg(long, env = "PGML_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: String,
}

/// The agent's Prometheus metrics: `pgml_agent_up` and the zpool/zfs commands it ran.
pub(crate) mod metrics {
    use std::sync::{Arc, OnceLock};

    use pgml_runtime::prometheus_client::metrics::counter::Counter;
    use pgml_runtime::prometheus_client::metrics::family::Family;
    use pgml_runtime::prometheus_client::metrics::gauge::Gauge;
    use pgml_runtime::prometheus_client::registry::Registry;

    type Labels = [(&'static str, &'static str); 2];

    struct Metrics {
        registry: Arc<Registry>,
        commands: Family<Labels, Counter>,
    }

    fn global() -> &'static Metrics {
        static M: OnceLock<Metrics> = OnceLock::new();
        M.get_or_init(|| {
            let mut r = Registry::default();
            let up = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
            up.set(1);
            r.register("pgml_agent_up", "1 while the node agent runs", up);
            let commands = Family::<Labels, Counter>::default();
            r.register(
                "pgml_agent_commands",
                "zpool, zfs and other commands the agent ran, per program and outcome (ok, failed, timeout, spawn_error)",
                commands.clone(),
            );
            Metrics {
                registry: Arc::new(r),
                commands,
            }
        })
    }

    pub fn registry() -> Arc<Registry> {
        global().registry.clone()
    }

    /// Counts one command run.
    pub fn command(program: &str, outcome: &'static str) {
        let program = match program {
            "zpool" => "zpool",
            "zfs" => "zfs",
            _ => "other",
        };
        global()
            .commands
            .get_or_create(&[("program", program), ("outcome", outcome)])
            .inc();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format, &args.log_level);
    let shutdown = Shutdown::install();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %args.node_name,
        dev_dir = %args.dev_dir.display(),
        mount_root = %args.mount_root.display(),
        "starting pgml-agent"
    );
    pgml_runtime::http::serve(&args.metrics_addr, metrics::registry()).await?;
    let client = pgml_runtime::kube_client("pgml-agent", env!("CARGO_PKG_VERSION")).await?;
    let hold = hold::HoldCtx::new(
        client.clone(),
        hold::record::Store::open(&args.state_dir).context("--state-dir")?,
        hold::guard::Freezer::beside_agent(args.fsfreeze.clone())
            .context("finding pgml-freeze-guard")?,
        args.dev_dir.clone(),
        args.sys_block.clone(),
        args.mount_root.clone(),
    );
    let hold = Arc::new(if args.host_pid1 {
        hold.through_pid1()
    } else {
        hold
    });
    // Holds an earlier agent left end at their deadline even if the API server never
    // answers this one.
    let sweeper = hold::spawn_sweeper(hold.clone());
    permissions::check(&client, args.namespace.as_deref(), &hold).await?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    loop {
        match nodes.get_opt(&args.node_name).await {
            Ok(Some(_)) => break,
            Ok(None) => anyhow::bail!(
                "node {} does not exist in the cluster; check NODE_NAME",
                args.node_name
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this node from the API server; retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.requested() => {
                        hold::drain(&hold).await;
                        tracing::info!("stopped");
                        return Ok(());
                    }
                }
            }
        }
    }
    tracing::info!("node found; waiting for work");
    // Snapshot holds do not need ZFS (ext4 sources): they run from the start, beside the
    // pools.
    let holds = tokio::spawn(hold::run(
        hold.clone(),
        args.node_name.clone(),
        args.namespace.clone(),
        shutdown.clone(),
    ));
    run_pools(&args, client, &hold, shutdown).await?;
    // Holds in place are seen through before the process ends.
    let _ = holds.await;
    sweeper.abort();
    tracing::info!("stopped");
    Ok(())
}

/// The ZfsPool side: waits for ZFS, then reconciles this node's pools until shutdown.
async fn run_pools(
    args: &Args,
    client: kube::Client,
    hold: &hold::HoldCtx,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let runner = Runner {
        zpool: args.zpool.clone(),
        zfs: args.zfs.clone(),
        timeout: Duration::from_secs(args.command_timeout_seconds),
    };
    // ZFS may come up after the agent (a module still loading, a daemon starting): wait for
    // it rather than crash-loop, and stay stoppable meanwhile.
    let detected = tokio::select! {
        d = detect_dialect(&runner) => d,
        _ = shutdown.requested() => return Ok(()),
    };
    tracing::info!(dialect = %detected.dialect, version = ?detected.version, kmod_version = ?detected.kmod_version, "ZFS detected");
    let _ = hold.zfs.set((runner.clone(), detected.dialect));
    HostPath::new(args.dev_dir.to_string_lossy().into_owned()).context("--dev-dir")?;

    // Only this node's pools: spec.nodeName is a selectable field of the CRD.
    let pools: kube::Api<ZfsPool> = match &args.namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    let selector = format!("spec.nodeName={}", args.node_name);
    tracing::info!(selector, namespace = ?args.namespace, "watching ZfsPools");
    let controller = Controller::new(pools, watcher::Config::default().fields(&selector));
    let ctx = Arc::new(Ctx {
        recorder: pgml_runtime::events::recorder(
            client.clone(),
            "pgml-agent",
            Some(args.node_name.clone()),
        ),
        client: client.clone(),
        store: controller.store(),
        runner,
        discovery: Discovery {
            dev_dir: args.dev_dir.clone(),
            dev_root: PathBuf::from("/dev"),
            sys_block: args.sys_block.clone(),
            check_serial: args.check_nvme_serial,
        },
        mount_root: HostPath::new(args.mount_root.to_string_lossy().into_owned())
            .context("--mount-root")?,
        dialect: detected.dialect,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        lock: tokio::sync::Mutex::new(()),
        expanded: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
    });
    let stop = stop::trigger(shutdown.clone(), controller.store());
    // Prompt notice of pool health: a look every few seconds (woken early by ZFS events
    // where OpenZFS has them) triggers the reconcile of a pool whose health changed.
    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    let wake = Arc::new(tokio::sync::Notify::new());
    let poll = tokio::spawn(watch::poll(
        ctx.clone(),
        ctx.store.clone(),
        Duration::from_secs(args.health_poll_seconds.max(1)),
        wake.clone(),
        trigger,
    ));
    let follow = tokio::spawn(watch::follow_events(
        args.zpool.clone(),
        detected.dialect,
        wake,
    ));
    let running = controller
        .reconcile_on(triggered)
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    stop::run_until_stopped(running, shutdown, "ZfsPools").await;
    poll.abort();
    follow.abort();
    Ok(())
}

/// `zfs version` until it answers in a dialect the agent speaks.
async fn detect_dialect(runner: &Runner) -> pgml_zfs::Detected {
    loop {
        let probe = pgml_zfs::dialect::version_probe();
        let err = match runner.run(&probe).await {
            Ok(out) => match pgml_zfs::detect(out.code, &out.stdout, &out.stderr) {
                Ok(d) => return d,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %err, "cannot tell which ZFS this node runs; retrying in 10s");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
