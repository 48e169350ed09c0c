//! `pgml-kubelet <namespace>`: the test bed's kubelet for PgmlCluster instance Pods, as a
//! process (`make dev` runs it for namespace `demo`): runs each instance Pod's
//! `pgml-instance run` on its simulated node (see `pgml_testbed::kubelet`) until SIGINT or
//! SIGTERM, then stops them (SIGTERM, as the kubelet does when a Pod goes).
//! The sandbox is `$PGML_SANDBOX`, else `<repo>/.sandbox`.

use pgml_testbed::Sandbox;
use pgml_testbed::kube::client;
use pgml_testbed::kubelet::Kubelet;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let Some(namespace) = std::env::args().nth(1) else {
        anyhow::bail!("usage: pgml-kubelet <namespace>");
    };
    let sb = Sandbox::get();
    let mut kubelet = Kubelet::start(sb, client().await, &namespace, &[]);
    eprintln!("pgml-kubelet: running the instance Pods of namespace {namespace}");
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("pgml-kubelet: stopping the instance managers");
    tokio::task::spawn_blocking(move || kubelet.shutdown()).await?;
    Ok(())
}
