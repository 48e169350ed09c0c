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
    /// Restore into a new PgmlCluster (--cluster) or a new ZfsPool (--pool, --node).
    ///
    /// --cluster NEW --from SOURCE: a PgmlCluster with SOURCE's spec, bootstrapped from the
    /// EbsSnapshot given (the snapshot set is the base), from SOURCE's pgBackRest repository
    /// (without a snapshot: its backup and WAL), or both (--wal or a --target-*: the
    /// snapshot plus the repository's WAL), to a point in time with --target-time,
    /// --target-lsn, --target-name, --target-xid or --target-immediate. It archives to its
    /// own repository path, never SOURCE's. --dry-run prints the manifest (to apply through
    /// Git instead).
    ///
    /// --pool NAME --node NODE: the EbsSnapshot into a new ZfsPool on a node
    /// (spec.restoreFrom), its layout and volume count from the snapshot, its other settings
    /// from the pool that was captured when it still exists; datasets mount at
    /// /<pool>/<dataset>. To inspect or recover data by hand.
    #[command(group = clap::ArgGroup::new("into").required(true).args(["pool", "cluster"]))]
    #[command(group = clap::ArgGroup::new("target").multiple(false).args(["target_time", "target_lsn", "target_name", "target_xid", "target_immediate"]))]
    Restore {
        /// EbsSnapshot name (Completed, of a ZfsPool or a cluster on ZFS); optional with
        /// --cluster (then the repository's backup is the base).
        ebssnapshot: Option<String>,
        /// Name of the new ZfsPool (also its ZFS pool name on the node).
        #[arg(long, requires = "node")]
        pool: Option<String>,
        /// Node to create the pool on.
        #[arg(long, requires = "pool")]
        node: Option<String>,
        /// What happens to the restored volumes when the ZfsPool is deleted.
        #[arg(long, value_enum, default_value = "retain")]
        reclaim_policy: Reclaim,
        /// Name of the new PgmlCluster.
        #[arg(long, requires = "from")]
        cluster: Option<String>,
        /// The PgmlCluster whose spec and backups the new one is made from.
        #[arg(long, requires = "cluster")]
        from: Option<String>,
        /// Replay the source repository's WAL on the snapshot to the archive's end.
        #[arg(long, requires = "cluster")]
        wal: bool,
        /// Stop at this time (RFC 3339, e.g. 2026-12-07T10:15:00Z).
        #[arg(long, requires = "cluster")]
        target_time: Option<String>,
        /// Stop at this WAL position (e.g. 0/3000060).
        #[arg(long, requires = "cluster")]
        target_lsn: Option<String>,
        /// Stop at this restore point (pg_create_restore_point).
        #[arg(long, requires = "cluster")]
        target_name: Option<String>,
        /// Stop at this transaction id.
        #[arg(long, requires = "cluster")]
        target_xid: Option<String>,
        /// Stop as soon as the base is consistent.
        #[arg(long, requires = "cluster")]
        target_immediate: bool,
        /// Stop just before the target (time, lsn, xid) instead of just after it.
        #[arg(long, requires = "target")]
        exclusive: bool,
        /// Print the PgmlCluster's manifest (YAML) instead of creating it.
        #[arg(long, requires = "cluster")]
        dry_run: bool,
        /// Wait until the pool is Online / the cluster Healthy (exit 0) or it fails (exit 1).
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

/// The namespace a command works in, with the client and the APIs of the kinds it uses.
struct Session {
    client: Client,
    ns: String,
    clusters: Api<PgmlCluster>,
    snapshots: Api<EbsSnapshot>,
    pools: Api<ZfsPool>,
}

impl Session {
    fn new(client: Client, ns: String) -> Self {
        Session {
            clusters: Api::namespaced(client.clone(), &ns),
            snapshots: Api::namespaced(client.clone(), &ns),
            pools: Api::namespaced(client.clone(), &ns),
            client,
            ns,
        }
    }
}

/// Runs the command `cli` names, in the namespace it names: one function a command.
async fn run(cli: Cli) -> Result<()> {
    let (client, ns) = connect(&cli).await?;
    let k = Session::new(client, ns);
    match cli.command {
        Command::Status { cluster, output } => status(&k, &cluster, output).await,
        Command::Snapshot {
            cluster,
            name,
            instance,
            wait,
            timeout,
        } => {
            snapshot(
                &k,
                &cluster,
                name,
                instance.as_deref(),
                wait.then_some(timeout),
            )
            .await
        }
        Command::Restore {
            ebssnapshot,
            pool,
            node,
            reclaim_policy,
            cluster,
            from,
            wal,
            target_time,
            target_lsn,
            target_name,
            target_xid,
            target_immediate,
            exclusive,
            dry_run,
            wait,
            timeout,
        } => {
            if let (Some(cluster), Some(from)) = (cluster, from) {
                let any = target_time.is_some()
                    || target_lsn.is_some()
                    || target_name.is_some()
                    || target_xid.is_some()
                    || target_immediate;
                let target = any.then(|| pgml_api::cluster::RecoveryTarget {
                    time: target_time,
                    lsn: target_lsn,
                    name: target_name,
                    xid: target_xid,
                    immediate: target_immediate.then_some(true),
                    exclusive: exclusive.then_some(true),
                    timeline: None,
                });
                let ask = ClusterAsk {
                    name: cluster,
                    from,
                    snapshot: ebssnapshot,
                    wal,
                    target,
                    dry_run,
                };
                return restore_cluster(&k, &ask, wait.then_some(timeout)).await;
            }
            let (Some(ebssnapshot), Some(pool), Some(node)) = (ebssnapshot, pool, node) else {
                return fail("a pool restore needs an EbsSnapshot, --pool and --node");
            };
            let target = RestoreTarget {
                pool,
                node,
                reclaim: match reclaim_policy {
                    Reclaim::Retain => ReclaimPolicy::Retain,
                    Reclaim::Delete => ReclaimPolicy::Delete,
                },
            };
            restore(&k, &ebssnapshot, &target, wait.then_some(timeout)).await
        }
        Command::Switchover {
            cluster,
            instance,
            wait,
            timeout,
        } => switchover(&k, &cluster, &instance, wait.then_some(timeout)).await,
    }
}

/// Creates with kubectl-pgml as the field manager.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// With `--wait` (`wait` is its timeout): waits for `name` as [`wait_for`] does and prints
/// the outcome.
async fn wait_and_say<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    ns: &str,
    wait: Option<Duration>,
    judge: impl Fn(&K) -> Outcome,
) -> Result<()>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    if let Some(timeout) = wait {
        let m = wait_for(api, kind, name, ns, timeout, judge).await?;
        println!("{m}");
    }
    Ok(())
}

