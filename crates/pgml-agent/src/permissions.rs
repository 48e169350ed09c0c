//! Every Kubernetes permission the node agent needs, read from the calls it makes, and the
//! start-up check that the API server grants them (see [`pgml_runtime::permissions`]).
//! `charts/pgml-operator/templates/rbac.yaml` grants exactly these to the agent's
//! ServiceAccount.

use kube::Client;
use pgml_runtime::permissions::{self, Namespaces, Permission, Scope, rule};

use crate::hold::{self, HoldCtx};

/// What the agent calls.
pub fn needed() -> Vec<Permission> {
    use Scope::{Cluster, Watched};
    [
        // Its own Node, read at start-up.
        rule("", &["nodes"], &["get"], Cluster),
        // Its node's ZfsPools (field selector) and the EbsSnapshots it holds (label
        // selector): watched, read again before a hold; only their status is written.
        rule(
            "pgml.io",
            &["zfspools", "ebssnapshots"],
            &["get", "list", "watch"],
            Watched,
        ),
        rule(
            "pgml.io",
            &["zfspools/status", "ebssnapshots/status"],
            &["patch"],
            Watched,
        ),
        // kube's Recorder: Events about its ZfsPools (health changes, replacements),
        // created, then patched as a series when they repeat.
        rule("events.k8s.io", &["events"], &["create", "patch"], Watched),
    ]
    .concat()
}

/// Fails start-up, naming each one, when a permission of [`needed`] is not granted. Holds
/// an earlier agent left in place are seen through to their deadline first (the sweeper
/// ends them), so that an agent that cannot run leaves no standby.signal or frozen
/// filesystem behind.
pub async fn check(client: &Client, watched: Option<&str>, holds: &HoldCtx) -> anyhow::Result<()> {
    let ns = Namespaces {
        watched: watched.map(str::to_string),
        lease: None,
    };
    match permissions::check(client, "pgml-agent", &needed(), &ns).await {
        Ok(()) => Ok(()),
        Err(e) => {
            hold::drain(holds).await;
            Err(anyhow::anyhow!(e))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_agent_writes_only_status_and_events() {
        let t = super::needed();
        assert!(
            t.iter()
                .filter(|p| p.verb != "get" && p.verb != "list" && p.verb != "watch")
                .all(|p| (p.subresource == Some("status") && p.verb == "patch")
                    || (p.group == "events.k8s.io"
                        && p.resource == "events"
                        && (p.verb == "create" || p.verb == "patch")))
        );
        assert_eq!(t.len(), 11);
    }
}
