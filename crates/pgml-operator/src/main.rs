//! pgml-operator: the controllers for PgmlCluster, ZfsPool and EbsSnapshot.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::Client;
use pgml_operator::leader::{Elector, LeaseSettings};
use pgml_operator::runtime::{ClusterSettings, PoolSettings, SnapshotSettings};
use pgml_operator::{Context, Settings, metrics};
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

    /// This installation's name: tagged `pgml.io/installation` on every volume and
    /// snapshot it creates, for the IAM policy to match against the role's own tag (two
    /// installations in one account cannot touch each other's volumes).
    #[arg(long, env = "PGML_INSTALLATION", default_value = pgml_operator::runtime::context::DEFAULT_INSTALLATION, value_parser = installation_name)]
    installation: String,

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

    /// Give each PgmlCluster a NetworkPolicy `<cluster>-postgres` (owned by it): PostgreSQL
    /// reachable only from the cluster's own Pods and from Pods of its namespace labelled
    /// `pgml.io/client-<cluster>: "true"`. The chart sets it with `networkPolicy.enabled`.
    #[arg(long, env = "PGML_NETWORK_POLICIES", default_value_t = false, action = clap::ArgAction::Set)]
    network_policies: bool,

    /// Where /metrics (Prometheus), /healthz (liveness) and /readyz (readiness) are served.
    /// Port 0 picks a free port; the bound address is logged as `metrics_addr`.
    #[arg(long, env = "PGML_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,

    /// The operator's own EC2 rate limits, one token bucket per class of action as EC2
    /// meters them, shared by all reconciles: calls wait for a token instead of being
    /// throttled. Empty: EC2's defaults for an account (resource 100 + 5/s, mutating
    /// 50 + 5/s, describe 100 + 20/s). `off`, or over the defaults a list of
    /// `CLASS=SIZE/REFILL`, `CLASS=off` and `scale=F` (every refill × F, for an account
    /// whose limits AWS raised), e.g. `scale=2,describe=200/40`.
    #[arg(long, env = "PGML_EC2_RATE_LIMITS", default_value = "", value_parser = pgml_aws::RateLimits::parse)]
    ec2_rate_limits: pgml_aws::RateLimits,

    /// Run the controllers only while holding the leader Lease (for several replicas).
    #[arg(long, env = "PGML_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,

    /// The leader Lease's name.
    #[arg(long, env = "PGML_LEASE_NAME", default_value = "pgml-operator")]
    lease_name: String,

    /// The leader Lease's namespace (default: POD_NAMESPACE, else the watched namespace,
    /// else `default`).
    #[arg(long, env = "PGML_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,

    /// How long the Lease stays valid after its holder's last renewal, in seconds: the
    /// longest a follower waits to take over from a leader that died.
    #[arg(long, env = "PGML_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,

    /// The renew deadline, in seconds: a leader that could not renew for this long exits
    /// (less than the lease duration).
    #[arg(long, env = "PGML_LEASE_RENEW_SECONDS", default_value_t = 10)]
    lease_renew_seconds: u64,

    /// How often the leader renews and followers look at the Lease, in seconds.
    #[arg(long, env = "PGML_LEASE_RETRY_SECONDS", default_value_t = 2)]
    lease_retry_seconds: u64,
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

    // Not leading until the election says so: the gauge is there from the first scrape,
    // not only once the start-up checks are over.
    metrics::set_leader(&pgml_operator::leader::default_identity(), false);
    let metrics_addr = pgml_runtime::http::serve(&args.metrics_addr, metrics::registry()).await?;
    let client = pgml_runtime::kube_client("pgml-operator", env!("CARGO_PKG_VERSION")).await?;
    check_crds(&client).await?;
    // One rule for where the Lease lives, for the permission check and the elector alike.
    let lease_namespace = pgml_operator::permissions::lease_namespace(
        args.leader_elect,
        args.lease_namespace.as_deref(),
        std::env::var("POD_NAMESPACE").ok().as_deref(),
        args.namespace.as_deref(),
    );
    pgml_operator::permissions::check(
        &client,
        args.namespace.as_deref(),
        lease_namespace.as_deref(),
    )
    .await?;

    // A follower only reads its Lease: no EC2 client, no controller, no write, until it leads.
    let Some(elector) = lead(&args, &client, lease_namespace, metrics_addr, &shutdown).await?
    else {
        tracing::info!("stopped before leading");
        return Ok(());
    };
    let ec2 = ec2_client(&args).await;
    let ctx = Context::new(client, ec2, settings(&args));
    tracing::info!("custom resources are served; waiting for work");
    // The stop request is awaited here, not inside the controllers: kube-runtime polls its
    // trigger late. On SIGTERM the gate closes (no reconcile starts), the ones in flight get
    // a grace period (each is idempotent, so one cut short is redone by the next process),
    // and the Lease is released as soon as none is left.
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let controller = pgml_operator::run_until(ctx.clone(), async move { stopped.notified().await });
    tokio::pin!(controller);
    let lost = async {
        match &elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lost);
    tokio::select! {
        _ = &mut controller => {}
        lost = &mut lost => lost_lease(lost),
        _ = shutdown.requested() => {
            ctx.drain.stop();
            stop.notify_one();
            let in_flight = ctx.drain.running();
            // The controllers are still polled (they drive the reconciles in flight); the
            // Lease is still renewed until they are done.
            let drained = async {
                tokio::select! {
                    _ = &mut controller => {}
                    _ = ctx.drain.idle() => {}
                }
            };
            tokio::select! {
                done = tokio::time::timeout(GRACE, drained) => match done {
                    Ok(()) => tracing::info!(in_flight, "reconciles in flight finished"),
                    Err(_) => tracing::warn!(grace = ?GRACE, left = ctx.drain.running(), "reconciles still running after the grace period; stopping anyway"),
                },
                lost = &mut lost => lost_lease(lost),
            }
            if let Some(e) = &elector {
                metrics::set_leader(&e.settings().identity, false);
                e.release().await;
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The controllers' settings from the flags.
fn settings(args: &Args) -> Settings {
    Settings {
        namespace: args.namespace.clone(),
        installation: args.installation.clone(),
        pool: PoolSettings {
            release_timeout: Duration::from_secs(args.release_timeout_seconds),
            ..PoolSettings::default()
        },
        snapshot: SnapshotSettings {
            agent_timeout: Duration::from_secs(args.agent_timeout_seconds),
            source_timeout: Duration::from_secs(args.source_timeout_seconds),
            ..SnapshotSettings::default()
        },
        cluster: ClusterSettings {
            instance_image: args
                .instance_image
                .clone()
                .unwrap_or_else(pgml_operator::runtime::default_instance_image),
            failover_grace: Duration::from_secs(args.failover_grace_seconds),
            network_policies: args.network_policies,
        },
        ..Settings::default()
    }
}

/// The EC2 client: the SDK, observed by the metrics, behind the account's rate limits, with
/// concurrent describes batched.
async fn ec2_client(args: &Args) -> Arc<pgml_aws::Batched> {
    let aws = pgml_aws::sdk_config().await;
    let sdk = Arc::new(pgml_aws::SdkEc2::with_observer(
        &aws,
        Arc::new(metrics::ec2_request),
    ));
    tracing::info!(limits = ?args.ec2_rate_limits, "EC2 rate limits");
    let limited = Arc::new(
        pgml_aws::Limited::new(sdk, &args.ec2_rate_limits)
            .with_observer(Arc::new(metrics::ec2_limit)),
    );
    // Describes of one instance or one pool's volumes, asked by many reconciles at once,
    // go out as one call.
    Arc::new(pgml_aws::Batched::new(limited))
}

/// Waits to lead when a Lease namespace is set (`Some(Some(elector))`), leads at once
/// without one (`Some(None)`); `None`: asked to stop before leading.
async fn lead(
    args: &Args,
    client: &Client,
    lease_namespace: Option<String>,
    metrics_addr: std::net::SocketAddr,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Option<Elector>>> {
    if let Some(namespace) = lease_namespace {
        let lease = LeaseSettings {
            name: args.lease_name.clone(),
            namespace,
            identity: pgml_operator::leader::default_identity(),
            duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.lease_renew_seconds),
            retry: Duration::from_secs(args.lease_retry_seconds),
        };
        lease.check().map_err(anyhow::Error::msg)?;
        tracing::info!(lease = %lease.name, lease_namespace = %lease.namespace, identity = %lease.identity, %metrics_addr, "waiting to lead");
        let elector = Elector::new(client.clone(), lease);
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown.requested() => return Ok(None),
        }
        metrics::set_leader(&elector.settings().identity, true);
        Ok(Some(Some(elector)))
    } else {
        // A single replica leads by definition.
        metrics::set_leader(&pgml_operator::leader::default_identity(), true);
        Ok(Some(None))
    }
}

/// Nothing may run on a stale Lease: no grace, no clean-up. Kubernetes restarts the
/// process, which then follows the new leader.
fn lost_lease(lost: pgml_operator::leader::Lost) -> ! {
    tracing::error!(error = %lost, "lost the leader Lease; exiting");
    std::process::exit(1);
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

/// An installation name: an EC2 tag value an IAM policy variable can match, so 1–63
/// lowercase letters, digits and `-` (a Helm release name fits).
fn installation_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?}: 1-63 lowercase letters, digits and '-'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installation_names_are_tag_values_a_policy_variable_matches() {
        assert_eq!(installation_name("prod-a").as_deref(), Ok("prod-a"));
        for bad in ["", "Prod", "a_b", "a b", "a/b", &"x".repeat(64)] {
            assert!(installation_name(bad).is_err(), "{bad:?}");
        }
        let args = Args::try_parse_from(["pgml-operator", "--installation", "prod-a"]).unwrap();
        assert_eq!(args.installation, "prod-a");
        assert!(Args::try_parse_from(["pgml-operator", "--installation", "Prod"]).is_err());
    }
}
