//! Scheduled EbsSnapshots: the schedule and retention a ZfsPool (`spec.snapshots`) and a
//! PgmlCluster (`spec.backups.snapshots`) share, and the status the scheduler reports.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;

use crate::common::Time;
use crate::snapshot::DeletionPolicy;

/// A cron schedule as the CEL rule below accepts it: a macro, or 5 fields of comma lists of
/// `*`, values and ranges in the field's range (names for months and days), each with an
/// optional step no larger than the field's maximum; `?` only in the day fields. What it
/// cannot see (a range that runs backwards, a date no month has) is refused by
/// [`crate::validate::check_cron`], which parses with the evaluator, [`crate::cron`].
/// Generated per field; keep the fields in step with `cron::FIELDS`.
pub(crate) const CRON_RULE: &str = "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|([*]|[0-5]?[0-9](-[0-5]?[0-9])?)(/([1-9]|[1-5][0-9]))?(,([*]|[0-5]?[0-9](-[0-5]?[0-9])?)(/([1-9]|[1-5][0-9]))?)* +([*]|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/([1-9]|1[0-9]|2[0-3]))?(,([*]|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/([1-9]|1[0-9]|2[0-3]))?)* +([*?]|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/([1-9]|[12][0-9]|3[01]))?(,([*?]|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/([1-9]|[12][0-9]|3[01]))?)* +([*]|(0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))(-(0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)))?)(/([1-9]|1[0-2]))?(,([*]|(0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))(-(0?[1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)))?)(/([1-9]|1[0-2]))?)* +([*?]|([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat))(-([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat)))?)(/[1-7])?(,([*?]|([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat))(-([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat)))?)(/[1-7])?)*)$')";
pub(crate) const CRON_MESSAGE: &str = "must be a cron schedule: 5 fields (minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\") or @hourly, @daily, @weekly, @monthly";

/// How many scheduled snapshots to keep. A snapshot is kept if any rule keeps it; only
/// Completed snapshots count. Snapshots still being taken are never deleted, and Failed
/// ones are deleted once a newer one has completed. Snapshots made by hand (without the
/// `pgml.io/scheduled-by` label) are never touched.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.keepLast + self.hourly + self.daily + self.weekly > 0")
    .message("retention must keep at least one snapshot: keepLast, hourly, daily and weekly cannot all be 0"))]
pub struct SnapshotRetention {
    /// Keep the newest N (default 3).
    #[serde(default = "default_keep_last")]
    #[schemars(range(min = 0, max = 1000))]
    pub keep_last: i32,
    /// Keep the newest snapshot of each of the last N hours that have one (UTC).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub hourly: i32,
    /// Keep the newest snapshot of each of the last N days that have one (UTC; default
    /// 7). Days without a snapshot (the operator was down, the source was not ready) do
    /// not count, so a gap never costs the older snapshots.
    #[serde(default = "default_daily")]
    #[schemars(range(min = 0, max = 1000))]
    pub daily: i32,
    /// Keep the newest snapshot of each of the last N ISO weeks (Monday to Sunday, UTC)
    /// that have one.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub weekly: i32,
}

impl Default for SnapshotRetention {
    fn default() -> Self {
        Self {
            keep_last: default_keep_last(),
            hourly: 0,
            daily: default_daily(),
            weekly: 0,
        }
    }
}

fn default_keep_last() -> i32 {
    3
}

fn default_daily() -> i32 {
    7
}

/// A cron schedule of EbsSnapshots and how many to keep.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSchedule {
    /// Cron schedule in UTC, e.g. `0 */6 * * *`: 5 fields (minute hour day-of-month month
    /// day-of-week; lists, ranges, steps, month and day names) or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`. When both day of month and day of week are given, either
    /// matching fires (standard cron). Slots missed while the operator was down are not
    /// made up, except the latest one. Unset: no scheduled snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(CRON_RULE).message(CRON_MESSAGE))]
    pub schedule: Option<String>,
    /// How many to keep (default: the last 3 and one a day for 7 days). Older ones are
    /// deleted, and with them their AWS snapshots under `deletionPolicy: Delete`.
    #[serde(default)]
    pub retention: SnapshotRetention,
    /// `deletionPolicy` of each EbsSnapshot the schedule creates: `Delete` (default; the
    /// AWS snapshots go when retention deletes the object) or `Retain` (they stay in AWS,
    /// tagged, after the object is pruned). Changing `Retain` to `Delete` (also by removing
    /// the field) needs the annotation `pgml.io/allow-delete-policy: "true"` on the ZfsPool
    /// or PgmlCluster in the same update (the ValidatingAdmissionPolicy
    /// `retain-to-delete.pgml.io`, installed with the CRDs).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// What the snapshot scheduler last did (written by the operator with field manager
/// `pgml-operator-schedule`; see docs/design/zfspool.md).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// Name of the last EbsSnapshot the schedule created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_snapshot: Option<String>,
    /// The schedule slot that snapshot was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The next slot of the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
}

