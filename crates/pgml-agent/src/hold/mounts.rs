//! Where an EBS volume is mounted on the node: its by-id link → the block device (a real
//! node) or the loop device backed by the link's image file (the test bed) → its device
//! number → the mount in `/proc/self/mountinfo`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub use pgml_runtime::mountinfo::{DevNum, MountEntry, parse_mountinfo};

/// The mount of device `dev` to use: one of the whole file system (root `/`) before bind
/// mounts of a subfolder, then the first mounted (kubelet's globalmount, made at staging,
/// before the pods' bind mounts of it).
pub fn mount_of(entries: &[MountEntry], dev: DevNum) -> Option<&MountEntry> {
    entries
        .iter()
        .filter(|e| e.dev == dev)
        .min_by_key(|e| (e.root != "/", e.id))
}

/// The loop device (`loopN`, its device number) whose backing file is `file`.
pub fn loop_backed_by(sys_block: &Path, file: &Path) -> Option<(String, DevNum)> {
    let want = std::fs::canonicalize(file).ok()?;
    let rd = std::fs::read_dir(sys_block).ok()?;
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let dir = sys_block.join(&n);
        let backing = std::fs::read_to_string(dir.join("loop/backing_file")).ok()?;
        let backing = backing.trim_end_matches('\n');
        // A deleted image is never the volume's current one.
        if backing.ends_with(" (deleted)") {
            return None;
        }
        if std::fs::canonicalize(backing).ok()? != want {
            return None;
        }
        let dev = DevNum::parse(&std::fs::read_to_string(dir.join("dev")).ok()?)?;
        Some((n, dev))
    })
}

/// What the volume's by-id link leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// A block device (a real node's NVMe namespace).
    Block { path: PathBuf, dev: DevNum },
    /// An image file attached to a loop device (the test bed).
    Loop {
        image: PathBuf,
        loop_name: String,
        dev: DevNum,
    },
}

impl Device {
    pub fn dev(&self) -> DevNum {
        match self {
            Device::Block { dev, .. } | Device::Loop { dev, .. } => *dev,
        }
    }
}

/// Resolves a by-id link to the device whose file system is mounted.
pub fn resolve_link(link: &Path, sys_block: &Path) -> Result<Device, String> {
    let target = std::fs::canonicalize(link)
        .map_err(|e| format!("{}: {e} (volume not attached?)", link.display()))?;
    let meta = std::fs::metadata(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    if meta.file_type().is_block_device() {
        return Ok(Device::Block {
            dev: DevNum::from_rdev(meta.rdev()),
            path: target,
        });
    }
    if meta.is_file() {
        return match loop_backed_by(sys_block, &target) {
            Some((loop_name, dev)) => Ok(Device::Loop {
                image: target,
                loop_name,
                dev,
            }),
            None => Err(format!(
                "{} is an image file no loop device is attached to",
                target.display()
            )),
        };
    }
    Err(format!(
        "{} → {} is neither a block device nor an image file",
        link.display(),
        target.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
301 22 259:4 / /var/lib/kubelet/pods/abc/volumes/kubernetes.io~csi/pvc-1/mount rw,relatime shared:200 - ext4 /dev/nvme2n1 rw
300 22 259:4 / /var/lib/kubelet/plugins/kubernetes.io/csi/ebs.csi.aws.com/x/globalmount rw,relatime shared:199 - ext4 /dev/nvme2n1 rw
302 22 259:4 /sub /srv/bind rw - ext4 /dev/nvme2n1 rw
410 22 7:3 / /tmp/node\\040a/kubelet/pv1/globalmount rw,relatime - ext4 /dev/loop3 rw
411 22 0:55 / /tank rw - fuse zfs-fuse rw
";

    #[test]
    fn the_whole_filesystem_mount_is_chosen_over_binds() {
        let e = parse_mountinfo(MOUNTINFO);
        let m = mount_of(
            &e,
            DevNum {
                major: 259,
                minor: 4,
            },
        )
        .unwrap();
        assert_eq!(
            m.mount_point,
            "/var/lib/kubelet/plugins/kubernetes.io/csi/ebs.csi.aws.com/x/globalmount"
        );
        assert!(
            mount_of(
                &e,
                DevNum {
                    major: 259,
                    minor: 9
                }
            )
            .is_none()
        );
        let l = mount_of(&e, DevNum { major: 7, minor: 3 }).unwrap();
        assert_eq!(l.source, "/dev/loop3");
    }

    #[test]
    fn loop_device_found_by_its_backing_file() {
        let d = std::env::temp_dir().join(format!("pgml-mounts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let sys = d.join("sys");
        let img = d.join("store/vol-1.img");
        let other = d.join("store/vol-2.img");
        std::fs::create_dir_all(d.join("store")).unwrap();
        std::fs::write(&img, b"").unwrap();
        std::fs::write(&other, b"").unwrap();
        for (n, file, dev) in [
            ("loop0", format!("{}\n", other.display()), "7:0\n"),
            ("loop1", format!("{} (deleted)\n", img.display()), "7:1\n"),
            ("loop2", format!("{}\n", img.display()), "7:2\n"),
        ] {
            std::fs::create_dir_all(sys.join(n).join("loop")).unwrap();
            std::fs::write(sys.join(n).join("loop/backing_file"), file).unwrap();
            std::fs::write(sys.join(n).join("dev"), dev).unwrap();
        }
        // A loop device with nothing attached has no loop/backing_file.
        std::fs::create_dir_all(sys.join("loop7")).unwrap();
        std::fs::create_dir_all(sys.join("nvme0n1")).unwrap();
        // The by-id link points at the image.
        let link = d.join("nvme-Amazon_Elastic_Block_Store_vol1");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        assert_eq!(
            resolve_link(&link, &sys).unwrap(),
            Device::Loop {
                image: img.clone(),
                loop_name: "loop2".into(),
                dev: DevNum { major: 7, minor: 2 }
            }
        );
        std::fs::remove_dir_all(sys.join("loop2")).unwrap();
        assert!(
            resolve_link(&link, &sys)
                .unwrap_err()
                .contains("no loop device")
        );
        let dangling = d.join("nvme-Amazon_Elastic_Block_Store_vol9");
        std::os::unix::fs::symlink(d.join("gone.img"), &dangling).unwrap();
        assert!(resolve_link(&dangling, &sys).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
