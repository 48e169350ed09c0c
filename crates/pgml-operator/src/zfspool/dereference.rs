//! Dereference: the objects and outside facts a pool points at — its Node, the node's EC2
//! instance (from `spec.providerID`) and the instance type's EBS limits (cached per type).

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use pgml_aws::{Instance, InstanceTypeLimits};

use super::status::reason;
use crate::runtime::Context;
use crate::runtime::Error;

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
    let Some((_, instance_id)) = provider_id.as_deref().and_then(pgml_aws::parse_provider_id)
    else {
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
    let limits = ctx.instance_type_limits(&instance.instance_type).await?;
    Ok(Ok(Target {
        instance,
        described,
        limits,
    }))
}
