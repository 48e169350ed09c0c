//! Ages, byte sizes and durations the way kubectl prints and reads them.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// How long ago `then` was, kubectl-style: `42s`, `5m10s`, `47m`, `3h12m`, `20h`, `6d`.
pub fn age(now: Timestamp, then: Timestamp) -> String {
    let s = now.as_second().saturating_sub(then.as_second()).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..28_800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        28_800..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes in binary units: `96 B`, `1.5 KiB`, `37.2 GiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration like `90s`, `10m`, `1h30m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: use e.g. 90s, 10m or 1h30m");
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total += n * match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let at = |s: i64| Timestamp::from_second(now.as_second() - s).unwrap();
        assert_eq!(age(now, at(42)), "42s");
        assert_eq!(age(now, at(310)), "5m10s");
        assert_eq!(age(now, at(47 * 60)), "47m");
        assert_eq!(age(now, at(3 * 3600 + 12 * 60)), "3h12m");
        assert_eq!(age(now, at(20 * 3600)), "20h");
        assert_eq!(age(now, at(6 * 86_400)), "6d");
        assert_eq!(age(now, at(-5)), "0s", "clock skew is not negative");
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(bytes(96), "96 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(200 << 30), "200.0 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
    }
}
