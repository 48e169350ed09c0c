//! The cron language of every `schedule` field, parsed once and evaluated in UTC.
//!
//! [`Cron::parse`] is what [`crate::validate::check_cron`] runs, so the operator fires
//! exactly the schedules it accepts, with the meaning documented here:
//!
//! - 5 fields: minute (0–59), hour (0–23), day of month (1–31), month (1–12 or
//!   `JAN`–`DEC`), day of week (0–7 or `SUN`–`SAT`, 0 and 7 both Sunday; names in any
//!   case);
//! - each field a comma list of `*` (`?` too in the day fields), `N`, `A-B`, each optionally `/STEP`; `N/STEP`
//!   means `N-<last>/STEP`; `*` and `N/STEP` in day of week stop at 6 (Saturday), so 7 is
//!   Sunday only when written;
//! - the standard day rule: when both day of month and day of week are restricted (neither
//!   is a bare `*`/`?`), a day matches if **either** matches (`0 0 1 * MON`: the 1st and
//!   every Monday); otherwise both must;
//! - macros `@yearly`/`@annually`, `@monthly`, `@weekly` (Sunday 00:00), `@daily`/`@midnight`,
//!   `@hourly`;
//! - a schedule that can never fire (`0 0 31 2 *`) is refused.

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Longest gap between two firings of any schedule [`Cron::parse`] accepts: `0 0 29 2 *`
/// skips the non-leap centuries (2096 → 2104), so 9 years bounds every search.
const SEARCH_DAYS: u32 = 9 * 366;

/// A parsed schedule: the set of allowed values of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Bit d for day of month d (1–31).
    days_of_month: u32,
    /// Bit m for month m (1–12).
    months: u16,
    /// Bit d for weekday d (0 = Sunday … 6).
    days_of_week: u8,
    dom_star: bool,
    dow_star: bool,
}

struct FieldSpec {
    what: &'static str,
    min: u32,
    max: u32,
    /// Where `*` and `N/STEP` stop (6 for day of week, whose 7 is an alias).
    open_max: u32,
    names: &'static [&'static str],
    /// Whether `?` (no specific value) is allowed: the day fields only, as in the CRD rule.
    question: bool,
}

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        what: "minute",
        min: 0,
        max: 59,
        open_max: 59,
        names: &[],
        question: false,
    },
    FieldSpec {
        what: "hour",
        min: 0,
        max: 23,
        open_max: 23,
        names: &[],
        question: false,
    },
    FieldSpec {
        what: "day of month",
        min: 1,
        max: 31,
        open_max: 31,
        names: &[],
        question: true,
    },
    FieldSpec {
        what: "month",
        min: 1,
        max: 12,
        open_max: 12,
        names: &MONTHS,
        question: false,
    },
    FieldSpec {
        what: "day of week",
        min: 0,
        max: 7,
        open_max: 6,
        names: &DAYS,
        question: true,
    },
];