/// Longest Kubernetes label value.
const LABEL_VALUE_MAX: usize = 63;
/// Longest object name (DNS subdomain).
const NAME_MAX: usize = 253;

/// FNV-1a, 64 bits: a stable short digest for names too long to use whole (no crypto
/// needed, only determinism across processes and versions).
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

/// `text`, or its head and a digest of the whole when longer than `max`, with no `-` or
/// `.` left at the cut.
fn fit(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let head = text[..max - 9].trim_end_matches(['-', '.']);
    format!("{head}-{}", digest(text))
}

/// Value of the `pgml.io/scheduled-by` label on the EbsSnapshots the schedule of `kind`
/// `name` creates: `ZfsPool.analytics`, `PgmlCluster.main` (a digest replaces the tail of
/// names too long for a label value).
pub fn scheduled_by(kind: &str, name: &str) -> String {
    fit(&format!("{kind}.{name}"), LABEL_VALUE_MAX)
}

/// Name of the EbsSnapshot for schedule slot `slot` of source `name`:
/// `<name>-<yyyymmddhhmm>` (UTC), the name shortened with a digest when the whole would
/// exceed 253 characters. The same slot always gives the same name, so two operators (or
/// one restarted mid-way) creating it get AlreadyExists instead of a second snapshot.
pub fn scheduled_snapshot_name(name: &str, slot: Timestamp) -> String {
    let stamp = slot
        .to_zoned(TimeZone::UTC)
        .strftime("%Y%m%d%H%M")
        .to_string();
    format!("{}-{stamp}", fit(name, NAME_MAX - stamp.len() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the CRD's cron rule (with kube-cel, as the apiserver would) on `expr`.
    fn admitted(expr: &str) -> bool {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"schedule": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": CRON_RULE, "message": CRON_MESSAGE}],
            }},
        });
        kube_cel::Validator::new()
            .validate(&schema, &serde_json::json!({ "schedule": expr }), None)
            .is_ok()
    }

    /// Admission and the operator's parser agree: what the CEL rule refuses the parser
    /// refuses too, and the only expressions the rule lets through that the parser refuses
    /// are those a regular expression cannot judge (backward ranges, dates no month has).
    #[test]
    fn the_cel_rule_and_the_parser_agree() {
        for ok in [
            "* * * * *",
            "0 3 * * *",
            "*/15 * * * *",
            "5,35 */6 * * *",
            "0 9-17/4 * * *",
            "10/20 * * * *",
            "0 0 1 JAN,jul *",
            "30 4 * * MON-FRI",
            "0 0 13 * FRI",
            "0 0 ? * sun",
            "0 0 * * 7",
            "0 0 * * */7",
            "59 23 31 12 6",
            "@daily",
            "@hourly",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
        ] {
            assert!(admitted(ok), "CEL refused {ok}");
            assert_eq!(crate::validate::check_cron(ok), Ok(()), "{ok}");
        }
        for bad in [
            "60 * * * *",
            "0 24 * * *",
            "0 0 0 * *",
            "0 0 32 * *",
            "0 0 * 13 *",
            "0 0 * * 8",
            "*/0 * * * *",
            "*/60 * * * *",
            "0 */24 * * *",
            "0 0 * * */8",
            "0 0 * *",
            "0 0 * * * *",
            "@sometimes",
            "0 0 * * FUNDAY",
            "0 0 L * *",
            "0 0 * * 5#3",
            "? * * * *",
            "every night",
            "1,,2 * * * *",
        ] {
            assert!(!admitted(bad), "CEL admitted {bad}");
            assert!(crate::validate::check_cron(bad).is_err(), "{bad}");
        }
        for parser_only in ["0 5-2 * * *", "0 0 31 2 *", "0 0 30 2 *"] {
            assert!(admitted(parser_only), "{parser_only}");
            assert!(crate::validate::check_cron(parser_only).is_err());
        }
    }

    #[test]
    fn names_are_deterministic_and_fit() {
        let slot: Timestamp = "2026-11-27T05:07:00Z".parse().unwrap();
        assert_eq!(
            scheduled_snapshot_name("analytics", slot),
            "analytics-202611270507"
        );
        let long = "a".repeat(250);
        let name = scheduled_snapshot_name(&long, slot);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("-202611270507"), "{name}");
        assert_eq!(name, scheduled_snapshot_name(&long, slot));
        assert_ne!(
            name,
            scheduled_snapshot_name(&format!("{}b", "a".repeat(249)), slot)
        );

        assert_eq!(scheduled_by("ZfsPool", "analytics"), "ZfsPool.analytics");
        let label = scheduled_by("PgmlCluster", &"x-".repeat(60));
        assert!(label.len() <= 63, "{label}");
        assert!(label.starts_with("PgmlCluster.x-x"), "{label}");
        assert!(
            label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }
}
