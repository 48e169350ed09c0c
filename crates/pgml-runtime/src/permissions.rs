//! The start-up permission check: every Kubernetes permission a binary needs, asked of the
//! API server with one SelfSubjectAccessReview each, before any controller starts.
//!
//! A missing permission would otherwise show up much later, as a 403 deep inside one
//! reconcile (or as a watch that silently never starts). Checked up front, the process exits
//! with one message naming every missing permission and the identity it ran as, which is
//! what `kubectl logs` and the Pod's termination message then show.
//!
//! The tables themselves live beside the code that makes the calls
//! (`pgml_operator::permissions`, the agent's `permissions` module).

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// Where a permission is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A namespaced resource in the namespace the process watches (all namespaces when it
    /// watches all).
    Watched,
    /// A namespaced resource in the namespace of the operator's leader-election Lease.
    Lease,
    /// A cluster-scoped resource (Nodes, PersistentVolumes).
    Cluster,
}

/// One verb on one resource (or subresource) of one API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// The API group ("" for the core group).
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub verb: &'static str,
    pub scope: Scope,
}

impl Permission {
    /// `resource[/sub][.group]`, the way `kubectl auth can-i` and RBAC rules name it.
    pub fn resource_name(&self) -> String {
        let mut s = self.resource.to_string();
        if let Some(sub) = self.subresource {
            s.push('/');
            s.push_str(sub);
        }
        if !self.group.is_empty() {
            s.push('.');
            s.push_str(self.group);
        }
        s
    }
}

/// `verb` on each of `resources` (`"pods"` or `"zfspools/status"`) of `group`, in `scope`:
/// a table written the way RBAC rules read.
pub fn rule(
    group: &'static str,
    resources: &[&'static str],
    verbs: &[&'static str],
    scope: Scope,
) -> Vec<Permission> {
    let mut out = Vec::with_capacity(resources.len() * verbs.len());
    for r in resources {
        let (resource, subresource) = match r.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (*r, None),
        };
        for verb in verbs {
            out.push(Permission {
                group,
                resource,
                subresource,
                verb,
                scope,
            });
        }
    }
    out
}

/// The namespaces a check runs against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// The watched namespace; `None`: all namespaces.
    pub watched: Option<String>,
    /// The Lease's namespace; `None`: no leader election, so [`Scope::Lease`] rows are not
    /// needed.
    pub lease: Option<String>,
}

impl Namespaces {
    /// The namespace a permission is asked in: `None` for cluster-scoped resources and
    /// for all namespaces. Rows of [`Scope::Lease`] without a Lease are not asked at all
    /// (see [`Namespaces::needed`]).
    fn of(&self, p: &Permission) -> Option<&str> {
        match p.scope {
            Scope::Watched => self.watched.as_deref(),
            Scope::Lease => self.lease.as_deref(),
            Scope::Cluster => None,
        }
    }

    fn needed(&self, p: &Permission) -> bool {
        p.scope != Scope::Lease || self.lease.is_some()
    }
}

/// A permission the API server denied, with where it was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub permission: Permission,
    /// `None`: cluster-scoped, or all namespaces.
    pub namespace: Option<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.permission;
        write!(f, "cannot {} {}", p.verb, p.resource_name())?;
        match (&self.namespace, p.scope) {
            (_, Scope::Cluster) => write!(f, " (cluster-scoped)"),
            (Some(ns), _) => write!(f, " in namespace {ns}"),
            (None, _) => write!(f, " in all namespaces"),
        }
    }
}

/// Who the process runs as, for the message: `ServiceAccount ns/name` or `user name`.
pub fn identity(username: &str) -> String {
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, name)) => format!("ServiceAccount {ns}/{name}"),
        None => format!("user {username}"),
    }
}

/// The one message a failed check ends the process with: each missing permission on its
/// own line, `cannot <verb> <resource>[/<sub>].<group> in namespace X (ServiceAccount Y)`.
pub fn message(program: &str, denied: &[Denied], who: &str) -> String {
    let mut s = format!(
        "{program} lacks {} Kubernetes permission{} it needs (its ClusterRole/Role is out of date or not bound to it):",
        denied.len(),
        if denied.len() == 1 { "" } else { "s" }
    );
    for d in denied {
        s.push_str(&format!("\n  {d} ({who})"));
    }
    s
}

