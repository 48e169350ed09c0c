//! Which ZFS the node runs, told from `zfs version`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::{Result, ZfsError};

/// The two ZFS command-line dialects the agent speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dialect {
    /// OpenZFS 2.x (Ubuntu nodes): `-p` parsable output, `status -P`, `import -N`, lz4/zstd,
    /// `labelclear`, feature flags.
    OpenZfs,
    /// zfs-fuse (pool version 23, the test bed): no `-p` on `zpool list`/`zpool get`, no
    /// `status -P` (paths are printed in full anyway), no `import -N`, compression only
    /// `on|off|lzjb|gzip[-N]|zle`, `xattr` only `on|off`, no `labelclear`.
    ZfsFuse,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::OpenZfs => "OpenZFS",
            Dialect::ZfsFuse => "zfs-fuse",
        })
    }
}

/// The dialect found on a node, with the userland version when the tool reports one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detected {
    pub dialect: Dialect,
    /// `2.2.2-0ubuntu9.1` for `zfs-2.2.2-0ubuntu9.1`; `None` on zfs-fuse.
    pub version: Option<String>,
    /// The kernel module's version, when it differs from userland's it is worth a warning.
    pub kmod_version: Option<String>,
}

/// The probe: `zfs version`. Run it, then hand its output to [`detect`].
pub fn version_probe() -> Command {
    Command::new("zfs", ["version"])
}

/// Tells the dialect from the exit code and output of [`version_probe`].
///
/// OpenZFS prints `zfs-<version>` and `zfs-kmod-<version>` and exits 0; zfs-fuse has no
/// `version` subcommand and says `unrecognized command 'version'`. Anything else (the command
/// missing, a crash) is an error rather than a guess.
pub fn detect(exit_code: Option<i32>, stdout: &str, stderr: &str) -> Result<Detected> {
    if exit_code == Some(0) {
        let mut version = None;
        let mut kmod_version = None;
        for line in stdout.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("zfs-kmod-") {
                kmod_version = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("zfs-") {
                version = Some(v.to_string());
            }
        }
        return match version {
            Some(v) if v.starts_with(|c: char| c.is_ascii_digit()) => Ok(Detected {
                dialect: Dialect::OpenZfs,
                version: Some(v),
                kmod_version,
            }),
            _ => Err(ZfsError::UnknownDialect(format!(
                "`zfs version` succeeded but printed no zfs-<version> line: {:?}",
                first_line(stdout)
            ))),
        };
    }
    let said = format!("{stderr}\n{stdout}");
    if said.contains("unrecognized command 'version'") {
        return Ok(Detected {
            dialect: Dialect::ZfsFuse,
            version: None,
            kmod_version: None,
        });
    }
    Err(ZfsError::UnknownDialect(format!(
        "`zfs version` exited {exit_code:?}: {:?}",
        first_line(&said)
    )))
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openzfs() {
        let d = detect(
            Some(0),
            "zfs-2.2.2-0ubuntu9.1\nzfs-kmod-2.2.2-0ubuntu9\n",
            "",
        )
        .unwrap();
        assert_eq!(d.dialect, Dialect::OpenZfs);
        assert_eq!(d.version.as_deref(), Some("2.2.2-0ubuntu9.1"));
        assert_eq!(d.kmod_version.as_deref(), Some("2.2.2-0ubuntu9"));
    }

    #[test]
    fn zfs_fuse_recorded() {
        let err = include_str!("../tests/fixtures/zfs-fuse/zfs-version.err");
        let d = detect(Some(2), "", err).unwrap();
        assert_eq!(d.dialect, Dialect::ZfsFuse);
        assert_eq!(d.version, None);
    }

    #[test]
    fn neither() {
        assert!(detect(None, "", "").is_err());
        assert!(
            detect(
                Some(127),
                "",
                "nsenter: failed to execute zfs: No such file or directory"
            )
            .is_err()
        );
        assert!(detect(Some(0), "something else\n", "").is_err());
    }
}