/// The objects `lp` selects in `ns`; `kinds` (plural) names them in an error.
async fn list<K>(api: &Api<K>, kinds: &str, ns: &str, lp: &ListParams) -> Result<Vec<K>>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(lp)
        .await
        .map_err(|e| api_error(&format!("listing {kinds} in {ns}"), e))?
        .items)
}

/// `status`: the cluster, the namespace's ZfsPools and EbsSnapshots and the cluster's
/// Warning events, summarized and printed as text or JSON.
async fn status(k: &Session, cluster: &str, output: Output) -> Result<()> {
    let ns = &k.ns;
    let c = get(&k.clusters, "PgmlCluster", cluster, ns).await?;
    let lp = ListParams::default();
    let pool_list = list(&k.pools, "ZfsPools", ns, &lp).await?;
    let snap_list = list(&k.snapshots, "EbsSnapshots", ns, &lp).await?;
    let events: Api<Event> = Api::namespaced(k.client.clone(), ns);
    let selector =
        format!("involvedObject.kind=PgmlCluster,involvedObject.name={cluster},type=Warning");
    let event_list = list(
        &events,
        "Events",
        ns,
        &ListParams::default().fields(&selector),
    )
    .await?;
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

/// `snapshot`: a manual EbsSnapshot of the cluster, named after it and the time unless
/// `name` says.
async fn snapshot(
    k: &Session,
    cluster: &str,
    name: Option<String>,
    instance: Option<&str>,
    wait: Option<Duration>,
) -> Result<()> {
    let ns = &k.ns;
    get(&k.clusters, "PgmlCluster", cluster, ns).await?;
    let name = name.unwrap_or_else(|| {
        let stamp = Timestamp::now().strftime("%Y%m%d%H%M%S").to_string();
        actions::snapshot_name(cluster, &stamp)
    });
    let obj = actions::snapshot_of(cluster, ns, &name, instance);
    k.snapshots
        .create(&post_params(), &obj)
        .await
        .map_err(|e| api_error(&format!("creating EbsSnapshot {name} in {ns}"), e))?;
    println!("ebssnapshot.pgml.io/{name} created (PgmlCluster {cluster})");
    wait_and_say(
        &k.snapshots,
        "EbsSnapshot",
        &name,
        ns,
        wait,
        actions::snapshot_outcome,
    )
    .await
}

/// The new ZfsPool of a `restore`: its name, its node and its reclaim policy.
struct RestoreTarget {
    pool: String,
    node: String,
    reclaim: ReclaimPolicy,
}

/// `restore`: a new ZfsPool on a node from an EbsSnapshot, with the settings of the pool
/// that was captured when it still exists.
async fn restore(
    k: &Session,
    ebssnapshot: &str,
    to: &RestoreTarget,
    wait: Option<Duration>,
) -> Result<()> {
    let (ns, pool, node) = (&k.ns, &to.pool, &to.node);
    let snap = get(&k.snapshots, "EbsSnapshot", ebssnapshot, ns).await?;
    check_node(k, node).await?;
    let source = match snap.status.as_ref().and_then(|s| s.zfs_pool.clone()) {
        Some(p) => k
            .pools
            .get_opt(&p)
            .await
            .map_err(|e| api_error(&format!("reading ZfsPool {p}"), e))?,
        None => None,
    };
    let obj = actions::restore_pool(&snap, source.as_ref(), pool, ns, node, to.reclaim)
        .map_err(Failure)?;
    k.pools
        .create(&post_params(), &obj)
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
    wait_and_say(&k.pools, "ZfsPool", pool, ns, wait, actions::pool_outcome).await
}

/// A cluster restore, as asked on the command line.
struct ClusterAsk {
    name: String,
    from: String,
    snapshot: Option<String>,
    wal: bool,
    target: Option<pgml_api::cluster::RecoveryTarget>,
    dry_run: bool,
}

/// `restore --cluster`: a new PgmlCluster from a source's snapshot and/or repository.
async fn restore_cluster(k: &Session, ask: &ClusterAsk, wait: Option<Duration>) -> Result<()> {
    let ns = &k.ns;
    let source = get(&k.clusters, "PgmlCluster", &ask.from, ns).await?;
    let snap = match &ask.snapshot {
        Some(s) => Some(get(&k.snapshots, "EbsSnapshot", s, ns).await?),
        None => None,
    };
    let from = actions::ClusterRestore {
        snapshot: snap.as_ref(),
        wal: ask.wal,
        target: ask.target.clone(),
    };
    let obj = actions::restore_cluster(&source, &ask.name, ns, &from).map_err(Failure)?;
    if ask.dry_run {
        let yaml = serde_yaml::to_string(&obj)
            .map_err(|e| Failure(format!("printing the manifest: {e}")))?;
        print!("{yaml}");
        return Ok(());
    }
    k.clusters
        .create(&post_params(), &obj)
        .await
        .map_err(|e| api_error(&format!("creating PgmlCluster {} in {ns}", ask.name), e))?;
    let base = obj
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.base())
        .unwrap_or_default();
    let target = ask
        .target
        .as_ref()
        .map_or("the end of the archive".to_string(), |t| t.describe());
    println!(
        "pgmlcluster.pgml.io/{} created from {base}, to {target}",
        ask.name
    );
    wait_and_say(
        &k.clusters,
        "PgmlCluster",
        &ask.name,
        ns,
        wait,
        actions::cluster_outcome,
    )
    .await
}

