//! Pure decisions of the EbsSnapshot controller: the plan (consistency, hold), the tags,
//! what to do about the agent's hold, which snapshots found in AWS form the set, and how
//! far the set has come. No client, no clock: time comes in as seconds since the epoch.

use std::collections::{BTreeMap, BTreeSet};

use pgml_api::common::keys;
use pgml_api::snapshot::{
    Consistency, EbsSnapshotSpec, HoldState, HoldStatus, MemberSnapshot, StandbySignal,
};
use pgml_aws::Snapshot;

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

/// Whether a snapshot whose source does not exist has waited long enough for it (a source
/// applied in the same batch arrives within moments): `created` and `now` in seconds.
pub fn gave_up_on_source(created: Option<i64>, now: i64, timeout: i64) -> bool {
    created.is_none_or(|c| now - c >= timeout)
}

/// What to do about the agent's hold while Preparing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldStep {
    /// No answer yet: look again within this many seconds.
    Wait(i64),
    /// Held with time left: capture now, done by `deadline`.
    Capture { deadline: i64 },
    /// The capture must not happen: (reason, message).
    Fail(&'static str, String),
}

/// Seconds kept free before the hold's deadline: a capture starts only before
/// `deadline - MARGIN`.
pub const MARGIN: i64 = 1;

/// `hold` as the agent wrote it; `deadline` its deadline in seconds; `waiting_since` when
/// Preparing began.
pub fn hold_step(
    hold: Option<&HoldStatus>,
    deadline: Option<i64>,
    now: i64,
    waiting_since: i64,
    agent_timeout: i64,
) -> HoldStep {
    let Some(h) = hold else {
        let waited = now - waiting_since;
        if waited >= agent_timeout {
            return HoldStep::Fail(
                reason::AGENT_NOT_RESPONDING,
                format!(
                    "the node agent did not answer the hold request in {agent_timeout}s; no snapshot was taken"
                ),
            );
        }
        return HoldStep::Wait((agent_timeout - waited).clamp(1, 2));
    };
    let why = h.message.clone().unwrap_or_default();
    match h.state {
        HoldState::Held => match deadline {
            Some(d) if now < d - MARGIN => HoldStep::Capture { deadline: d },
            Some(_) => HoldStep::Fail(
                reason::HOLD_EXPIRED,
                "the hold's deadline passed before the capture could start; no snapshot was taken"
                    .into(),
            ),
            None => HoldStep::Fail(
                reason::HOLD_FAILED,
                "the agent's hold has no deadline; no snapshot was taken".into(),
            ),
        },
        HoldState::Failed => HoldStep::Fail(
            reason::HOLD_FAILED,
            format!("the node agent could not prepare the source: {why}"),
        ),
        HoldState::Expired | HoldState::Released => HoldStep::Fail(
            reason::HOLD_EXPIRED,
            format!(
                "the hold ended before the capture{}; no snapshot was taken",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            ),
        ),
    }
}

/// What the snapshots tagged with the object's UID say after a restart in Capturing.
#[derive(Clone, Debug, PartialEq)]
pub enum Adoption {
    /// None exist: the call was never made (or made nothing).
    Nothing,
    /// One snapshot per member, taken before the deadline: the set, in member order, and
    /// snapshots of other volumes to delete.
    Set {
        members: Vec<MemberSnapshot>,
        extra: Vec<String>,
    },
    /// Partial, doubled or late: every one of them is deleted.
    Discard(Vec<String>),
}

