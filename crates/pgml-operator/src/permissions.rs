//! Every Kubernetes permission the operator needs, read from the calls its controllers
//! make, and the start-up check that the API server grants them (see
//! [`pgml_runtime::permissions`]). `charts/pgml-operator/templates/rbac.yaml` grants exactly
//! these; `tests/e2e/tests/rbac.rs` runs the operator with that chart's ServiceAccount.

use kube::Client;
use pgml_runtime::permissions::{self, Namespaces, rule};
pub use pgml_runtime::permissions::{Permission, Scope};

const GET: &str = "get";
const LIST: &str = "list";
const WATCH: &str = "watch";
const CREATE: &str = "create";
const PATCH: &str = "patch";
const UPDATE: &str = "update";
const DELETE: &str = "delete";

/// What the operator calls, kind by kind.
pub fn needed() -> Vec<Permission> {
    use Scope::{Cluster, Lease, Watched};
    [
        // Controllers and watches (list, watch), the finalizer (a JSON patch of metadata),
        // the EbsSnapshot source checks (get).
        rule(
            "pgml.io",
            &["pgmlclusters"],
            &[GET, LIST, WATCH, PATCH],
            Watched,
        ),
        // ZfsPools of instances and seed/scheduled EbsSnapshots: applied server-side
        // (create when new, patch), deleted on scale-down and by retention.
        rule(
            "pgml.io",
            &["zfspools", "ebssnapshots"],
            &[GET, LIST, WATCH, CREATE, PATCH, DELETE],
            Watched,
        ),
        // Status: server-side apply on the subresource.
        rule(
            "pgml.io",
            &[
                "pgmlclusters/status",
                "zfspools/status",
                "ebssnapshots/status",
            ],
            &[PATCH],
            Watched,
        ),
        // Owner references with blockOwnerDeletion to a PgmlCluster (enforced where the
        // OwnerReferencesPermissionEnforcement admission plugin runs).
        rule("pgml.io", &["pgmlclusters/finalizers"], &[UPDATE], Watched),
        // A PgmlCluster's objects: owned (watched), applied server-side, deleted on
        // scale-down; Pods also get their role/fence marks patched.
        rule(
            "",
            &["pods", "persistentvolumeclaims"],
            &[GET, LIST, WATCH, CREATE, PATCH, DELETE],
            Watched,
        ),
        rule(
            "",
            &["services", "configmaps"],
            &[GET, LIST, WATCH, CREATE, PATCH],
            Watched,
        ),
        // Each cluster's NetworkPolicy (with --network-policies): applied server-side,
        // read to compare; it goes with its cluster (owner reference).
        rule(
            "networking.k8s.io",
            &["networkpolicies"],
            &[GET, CREATE, PATCH],
            Watched,
        ),
        // Each cluster's PodDisruptionBudgets: owned (watched), applied server-side, read
        // to compare; they go with their cluster.
        rule(
            "policy",
            &["poddisruptionbudgets"],
            &[GET, LIST, WATCH, CREATE, PATCH],
            Watched,
        ),
        // Credentials: created once, only their metadata read afterwards.
        rule("", &["secrets"], &[GET, LIST, WATCH, CREATE], Watched),
        // The instances' identity (their Role's rules are ones the operator holds itself:
        // RBAC's escalation check).
        rule("", &["serviceaccounts"], &[GET, CREATE, PATCH], Watched),
        rule(
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
            &[GET, CREATE, PATCH],
            Watched,
        ),
        // kube's Recorder: an events.k8s.io Event created, then patched as a series.
        rule("events.k8s.io", &["events"], &[CREATE, PATCH], Watched),
        // Local PersistentVolumes on the pools' mount points; the EbsSnapshot source of a
        // claim is found through its volume.
        rule(
            "",
            &["persistentvolumes"],
            &[GET, LIST, CREATE, PATCH, DELETE],
            Cluster,
        ),
        // Placement, zones, instance types, failover on NotReady.
        rule("", &["nodes"], &[GET, LIST, WATCH], Cluster),
        // Leader election (crate::leader): read, made once, then replaced on every renewal.
        rule(
            "coordination.k8s.io",
            &["leases"],
            &[GET, CREATE, UPDATE],
            Lease,
        ),
    ]
    .concat()
}

/// The namespace of the leader Lease, the way `main` settles it: none without leader
/// election; else `--lease-namespace` (`PGML_LEASE_NAMESPACE`), else `POD_NAMESPACE`, else
/// the watched namespace, else `default`.
pub fn lease_namespace(
    leader_elect: bool,
    lease_namespace: Option<&str>,
    pod_namespace: Option<&str>,
    watched: Option<&str>,
) -> Option<String> {
    if !leader_elect {
        return None;
    }
    let set = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_string);
    Some(
        set(lease_namespace)
            .or_else(|| set(pod_namespace))
            .or_else(|| set(watched))
            .unwrap_or_else(|| "default".into()),
    )
}

/// Fails start-up, naming each one, when a permission of [`needed`] is not granted: in
/// the watched namespace (all namespaces without one), cluster-wide for Nodes and
/// PersistentVolumes, and in the Lease's namespace (from [`lease_namespace`]; `None`
/// without leader election).
pub async fn check(
    client: &Client,
    watched: Option<&str>,
    lease: Option<&str>,
) -> anyhow::Result<()> {
    let ns = Namespaces {
        watched: watched.map(str::to_string),
        lease: lease.map(str::to_string),
    };
    permissions::check(client, "pgml-operator", &needed(), &ns)
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(group: &str, resource: &str, verb: &str) -> bool {
        needed()
            .iter()
            .any(|p| p.group == group && p.resource_name() == resource && p.verb == verb)
    }

    #[test]
    fn the_table_covers_what_the_controllers_call() {
        // SSA of status, the finalizer, the cluster's objects, events, the Lease.
        assert!(has("pgml.io", "zfspools/status.pgml.io", "patch"));
        assert!(has("pgml.io", "ebssnapshots.pgml.io", "patch"));
        assert!(has("pgml.io", "ebssnapshots.pgml.io", "delete"));
        assert!(has("", "pods", "create"));
        assert!(has("", "secrets", "create"));
        assert!(!has("", "secrets", "patch"), "Secrets are never rewritten");
        assert!(has(
            "rbac.authorization.k8s.io",
            "roles.rbac.authorization.k8s.io",
            "create"
        ));
        assert!(has("events.k8s.io", "events.events.k8s.io", "create"));
        assert!(has(
            "coordination.k8s.io",
            "leases.coordination.k8s.io",
            "update"
        ));
        assert!(has("", "nodes", "watch"));
        // No wildcard ever.
        assert!(needed().iter().all(|p| p.verb != "*" && p.resource != "*"));
    }

    #[test]
    fn rows_are_unique() {
        let t = needed();
        for (i, a) in t.iter().enumerate() {
            assert!(!t[i + 1..].contains(a), "{a:?} twice");
        }
    }

    #[test]
    fn the_lease_namespace_follows_the_flags() {
        assert_eq!(lease_namespace(false, Some("x"), None, None), None);
        assert_eq!(
            lease_namespace(true, Some("x"), Some("p"), Some("w")).as_deref(),
            Some("x")
        );
        assert_eq!(
            lease_namespace(true, Some(""), Some("p"), Some("w")).as_deref(),
            Some("p")
        );
        assert_eq!(
            lease_namespace(true, None, None, Some("w")).as_deref(),
            Some("w")
        );
        assert_eq!(
            lease_namespace(true, None, None, None).as_deref(),
            Some("default")
        );
    }
}
