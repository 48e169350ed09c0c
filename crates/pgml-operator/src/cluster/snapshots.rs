//! The cluster's last EBS snapshot backup: `status.lastSnapshot` and the
//! `LastSnapshotSucceeded` condition, from the EbsSnapshots whose source is the cluster.
//! Pure: the reconcile lists them, this decides.
//!
//! Counted: every EbsSnapshot of the cluster (scheduled by `spec.backups.snapshots` or
//! made by a user) that has finished, Completed or Failed. Not counted: the seeds of new
//! replicas (`C-n-seed`, labelled `pgml.io/cluster`: a means to build an instance, deleted
//! once it streams, not a backup), objects being deleted, and those still in progress.
//! The newest finished one (by capture time, else creation time) decides the condition;
//! `lastSnapshot` is the newest Completed one, so a failure never hides the backup that
//! can still be restored.

use pgml_api::EbsSnapshot;
use pgml_api::cluster::SnapshotRef;
use pgml_api::common::{Time, condition as c, keys};
use pgml_api::snapshot::SnapshotPhase;

/// Reasons of the `LastSnapshotSucceeded` condition (and of its Events).
pub mod reason {
    /// The newest finished snapshot of the cluster is Completed.
    pub const SNAPSHOT_COMPLETED: &str = "SnapshotCompleted";
    /// The newest finished snapshot of the cluster Failed.
    pub const SNAPSHOT_FAILED: &str = "SnapshotFailed";
}

/// What the cluster's status says of its snapshots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LastSnapshot {
    /// The newest Completed snapshot.
    pub completed: Option<SnapshotRef>,
    /// `(status, reason, message)` of `LastSnapshotSucceeded`; `None` until one finished
    /// (the condition is then absent).
    pub condition: Option<(&'static str, &'static str, String)>,
}

fn of_cluster(s: &EbsSnapshot, cluster: &str) -> bool {
    let source = s.spec.source.cluster.as_ref();
    source.is_some_and(|src| src.name == cluster)
        && s.metadata.deletion_timestamp.is_none()
        && !s
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(keys::CLUSTER))
}

/// When it was taken: the capture time, else the object's creation.
fn taken(s: &EbsSnapshot) -> Option<&Time> {
    s.status
        .as_ref()
        .and_then(|st| st.capture_time.as_ref())
        .or(s.metadata.creation_timestamp.as_ref())
}

fn phase(s: &EbsSnapshot) -> Option<SnapshotPhase> {
    s.status.as_ref().and_then(|st| st.phase)
}

/// Why a Failed snapshot failed: its Ready condition's reason and message.
fn failure(s: &EbsSnapshot) -> String {
    let ready = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|k| k.type_ == c::READY));
    match ready {
        Some(k) if !k.message.is_empty() => format!("{}: {}", k.reason, k.message),
        Some(k) => k.reason.clone(),
        None => "no reason given".into(),
    }
}

