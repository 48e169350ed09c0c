//! What an instance manager reports in its Pod's `pgml.io/instance-status` annotation (the
//! type shared with the instance manager, `pgml_api::instance`), and the LSN arithmetic
//! the status needs.

/// The annotation's JSON (docs/design/pgmlcluster.md, "The instance manager's contract").
/// Every field has a default: a manager that is starting reports little.
pub use pgml_api::instance::InstanceReport as Reported;

/// `16/B374D848` → its 64-bit position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

/// How far `replica` is behind `primary`, in bytes (0 when ahead, e.g. a stale primary
/// report).
pub fn lag_bytes(primary: &str, replica: &str) -> Option<i64> {
    let p = parse_lsn(primary)?;
    let r = parse_lsn(replica)?;
    Some(i64::try_from(p.saturating_sub(r)).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_subtract() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("x/1"), None);
        assert_eq!(parse_lsn("1"), None);
        assert_eq!(parse_lsn("/1"), None);
        assert_eq!(parse_lsn("100000000/0"), None);
        assert_eq!(lag_bytes("1/0", "0/FFFFFF00"), Some(0x100));
        assert_eq!(lag_bytes("0/10", "0/20"), Some(0));
        assert_eq!(lag_bytes("0/10", "bad"), None);
    }
}