/// The error [`check`] returns when permissions are missing.
#[derive(Debug)]
pub struct Missing {
    pub denied: Vec<Denied>,
    pub message: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Missing {}

/// How long the whole check may take (the reviews run concurrently: one round trip).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the API server about every row of `table` at once. Missing permissions are logged
/// as one error, written to the Pod's termination message when there is one, and returned
/// as [`Missing`] (the caller exits non-zero with it). An API server that cannot answer is
/// an error too.
pub async fn check(
    client: &Client,
    program: &str,
    table: &[Permission],
    ns: &Namespaces,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rows: Vec<&Permission> = table.iter().filter(|p| ns.needed(p)).collect();
    let reviews = futures::future::join_all(rows.iter().map(|p| review(client, p, ns.of(p))));
    let answers = tokio::time::timeout(TIMEOUT, reviews)
        .await
        .map_err(|_| format!("the permission check got no answer within {TIMEOUT:?}"))?;
    let mut denied = vec![];
    for (p, allowed) in rows.iter().zip(answers) {
        if !allowed? {
            denied.push(Denied {
                permission: **p,
                namespace: ns.of(p).map(str::to_string),
            });
        }
    }
    if denied.is_empty() {
        tracing::info!(
            permissions = rows.len(),
            "every Kubernetes permission needed is granted"
        );
        return Ok(());
    }
    let who = match whoami(client).await {
        Ok(u) => identity(&u),
        Err(e) => format!("identity unknown: {e}"),
    };
    let message = message(program, &denied, &who);
    tracing::error!(missing = denied.len(), "{message}");
    // Kubernetes shows this file as the container's termination message.
    let log = std::path::Path::new("/dev/termination-log");
    if log.exists() {
        let _ = std::fs::write(log, &message);
    }
    Err(Box::new(Missing { denied, message }))
}

async fn review(
    client: &Client,
    p: &Permission,
    namespace: Option<&str>,
) -> Result<bool, kube::Error> {
    let ssar = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(p.group.to_string()),
                resource: Some(p.resource.to_string()),
                subresource: p.subresource.map(str::to_string),
                verb: Some(p.verb.to_string()),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &ssar)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn whoami(client: &Client) -> Result<String, kube::Error> {
    let r = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(r.status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_else(|| "(unknown)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_expand_to_one_row_per_resource_and_verb() {
        let t = rule(
            "pgml.io",
            &["zfspools", "zfspools/status"],
            &["get", "patch"],
            Scope::Watched,
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t[2].resource, "zfspools");
        assert_eq!(t[2].subresource, Some("status"));
        assert_eq!(t[2].verb, "get");
    }

    #[test]
    fn denied_permissions_read_like_rbac() {
        let status = rule("pgml.io", &["zfspools/status"], &["patch"], Scope::Watched)[0];
        let d = Denied {
            permission: status,
            namespace: Some("db".into()),
        };
        assert_eq!(
            d.to_string(),
            "cannot patch zfspools/status.pgml.io in namespace db"
        );
        let all = Denied {
            permission: status,
            namespace: None,
        };
        assert_eq!(
            all.to_string(),
            "cannot patch zfspools/status.pgml.io in all namespaces"
        );
        let nodes = Denied {
            permission: rule("", &["nodes"], &["watch"], Scope::Cluster)[0],
            namespace: None,
        };
        assert_eq!(nodes.to_string(), "cannot watch nodes (cluster-scoped)");
    }

    #[test]
    fn the_message_lists_every_missing_permission_with_the_identity() {
        let who = identity("system:serviceaccount:ops:pgml-operator");
        assert_eq!(who, "ServiceAccount ops/pgml-operator");
        assert_eq!(identity("kubernetes-admin"), "user kubernetes-admin");
        let denied: Vec<Denied> = rule("", &["pods"], &["create", "delete"], Scope::Watched)
            .into_iter()
            .map(|permission| Denied {
                permission,
                namespace: Some("db".into()),
            })
            .collect();
        assert_eq!(
            message("pgml-operator", &denied, &who),
            "pgml-operator lacks 2 Kubernetes permissions it needs (its ClusterRole/Role is out of date or not bound to it):\n  \
             cannot create pods in namespace db (ServiceAccount ops/pgml-operator)\n  \
             cannot delete pods in namespace db (ServiceAccount ops/pgml-operator)"
        );
    }

    #[test]
    fn lease_rows_apply_only_with_a_lease_and_in_its_namespace() {
        let lease = rule(
            "coordination.k8s.io",
            &["leases"],
            &["update"],
            Scope::Lease,
        )[0];
        let pods = rule("", &["pods"], &["get"], Scope::Watched)[0];
        let nodes = rule("", &["nodes"], &["get"], Scope::Cluster)[0];
        let none = Namespaces::default();
        assert!(!none.needed(&lease));
        assert!(none.needed(&pods));
        assert_eq!(none.of(&pods), None);
        let ns = Namespaces {
            watched: Some("db".into()),
            lease: Some("ops".into()),
        };
        assert!(ns.needed(&lease));
        assert_eq!(ns.of(&lease), Some("ops"));
        assert_eq!(ns.of(&pods), Some("db"));
        assert_eq!(ns.of(&nodes), None);
    }
}
