//! Conditions as every controller writes them: the standard shape, `lastTransitionTime`
//! kept while the status holds, `observedGeneration` of the spec judged, times to the
//! second (what the apiserver stores, so a round trip compares equal).

use k8s_openapi::jiff::Timestamp;
use pgml_api::common::{Condition, Time, condition as c};

/// A second-precision now: what the apiserver stores, so a round trip compares equal.
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time"))
}

/// The generation a condition judged and the time of this reconcile.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub generation: Option<i64>,
    pub now: &'a Time,
}

/// Sets condition `type_` in `conds`, keeping `lastTransitionTime` when the status did not
/// change (reason, message and observedGeneration may still move).
pub fn set_condition(
    conds: &mut Vec<Condition>,
    observed: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    stamp: Stamp,
) {
    let Stamp { generation, now } = stamp;
    let status = if status { c::TRUE } else { c::FALSE };
    let since = observed
        .iter()
        .find(|o| o.type_ == type_ && o.status == status)
        .map(|o| o.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    conds.retain(|o| o.type_ != type_);
    conds.push(Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    });
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
}