/// A field's values as a bit set, and whether it was a bare `*`/`?`.
fn parse_field(field: &str, spec: &FieldSpec) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            // Months are 1-based, days of week 0-based.
            return Ok(i as u32 + spec.min);
        }
        let n: u32 = s.parse().map_err(|_| format!("{s} is not a number"))?;
        if n < spec.min || n > spec.max {
            return Err(format!("{n} is outside {}-{}", spec.min, spec.max));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let step = match step {
            Some(step) => {
                let s: u32 = step
                    .parse()
                    .map_err(|_| format!("step {step} is not a number"))?;
                if s == 0 || s > spec.max {
                    return Err(format!("step {s} must be 1-{}", spec.max));
                }
                Some(s)
            }
            None => None,
        };
        if range == "?" && !spec.question {
            return Err("? is only for day of month and day of week".into());
        }
        let (from, to) = if range == "*" || range == "?" {
            star |= step.unwrap_or(1) == 1 && field == part;
            (spec.min, spec.open_max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {a}-{b} runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            let to = if step.is_some() {
                spec.open_max.max(a)
            } else {
                a
            };
            (a, to)
        };
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok((bits, star))
}

fn days_in_month(month: u32, leap: bool) -> u32 {
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Cron {
    /// Parses a 5-field expression or a macro, checking every value is in range and that
    /// the schedule fires at all. Errors name the field and say what is wrong.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        if let Some(name) = expr.strip_prefix('@') {
            let fields = match name {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                _ => return Err(format!("@{name} is not a known schedule macro")),
            };
            return Cron::parse(fields);
        }
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{expr:?} has {} fields; cron needs 5 (minute hour day-of-month month day-of-week)",
                fields.len()
            ));
        }
        let mut sets = [(0u64, false); 5];
        for (i, (field, spec)) in fields.iter().zip(&FIELDS).enumerate() {
            sets[i] =
                parse_field(field, spec).map_err(|e| format!("{} {field:?}: {e}", spec.what))?;
        }
        let dow = sets[4].0;
        let cron = Cron {
            minutes: sets[0].0,
            hours: sets[1].0 as u32,
            days_of_month: sets[2].0 as u32,
            months: sets[3].0 as u16,
            // 7 is Sunday.
            days_of_week: ((dow | (dow >> 7)) & 0x7f) as u8,
            dom_star: sets[2].1,
            dow_star: sets[4].1,
        };
        if !cron.fires() {
            return Err(format!(
                "{expr:?} never fires: none of its months has any of its days of month"
            ));
        }
        Ok(cron)
    }

    /// Whether some month in the set has one of the days in the set (only the day of month
    /// can make a schedule empty: the day-of-week rule never does).
    fn fires(&self) -> bool {
        if !self.dow_star {
            return true;
        }
        (1..=12).any(|m| {
            self.months & (1 << m) != 0
                && (1..=days_in_month(m, true)).any(|d| self.days_of_month & (1 << d) != 0)
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first (hour, minute) of a matching day at or after `from`.
    fn first_time_from(&self, from: (u32, u32)) -> Option<(u32, u32)> {
        (from.0..24)
            .filter(|h| self.hours & (1 << h) != 0)
            .find_map(|h| {
                let start = if h == from.0 { from.1 } else { 0 };
                (start..60)
                    .find(|m| self.minutes & (1 << m) != 0)
                    .map(|m| (h, m))
            })
    }

    /// The first instant strictly after `t` (UTC, whole minutes) that the schedule fires
    /// at. `None` only past the end of time jiff can represent.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let s = t.as_second();
        let start = Timestamp::from_second(s - s.rem_euclid(60) + 60).ok()?;
        let dt = start.to_zoned(TimeZone::UTC).datetime();
        let mut date = dt.date();
        let mut from = (dt.hour() as u32, dt.minute() as u32);
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date)
                && let Some((h, m)) = self.first_time_from(from)
            {
                return utc(date, h, m);
            }
            date = date.tomorrow().ok()?;
            from = (0, 0);
        }
        None
    }

    /// The last (hour, minute) of a matching day at or before `to`.
    fn last_time_until(&self, to: (u32, u32)) -> Option<(u32, u32)> {
        (0..=to.0)
            .rev()
            .filter(|h| self.hours & (1 << h) != 0)
            .find_map(|h| {
                let end = if h == to.0 { to.1 } else { 59 };
                (0..=end)
                    .rev()
                    .find(|m| self.minutes & (1 << m) != 0)
                    .map(|m| (h, m))
            })
    }

    /// The last instant at or before `t` (UTC, whole minutes) that the schedule fires at.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let dt = t.to_zoned(TimeZone::UTC).datetime();
        let mut date = dt.date();
        let mut to = (dt.hour() as u32, dt.minute() as u32);
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date)
                && let Some((h, m)) = self.last_time_until(to)
            {
                return utc(date, h, m);
            }
            date = date.yesterday().ok()?;
            to = (23, 59);
        }
        None
    }

    /// The slot to run now: the last one at or before `now` if it is after `since` (the
    /// last slot run). Slots missed before it are skipped, as a CronJob without a starting
    /// deadline does.
    pub fn latest_due(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        self.last_at_or_before(now).filter(|slot| *slot > since)
    }
}

