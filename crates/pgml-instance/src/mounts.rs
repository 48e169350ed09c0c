//! Whether PGDATA is on the storage it should be on: the ZFS dataset the operator names
//! (`PGML_EXPECT_DATASET`). After a node reboot whose pool was not imported, the local
//! PersistentVolume's path is an empty folder on the root disk, bind-mounted like any other;
//! only the mount table tells the two apart (a bind mount keeps the source and type of
//! what it binds: `zfs` with the dataset's name as source, `fuse.zfs` under zfs-fuse).
//! The WAL directory is checked the same way against the pool's `pgwal` dataset
//! (`PGML_EXPECT_WAL_DATASET`): WAL moved to the root disk would be lost with the node.

use std::path::Path;

pub use pgml_runtime::mountinfo::{MountEntry as Mount, parse_mountinfo};

/// The mount `path` is on: the one with the longest mount point that contains it (the
/// last such line wins: later mounts hide earlier ones at the same point).
pub fn mount_of<'a>(path: &Path, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| Path::new(&m.mount_point).components().count())
}

/// Why `what` (PGDATA, the WAL directory: `path`, absolute, symlinks resolved) is not on
/// ZFS dataset `dataset`; None when it is.
pub fn folder_problem(what: &str, path: &Path, dataset: &str, mounts: &[Mount]) -> Option<String> {
    let Some(m) = mount_of(path, mounts) else {
        return Some(format!(
            "{what} {} is on no mount in the mount table; expected ZFS dataset {dataset}",
            path.display()
        ));
    };
    let zfs = matches!(m.fstype.as_str(), "zfs" | "fuse.zfs" | "fuse.zfs-fuse");
    if zfs && m.source == dataset {
        return None;
    }
    Some(format!(
        "{what} {} is on {} ({} mounted at {}), not on ZFS dataset {dataset}: not starting; is the pool imported and its datasets mounted?",
        path.display(),
        m.source,
        m.fstype,
        m.mount_point
    ))
}

/// [`folder_problem`] of PGDATA for this process: resolved through its nearest existing
/// ancestor (an empty PGDATA may not exist yet), the mount table read now.
pub fn check_dataset(pgdata: &Path, dataset: &str) -> Option<String> {
    check_folder("PGDATA", pgdata, dataset)
}

