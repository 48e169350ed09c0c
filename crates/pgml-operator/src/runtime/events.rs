//! The one place Events are published: Normal ones for milestones, Warning ones for
//! failures and for conditions a user must see.

use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::context::Context;
use super::error::Error;

/// Publishes one Event about `obj` (a ZfsPool or an EbsSnapshot). A failure to publish is
/// logged, never fatal.
pub async fn publish<K>(ctx: &Context, obj: &K, warning: bool, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(truncate(note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish an event");
    }
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

/// Event notes are limited to 1 KiB.
fn truncate(mut s: String) -> String {
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
