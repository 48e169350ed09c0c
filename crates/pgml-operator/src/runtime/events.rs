//! The one place the operator publishes Events: Normal ones for milestones, Warning ones
//! for failures and for conditions a user must see. Their shape and the publishing itself
//! are [`pgml_runtime::events`], which the node agent shares.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;

use super::context::Context;
use super::error::Error;

/// Publishes one Event about `obj` (a ZfsPool or an EbsSnapshot). A failure to publish is
/// logged, never fatal.
pub async fn publish<K>(ctx: &Context, obj: &K, warning: bool, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    publish_related(ctx, obj, None, warning, reason, note).await;
}

/// Publishes one Event about `obj` concerning `related` (the child object created or
/// changed). The recorder folds Events by regarding object, reason and related object,
/// not by note: without `related`, `SecretCreated` for three Secrets shows as one Event
/// (the first one's note, counted three times).
pub async fn publish_related<K>(
    ctx: &Context,
    obj: &K,
    related: Option<ObjectReference>,
    warning: bool,
    reason: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    pgml_runtime::events::publish(
        &ctx.recorder,
        &obj.object_ref(&()),
        related,
        warning,
        reason,
        note,
    )
    .await;
}

/// A reference to the object a manifest (`apiVersion`, `kind`, `metadata.name`, optional
/// `metadata.namespace`) describes, for [`publish_related`].
pub fn reference_to(body: &serde_json::Value) -> Option<ObjectReference> {
    let meta = &body["metadata"];
    Some(ObjectReference {
        api_version: Some(body["apiVersion"].as_str()?.to_string()),
        kind: Some(body["kind"].as_str()?.to_string()),
        name: Some(meta["name"].as_str()?.to_string()),
        namespace: meta["namespace"].as_str().map(str::to_string),
        ..ObjectReference::default()
    })
}

/// Every reconcile error becomes a Warning Event whose reason is the error's class
/// (waiting during deletion is not an error and stays quiet).
pub async fn report_error<K>(ctx: &Context, obj: &K, e: &Error)
where
    K: Resource<DynamicType = ()>,
{
    let class = e.class();
    if class == super::error::Class::Waiting {
        return;
    }
    publish(ctx, obj, true, class.as_str(), e.to_string()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_runtime::events::event;
    use serde_json::json;

    /// Two Secrets created under one reason are two Events: each names its Secret as the
    /// related object, which the recorder's folding key includes.
    #[test]
    fn events_about_different_objects_are_told_apart() {
        let secret = |name: &str| {
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": "db"}})
        };
        let a = event(
            false,
            "SecretCreated",
            "a".into(),
            reference_to(&secret("main-app")),
        );
        let b = event(
            false,
            "SecretCreated",
            "b".into(),
            reference_to(&secret("main-superuser")),
        );
        assert_ne!(a.secondary, b.secondary);
        let r = a.secondary.unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.namespace.as_deref()),
            (Some("Secret"), Some("main-app"), Some("db"))
        );
        assert_eq!(reference_to(&json!({"kind": "Secret"})), None);
    }
}
