//! Deterministic idempotency tokens and device-name hints.

use sha2::{Digest, Sha256};

/// A ClientToken for an EC2 create call: the hex SHA-256 of its parts, joined by NUL.
///
/// The same object and member always give the same token, so a create repeated after a
/// crash returns the volume EC2 already made (EC2 remembers tokens for hours); a token
/// reused with other parameters fails with IdempotentParameterMismatch, which is why the
/// parts should include everything that identifies the request (object UID, member index,
/// and a generation of the member when it is replaced). 64 characters: EC2's maximum.
pub fn client_token(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The device name asked for in AttachVolume for member `index`: `/dev/xvdba`, `/dev/xvdbb`,
/// … On Nitro instances the name is only a hint (the device appears as `/dev/nvmeXn1`); it
/// must still be unique per instance, so members use a range the root volume never takes.
pub fn device_name_hint(index: usize) -> Option<String> {
    // xvdba..xvdbz, xvdca..xvdcz: 52 names, more than any instance can attach.
    let hi = index / 26;
    let lo = index % 26;
    if hi >= 2 {
        return None;
    }
    Some(format!(
        "/dev/xvd{}{}",
        (b'b' + hi as u8) as char,
        (b'a' + lo as u8) as char
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_deterministic_distinct_and_64_chars() {
        let a = client_token(&["uid-1", "0"]);
        assert_eq!(a, client_token(&["uid-1", "0"]));
        assert_ne!(a, client_token(&["uid-1", "1"]));
        // The separator matters: ("ab","c") and ("a","bc") differ.
        assert_ne!(client_token(&["ab", "c"]), client_token(&["a", "bc"]));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn device_hints() {
        assert_eq!(device_name_hint(0).as_deref(), Some("/dev/xvdba"));
        assert_eq!(device_name_hint(25).as_deref(), Some("/dev/xvdbz"));
        assert_eq!(device_name_hint(26).as_deref(), Some("/dev/xvdca"));
        assert_eq!(device_name_hint(52), None);
    }
}
