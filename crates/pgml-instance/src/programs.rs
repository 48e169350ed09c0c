//! The programs the instance manager runs, checked once at start so that an image that
//! lacks one says which at once (the container's log, a restart loop), not when a failover
//! or a restore first needs it.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// PostgreSQL's programs, in its bin folder (`PGML_PG_BIN`).
pub const POSTGRES: [&str; 5] = [
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_basebackup",
    "pg_controldata",
];

/// An executable file at `path`.
fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` found on `path` (a `PATH` value).
fn on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// The programs missing: PostgreSQL's in `bin`; `runuser` when this process is root (it
/// runs them as `postgres`); `pgbackrest` when the cluster uses a repository.
pub fn missing(bin: &Path, path: &OsStr, root: bool, pgbackrest: bool) -> Vec<String> {
    let mut out: Vec<String> = POSTGRES
        .iter()
        .map(|p| bin.join(p))
        .filter(|p| !executable(p))
        .map(|p| p.display().to_string())
        .collect();
    for (name, needed) in [("runuser", root), ("pgbackrest", pgbackrest)] {
        if needed && on_path(name, path).is_none() {
            out.push(format!("{name} (on PATH)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(dir: &Path, name: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn says_which_program_is_missing_and_only_those_needed() {
        let root = std::env::temp_dir().join(format!("pgml-programs-{}", std::process::id()));
        let (bin, tools) = (root.join("bin"), root.join("tools"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&tools).unwrap();
        for p in ["initdb", "pg_ctl", "postgres", "pg_basebackup"] {
            exe(&bin, p, 0o755);
        }
        // Present but not executable counts as missing.
        exe(&bin, "pg_controldata", 0o644);
        exe(&tools, "runuser", 0o755);
        let path = std::env::join_paths([&tools]).unwrap();
        let m = missing(&bin, &path, true, true);
        assert_eq!(
            m,
            [
                bin.join("pg_controldata").display().to_string(),
                "pgbackrest (on PATH)".to_string()
            ]
        );
        exe(&bin, "pg_controldata", 0o755);
        assert!(missing(&bin, &path, true, false).is_empty());
        // Not root: runuser is not needed.
        let empty = std::env::join_paths([&root]).unwrap();
        assert!(missing(&bin, &empty, false, false).is_empty());
        assert_eq!(missing(&bin, &empty, true, false), ["runuser (on PATH)"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