fn utc(date: Date, h: u32, m: u32) -> Option<Timestamp> {
    let at: DateTime = date.at(h as i8, m as i8, 0, 0);
    at.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// The first instant strictly after `t` at which `expr` fires (UTC).
pub fn next_after(expr: &str, t: Timestamp) -> Result<Timestamp, String> {
    Cron::parse(expr)?
        .next_after(t)
        .ok_or_else(|| format!("{expr:?} does not fire after {t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(expr: &str, after: &str) -> String {
        next_after(expr, ts(after)).unwrap().to_string()
    }

    #[test]
    fn every_minute_fires_on_the_next_whole_minute() {
        assert_eq!(
            next("* * * * *", "2026-11-27T04:59:00Z"),
            "2026-11-27T05:00:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-11-27T04:59:59.9Z"),
            "2026-11-27T05:00:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-12-31T23:59:30Z"),
            "2027-01-01T00:00:00Z"
        );
    }

    #[test]
    fn lists_ranges_and_steps() {
        assert_eq!(
            next("*/15 * * * *", "2026-11-27T04:46:00Z"),
            "2026-11-27T05:00:00Z"
        );
        assert_eq!(
            next("5,35 */6 * * *", "2026-11-27T06:05:00Z"),
            "2026-11-27T06:35:00Z"
        );
        assert_eq!(
            next("5,35 */6 * * *", "2026-11-27T06:35:00Z"),
            "2026-11-27T12:05:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-11-27T13:00:00Z"),
            "2026-11-27T17:00:00Z"
        );
        // N/STEP runs from N to the end of the field.
        assert_eq!(
            next("10/20 * * * *", "2026-11-27T04:51:00Z"),
            "2026-11-27T05:10:00Z"
        );
        assert_eq!(
            next("10/20 * * * *", "2026-11-27T05:31:00Z"),
            "2026-11-27T05:50:00Z"
        );
    }

    #[test]
    fn names_and_sunday_as_seven() {
        // 2026-11-27 is a Friday.
        assert_eq!(
            next("30 4 * * MON-FRI", "2026-11-27T05:00:00Z"),
            "2026-11-30T04:30:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-11-27T05:00:00Z"),
            "2026-11-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * sun", "2026-11-27T05:00:00Z"),
            "2026-11-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,JUL *", "2026-11-27T05:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        // `*/2` on days of week is 0,2,4,6: 7 is not reached by a step.
        assert_eq!(
            next("0 0 * * */2", "2026-11-27T05:00:00Z"),
            "2026-11-28T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 5-7", "2026-11-28T05:00:00Z"),
            "2026-11-29T00:00:00Z"
        );
    }

    #[test]
    fn macros() {
        let after = "2026-11-27T05:00:00Z";
        assert_eq!(next("@hourly", after), "2026-11-27T06:00:00Z");
        assert_eq!(next("@daily", after), "2026-11-28T00:00:00Z");
        assert_eq!(next("@midnight", after), "2026-11-28T00:00:00Z");
        assert_eq!(next("@weekly", after), "2026-11-29T00:00:00Z");
        assert_eq!(next("@monthly", after), "2026-12-01T00:00:00Z");
        assert_eq!(next("@yearly", after), "2027-01-01T00:00:00Z");
        assert_eq!(next("@annually", after), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 13th or any Friday: Friday the 27th → the next is Dec 4 (Fri), then Dec 11
        // (Fri), then Dec 13 (Sun, the 13th).
        assert_eq!(
            next("0 0 13 * FRI", "2026-11-27T05:00:00Z"),
            "2026-12-04T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * FRI", "2026-12-11T00:00:00Z"),
            "2026-12-13T00:00:00Z"
        );
        // With one side `*`, both must match: every Friday.
        assert_eq!(
            next("0 0 * * FRI", "2026-11-27T05:00:00Z"),
            "2026-12-04T00:00:00Z"
        );
        // Day 31 only in months that have it.
        assert_eq!(
            next("0 0 31 * *", "2026-11-27T05:00:00Z"),
            "2026-12-31T00:00:00Z"
        );
        // A restricted day of week rescues an impossible date.
        assert_eq!(
            next("0 0 30 2 MON", "2026-11-27T05:00:00Z"),
            "2027-02-01T00:00:00Z"
        );
    }

    #[test]
    fn leap_days_skip_non_leap_centuries() {
        assert_eq!(
            next("0 0 29 2 *", "2026-11-27T05:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01T00:00:00Z"),
            "2104-02-29T00:00:00Z"
        );
    }

    #[test]
    fn impossible_schedules_are_refused() {
        for bad in ["0 0 31 2 *", "0 0 30,31 2 *", "0 0 31 4,6,9,11 *"] {
            let err = Cron::parse(bad).unwrap_err();
            assert!(err.contains("never fires"), "{bad}: {err}");
        }
    }

    #[test]
    fn latest_due_picks_only_the_last_missed_slot() {
        let c = Cron::parse("*/10 * * * *").unwrap();
        assert_eq!(
            c.latest_due(ts("2026-11-27T04:00:00Z"), ts("2026-11-27T04:47:12Z")),
            Some(ts("2026-11-27T04:40:00Z"))
        );
        // The slot at `since` itself is done.
        assert_eq!(
            c.latest_due(ts("2026-11-27T04:40:00Z"), ts("2026-11-27T04:47:12Z")),
            None
        );
        // A slot exactly at now is due.
        assert_eq!(
            c.latest_due(ts("2026-11-27T04:40:00Z"), ts("2026-11-27T04:50:00Z")),
            Some(ts("2026-11-27T04:50:00Z"))
        );
        // Down for two years: only the last slot, found without walking every minute.
        let c = Cron::parse("@daily").unwrap();
        assert_eq!(
            c.latest_due(ts("2024-01-01T00:00:00Z"), ts("2026-11-27T04:47:12Z")),
            Some(ts("2026-11-27T00:00:00Z"))
        );
    }
}
