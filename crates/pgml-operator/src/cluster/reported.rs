//! What an instance manager reports in its Pod's `pgml.io/instance-status` annotation, and
//! the LSN arithmetic the status needs.

use serde::Deserialize;

/// The annotation's JSON (docs/design/pgmlcluster.md, "The instance manager's contract").
/// Every field is optional: a manager that is starting reports little.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Reported {
    /// `primary`, `replica` or `none`.
    pub role: Option<String>,
    pub running: bool,
    pub ready: bool,
    pub lsn: Option<String>,
    pub receive_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    pub timeline: Option<i64>,
    pub streaming: bool,
    pub address: Option<String>,
    pub standby_signal: bool,
    pub fenced: bool,
    pub demoted: bool,
    pub updated: Option<String>,
    pub message: Option<String>,
}

impl Reported {
    /// Parses the annotation; `None` when absent or not the expected JSON.
    pub fn parse(annotation: Option<&str>) -> Option<Reported> {
        serde_json::from_str(annotation?).ok()
    }

    pub fn is_primary(&self) -> bool {
        self.role.as_deref() == Some("primary")
    }

    /// The running primary, accepting writes.
    pub fn serves_as_primary(&self) -> bool {
        self.is_primary() && self.running && !self.fenced
    }

    /// The position that matters for this instance: written on a primary, replayed on a
    /// replica.
    pub fn position(&self) -> Option<&str> {
        if self.is_primary() {
            self.lsn.as_deref()
        } else {
            self.replay_lsn.as_deref().or(self.lsn.as_deref())
        }
    }
}

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

    #[test]
    fn reports_parse_leniently() {
        let r = Reported::parse(Some(
            r#"{"role":"replica","running":true,"ready":true,"lsn":"0/3000060","replayLsn":"0/3000000","streaming":true,"extra":1}"#,
        ))
        .unwrap();
        assert!(!r.is_primary());
        assert_eq!(r.position(), Some("0/3000000"));
        assert!(r.streaming);
        let p = Reported::parse(Some(r#"{"role":"primary","running":true,"lsn":"0/5"}"#)).unwrap();
        assert!(p.serves_as_primary());
        assert_eq!(p.position(), Some("0/5"));
        assert_eq!(Reported::parse(Some("not json")), None);
        assert_eq!(Reported::parse(None), None);
    }
}
