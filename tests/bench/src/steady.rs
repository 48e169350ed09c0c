//! What the steady-state bench reads besides the API: kube-apiserver's audit log (who
//! wrote what, from the sandbox's `k8s/audit.log`, see tests/testbed/sandbox/k8s.py) and a
//! process's CPU time and memory from `/proc`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// One request in the audit log (level Metadata: no body).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Seconds since the epoch at which the apiserver received it.
    pub at: f64,
    pub user: String,
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: i64,
}

impl AuditEntry {
    /// A write (what the policy logs for everyone).
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// `verb resource[/subresource]`, e.g. `patch pgmlclusters/status`.
    pub fn what(&self) -> String {
        if self.subresource.is_empty() {
            format!("{} {}", self.verb, self.resource)
        } else {
            format!("{} {}/{}", self.verb, self.resource, self.subresource)
        }
    }

    /// From one line of the log; `None` for another stage than the response's end or a
    /// line that is not an audit event.
    pub fn parse(line: &str) -> Option<AuditEntry> {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["stage"] != "ResponseComplete" && v["stage"] != "Panic" {
            return None;
        }
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let obj = &v["objectRef"];
        Some(AuditEntry {
            at: parse_rfc3339(v["requestReceivedTimestamp"].as_str()?)?,
            user: s(&v["user"]["username"]),
            user_agent: s(&v["userAgent"]),
            verb: s(&v["verb"]),
            resource: s(&obj["resource"]),
            subresource: s(&obj["subresource"]),
            namespace: s(&obj["namespace"]),
            name: s(&obj["name"]),
            code: v["responseStatus"]["code"].as_i64().unwrap_or(0),
        })
    }
}

/// The audit entries received in `[from, to)` (seconds since the epoch), from `log` past
/// byte `offset` (see [`audit_len`]; 0: all of it) and from the files kube-apiserver
/// rotated it to (`audit-<time>.log` beside it) since `from`.
pub fn read_audit(log: &Path, offset: u64, from: f64, to: f64) -> anyhow::Result<Vec<AuditEntry>> {
    use std::io::{Read, Seek, SeekFrom};
    let dir = log.parent().unwrap_or(Path::new("."));
    let stem = log
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("audit")
        .to_string();
    let mut out = vec![];
    let mut take = |text: &str| {
        out.extend(
            text.lines()
                .filter(|l| received_at(l).is_none_or(|t| t >= from - 1.0 && t < to + 1.0))
                .filter_map(AuditEntry::parse)
                .filter(|e| e.at >= from && e.at < to),
        );
    };
    let mut main = std::fs::File::open(log)?;
    let len = main.metadata()?.len();
    // Rotated since the offset was taken: all of the new file.
    main.seek(SeekFrom::Start(if len >= offset { offset } else { 0 }))?;
    let mut text = String::new();
    main.read_to_string(&mut text)?;
    take(&text);
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p == log || !(name.starts_with(&format!("{stem}-")) && name.ends_with(".log")) {
            continue;
        }
        let modified = e
            .metadata()?
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if modified >= from {
            take(&std::fs::read_to_string(&p)?);
        }
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(out)
}

/// The log's length now: where [`read_audit`] may start for what comes later.
pub fn audit_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// A line's requestReceivedTimestamp without parsing the JSON (a cheap filter).
fn received_at(line: &str) -> Option<f64> {
    const KEY: &str = "\"requestReceivedTimestamp\":\"";
    let i = line.find(KEY)? + KEY.len();
    let end = line[i..].find('"')?;
    parse_rfc3339(&line[i..i + end])
}

/// Counts of `key(entry)`, most frequent first.
pub fn tally(entries: &[&AuditEntry], key: impl Fn(&AuditEntry) -> String) -> Vec<(String, usize)> {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for e in entries {
        *m.entry(key(e)).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// `2026-11-27T11:00:00.123456Z` → seconds since the epoch (UTC only, as the apiserver
/// writes them).
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    let days = days_from_civil(y, mo, da);
    Some((days * 86400 + h * 3600 + mi * 60) as f64 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A look at a process: CPU seconds used so far (user + system), resident memory now and
/// its peak (VmHWM), in KiB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// `/proc/<pid>/stat` fields 14 and 15 (utime, stime, in clock ticks of 1/100 s on Linux)
/// and `/proc/<pid>/status` VmRSS and VmHWM; `None` once it is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu_seconds: (utime + stime) / 100.0,
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// The `p`-th percentile (0–100) by nearest rank; NaN for no samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_parse() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/n/pods/p","verb":"patch","user":{"username":"system:serviceaccount:n:op","groups":["system:serviceaccounts"]},"userAgent":"pgml-operator/0.1.0","objectRef":{"resource":"pods","namespace":"n","name":"p","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-11-27T11:00:01.500000Z","stageTimestamp":"2026-11-27T11:00:01.510000Z"}"#;
        let e = AuditEntry::parse(line).unwrap();
        assert_eq!(e.user, "system:serviceaccount:n:op");
        assert_eq!(e.what(), "patch pods");
        assert!(e.is_write());
        assert_eq!(e.code, 200);
        assert_eq!(e.at, parse_rfc3339("2026-11-27T11:00:00Z").unwrap() + 1.5);
        assert_eq!(
            AuditEntry::parse(&line.replace("ResponseComplete", "RequestReceived")),
            None
        );
    }

    #[test]
    fn rfc3339_and_percentiles() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn this_process_has_a_sample() {
        let s = proc_sample(std::process::id()).unwrap();
        assert!(s.hwm_kib >= s.rss_kib && s.rss_kib > 0);
    }
}