/// Sorts `found` (tagged with the UID) against the members' volumes.
pub fn adopt(found: &[Snapshot], members: &[MemberSnapshot], deadline: Option<i64>) -> Adoption {
    let live: Vec<&Snapshot> = found.iter().filter(|s| s.state != "deleted").collect();
    if live.is_empty() {
        return Adoption::Nothing;
    }
    let all = || Adoption::Discard(live.iter().map(|s| s.snapshot_id.clone()).collect());
    let volumes: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.volume_id.as_deref())
        .collect();
    let mut set = Vec::new();
    for m in members {
        let Some(vol) = m.volume_id.as_deref() else {
            return all();
        };
        let of: Vec<&&Snapshot> = live.iter().filter(|s| s.volume_id == vol).collect();
        let [one] = of.as_slice() else {
            return all();
        };
        let late = match (deadline, one.start_time) {
            (Some(d), Some(t)) => t >= d,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if late {
            return all();
        }
        set.push(recorded(m, one));
    }
    let extra = live
        .iter()
        .filter(|s| !volumes.contains(s.volume_id.as_str()))
        .map(|s| s.snapshot_id.clone())
        .collect();
    Adoption::Set {
        members: set,
        extra,
    }
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

/// The answer of the CreateSnapshots call sorted into the members: the members with their
/// snapshot, and snapshots of volumes that are not members (to delete). `Err` names the
/// members the answer left out.
pub fn assign(
    answer: &[Snapshot],
    members: &[MemberSnapshot],
) -> Result<(Vec<MemberSnapshot>, Vec<String>), Vec<i32>> {
    let mut set = Vec::new();
    let mut missing = Vec::new();
    for m in members {
        match answer
            .iter()
            .find(|s| Some(s.volume_id.as_str()) == m.volume_id.as_deref())
        {
            Some(s) => set.push(recorded(m, s)),
            None => missing.push(m.member_index),
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let extra = answer
        .iter()
        .filter(|s| {
            !members
                .iter()
                .any(|m| m.volume_id.as_deref() == Some(s.volume_id.as_str()))
        })
        .map(|s| s.snapshot_id.clone())
        .collect();
    Ok((set, extra))
}

/// How far the set has come in Finalizing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Pending,
    Completed,
    /// A snapshot failed (`error`) or is gone: the message.
    Failed(String),
}

/// Updates each member's state and progress from DescribeSnapshots and judges the set.
pub fn progress(members: &mut [MemberSnapshot], described: &[Snapshot]) -> Progress {
    let mut failed = Vec::new();
    let mut pending = false;
    for m in members.iter_mut() {
        let Some(id) = m.snapshot_id.clone() else {
            failed.push(format!("member {} has no snapshot", m.member_index));
            continue;
        };
        match described.iter().find(|s| s.snapshot_id == id) {
            None => {
                m.state = Some("deleted".into());
                failed.push(format!(
                    "member {}'s snapshot {id} no longer exists",
                    m.member_index
                ));
            }
            Some(s) => {
                m.state = Some(s.state.clone());
                m.progress = s.progress.clone().filter(|p| !p.is_empty());
                match s.state.as_str() {
                    "completed" => {}
                    "error" => failed.push(format!(
                        "member {}'s snapshot {id} is in state error{}",
                        m.member_index,
                        s.state_message
                            .as_deref()
                            .map_or(String::new(), |w| format!(": {w}"))
                    )),
                    _ => pending = true,
                }
            }
        }
    }
    if !failed.is_empty() {
        Progress::Failed(failed.join("; "))
    } else if pending {
        Progress::Pending
    } else {
        Progress::Completed
    }
}

/// Snapshots tagged with the UID that the status does not name: a retried call's, or one
/// whose recording a crash cut short.
pub fn strays(found: &[Snapshot], members: &[MemberSnapshot]) -> Vec<String> {
    let ours: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.snapshot_id.as_deref())
        .collect();
    found
        .iter()
        .filter(|s| !ours.contains(s.snapshot_id.as_str()))
        .map(|s| s.snapshot_id.clone())
        .collect()
}

/// The Completed set of the same source captured last before `captured` (seconds), and the
/// pairs (its snapshot, ours) of each member, for ListChangedBlocks. Only a set with the
/// same members (same volumes) compares.
pub fn previous_set(
    others: &[pgml_api::EbsSnapshot],
    name: &str,
    source: Option<&str>,
    captured: Option<i64>,
    members: &[MemberSnapshot],
) -> Option<(String, Vec<(String, String)>)> {
    let source = source?;
    let captured = captured?;
    let prev = others
        .iter()
        .filter(|o| o.metadata.name.as_deref() != Some(name))
        .filter_map(|o| Some((o.metadata.name.clone()?, o.status.as_ref()?)))
        .filter(|(_, s)| {
            s.phase == Some(pgml_api::snapshot::SnapshotPhase::Completed)
                && s.source.as_deref() == Some(source)
        })
        .filter_map(|(n, s)| Some((s.capture_time.as_ref()?.0.as_second(), n, s)))
        .filter(|(t, _, _)| *t < captured)
        .max_by_key(|(t, n, _)| (*t, n.clone()))?;
    let (_, prev_name, prev) = prev;
    if prev.snapshots.len() != members.len() {
        return None;
    }
    let pairs = members
        .iter()
        .map(|m| {
            let p = prev
                .snapshots
                .iter()
                .find(|p| p.member_index == m.member_index && p.volume_id == m.volume_id)?;
            Some((p.snapshot_id.clone()?, m.snapshot_id.clone()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((prev_name, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> EbsSnapshotSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn snap(id: &str, vol: &str, state: &str, start: i64) -> Snapshot {
        Snapshot {
            snapshot_id: id.into(),
            volume_id: vol.into(),
            state: state.into(),
            progress: None,
            volume_size_gib: Some(1),
            start_time: Some(start),
            state_message: None,
            tags: BTreeMap::new(),
        }
    }

    fn members(n: i32) -> Vec<MemberSnapshot> {
        (0..n)
            .map(|i| MemberSnapshot {
                member_index: i,
                volume_id: Some(format!("vol-{i}")),
                size_gib: Some(1),
                ..Default::default()
            })
            .collect()
    }

    fn held(state: HoldState) -> HoldStatus {
        HoldStatus {
            state,
            held_at: None,
            deadline: None,
            released_at: None,
            frozen: false,
            mount_path: None,
            message: Some("why".into()),
        }
    }

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
        };
        let user = BTreeMap::from([("team".to_string(), "db".to_string())]);
        let t = set_tags(&r, Some("tank"), Some("123"), Some("raid0"), &user);
        assert_eq!(t["team"], "db");
        assert_eq!(t[keys::MANAGED_BY], "pgml-operator");
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
    fn a_missing_source_is_awaited_for_a_while() {
        assert!(!gave_up_on_source(Some(100), 150, 300));
        assert!(gave_up_on_source(Some(100), 400, 300));
        assert!(gave_up_on_source(None, 400, 300));
    }

    #[test]
    fn hold_steps() {
        // No answer: wait, then give up after the agent timeout.
        assert_eq!(hold_step(None, None, 100, 90, 120), HoldStep::Wait(2));
        assert!(matches!(
            hold_step(None, None, 210, 90, 120),
            HoldStep::Fail(reason::AGENT_NOT_RESPONDING, _)
        ));
        // Held with time left: capture; within the margin of the deadline: too late.
        let h = held(HoldState::Held);
        assert_eq!(
            hold_step(Some(&h), Some(110), 100, 90, 120),
            HoldStep::Capture { deadline: 110 }
        );
        assert!(matches!(
            hold_step(Some(&h), Some(110), 109, 90, 120),
            HoldStep::Fail(reason::HOLD_EXPIRED, _)
        ));
        let f = hold_step(Some(&held(HoldState::Failed)), None, 100, 90, 120);
        assert!(matches!(&f, HoldStep::Fail(reason::HOLD_FAILED, m) if m.contains("why")));
        assert!(matches!(
            hold_step(Some(&held(HoldState::Expired)), Some(99), 100, 90, 120),
            HoldStep::Fail(reason::HOLD_EXPIRED, _)
        ));
    }

    #[test]
    fn a_full_set_in_time_is_adopted_in_member_order() {
        let m = members(3);
        let found = vec![
            snap("snap-c", "vol-2", "pending", 100),
            snap("snap-a", "vol-0", "pending", 100),
            snap("snap-b", "vol-1", "completed", 100),
            snap("snap-x", "vol-other", "pending", 100),
        ];
        let Adoption::Set { members, extra } = adopt(&found, &m, Some(105)) else {
            panic!("not adopted");
        };
        let ids: Vec<_> = members
            .iter()
            .map(|m| m.snapshot_id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["snap-a", "snap-b", "snap-c"]);
        assert_eq!(members[1].state.as_deref(), Some("completed"));
        assert_eq!(extra, ["snap-x"]);
    }

    #[test]
    fn partial_doubled_or_late_sets_are_discarded() {
        let m = members(2);
        assert_eq!(adopt(&[], &m, Some(10)), Adoption::Nothing);
        let partial = vec![snap("snap-a", "vol-0", "pending", 1)];
        assert_eq!(
            adopt(&partial, &m, None),
            Adoption::Discard(vec!["snap-a".into()])
        );
        let doubled = vec![
            snap("snap-a", "vol-0", "pending", 1),
            snap("snap-b", "vol-1", "pending", 1),
            snap("snap-c", "vol-1", "pending", 2),
        ];
        assert!(matches!(adopt(&doubled, &m, None), Adoption::Discard(ids) if ids.len() == 3));
        let late = vec![
            snap("snap-a", "vol-0", "pending", 20),
            snap("snap-b", "vol-1", "pending", 20),
        ];
        assert!(matches!(adopt(&late, &m, Some(20)), Adoption::Discard(_)));
        assert!(matches!(adopt(&late, &m, None), Adoption::Set { .. }));
    }

    #[test]
    fn the_answer_is_assigned_by_volume() {
        let m = members(2);
        let answer = vec![
            snap("snap-b", "vol-1", "pending", 1),
            snap("snap-a", "vol-0", "pending", 1),
            snap("snap-z", "vol-9", "pending", 1),
        ];
        let (set, extra) = assign(&answer, &m).unwrap();
        assert_eq!(set[0].snapshot_id.as_deref(), Some("snap-a"));
        assert_eq!(set[1].snapshot_id.as_deref(), Some("snap-b"));
        assert_eq!(extra, ["snap-z"]);
        assert_eq!(assign(&answer[..1], &m), Err(vec![0]));
    }

    #[test]
    fn progress_judges_the_set() {
        let mut m: Vec<MemberSnapshot> = members(2)
            .into_iter()
            .enumerate()
            .map(|(i, m)| MemberSnapshot {
                snapshot_id: Some(format!("snap-{i}")),
                ..m
            })
            .collect();
        let mut d = vec![
            snap("snap-0", "vol-0", "completed", 1),
            snap("snap-1", "vol-1", "pending", 1),
        ];
        d[1].progress = Some("40%".into());
        assert_eq!(progress(&mut m, &d), Progress::Pending);
        assert_eq!(m[1].progress.as_deref(), Some("40%"));
        d[1].state = "completed".into();
        assert_eq!(progress(&mut m, &d), Progress::Completed);
        d[0].state = "error".into();
        d[0].state_message = Some("boom".into());
        assert!(matches!(progress(&mut m, &d), Progress::Failed(w) if w.contains("boom")));
        assert!(
            matches!(progress(&mut m, &d[1..]), Progress::Failed(w) if w.contains("no longer exists"))
        );
        assert_eq!(m[0].state.as_deref(), Some("deleted"));
    }

    fn completed(name: &str, source: &str, at: i64, snaps: &[&str]) -> pgml_api::EbsSnapshot {
        let members: Vec<String> = snaps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{{memberIndex: {i}, volumeId: vol-{i}, snapshotId: {s}}}"))
            .collect();
        let t = k8s_openapi::jiff::Timestamp::from_second(at).unwrap();
        serde_yaml::from_str(&format!(
            "apiVersion: pgml.io/v1alpha1\nkind: EbsSnapshot\nmetadata: {{name: {name}}}\nspec: {{source: {{zfsPool: {{name: p}}}}}}\nstatus: {{phase: Completed, source: {source}, captureTime: '{t}', snapshots: [{}]}}\n",
            members.join(", ")
        ))
        .unwrap()
    }

    #[test]
    fn the_previous_set_is_the_last_completed_one_of_the_same_source() {
        let mut ours = members(2);
        ours[0].snapshot_id = Some("snap-n0".into());
        ours[1].snapshot_id = Some("snap-n1".into());
        let others = vec![
            completed("old", "ZfsPool/p", 100, &["snap-a0", "snap-a1"]),
            completed("last", "ZfsPool/p", 200, &["snap-b0", "snap-b1"]),
            completed("other", "ZfsPool/q", 250, &["snap-c0", "snap-c1"]),
            completed("later", "ZfsPool/p", 400, &["snap-d0", "snap-d1"]),
        ];
        let (name, pairs) =
            previous_set(&others, "new", Some("ZfsPool/p"), Some(300), &ours).unwrap();
        assert_eq!(name, "last");
        assert_eq!(
            pairs,
            [
                ("snap-b0".to_string(), "snap-n0".to_string()),
                ("snap-b1".to_string(), "snap-n1".to_string())
            ]
        );
        assert!(previous_set(&others, "new", Some("ZfsPool/p"), Some(100), &ours).is_none());
        // Another member count, or a replaced volume: nothing to compare.
        let three = vec![completed("x", "ZfsPool/p", 10, &["s0", "s1", "s2"])];
        assert!(previous_set(&three, "new", Some("ZfsPool/p"), Some(300), &ours).is_none());
        let mut moved = ours.clone();
        moved[1].volume_id = Some("vol-9".into());
        assert!(previous_set(&others, "new", Some("ZfsPool/p"), Some(300), &moved).is_none());
    }

    #[test]
    fn strays_are_what_status_does_not_name() {
        let mut m = members(1);
        m[0].snapshot_id = Some("snap-a".into());
        let found = vec![
            snap("snap-a", "vol-0", "completed", 1),
            snap("snap-b", "vol-0", "completed", 1),
        ];
        assert_eq!(strays(&found, &m), ["snap-b"]);
    }
}