/// The node a pool is restored on exists, as far as this user may read nodes.
async fn check_node(k: &Session, node: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(k.client.clone());
    match nodes.get_opt(node).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => fail(format!("node {node} not found")),
        // Reading nodes may not be allowed; the operator checks the node anyway.
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        Err(e) => Err(api_error(&format!("reading node {node}"), e)),
    }
}

/// `switchover`: `spec.primary` set to a ready replica, refused for any other instance.
async fn switchover(
    k: &Session,
    cluster: &str,
    instance: &str,
    wait: Option<Duration>,
) -> Result<()> {
    let ns = &k.ns;
    let c = get(&k.clusters, "PgmlCluster", cluster, ns).await?;
    actions::check_switchover(&c, instance).map_err(Failure)?;
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    k.clusters
        .patch(
            cluster,
            &pp,
            &Patch::Merge(actions::switchover_patch(instance)),
        )
        .await
        .map_err(|e| api_error(&format!("patching PgmlCluster {cluster} in {ns}"), e))?;
    println!(
        "pgmlcluster.pgml.io/{cluster} patched: spec.primary={instance} (under GitOps, set it in Git too)"
    );
    wait_and_say(&k.clusters, "PgmlCluster", cluster, ns, wait, |c| {
        actions::switchover_outcome(c, instance)
    })
    .await
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
        // A cluster restore: --cluster needs --from, one target at most, --pool excludes it.
        for bad in [
            &["restore", "--cluster", "copy"][..],
            &[
                "restore",
                "--cluster",
                "copy",
                "--from",
                "main",
                "--target-time",
                "2026-12-07T10:00:00Z",
                "--target-immediate",
            ],
            &[
                "restore",
                "s1",
                "--pool",
                "p",
                "--node",
                "n",
                "--cluster",
                "copy",
                "--from",
                "main",
            ],
            &[
                "restore",
                "s1",
                "--pool",
                "p",
                "--node",
                "n",
                "--target-immediate",
            ],
            &[
                "restore",
                "--cluster",
                "copy",
                "--from",
                "main",
                "--exclusive",
            ],
        ] {
            let args: Vec<&str> = ["kubectl-pgml"].iter().chain(bad).copied().collect();
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "kubectl-pgml",
            "restore",
            "--cluster",
            "copy",
            "--from",
            "main",
            "--target-lsn",
            "0/3000060",
            "--exclusive",
            "--dry-run",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Restore { cluster: Some(ref c), target_lsn: Some(ref l), exclusive: true, dry_run: true, ebssnapshot: None, .. } if c == "copy" && l == "0/3000060"
        ));
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
