//! Growing members: which members get a ModifyVolume (those below the spec, not being
//! modified already), within AWS's 4 modifications per volume per rolling 24 hours, and
//! how each answer is taken.

use pgml_api::EbsVolumes;
use pgml_api::common::Time;
use pgml_api::zfspool::{ModificationState, VolumeModification, VolumeStatus};
use pgml_aws::{AwsError, ModifyVolume, VolumeState};

use crate::zfspool::build::{self, Budget, Members};

/// What the grow pass does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Growth {
    /// No member to grow: only forget the modifications older than 24 hours.
    Nothing,
    /// The spec asks for larger volumes but the budget is spent: the message for
    /// Progressing (the record of modifications is kept as it is).
    Spent(String),
    /// ModifyVolume these members, one after the other.
    Modify(Vec<(usize, ModifyVolume)>),
}

/// `recent`: the pool's modification rounds; `now`: epoch seconds.
pub fn growth(
    members: &Members,
    volumes: &[VolumeStatus],
    spec: &EbsVolumes,
    recent: &[Time],
    now: i64,
) -> Growth {
    let in_flight = |i: usize| {
        volumes.iter().any(|v| {
            v.index == i as i32
                && v.modification
                    .as_ref()
                    .is_some_and(VolumeModification::is_modifying)
        })
    };
    let plan: Vec<(usize, ModifyVolume)> = members
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = v.as_ref()?;
            (matches!(v.state, VolumeState::Available | VolumeState::InUse) && !in_flight(i))
                .then(|| build::growth(v, spec).map(|m| (i, m)))
                .flatten()
        })
        .collect();
    if plan.is_empty() {
        return Growth::Nothing;
    }
    match build::modification_budget(&seconds(recent), now) {
        Budget::SpentUntil(at) => {
            let when = k8s_openapi::jiff::Timestamp::from_second(at)
                .map(|t| t.to_string())
                .unwrap_or_default();
            Growth::Spent(format!(
                "the spec asks for larger volumes, but AWS allows 4 modifications per volume in 24 hours and they are spent; the next can start at {when}"
            ))
        }
        Budget::Available { .. } => Growth::Modify(plan),
    }
}

fn seconds(ts: &[Time]) -> Vec<i64> {
    ts.iter().map(|t| t.0.as_second()).collect()
}

/// `recentModifications` after this pass: the last 24 hours, plus `now` when a round
/// `started`.
pub fn recent(recent: &[Time], now: i64, started: bool) -> Vec<Time> {
    build::prune_recent(&seconds(recent), now, started)
        .iter()
        .filter_map(|s| k8s_openapi::jiff::Timestamp::from_second(*s).ok())
        .map(Time)
        .collect()
}

/// How a ModifyVolume answer is taken.
#[derive(Debug)]
pub enum Answer {
    /// EBS started the modification.
    Started,
    /// A modification of the volume still runs (IncorrectModificationState): wait for it.
    StillRunning,
    /// Anything else: the pass stops here and fails with it.
    Failed(AwsError),
}

pub fn answer(result: Result<(), AwsError>) -> Answer {
    match result {
        Ok(()) => Answer::Started,
        Err(e) if e.code == "IncorrectModificationState" => Answer::StillRunning,
        Err(e) => Answer::Failed(e),
    }
}

/// The member's `modification` once `m` started at `now`.
pub fn started(m: &ModifyVolume, now: &Time) -> VolumeModification {
    VolumeModification {
        state: ModificationState::Modifying.as_str().into(),
        progress: Some(0),
        start_time: Some(now.clone()),
        target_size_gib: m.size_gib.map(i64::from),
        target_iops: m.iops.map(i64::from),
        target_throughput_mibps: m.throughput_mibps.map(i64::from),
        target_type: None,
        message: None,
    }
}
