//! What the operator and the node agent share at run time: structured logging and
//! graceful shutdown on SIGTERM / SIGINT.

use tracing_subscriber::EnvFilter;

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
