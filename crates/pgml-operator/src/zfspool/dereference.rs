//! Dereference: the objects and outside facts a pool points at — its Node, the node's EC2
//! instance (from `spec.providerID`) and the instance type's EBS limits (cached per type).

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use pgml_aws::{Instance, InstanceTypeLimits};

use super::Context;
use super::error::Error;
use super::status::reason;

/// Where the pool lives, when everything resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub instance: Instance,
    /// When `instance` was described (device names are picked from fresh views only).
    pub described: std::time::Instant,
    /// `None` when DescribeInstanceTypes does not know the type (limits unchecked).
    pub limits: Option<InstanceTypeLimits>,
}

/// Why the pool's node cannot be used yet: (reason, message) for its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

/// `aws:///us-east-1a/i-0abc` → (`us-east-1a`, `i-0abc`). The zone part may be empty on
/// some distributions (`aws:////i-0abc`).
pub fn parse_provider_id(id: &str) -> Option<(String, String)> {
    let rest = id.strip_prefix("aws://")?;
    let mut parts = rest.trim_start_matches('/').rsplitn(2, '/');
    let instance = parts.next()?.to_string();
    let zone = parts.next().unwrap_or_default().to_string();
    instance.starts_with("i-").then_some((zone, instance))
}

pub async fn node(ctx: &Context, name: &str) -> Result<Option<Node>, Error> {
    Ok(Api::<Node>::all(ctx.client.clone()).get_opt(name).await?)
}

pub async fn resolve(ctx: &Context, node_name: &str) -> Result<Result<Target, Unresolved>, Error> {
    let Some(node) = node(ctx, node_name).await? else {
        return Ok(Err(Unresolved {
            reason: reason::NODE_NOT_FOUND,
            message: format!("node {node_name} does not exist"),
        }));
    };
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.clone());
    let Some((_, instance_id)) = provider_id.as_deref().and_then(parse_provider_id) else {
        return Ok(Err(Unresolved {
            reason: reason::NODE_WITHOUT_PROVIDER_ID,
            message: match provider_id {
                Some(p) => format!(
                    "node {node_name} has providerID {p:?}, not aws:///<zone>/<instance-id>"
                ),
                None => format!(
                    "node {node_name} has no spec.providerID: the operator cannot tell its EC2 instance"
                ),
            },
        }));
    };
    let described = std::time::Instant::now();
    let Some(instance) = ctx.ec2.describe_instance(&instance_id).await? else {
        return Ok(Err(Unresolved {
            reason: reason::INSTANCE_NOT_FOUND,
            message: format!("EC2 does not know instance {instance_id} of node {node_name}"),
        }));
    };
    if matches!(instance.state.as_str(), "shutting-down" | "terminated") {
        return Ok(Err(Unresolved {
            reason: reason::INSTANCE_NOT_FOUND,
            message: format!(
                "instance {instance_id} of node {node_name} is {}",
                instance.state
            ),
        }));
    }
    let limits = limits(ctx, &instance.instance_type).await?;
    Ok(Ok(Target {
        instance,
        described,
        limits,
    }))
}

/// An instance type's limits never change: ask EC2 once per type per process.
async fn limits(ctx: &Context, instance_type: &str) -> Result<Option<InstanceTypeLimits>, Error> {
    if let Some(l) = ctx.limits.lock().await.get(instance_type) {
        return Ok(l.clone());
    }
    let l = match ctx.ec2.instance_type_limits(instance_type).await {
        Ok(l) => Some(l),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    ctx.limits
        .lock()
        .await
        .insert(instance_type.to_string(), l.clone());
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids() {
        assert_eq!(
            parse_provider_id("aws:///us-east-1a/i-0abc"),
            Some(("us-east-1a".into(), "i-0abc".into()))
        );
        assert_eq!(
            parse_provider_id("aws:////i-0abc"),
            Some(("".into(), "i-0abc".into()))
        );
        assert_eq!(parse_provider_id("gce://p/z/n"), None);
        assert_eq!(parse_provider_id("aws:///us-east-1a/"), None);
        assert_eq!(parse_provider_id(""), None);
    }
}
