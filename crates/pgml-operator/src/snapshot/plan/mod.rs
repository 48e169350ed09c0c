//! Pure decisions of the EbsSnapshot controller, one module per stretch of the flow: before
//! the capture (`prepare`: the source found, the agent's hold), the capture (`capture`: the
//! request, its bound, what its answer means), a restart in Capturing (`restart`: adopt,
//! discard, call again or give up), and after it (`finish`: progress, strays, leftovers;
//! `owned`: which snapshots are the object's to delete, by their own tags).
//! No client, no clock: time comes in as seconds (or milliseconds) since the epoch, EC2's
//! answers as values. Each returns data — a phase to enter, a failure to record, snapshots
//! to delete, a request to make — that `apply` carries out in order.
//!
//! Errors of the other EC2 calls (DescribeSnapshots, CreateTags, DeleteSnapshot,
//! DescribeVolumes) are not judged here: they end the reconcile with the error's class
//! (backoff per object) and status as last written, so the next reconcile picks up from
//! there — in Capturing, the restart path finds the set by its UID tag.

mod capture;
mod finish;
mod owned;
mod prepare;
mod restart;

#[cfg(test)]
mod fixtures;

use std::collections::BTreeMap;

use pgml_api::common::keys;
use pgml_api::snapshot::{
    Consistency, EbsSnapshotSpec, MemberSnapshot, SnapshotPhase, StandbySignal,
};
use pgml_aws::Snapshot;

pub use capture::{
    Answer, Captured, Timing, assign, capture_bound, capture_request, captured_message,
    judge_capture,
};
pub use finish::{
    Follow, Progress, follow, leftovers, mark_deleted, previous_set, progress, snapshot_ids, strays,
};
pub use owned::{Owned, sort_owned, to_delete, unlisted, waiting_for_adoption};
pub use prepare::{
    HoldStep, MARGIN, Start, Unready, gave_up_on_source, held_message, hold_deadline, hold_planned,
    hold_step, pending_source, record_source, start, unready,
};
pub use restart::{Adoption, Restart, Resume, adopt, captured_at, restart};

/// Reasons of the Ready/Progressing conditions (and of Warning Events on failure).
pub mod reason {
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    pub const SOURCE_NOT_READY: &str = "SourceNotReady";
    pub const HOLD_FAILED: &str = "HoldFailed";
    pub const HOLD_EXPIRED: &str = "HoldExpired";
    pub const HOLD_DEADLINE_EXCEEDED: &str = "HoldDeadlineExceeded";
    pub const AGENT_NOT_RESPONDING: &str = "AgentNotResponding";
    pub const SNAPSHOT_ERROR: &str = "SnapshotError";
    pub const CAPTURE_FAILED: &str = "CaptureFailed";
    /// Preparing: waiting for the node agent's hold.
    pub const WAITING_FOR_AGENT: &str = "WaitingForAgent";
    pub const CAPTURING: &str = "Capturing";
    /// Finalizing: AWS copies the blocks.
    pub const FINALIZING: &str = "Finalizing";
    pub const COMPLETED: &str = "Completed";
}

/// Snapshot states the controller tells apart: EC2's (`pending`, `recoverable` and
/// `recovering` all count as still on their way) and `deleted`, which only status records
/// (EC2 forgets a deleted snapshot).
pub mod state {
    pub const COMPLETED: &str = "completed";
    pub const ERROR: &str = "error";
    pub const DELETED: &str = "deleted";
}

/// A phase to write, with the reason and message of its Ready and Progressing conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enter {
    pub phase: SnapshotPhase,
    pub why: &'static str,
    pub message: String,
}

impl Enter {
    pub fn new(phase: SnapshotPhase, why: &'static str, message: impl Into<String>) -> Self {
        Enter {
            phase,
            why,
            message: message.into(),
        }
    }
}

/// The snapshot fails: the reason, the message, and whether every snapshot the object made
/// is deleted (a set that must not be used). The failure is recorded first: a set found
/// later (that deletion cut short, a call that answers after all) is deleted by the Failed
/// phase's sweep, never adopted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub why: &'static str,
    pub message: String,
    pub delete: bool,
}

impl Failure {
    /// Before any CreateSnapshots call: nothing to delete.
    pub fn nothing_taken(why: &'static str, message: impl Into<String>) -> Self {
        Failure {
            why,
            message: message.into(),
            delete: false,
        }
    }

    /// At or after the call: whatever the object made is deleted.
    pub fn set_deleted(why: &'static str, message: impl Into<String>) -> Self {
        Failure {
            why,
            message: message.into(),
            delete: true,
        }
    }
}

/// What the source keeps its data on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filesystem {
    Zfs,
    /// ext4 (or another fsfreeze-able file system) on one EBS CSI volume.
    Ext4,
}

/// The consistency method used: `None` on ZFS (all members at one instant is enough),
/// fsfreeze on ext4 under `Auto`.
pub fn consistency(spec: &EbsSnapshotSpec, fs: Filesystem) -> &'static str {
    match (spec.consistency, fs) {
        (Consistency::NoPause, _) | (_, Filesystem::Zfs) => "None",
        (Consistency::Auto | Consistency::Fsfreeze, Filesystem::Ext4) => "Fsfreeze",
    }
}

/// Whether the node agent must hold the source before the capture: a standby.signal stamp
/// (`Auto`: the agent stamps when it finds a data directory; `Always`) or a freeze.
pub fn needs_hold(spec: &EbsSnapshotSpec, fs: Filesystem) -> bool {
    spec.standby_signal != StandbySignal::Never || consistency(spec, fs) == "Fsfreeze"
}

/// The identity of the EbsSnapshot the tags name.
#[derive(Clone, Debug)]
pub struct SnapRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The operator's installation (`pgml.io/installation`).
    pub installation: String,
}

