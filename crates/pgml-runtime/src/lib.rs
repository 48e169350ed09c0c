//! What the operator and the node agent share at run time: structured logging,
//! graceful shutdown on SIGTERM / SIGINT, and the metrics and health endpoint ([`http`]).

pub mod cgroups;
pub mod events;
pub mod http;
pub mod mountinfo;
pub mod permissions;

/// The metrics library both binaries register their metrics with (one version for all).
pub use prometheus_client;

use tracing_subscriber::EnvFilter;

/// A Kubernetes client (the in-cluster ServiceAccount, or KUBECONFIG) that names itself with
/// the User-Agent `<component>/<version>`. The apiserver takes the field manager of a write
/// that names none (kube-runtime's finalizer patches) from it, so `managedFields` say
/// `pgml-operator` rather than `unknown`, and audit logs tell our requests apart.
pub async fn kube_client(component: &str, version: &str) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_str(&user_agent(component, version))?,
    ));
    Ok(kube::Client::try_from(config)?)
}

fn user_agent(component: &str, version: &str) -> String {
    format!("{component}/{version}")
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    #[default]
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG` when set,
/// else from `level` (e.g. `info`, `pgml_operator=debug,info`).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// The stop request (SIGTERM from the kubelet, or Ctrl-C), heard from the moment
/// [`Shutdown::install`] is called: a signal that arrives during start-up is kept, never
/// left to the default action that would kill the process wherever it is.
#[derive(Clone)]
pub struct Shutdown {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Shutdown {
    /// Registers the SIGTERM and SIGINT handlers. Call it first thing in `main`, inside the
    /// tokio runtime.
    pub fn install() -> Shutdown {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = which, "shutdown requested");
            let _ = tx.send(true);
        });
        Shutdown { rx }
    }

    /// Resolves once a stop was asked for (at once if it already was).
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The environment variable naming the failpoints armed in this process (comma-separated).
pub const FAILPOINTS_ENV: &str = "PGML_FAILPOINTS";

/// Dies here, at once and without cleaning up (as SIGKILL would), when `name` is armed in
/// `PGML_FAILPOINTS`. Crash tests arm one failpoint per run so that a process is "killed
/// at every step" deterministically; unarmed, it costs one environment lookup.
pub fn failpoint(name: &str) {
    if armed(std::env::var(FAILPOINTS_ENV).ok().as_deref(), name) {
        // stderr is unbuffered: the line is in the log before the process is gone.
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}

fn armed(list: Option<&str>, name: &str) -> bool {
    list.is_some_and(|l| l.split(',').any(|p| p.trim() == name))
}

#[cfg(test)]
mod tests {
    use super::armed;

    #[test]
    fn failpoints_match_whole_names_only() {
        assert!(armed(Some("a.b,snapshot.capture"), "snapshot.capture"));
        assert!(armed(Some(" snapshot.capture "), "snapshot.capture"));
        assert!(!armed(Some("snapshot.capture-done"), "snapshot.capture"));
        assert!(!armed(None, "snapshot.capture"));
        assert!(!armed(Some(""), "snapshot.capture"));
    }
}
