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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Class, Error};
    use crate::zfspool::fixtures::*;

    const DAY: i64 = 24 * 3600;
    const NOW: i64 = 100 * DAY;

    fn spec(yaml: &str) -> EbsVolumes {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn members_below_the_spec_are_grown_unless_busy() {
        let m = members(vec![
            Some(vol("vol-0", 0, VolumeState::InUse)),
            Some(vol("vol-1", 1, VolumeState::Available)),
            Some(vol("vol-2", 2, VolumeState::Creating)),
            Some(vol("vol-3", 3, VolumeState::Error)),
            Some(vol("vol-4", 4, VolumeState::InUse)),
            None,
        ]);
        let mut f = facts(&m);
        // Member 4 is being modified already; member 0's last one completed.
        f.volumes[4].modification = Some(VolumeModification {
            state: "modifying".into(),
            ..Default::default()
        });
        f.volumes[0].modification = Some(VolumeModification {
            state: "completed".into(),
            ..Default::default()
        });
        let s = spec("{count: 6, sizeGiB: 200}");
        let g = growth(&m, &f.volumes, &s, &[], NOW);
        let Growth::Modify(list) = g else {
            panic!("{g:?}")
        };
        let grown: Vec<(usize, &str, Option<i32>)> = list
            .iter()
            .map(|(i, m)| (*i, m.volume_id.as_str(), m.size_gib))
            .collect();
        assert_eq!(
            grown,
            vec![(0, "vol-0", Some(200)), (1, "vol-1", Some(200))]
        );
        // At the spec already: nothing.
        let at = spec("{count: 6, sizeGiB: 100}");
        assert_eq!(growth(&m, &f.volumes, &at, &[], NOW), Growth::Nothing);
    }

    #[test]
    fn a_spent_budget_waits_and_says_until_when() {
        let m = members(vec![Some(vol("vol-0", 0, VolumeState::InUse))]);
        let f = facts(&m);
        let s = spec("{count: 1, sizeGiB: 200}");
        let four: Vec<Time> = [1, 2, 3, 4].iter().map(|h| t(NOW - h * 3600)).collect();
        let g = growth(&m, &f.volumes, &s, &four, NOW);
        let next = k8s_openapi::jiff::Timestamp::from_second(NOW - 4 * 3600 + DAY).unwrap();
        assert_eq!(
            g,
            Growth::Spent(format!(
                "the spec asks for larger volumes, but AWS allows 4 modifications per volume in 24 hours and they are spent; the next can start at {next}"
            ))
        );
        // Three in the window, one older: a round may start.
        let mut older = four.clone();
        older[3] = t(NOW - DAY - 1);
        assert!(matches!(
            growth(&m, &f.volumes, &s, &older, NOW),
            Growth::Modify(_)
        ));
    }

    #[test]
    fn the_record_keeps_a_day_of_rounds() {
        let rounds = [t(NOW - DAY - 1), t(NOW - 60)];
        assert_eq!(recent(&rounds, NOW, false), vec![t(NOW - 60)]);
        assert_eq!(recent(&rounds, NOW, true), vec![t(NOW - 60), t(NOW)]);
    }

    #[test]
    fn a_modification_still_running_is_waited_for_and_the_rest_fail_the_round() {
        assert!(matches!(answer(Ok(())), Answer::Started));
        let e = ec2_error(
            "ModifyVolume",
            "IncorrectModificationState",
            "still modifying",
        );
        assert!(matches!(answer(Err(e)), Answer::StillRunning));
        for (code, class) in [
            ("RequestLimitExceeded", Class::Throttled),
            ("InternalError", Class::Transient),
            ("IncorrectState", Class::Transient),
            ("InvalidVolume.NotFound", Class::Transient),
            ("InvalidParameterValue", Class::InvalidSpec),
            ("VolumeModificationRateExceeded", Class::Permanent),
        ] {
            let a = answer(Err(ec2_error("ModifyVolume", code, "m")));
            let Answer::Failed(e) = a else {
                panic!("{code}: {a:?}")
            };
            assert_eq!(Error::from(e).class(), class, "{code}");
        }
    }

    #[test]
    fn a_started_modification_records_its_targets() {
        let m = ModifyVolume {
            volume_id: "vol-0".into(),
            size_gib: Some(200),
            iops: Some(6000),
            throughput_mibps: None,
        };
        let r = started(&m, &t(NOW));
        assert!(r.is_modifying());
        assert_eq!(
            (
                r.progress,
                r.start_time,
                r.target_size_gib,
                r.target_iops,
                r.target_throughput_mibps
            ),
            (Some(0), Some(t(NOW)), Some(200), Some(6000), None)
        );
    }
}