/// The newest snapshots of `cluster` among `snapshots` (any namespace's list; only the
/// cluster's own count).
pub fn last_snapshot<'a>(
    cluster: &str,
    snapshots: impl IntoIterator<Item = &'a EbsSnapshot>,
) -> LastSnapshot {
    let mut finished: Vec<&EbsSnapshot> = snapshots
        .into_iter()
        .filter(|s| of_cluster(s, cluster))
        .filter(|s| {
            matches!(
                phase(s),
                Some(SnapshotPhase::Completed | SnapshotPhase::Failed)
            )
        })
        .collect();
    // Newest first; equal times by name, for a stable answer.
    finished.sort_by(|a, b| {
        taken(b)
            .map(|t| t.0)
            .cmp(&taken(a).map(|t| t.0))
            .then_with(|| b.metadata.name.cmp(&a.metadata.name))
    });
    let name = |s: &EbsSnapshot| s.metadata.name.clone().unwrap_or_default();
    let completed = finished
        .iter()
        .find(|s| phase(s) == Some(SnapshotPhase::Completed))
        .map(|s| SnapshotRef {
            name: name(s),
            capture_time: s.status.as_ref().and_then(|st| st.capture_time.clone()),
        });
    let condition = finished.first().map(|s| {
        if phase(s) == Some(SnapshotPhase::Completed) {
            let at = taken(s).map(|t| format!(" at {}", t.0)).unwrap_or_default();
            (
                c::TRUE,
                reason::SNAPSHOT_COMPLETED,
                format!("EbsSnapshot {} captured{at}", name(s)),
            )
        } else {
            let restorable = completed
                .as_ref()
                .map(|r| format!("; the newest restorable one is {}", r.name))
                .unwrap_or_else(|| "; none is restorable yet".into());
            (
                c::FALSE,
                reason::SNAPSHOT_FAILED,
                format!(
                    "EbsSnapshot {} failed ({}){restorable}",
                    name(s),
                    failure(s)
                ),
            )
        }
    });
    LastSnapshot {
        completed,
        condition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(name: &str, cluster: &str, phase: &str, captured: &str, seed: bool) -> EbsSnapshot {
        let labels = if seed {
            json!({"pgml.io/cluster": cluster})
        } else {
            json!({"pgml.io/scheduled-by": format!("PgmlCluster.{cluster}")})
        };
        serde_json::from_value(json!({
            "apiVersion": "pgml.io/v1alpha1", "kind": "EbsSnapshot",
            "metadata": {"name": name, "labels": labels,
                         "creationTimestamp": captured},
            "spec": {"source": {"cluster": {"name": cluster}}},
            "status": {"phase": phase, "captureTime": captured,
                       "conditions": [{"type": "Ready", "status": if phase == "Completed" {"True"} else {"False"},
                                       "reason": if phase == "Failed" {"SnapshotError"} else {"Completed"},
                                       "message": if phase == "Failed" {"AWS said error"} else {""},
                                       "lastTransitionTime": captured}]}
        }))
        .unwrap()
    }

    #[test]
    fn nothing_finished_means_no_condition() {
        let s = [snap(
            "a",
            "main",
            "Capturing",
            "2026-11-27T01:00:00Z",
            false,
        )];
        assert_eq!(last_snapshot("main", &s), LastSnapshot::default());
    }

    #[test]
    fn the_newest_finished_decides_and_the_newest_completed_is_kept() {
        let s = [
            snap("old", "main", "Completed", "2026-11-27T01:00:00Z", false),
            snap("new", "main", "Completed", "2026-11-27T02:00:00Z", false),
            snap(
                "running",
                "main",
                "Finalizing",
                "2026-11-27T04:00:00Z",
                false,
            ),
            snap(
                "main-3-seed",
                "main",
                "Completed",
                "2026-11-27T05:00:00Z",
                true,
            ),
            snap("other", "other", "Failed", "2026-11-27T06:00:00Z", false),
        ];
        let l = last_snapshot("main", &s);
        assert_eq!(l.completed.as_ref().unwrap().name, "new");
        let (status, reason, message) = l.condition.unwrap();
        assert_eq!((status, reason), (c::TRUE, reason::SNAPSHOT_COMPLETED));
        assert!(message.contains("new"), "{message}");
    }

    #[test]
    fn a_failure_after_a_success_is_false_and_names_both() {
        let s = [
            snap("good", "main", "Completed", "2026-11-27T01:00:00Z", false),
            snap("bad", "main", "Failed", "2026-11-27T02:00:00Z", false),
        ];
        let l = last_snapshot("main", &s);
        assert_eq!(l.completed.unwrap().name, "good");
        let (status, reason, message) = l.condition.unwrap();
        assert_eq!((status, reason), (c::FALSE, reason::SNAPSHOT_FAILED));
        assert!(
            message.contains("bad failed (SnapshotError: AWS said error)"),
            "{message}"
        );
        assert!(
            message.contains("newest restorable one is good"),
            "{message}"
        );

        // A success after the failure: True again.
        let s = [
            s[0].clone(),
            s[1].clone(),
            snap("again", "main", "Completed", "2026-11-27T03:00:00Z", false),
        ];
        assert_eq!(last_snapshot("main", &s).condition.unwrap().0, c::TRUE);
    }
}
