//! Kubernetes Events, as the operator and the node agent both publish them: one shape
//! (`action: Reconcile`, notes cut to what the API accepts), published through kube's
//! [`Recorder`] (an events.k8s.io Event, then patched as a series when it repeats). A
//! failure to publish is logged, never fatal: Events tell, conditions decide.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// A recorder for `component` (`pgml-operator`, `pgml-agent`), its instance named by
/// `instance` (the operator's Pod, the agent's node).
pub fn recorder(client: kube::Client, component: &str, instance: Option<String>) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: component.into(),
            instance,
        },
    )
}

/// Publishes one Event about `regarding`, concerning `related` when given. The recorder
/// folds Events by regarding object, reason and related object, not by note: without
/// `related`, the same reason about three children shows as one Event.
pub async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
    related: Option<ObjectReference>,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = event(warning, reason, note, related);
    if let Err(e) = recorder.publish(&ev, regarding).await {
        tracing::warn!(error = %e, reason, "could not publish an event");
    }
}

/// The Event [`publish`] sends.
pub fn event(warning: bool, reason: &str, note: String, related: Option<ObjectReference>) -> Event {
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(truncate(note)),
        action: "Reconcile".into(),
        secondary: related,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_a_character_boundary_below_the_api_limit() {
        let long = "é".repeat(700);
        let e = event(true, "PoolDegraded", long, None);
        let note = e.note.unwrap();
        assert!(note.len() <= 1000 && note.chars().all(|c| c == 'é'));
        assert_eq!(e.type_, EventType::Warning);
        let short = event(false, "PoolHealthy", "back".into(), None);
        assert_eq!(
            (short.type_, short.note.as_deref(), short.action.as_str()),
            (EventType::Normal, Some("back"), "Reconcile")
        );
    }
}
