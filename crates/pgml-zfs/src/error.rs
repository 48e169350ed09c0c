//! The crate's one error type.

use crate::Dialect;

/// What can go wrong building a ZFS command or reading its output.
///
/// Nothing here is transient: every variant is either a caller bug (an invalid name reached
/// the builder), a request the node's ZFS cannot honour, or output we do not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZfsError {
    /// A name or path failed validation; nothing was built.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },

    /// The request is well-formed but the dialect has no way to do it.
    #[error("{what} is not supported by {dialect}")]
    Unsupported {
        dialect: Dialect,
        what: &'static str,
    },

    /// A layout needs more (or fewer) devices than given.
    #[error("{layout} needs at least {min} devices, got {got}")]
    TooFewDevices {
        layout: &'static str,
        min: usize,
        got: usize,
    },

    /// The same device path was given twice.
    #[error("device {0:?} is listed twice")]
    DuplicateDevice(String),

    /// Command output did not have the expected shape.
    #[error("cannot parse `{command}` output: {reason} (line {line:?})")]
    Parse {
        command: &'static str,
        reason: String,
        line: String,
    },

    /// ZFS said it has no pools (`no pools available`, `no pools available to import`): an
    /// answer the caller may expect, told apart from output that is not understood.
    #[error("`{command}`: no pools available")]
    NoPools { command: &'static str },

    /// `zfs version` output matched neither dialect (ZFS missing, or something new).
    #[error("cannot tell the ZFS dialect: {0}")]
    UnknownDialect(String),
}

impl ZfsError {
    pub(crate) fn parse(command: &'static str, reason: impl Into<String>, line: &str) -> Self {
        ZfsError::Parse {
            command,
            reason: reason.into(),
            line: line.chars().take(200).collect(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ZfsError>;
