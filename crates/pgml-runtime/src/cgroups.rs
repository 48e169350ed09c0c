//! Joining another process's cgroups: the `cgroup.procs` files that put a process where
//! `/proc/<pid>/cgroup` says `<pid>` is, found through `<pid>`'s own mount table.
//!
//! The node agent's freeze guard uses it to leave its container's cgroups for the node's
//! (PID 1's): a container runtime that kills a container kills every process in the
//! container's cgroup (runc does so when the container shares the host's PID namespace), and
//! a file system frozen by a guard killed that way would stay frozen.

use std::path::{Path, PathBuf};

use crate::mountinfo::MountEntry;

/// One line of `/proc/<pid>/cgroup` (cgroups(7)): `hierarchy-ID:controller-list:cgroup-path`.
/// Hierarchy 0 with no controllers is the unified (v2) hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub hierarchy: u32,
    pub controllers: Vec<String>,
    pub path: String,
}

impl Membership {
    fn unified(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }

    /// Whether `m` mounts this membership's hierarchy: cgroup2 for the unified one; for a
    /// v1 hierarchy, a `cgroup` mount whose super options name every controller of the line
    /// (`name=systemd` included, as mountinfo prints it).
    fn mounted_by(&self, m: &MountEntry) -> bool {
        if self.unified() {
            return m.fstype == "cgroup2";
        }
        m.fstype == "cgroup" && {
            let opts: Vec<&str> = m.super_options.split(',').collect();
            self.controllers.iter().all(|c| opts.contains(&c.as_str()))
        }
    }
}

/// Parses `/proc/<pid>/cgroup`. A line that is not `ID:controllers:/path` is an error, not
/// skipped: a guard that stayed in one of its container's cgroups could be killed with it.
pub fn parse_cgroup(text: &str) -> Result<Vec<Membership>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("not a cgroup line: {line:?}"));
        };
        let hierarchy = id
            .parse()
            .map_err(|_| format!("not a hierarchy ID in {line:?}"))?;
        if !path.starts_with('/') {
            return Err(format!("not a cgroup path in {line:?}"));
        }
        out.push(Membership {
            hierarchy,
            controllers: ctl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect(),
            path: path.to_string(),
        });
    }
    if out.is_empty() {
        return Err("no cgroup lines".into());
    }
    Ok(out)
}

/// The `cgroup.procs` file of every membership in `target`, under a mount of its hierarchy
/// in `mounts` (the mount table of the namespace that `via` reaches: `/proc/<pid>/root`).
/// A hierarchy with no mount that holds the cgroup is an error.
pub fn procs_files(
    target: &[Membership],
    mounts: &[MountEntry],
    via: &Path,
) -> Result<Vec<PathBuf>, String> {
    target
        .iter()
        .map(|t| {
            mounts
                .iter()
                .filter(|m| t.mounted_by(m))
                .find_map(|m| {
                    let rel = below(&t.path, &m.root)?;
                    let dir = via
                        .join(m.mount_point.trim_start_matches('/'))
                        .join(rel.trim_start_matches('/'));
                    Some(dir.join("cgroup.procs"))
                })
                .ok_or_else(|| {
                    format!(
                        "no mount of cgroup hierarchy {} ({}) holds {}",
                        t.hierarchy,
                        if t.unified() {
                            "unified".to_string()
                        } else {
                            t.controllers.join(",")
                        },
                        t.path
                    )
                })
        })
        .collect()
}