/// [`check_dataset`] for any folder, named `what`.
pub fn check_folder(what: &str, path: &Path, dataset: &str) -> Option<String> {
    let mut p = path.to_path_buf();
    let resolved = loop {
        if let Ok(r) = p.canonicalize() {
            break r.join(path.strip_prefix(&p).unwrap_or(Path::new("")));
        }
        if !p.pop() {
            break path.to_path_buf();
        }
    };
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => folder_problem(what, &resolved, dataset, &parse_mountinfo(&text)),
        Err(e) => Some(format!("reading /proc/self/mountinfo: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's table: the root filesystem (overlay), the Pod's PVC bind-mounted at
    /// /var/lib/postgresql/data from a ZFS dataset, and a space in a path.
    const POD: &str = "\
1000 900 0:120 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u
1001 1000 0:52 / /var/lib/postgresql/data rw,relatime shared:5 - zfs pgml-db-1/pgdata rw,xattr,noacl
1002 1000 259:1 /var/lib/kubelet/pods/x/volumes/kubernetes.io~empty-dir/controller /controller rw - ext4 /dev/nvme0n1p1 rw
1003 1000 0:53 / /mnt/with\\040space rw - fuse.zfs tank/a\\040b rw
";

    /// After a reboot whose pool was not imported: the PV's folder on the root disk.
    const REBOOTED: &str = "\
1000 900 0:120 / / rw,relatime - overlay overlay rw
1001 1000 259:1 /var/mnt/pgml/pgml-db-1/pgdata /var/lib/postgresql/data rw - xfs /dev/nvme0n1p1 rw
";

    #[test]
    fn the_mount_table_is_read_with_its_escapes() {
        let m = parse_mountinfo(POD);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].fstype, "zfs");
        assert_eq!(m[1].source, "pgml-db-1/pgdata");
        assert_eq!(m[3].mount_point, "/mnt/with space");
        assert_eq!(m[3].source, "tank/a b");
        assert!(parse_mountinfo("garbage\n\n").is_empty());
    }

    #[test]
    fn pgdata_on_its_dataset_passes() {
        let m = parse_mountinfo(POD);
        let pgdata = Path::new("/var/lib/postgresql/data/pgdata");
        assert_eq!(
            folder_problem("PGDATA", pgdata, "pgml-db-1/pgdata", &m),
            None
        );
        // zfs-fuse (the test bed) says fuse.zfs.
        assert_eq!(
            folder_problem("PGDATA", Path::new("/mnt/with space/x"), "tank/a b", &m),
            None
        );
    }

    #[test]
    fn pgdata_on_another_dataset_or_the_root_disk_is_refused() {
        let m = parse_mountinfo(POD);
        let pgdata = Path::new("/var/lib/postgresql/data/pgdata");
        let why = folder_problem("PGDATA", pgdata, "pgml-db-2/pgdata", &m).unwrap();
        assert!(why.contains("pgml-db-1/pgdata"), "{why}");
        let why =
            folder_problem("PGDATA", Path::new("/tmp/pgdata"), "pgml-db-1/pgdata", &m).unwrap();
        assert!(why.contains("overlay"), "{why}");
        let rebooted = parse_mountinfo(REBOOTED);
        let why = folder_problem("PGDATA", pgdata, "pgml-db-1/pgdata", &rebooted).unwrap();
        assert!(why.contains("/dev/nvme0n1p1 (xfs"), "{why}");
        assert!(why.contains("is the pool imported"), "{why}");
        assert!(folder_problem("PGDATA", pgdata, "pgml-db-1/pgdata", &[]).is_some());
    }

    #[test]
    fn the_wal_directory_is_checked_against_its_own_dataset() {
        let m = parse_mountinfo(WAL);
        let wal = Path::new("/var/lib/postgresql/wal/pg_wal");
        assert_eq!(
            folder_problem("the WAL directory", wal, "p/pgwal", &m),
            None
        );
        // Not imported: the claim's folder on the root disk, never a place for WAL.
        let why = folder_problem(
            "the WAL directory",
            wal,
            "p/pgwal",
            &parse_mountinfo(REBOOTED),
        )
        .unwrap();
        assert!(
            why.starts_with("the WAL directory /var/lib/postgresql/wal/pg_wal is on overlay"),
            "{why}"
        );
        // pgdata's dataset is not pgwal's.
        let why = folder_problem("the WAL directory", wal, "p/pgdata", &m).unwrap();
        assert!(why.contains("p/pgwal"), "{why}");
    }

    /// PGDATA and the WAL on their datasets, each bind-mounted into the Pod.
    const WAL: &str = "\
1000 900 0:120 / / rw,relatime - overlay overlay rw
1001 1000 0:52 / /var/lib/postgresql/data rw - zfs p/pgdata rw
1002 1000 0:53 / /var/lib/postgresql/wal rw - zfs p/pgwal rw
";

    #[test]
    fn the_deepest_mount_holds_the_path() {
        let m = parse_mountinfo(POD);
        let on = mount_of(Path::new("/var/lib/postgresql/data/pgdata/base"), &m).unwrap();
        assert_eq!(on.mount_point, "/var/lib/postgresql/data");
        // A sibling whose name merely starts the same is not inside it.
        let on = mount_of(Path::new("/var/lib/postgresql/database"), &m).unwrap();
        assert_eq!(on.mount_point, "/");
    }

    #[test]
    fn this_process_reads_its_own_table() {
        // /proc is procfs here, never a dataset; a path not yet made resolves through its
        // nearest existing folder.
        let why = check_dataset(Path::new("/proc/not/yet/there"), "p/pgdata").unwrap();
        assert!(why.contains("proc"), "{why}");
    }
}
