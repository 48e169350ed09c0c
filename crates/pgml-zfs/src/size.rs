//! Numbers as ZFS prints them: exact (`-p`) or human (`1.98G`, `616K`, `1.00x`, `40%`).

/// Bytes from `123456` (exact) or `1.98G` / `512` / `616K` / `1000M` / `0B` (powers of 1024,
/// as ZFS's nicenum uses). Human values are rounded: they were rounded when printed.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s == "-" {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let s = s.strip_suffix('B').unwrap_or(s);
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let mult: u64 = match unit {
        "" => 1,
        "K" | "Ki" => 1 << 10,
        "M" | "Mi" => 1 << 20,
        "G" | "Gi" => 1 << 30,
        "T" | "Ti" => 1 << 40,
        "P" | "Pi" => 1 << 50,
        "E" | "Ei" => 1 << 60,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some((n * mult as f64).round() as u64)
}

/// Error counters: `0`, `12`, or `1.68K` (OpenZFS without `-p`).
pub fn parse_count(s: &str) -> Option<u64> {
    parse_bytes(s)
}

/// `40%` or `40` → 40.0; `14.91%` → 14.91.
pub fn parse_percent(s: &str) -> Option<f64> {
    s.trim().trim_end_matches('%').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("2126008811520"), Some(2126008811520));
        assert_eq!(parse_bytes("616K"), Some(616 * 1024));
        assert_eq!(parse_bytes("1000M"), Some(1000 << 20));
        assert_eq!(
            parse_bytes("1.23G"),
            Some((1.23f64 * (1u64 << 30) as f64).round() as u64)
        );
        assert_eq!(parse_bytes("0B"), Some(0));
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("-"), None);
        assert_eq!(parse_bytes("1.0X"), None);
        assert_eq!(parse_count("1.68K"), Some(1720));
        assert_eq!(parse_percent("14.91%"), Some(14.91));
    }
}
