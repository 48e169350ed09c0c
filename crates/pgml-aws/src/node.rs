//! What a Kubernetes Node says about its EC2 instance.

/// `aws:///us-east-1a/i-0abc` → (`us-east-1a`, `i-0abc`). The zone part may be empty on
/// some distributions (`aws:////i-0abc`).
pub fn parse_provider_id(id: &str) -> Option<(String, String)> {
    let rest = id.strip_prefix("aws://")?;
    let mut parts = rest.trim_start_matches('/').rsplitn(2, '/');
    let instance = parts.next()?.to_string();
    let zone = parts.next().unwrap_or_default().to_string();
    instance.starts_with("i-").then_some((zone, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids() {
        assert_eq!(
            parse_provider_id("aws:///us-east-1a/i-0abc"),
            Some(("us-east-1a".into(), "i-0abc".into()))
        );
        assert_eq!(
            parse_provider_id("aws:////i-0abc"),
            Some(("".into(), "i-0abc".into()))
        );
        assert_eq!(parse_provider_id("gce://p/z/n"), None);
        assert_eq!(parse_provider_id("aws:///us-east-1a/"), None);
        assert_eq!(parse_provider_id(""), None);
    }
}
