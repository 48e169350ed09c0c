//! The controller's errors, each classified so the error policy knows whether to back off,
//! retry soon, wait for a spec change, or just look again later.

use std::time::Duration;

use pgml_aws::{AwsError, ErrorKind};

/// What to do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// EC2 throttled us: back off this object, exponentially, with jitter.
    Throttled,
    /// A blip (5xx, timeout, conflict): retry soon.
    Transient,
    /// The request cannot succeed as the spec stands: wait for a change.
    InvalidSpec,
    /// Anything else (permissions, a bug): retry slowly.
    Permanent,
    /// Not a failure: deletion waits for something (the agent, a detach) and looks again.
    Waiting,
}

impl Class {
    /// The Warning Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Throttled => "Throttled",
            Class::Transient => "Transient",
            Class::InvalidSpec => "InvalidSpec",
            Class::Permanent => "Permanent",
            Class::Waiting => "Waiting",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Aws(#[from] AwsError),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("finalizer {0}")]
    Finalizer(String),

    #[error("the object has no {0}")]
    Incomplete(&'static str),

    /// Anything else that cannot go on (no randomness from the OS, a body that does not
    /// build).
    #[error("{0}")]
    Other(String),

    /// Deletion is waiting (for the agent's release, a detach): not a failure.
    #[error("{what}")]
    Waiting { what: String, retry: Duration },
}

impl Error {
    pub fn class(&self) -> Class {
        match self {
            Error::Aws(e) => match e.kind {
                ErrorKind::Throttled => Class::Throttled,
                ErrorKind::Transient | ErrorKind::NotFound => Class::Transient,
                ErrorKind::Invalid => Class::InvalidSpec,
                ErrorKind::Permanent => Class::Permanent,
            },
            Error::Kube(kube::Error::Api(s)) if s.code == 409 || s.code >= 500 || s.code == 429 => {
                Class::Transient
            }
            Error::Kube(_) => Class::Transient,
            Error::Finalizer(_) => Class::Transient,
            Error::Incomplete(_) | Error::Other(_) => Class::Permanent,
            Error::Waiting { .. } => Class::Waiting,
        }
    }

    pub fn waiting(what: impl Into<String>, retry: Duration) -> Error {
        Error::Waiting {
            what: what.into(),
            retry,
        }
    }

    /// Unwraps kube's finalizer wrapper so the class of the inner error survives.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Error {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Kube(e),
            other => Error::Finalizer(other.to_string()),
        }
    }
}

/// The delay before the next attempt after `attempt` consecutive failures, before jitter.
pub fn backoff(class: Class, attempt: u32) -> Duration {
    let (base, cap) = match class {
        Class::Throttled => (5, 300),
        Class::Transient => (2, 60),
        Class::InvalidSpec | Class::Permanent => (60, 600),
        Class::Waiting => (5, 5),
    };
    Duration::from_secs((base << attempt.min(8)).min(cap))
}

/// ±25% jitter, from a value in [0, 1).
pub fn jitter(d: Duration, unit: f64) -> Duration {
    d.mul_f64(0.75 + unit * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_kinds_map_to_classes() {
        let e = |k| Error::Aws(AwsError::new("CreateVolume", k, "c", "m")).class();
        assert_eq!(e(ErrorKind::Throttled), Class::Throttled);
        assert_eq!(e(ErrorKind::Transient), Class::Transient);
        assert_eq!(e(ErrorKind::Invalid), Class::InvalidSpec);
        assert_eq!(e(ErrorKind::Permanent), Class::Permanent);
    }

    #[test]
    fn throttling_backs_off_exponentially_to_a_cap() {
        assert_eq!(backoff(Class::Throttled, 0), Duration::from_secs(5));
        assert_eq!(backoff(Class::Throttled, 2), Duration::from_secs(20));
        assert_eq!(backoff(Class::Throttled, 30), Duration::from_secs(300));
        assert_eq!(backoff(Class::Transient, 1), Duration::from_secs(4));
        let j = jitter(Duration::from_secs(100), 0.0);
        assert_eq!(j, Duration::from_secs(75));
        assert!(jitter(Duration::from_secs(100), 0.999) < Duration::from_secs(125));
    }
}
