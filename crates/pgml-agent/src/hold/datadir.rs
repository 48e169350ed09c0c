//! The PostgreSQL data directory on a source and its `standby.signal`.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::record::sync_dir;

pub const STANDBY_SIGNAL: &str = "standby.signal";

/// A data directory holds `PG_VERSION` and `global/pg_control`.
pub fn is_data_dir(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file() && dir.join("global").join("pg_control").is_file()
}

/// Subfolders of `dir` in name order; symbolic links are not followed (a link could lead
/// out of the source, onto another file system).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// The data directory at `root` or one or two levels below it (`<mount>/pgdata`,
/// `<mount>/15/main`), the shallowest first, then by name.
pub fn find_data_dir(root: &Path) -> Option<PathBuf> {
    if is_data_dir(root) {
        return Some(root.to_path_buf());
    }
    let children = subdirs(root);
    if let Some(d) = children.iter().find(|d| is_data_dir(d)) {
        return Some(d.clone());
    }
    children
        .iter()
        .flat_map(|c| subdirs(c))
        .find(|d| is_data_dir(d))
}

/// Creates `<dir>/standby.signal` (empty, mode 0600, owned like `PG_VERSION` so Postgres can
/// remove it when it promotes), then fsyncs the file and the folder. Already there (our own
/// earlier attempt) is fine.
pub fn create_signal(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(STANDBY_SIGNAL);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => {
            if let Ok(m) = std::fs::metadata(dir.join("PG_VERSION")) {
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            }
            f.sync_all()?;
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    sync_dir(dir)?;
    Ok(path)
}

/// Removes a standby.signal we created, then fsyncs its folder; already gone is fine.
pub fn remove_signal(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => sync_dir(dir),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pgdata(dir: &Path) {
        std::fs::create_dir_all(dir.join("global")).unwrap();
        std::fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(dir.join("global/pg_control"), b"x").unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgml-datadir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_the_data_dir_at_the_mount_or_two_levels_below() {
        let root = tmp("find");
        assert_eq!(find_data_dir(&root), None);
        // Only PG_VERSION: not a data directory.
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/PG_VERSION"), "15").unwrap();
        assert_eq!(find_data_dir(&root), None);
        // Two levels below (Debian's 15/main).
        pgdata(&root.join("15/main"));
        assert_eq!(find_data_dir(&root), Some(root.join("15/main")));
        // One level below wins over two.
        pgdata(&root.join("z"));
        assert_eq!(find_data_dir(&root), Some(root.join("z")));
        // Three levels is too deep.
        let deep = tmp("deep");
        pgdata(&deep.join("a/b/c"));
        assert_eq!(find_data_dir(&deep), None);
        // The mount itself.
        pgdata(&deep);
        assert_eq!(find_data_dir(&deep), Some(deep.clone()));
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&deep).unwrap();
    }

    #[test]
    fn symlinked_folders_are_not_followed() {
        let root = tmp("link");
        let elsewhere = tmp("elsewhere");
        pgdata(&elsewhere.join("main"));
        std::os::unix::fs::symlink(&elsewhere, root.join("out")).unwrap();
        assert_eq!(find_data_dir(&root), None);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn signal_created_0600_idempotent_and_removed() {
        let d = tmp("signal");
        pgdata(&d);
        let p = create_signal(&d).unwrap();
        assert_eq!(p, d.join(STANDBY_SIGNAL));
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(m.len(), 0);
        let owner = std::fs::metadata(d.join("PG_VERSION")).unwrap();
        assert_eq!((m.uid(), m.gid()), (owner.uid(), owner.gid()));
        create_signal(&d).unwrap();
        remove_signal(&p).unwrap();
        assert!(!p.exists());
        remove_signal(&p).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