/// `path` relative to a mount's `root`, when the mount shows it.
fn below<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(root.trim_end_matches('/'))?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Whether two memberships agree on every hierarchy `want` names (the check after a move:
/// `/proc/self/cgroup` against the target's).
pub fn same_cgroups(have: &[Membership], want: &[Membership]) -> bool {
    want.iter().all(|w| {
        have.iter().any(|h| {
            h.hierarchy == w.hierarchy && h.controllers == w.controllers && h.path == w.path
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse_mountinfo;

    /// A cgroup v1 host with the unified hierarchy beside (systemd's "hybrid" layout), as
    /// this test bed's machine has it, seen from a node's PID 1.
    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_PID1: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/dd20
3:cpuset:/
1:cpu,cpuacct:/
0::/
";

    #[test]
    fn a_hybrid_hosts_hierarchies_each_get_their_file() {
        let t = parse_cgroup(HYBRID_PID1).unwrap();
        let files = procs_files(
            &t,
            &parse_mountinfo(HYBRID_MOUNTS),
            Path::new("/proc/1/root"),
        )
        .unwrap();
        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            files,
            [
                "/proc/1/root/sys/fs/cgroup/systemd/cgroup.procs",
                "/proc/1/root/sys/fs/cgroup/pids/cgroup.procs",
                "/proc/1/root/sys/fs/cgroup/memory/process_api/dd20/cgroup.procs",
                "/proc/1/root/sys/fs/cgroup/cpuset/cgroup.procs",
                "/proc/1/root/sys/fs/cgroup/cpu,cpuacct/cgroup.procs",
                "/proc/1/root/sys/fs/cgroup/unified/cgroup.procs",
            ]
        );
    }

    /// cgroup v2 only (Amazon Linux 2023, Bottlerocket): one line, one mount.
    #[test]
    fn a_v2_host_has_one_file() {
        let mounts = parse_mountinfo(
            "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,seclabel,nsdelegate,memory_recursiveprot\n",
        );
        let t = parse_cgroup("0::/init.scope\n").unwrap();
        assert_eq!(
            procs_files(&t, &mounts, Path::new("/proc/1/root")).unwrap(),
            [PathBuf::from(
                "/proc/1/root/sys/fs/cgroup/init.scope/cgroup.procs"
            )]
        );
    }

    /// A mount of a subtree (a container's view) serves only cgroups inside it.
    #[test]
    fn a_subtree_mount_serves_only_what_is_below_it() {
        let mounts = parse_mountinfo(
            "50 40 0:32 /kubepods/pod1/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        );
        let inside = parse_cgroup("4:memory:/kubepods/pod1/abc/x\n").unwrap();
        assert_eq!(
            procs_files(&inside, &mounts, Path::new("/")).unwrap(),
            [PathBuf::from("/sys/fs/cgroup/memory/x/cgroup.procs")]
        );
        let outside = parse_cgroup("4:memory:/system.slice\n").unwrap();
        let e = procs_files(&outside, &mounts, Path::new("/")).unwrap_err();
        assert!(e.contains("hierarchy 4 (memory)"), "{e}");
        // /kubepods/pod1/abcd is not below /kubepods/pod1/abc.
        let sibling = parse_cgroup("4:memory:/kubepods/pod1/abcd\n").unwrap();
        assert!(procs_files(&sibling, &mounts, Path::new("/")).is_err());
    }

    #[test]
    fn an_unmounted_hierarchy_is_an_error_not_skipped() {
        let t = parse_cgroup("12:freezer:/\n0::/\n").unwrap();
        let e = procs_files(&t, &parse_mountinfo(HYBRID_MOUNTS), Path::new("/")).unwrap_err();
        assert!(e.contains("freezer"), "{e}");
    }

    #[test]
    fn lines_that_are_not_cgroup_lines_are_errors() {
        assert!(parse_cgroup("").is_err());
        assert!(parse_cgroup("0::/\ngarbage\n").is_err());
        assert!(parse_cgroup("x:memory:/\n").is_err());
        assert!(parse_cgroup("4:memory:relative\n").is_err());
        // A path may itself hold a colon.
        assert_eq!(parse_cgroup("0::/a:b\n").unwrap()[0].path, "/a:b");
    }

    #[test]
    fn the_check_after_a_move_compares_every_wanted_hierarchy() {
        let want = parse_cgroup(HYBRID_PID1).unwrap();
        assert!(same_cgroups(&want, &want));
        let mut have = want.clone();
        have[2].path = "/kubepods/podx/c1".into();
        assert!(!same_cgroups(&have, &want));
    }
}