/// The tag filter that finds every snapshot the object ever made.
pub fn uid_filter(uid: &str) -> Vec<(String, String)> {
    vec![(keys::SNAPSHOT_UID.to_string(), uid.to_string())]
}

/// Tags every snapshot of the set gets in the CreateSnapshots call itself: the user's,
/// then the operator's `pgml.io/*` (which the schema keeps users from setting).
pub fn set_tags(
    snap: &SnapRef,
    pool: Option<&str>,
    pool_guid: Option<&str>,
    layout: Option<&str>,
    user: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut tags = user.clone();
    let mut put = |k: &str, v: &str| {
        tags.insert(k.to_string(), v.to_string());
    };
    put(keys::MANAGED_BY, keys::MANAGED_BY_VALUE);
    put(keys::INSTALLATION, &snap.installation);
    put(keys::NAMESPACE, &snap.namespace);
    put(keys::SNAPSHOT, &snap.name);
    put(keys::SNAPSHOT_UID, &snap.uid);
    for (k, v) in [
        (keys::POOL, pool),
        (keys::POOL_GUID, pool_guid),
        (keys::LAYOUT, layout),
    ] {
        if let Some(v) = v {
            put(k, v);
        }
    }
    tags
}

/// Tags of one member's snapshot, added after the call (CreateSnapshots tags the whole set
/// alike): its member index and a display name.
pub fn member_tags(snap: &SnapRef, index: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::MEMBER_INDEX.to_string(), index.to_string()),
        (
            keys::NAME.to_string(),
            format!("{}/{}-{index}", snap.namespace, snap.name),
        ),
    ])
}

/// Member `m` with snapshot `s` recorded.
pub fn recorded(m: &MemberSnapshot, s: &Snapshot) -> MemberSnapshot {
    MemberSnapshot {
        snapshot_id: Some(s.snapshot_id.clone()),
        state: Some(s.state.clone()).filter(|s| !s.is_empty()),
        progress: s.progress.clone().filter(|p| !p.is_empty()),
        ..m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn consistency_and_hold_follow_the_spec_and_the_filesystem() {
        let auto = spec("source: {zfsPool: {name: p}}");
        assert_eq!(consistency(&auto, Filesystem::Zfs), "None");
        assert_eq!(consistency(&auto, Filesystem::Ext4), "Fsfreeze");
        assert!(
            needs_hold(&auto, Filesystem::Zfs),
            "Auto stamps standby.signal"
        );
        let never = spec("source: {zfsPool: {name: p}}\nstandbySignal: Never");
        assert!(!needs_hold(&never, Filesystem::Zfs));
        assert!(needs_hold(&never, Filesystem::Ext4), "ext4 still freezes");
        let never_none = spec(
            "source: {persistentVolumeClaim: {name: p}}\nstandbySignal: Never\nconsistency: None",
        );
        assert!(!needs_hold(&never_none, Filesystem::Ext4));
        assert_eq!(consistency(&never_none, Filesystem::Ext4), "None");
    }

    #[test]
    fn tags_name_the_set_and_keep_user_tags_below_ours() {
        let r = SnapRef {
            namespace: "ns".into(),
            name: "nightly".into(),
            uid: "u-1".into(),
            installation: "prod-a".into(),
        };
        let user = BTreeMap::from([("team".to_string(), "db".to_string())]);
        let t = set_tags(&r, Some("tank"), Some("123"), Some("raid0"), &user);
        assert_eq!(t["team"], "db");
        assert_eq!(t[keys::MANAGED_BY], "pgml-operator");
        assert_eq!(t[keys::INSTALLATION], "prod-a");
        assert_eq!(t[keys::NAMESPACE], "ns");
        assert_eq!(t[keys::SNAPSHOT], "nightly");
        assert_eq!(t[keys::SNAPSHOT_UID], "u-1");
        assert_eq!(t[keys::POOL], "tank");
        assert_eq!(t[keys::POOL_GUID], "123");
        assert_eq!(t[keys::LAYOUT], "raid0");
        let pvc = set_tags(&r, None, None, None, &BTreeMap::new());
        assert!(!pvc.contains_key(keys::POOL_GUID) && !pvc.contains_key(keys::LAYOUT));
        let m = member_tags(&r, 2);
        assert_eq!(m[keys::MEMBER_INDEX], "2");
        assert_eq!(m[keys::NAME], "ns/nightly-2");
    }

    #[test]
    fn a_user_tag_cannot_take_the_place_of_ours() {
        let user = BTreeMap::from([(keys::SNAPSHOT_UID.to_string(), "forged".to_string())]);
        let t = set_tags(&snap_ref(), None, None, None, &user);
        assert_eq!(t[keys::SNAPSHOT_UID], "u-1");
        let user = BTreeMap::from([(keys::INSTALLATION.to_string(), "other".to_string())]);
        let t = set_tags(&snap_ref(), None, None, None, &user);
        assert_eq!(t[keys::INSTALLATION], "prod-a");
        assert_eq!(
            uid_filter("u-1"),
            [(keys::SNAPSHOT_UID.to_string(), "u-1".to_string())]
        );
    }

    #[test]
    fn a_recorded_member_keeps_its_volume_and_drops_empty_fields() {
        let m = &members(1)[0];
        let mut s = snap("snap-a", "vol-0", "", 1);
        s.progress = Some(String::new());
        let r = recorded(m, &s);
        assert_eq!(r.snapshot_id.as_deref(), Some("snap-a"));
        assert_eq!((r.state, r.progress), (None, None));
        assert_eq!((r.volume_id, r.size_gib), (m.volume_id.clone(), m.size_gib));
    }
}
