//! Classified AWS errors.

use std::time::Duration;

/// What a caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// EC2 throttled the call (RequestLimitExceeded): back off this object, with jitter.
    Throttled,
    /// A network error, a timeout or a 5xx: retry soon.
    Transient,
    /// The resource does not exist.
    NotFound,
    /// The request is wrong (bad parameter, limit, reused client token with other
    /// parameters): retrying the same request will not help; wait for a change.
    Invalid,
    /// Anything else, including missing permissions.
    Permanent,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("EC2 {action} failed ({code}): {message}")]
pub struct AwsError {
    pub action: &'static str,
    pub kind: ErrorKind,
    /// The AWS error code, or a short description of a non-service failure.
    pub code: String,
    pub message: String,
}

impl AwsError {
    pub fn new(
        action: &'static str,
        kind: ErrorKind,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        AwsError {
            action,
            kind,
            code: code.into(),
            message: message.into(),
        }
    }

    /// An error EC2 answered with `code` and HTTP `status` (either may be missing: no answer
    /// at all), classified by [`classify`]; `unanswered` names it when there is no code.
    /// The one way [`crate::SdkEc2`] and the fake build their errors, so both classify a code
    /// alike.
    pub fn answered(
        action: &'static str,
        code: Option<&str>,
        status: Option<u16>,
        unanswered: &str,
        message: impl Into<String>,
    ) -> Self {
        AwsError::new(
            action,
            classify(code, status),
            code.unwrap_or(unanswered),
            message,
        )
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }

    /// A suggested requeue delay before jitter: throttling waits longer than a blip.
    pub fn backoff_hint(&self) -> Duration {
        match self.kind {
            ErrorKind::Throttled => Duration::from_secs(5),
            ErrorKind::Transient => Duration::from_secs(2),
            _ => Duration::from_secs(60),
        }
    }
}

/// Classifies an EC2 error by its code and, failing that, by its HTTP status.
pub fn classify(code: Option<&str>, http_status: Option<u16>) -> ErrorKind {
    match code {
        Some(
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "SlowDown"
            | "TooManyRequestsException",
        ) => ErrorKind::Throttled,
        Some(
            "InternalError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "Unavailable"
            | "InsufficientVolumeCapacity"
            | "IncorrectState"
            | "VolumeInUse",
        ) => ErrorKind::Transient,
        Some(c) if c.ends_with(".NotFound") || c.ends_with(".Malformed") && c.contains("ID") => {
            ErrorKind::NotFound
        }
        // DescribeInstanceTypes' answer for a type the region does not know (moto says
        // InvalidInstanceType.NotFound, EC2 this): the type has no published limits.
        Some("InvalidInstanceType") => ErrorKind::NotFound,
        Some(c)
            if c.starts_with("InvalidParameter")
                || c == "IdempotentParameterMismatch"
                || c == "VolumeLimitExceeded"
                || c == "SnapshotLimitExceeded"
                || c == "AttachmentLimitExceeded"
                || c == "InvalidZone.NotFound"
                || c == "MissingParameter" =>
        {
            ErrorKind::Invalid
        }
        Some("UnauthorizedOperation" | "AuthFailure" | "Blocked") => ErrorKind::Permanent,
        _ => match http_status {
            Some(s) if s >= 500 || s == 429 => ErrorKind::Transient,
            None => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_instance_type_is_not_found_as_ec2_and_moto_say_it() {
        assert_eq!(
            classify(Some("InvalidInstanceType"), Some(400)),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(Some("InvalidInstanceType.NotFound"), Some(400)),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn throttling_is_throttled() {
        assert_eq!(
            classify(Some("RequestLimitExceeded"), Some(503)),
            ErrorKind::Throttled
        );
    }

    #[test]
    fn not_found_codes() {
        assert_eq!(
            classify(Some("InvalidVolume.NotFound"), Some(400)),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(Some("InvalidSnapshot.NotFound"), Some(400)),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(Some("InvalidInstanceID.NotFound"), Some(400)),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn idempotency_mismatch_is_invalid_not_retryable() {
        let k = classify(Some("IdempotentParameterMismatch"), Some(400));
        assert_eq!(k, ErrorKind::Invalid);
        assert!(!AwsError::new("CreateVolume", k, "x", "y").is_retryable());
    }

    #[test]
    fn server_errors_are_transient_and_client_errors_permanent() {
        assert_eq!(
            classify(Some("InternalError"), Some(500)),
            ErrorKind::Transient
        );
        assert_eq!(classify(None, Some(502)), ErrorKind::Transient);
        assert_eq!(classify(None, None), ErrorKind::Transient);
        assert_eq!(
            classify(Some("UnauthorizedOperation"), Some(403)),
            ErrorKind::Permanent
        );
        assert_eq!(
            classify(Some("SomethingNew"), Some(400)),
            ErrorKind::Permanent
        );
    }
}
