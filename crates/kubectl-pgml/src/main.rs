//! `kubectl-pgml`: the kubectl plugin of pgml-operator. On PATH as `kubectl-pgml`, it runs as
//! `kubectl pgml <command>`: `status`, `snapshot`, `restore`, `switchover`.
//!
//! Exit codes: 0 done, 1 failed (the object is missing, refused, a wait failed or timed out),
//! 2 usage error.

mod actions;
mod paint;
mod status;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Event, Node};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use pgml_api::zfspool::ReclaimPolicy;
use pgml_api::{EbsSnapshot, PgmlCluster, ZfsPool};
use serde::de::DeserializeOwned;

use actions::Outcome;

/// The field manager of every write, so `kubectl get -o yaml --show-managed-fields` tells
/// who changed what.
const FIELD_MANAGER: &str = "kubectl-pgml";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl pgml",
    bin_name = "kubectl pgml",
    version,
    about = "Day-2 operations on pgml-operator's PgmlClusters: status, snapshot, restore, switchover",
    after_help = "Namespace: -n/--namespace, else the kubeconfig context's, else default. \
Kubeconfig: --kubeconfig, else KUBECONFIG, else ~/.kube/config, else in-cluster.\n\
Exit codes: 0 done, 1 failed (not found, refused, failed or timed out), 2 usage error."
)]
struct Cli {
    /// Namespace of the objects.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Path to the kubeconfig file.
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Output {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Reclaim {
    Retain,
    Delete,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One screen on a cluster: phase and conditions, primary, instances (role, node, zone,
    /// readiness, LSN and lag, pool health and capacity), archiving and the last pgBackRest
    /// backup, the newest EbsSnapshots, and recent Warning events.
    Status {
        /// PgmlCluster name.
        cluster: String,
        /// `text` (default; colours only on a terminal) or `json`.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Take an EbsSnapshot of a cluster now (of a ready replica unless --instance says,
    /// the primary only when it is alone). It is a manual snapshot: the cluster's
    /// retention never deletes it.
    Snapshot {
        /// PgmlCluster name.
        cluster: String,
        /// EbsSnapshot name. Default: <cluster>-<UTC yyyymmddhhmmss>.
        #[arg(long)]
        name: Option<String>,
        /// Instance to capture (e.g. main-2). Default: the operator picks a ready replica.
        #[arg(long)]
        instance: Option<String>,
        /// Wait until the snapshot is Completed (exit 0) or Failed (exit 1).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = units::parse_duration)]
        timeout: Duration,
    },
    /// Restore an EbsSnapshot into a new ZfsPool on a node (spec.restoreFrom). The pool's
    /// layout and volume count come from the snapshot, its other settings from the pool
    /// that was captured when it still exists; datasets mount at /<pool>/<dataset>.
    ///
    /// There is no cluster-level restore in the API: this makes a pool only. A PgmlCluster
    /// seeds its own replicas from snapshots (spec.replicas.seedFrom: Snapshot); use a
    /// restored pool to inspect or recover data by hand.
    Restore {
        /// EbsSnapshot name (Completed, of a ZfsPool or a cluster on ZFS).
        ebssnapshot: String,
        /// Name of the new ZfsPool (also its ZFS pool name on the node).
        #[arg(long)]
        pool: String,
        /// Node to create the pool on.
        #[arg(long)]
        node: String,
        /// What happens to the restored volumes when the ZfsPool is deleted.
        #[arg(long, value_enum, default_value = "retain")]
        reclaim_policy: Reclaim,
        /// Wait until the pool is Online (exit 0) or fails (exit 1).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = units::parse_duration)]
        timeout: Duration,
    },
    /// Ask for a switchover: set spec.primary to a ready replica (a JSON merge patch, field
    /// manager kubectl-pgml). Refused unless the status lists the instance as a ready
    /// replica.
    ///
    /// Under GitOps (Argo CD, Flux) spec.primary belongs in Git: change it there instead,
    /// or the next sync reverts this patch and switches back.
    Switchover {
        /// PgmlCluster name.
        cluster: String,
        /// The replica to promote (e.g. main-2).
        instance: String,
        /// Wait until the status shows the instance as the primary.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = units::parse_duration)]
        timeout: Duration,
    },
}

/// A failure, said in one line on stderr (exit 1).
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(Failure(message.into()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}

/// A client and the namespace to work in.
async fn connect(cli: &Cli) -> Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        cluster: None,
        user: None,
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Failure(format!("reading kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Failure(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Failure(format!("kubeconfig: {e}")))?,
        None => Config::infer()
            .await
            .map_err(|e| Failure(format!("no Kubernetes configuration found: {e}")))?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client =
        Client::try_from(config).map_err(|e| Failure(format!("Kubernetes client: {e}")))?;
    Ok((client, namespace))
}

/// Says what went wrong talking to the apiserver, in one line.
fn api_error(what: &str, e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => Failure(format!("{what}: {} ({})", s.message, s.code)),
        other => Failure(format!("{what}: {other}")),
    }
}

/// Object `name` of kind `kind` in `ns`, or a clear "not found".
async fn get<K>(api: &Api<K>, kind: &str, name: &str, ns: &str) -> Result<K>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => fail(format!("{kind} {name} not found in namespace {ns}")),
        Err(e) => Err(api_error(&format!("reading {kind} {name} in {ns}"), e)),
    }
}

/// Polls `name` every second until `judge` says done or failed, or `timeout` passes;
/// phases go to stderr as they change.
async fn wait_for<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    ns: &str,
    timeout: Duration,
    judge: impl Fn(&K) -> Outcome,
) -> Result<String>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let o = get(api, kind, name, ns).await?;
        match judge(&o) {
            Outcome::Done(m) => return Ok(m),
            Outcome::Failed(m) => return fail(m),
            Outcome::Pending(p) => {
                if p != last {
                    eprintln!("{kind} {name}: {p}");
                    last = p;
                }
            }
        }
        if Instant::now() >= deadline {
            return fail(format!(
                "timed out after {}s waiting for {kind} {name} (still {last})",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(cli: Cli) -> Result<()> {
    let (client, ns) = connect(&cli).await?;
    let clusters: Api<PgmlCluster> = Api::namespaced(client.clone(), &ns);
    let snapshots: Api<EbsSnapshot> = Api::namespaced(client.clone(), &ns);
    let pools: Api<ZfsPool> = Api::namespaced(client.clone(), &ns);
    match cli.command {
        Command::Status { cluster, output } => {
            let c = get(&clusters, "PgmlCluster", &cluster, &ns).await?;
            let lp = ListParams::default();
            let pool_list = pools
                .list(&lp)
                .await
                .map_err(|e| api_error(&format!("listing ZfsPools in {ns}"), e))?
                .items;
            let snap_list = snapshots
                .list(&lp)
                .await
                .map_err(|e| api_error(&format!("listing EbsSnapshots in {ns}"), e))?
                .items;
            let events: Api<Event> = Api::namespaced(client.clone(), &ns);
            let selector = format!(
                "involvedObject.kind=PgmlCluster,involvedObject.name={cluster},type=Warning"
            );
            let event_list = events
                .list(&ListParams::default().fields(&selector))
                .await
                .map_err(|e| api_error(&format!("listing Events in {ns}"), e))?
                .items;
            let summary = status::summarize(&c, &pool_list, &snap_list, &event_list);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
                Output::Text => print!(
                    "{}",
                    status::render(&summary, Timestamp::now(), paint::stdout_wants_colour())
                ),
            }
            Ok(())
        }
        Command::Snapshot {
            cluster,
            name,
            instance,
            wait,
            timeout,
        } => {
            get(&clusters, "PgmlCluster", &cluster, &ns).await?;
            let name = name.unwrap_or_else(|| {
                let stamp = Timestamp::now().strftime("%Y%m%d%H%M%S").to_string();
                actions::snapshot_name(&cluster, &stamp)
            });
            let obj = actions::snapshot_of(&cluster, &ns, &name, instance.as_deref());
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            snapshots
                .create(&pp, &obj)
                .await
                .map_err(|e| api_error(&format!("creating EbsSnapshot {name} in {ns}"), e))?;
            println!("ebssnapshot.pgml.io/{name} created (PgmlCluster {cluster})");
            if wait {
                let m = wait_for(
                    &snapshots,
                    "EbsSnapshot",
                    &name,
                    &ns,
                    timeout,
                    actions::snapshot_outcome,
                )
                .await?;
                println!("{m}");
            }
            Ok(())
        }
        Command::Restore {
            ebssnapshot,
            pool,
            node,
            reclaim_policy,
            wait,
            timeout,
        } => {
            let snap = get(&snapshots, "EbsSnapshot", &ebssnapshot, &ns).await?;
            let nodes: Api<Node> = Api::all(client.clone());
            match nodes.get_opt(&node).await {
                Ok(Some(_)) => {}
                Ok(None) => return fail(format!("node {node} not found")),
                // Reading nodes may not be allowed; the operator checks the node anyway.
                Err(kube::Error::Api(s)) if s.code == 403 => {}
                Err(e) => return Err(api_error(&format!("reading node {node}"), e)),
            }
            let source = match snap.status.as_ref().and_then(|s| s.zfs_pool.clone()) {
                Some(p) => pools
                    .get_opt(&p)
                    .await
                    .map_err(|e| api_error(&format!("reading ZfsPool {p}"), e))?,
                None => None,
            };
            let reclaim = match reclaim_policy {
                Reclaim::Retain => ReclaimPolicy::Retain,
                Reclaim::Delete => ReclaimPolicy::Delete,
            };
            let obj = actions::restore_pool(&snap, source.as_ref(), &pool, &ns, &node, reclaim)
                .map_err(Failure)?;
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            pools
                .create(&pp, &obj)
                .await
                .map_err(|e| api_error(&format!("creating ZfsPool {pool} in {ns}"), e))?;
            let t = &obj.spec.template;
            println!(
                "zfspool.pgml.io/{pool} created on {node} from EbsSnapshot {ebssnapshot} ({} x {} GiB {}, {}{})",
                t.volumes.count,
                t.volumes.size_gib,
                t.volumes.volume_type.as_str(),
                t.layout.as_str(),
                if source.is_some() {
                    ", settings of the captured pool"
                } else {
                    ""
                }
            );
            if wait {
                let m = wait_for(
                    &pools,
                    "ZfsPool",
                    &pool,
                    &ns,
                    timeout,
                    actions::pool_outcome,
                )
                .await?;
                println!("{m}");
            }
            Ok(())
        }
        Command::Switchover {
            cluster,
            instance,
            wait,
            timeout,
        } => {
            let c = get(&clusters, "PgmlCluster", &cluster, &ns).await?;
            actions::check_switchover(&c, &instance).map_err(Failure)?;
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            clusters
                .patch(
                    &cluster,
                    &pp,
                    &Patch::Merge(actions::switchover_patch(&instance)),
                )
                .await
                .map_err(|e| api_error(&format!("patching PgmlCluster {cluster} in {ns}"), e))?;
            println!(
                "pgmlcluster.pgml.io/{cluster} patched: spec.primary={instance} (under GitOps, set it in Git too)"
            );
            if wait {
                let m = wait_for(&clusters, "PgmlCluster", &cluster, &ns, timeout, |c| {
                    actions::switchover_outcome(c, &instance)
                })
                .await?;
                println!("{m}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_after_the_command_as_kubectl_passes_them() {
        let cli = Cli::try_parse_from([
            "kubectl-pgml",
            "status",
            "main",
            "-n",
            "db",
            "--kubeconfig",
            "/k",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("db"));
        assert_eq!(cli.kubeconfig, Some(PathBuf::from("/k")));
        assert!(matches!(
            cli.command,
            Command::Status {
                output: Output::Json,
                ..
            }
        ));
        let e = Cli::try_parse_from(["kubectl-pgml", "restore", "s1"]).unwrap_err();
        assert!(e.use_stderr(), "missing --pool/--node is a usage error");
        let cli = Cli::try_parse_from([
            "kubectl-pgml",
            "snapshot",
            "main",
            "--wait",
            "--timeout",
            "2m",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Snapshot { wait: true, timeout, .. } if timeout == Duration::from_secs(120)
        ));
    }
}
