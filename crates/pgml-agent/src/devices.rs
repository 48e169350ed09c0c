//! Finding a volume's device by its EBS volume ID, as Nitro instances expose it: the by-id
//! link, then (for a real NVMe device) the controller's serial number. Never by name order.

use std::path::{Path, PathBuf};

use pgml_zfs::Command;

/// The by-id link Nitro gives an EBS volume: `vol-0abc` → `nvme-Amazon_Elastic_Block_Store_vol0abc`.
pub fn link_path(dev_dir: &Path, volume_id: &str) -> PathBuf {
    dev_dir.join(format!(
        "nvme-Amazon_Elastic_Block_Store_vol{}",
        volume_id.strip_prefix("vol-").unwrap_or(volume_id)
    ))
}

/// What the serial check concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serial {
    /// `/sys/block/<nvmeXnY>/device/serial` names this volume.
    Confirmed,
    /// The link does not point at an NVMe block device (the sandbox's image files), or the
    /// check is turned off: the link alone decides.
    NotChecked,
}

/// Where the serial numbers are; a field so tests and odd hosts can point elsewhere.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub dev_dir: PathBuf,
    /// Where NVMe block devices live (`/dev`): a link resolving elsewhere is not checked.
    pub dev_root: PathBuf,
    pub sys_block: PathBuf,
    pub check_serial: bool,
}

/// A volume's device, when present and not contradicted by its serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Missing,
    Found {
        path: PathBuf,
        serial: Serial,
    },
    /// The link points at another volume's device (a stale link: aws-ebs-csi-driver
    /// #1224): not this volume's device.
    Stale {
        path: PathBuf,
        serial: String,
    },
}

impl Discovery {
    pub fn find(&self, volume_id: &str) -> Lookup {
        let link = link_path(&self.dev_dir, volume_id);
        // A dangling link (its volume detached or its image removed) is no device.
        let Ok(target) = std::fs::canonicalize(&link) else {
            return Lookup::Missing;
        };
        match self.serial_of(&target) {
            None => Lookup::Found {
                path: link,
                serial: Serial::NotChecked,
            },
            Some(s) if s == volume_id.replace('-', "") => Lookup::Found {
                path: link,
                serial: Serial::Confirmed,
            },
            Some(s) => Lookup::Stale {
                path: link,
                serial: s,
            },
        }
    }

    /// The NVMe serial of `/dev/nvmeXnY`, when the target is one and the check is on.
    fn serial_of(&self, target: &Path) -> Option<String> {
        if !self.check_serial || target.parent() != Some(self.dev_root.as_path()) {
            return None;
        }
        let name = target.file_name()?.to_str()?;
        if !name.starts_with("nvme") {
            return None;
        }
        let s = std::fs::read_to_string(self.sys_block.join(name).join("device/serial")).ok()?;
        Some(s.trim().to_string())
    }
}

/// `blkid -p -o export <device>`: low-level probing (no cache), which also reads image files
/// behind a symlink. Exit 2 means no signature.
pub fn blkid_probe(device: &str) -> Command {
    Command::new("blkid", ["-p", "-o", "export", device])
}

/// The `TYPE=` of a `blkid -p -o export` answer (`zfs_member`, `ext4`, …).
pub fn parse_blkid_type(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("TYPE="))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names() {
        assert_eq!(
            link_path(Path::new("/dev/disk/by-id"), "vol-0abc12"),
            PathBuf::from("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc12")
        );
    }

    #[test]
    fn missing_and_image_file_targets() {
        let dir = std::env::temp_dir().join(format!("pgml-agent-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("img");
        std::fs::write(&img, b"").unwrap();
        let d = Discovery {
            dev_dir: dir.clone(),
            dev_root: PathBuf::from("/dev"),
            sys_block: dir.join("sys"),
            check_serial: true,
        };
        assert_eq!(d.find("vol-01"), Lookup::Missing);
        std::os::unix::fs::symlink(&img, link_path(&dir, "vol-01")).unwrap();
        assert!(matches!(
            d.find("vol-01"),
            Lookup::Found {
                serial: Serial::NotChecked,
                ..
            }
        ));
        // Dangling: the image went away.
        std::os::unix::fs::symlink(dir.join("gone"), link_path(&dir, "vol-02")).unwrap();
        assert_eq!(d.find("vol-02"), Lookup::Missing);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nvme_serial_confirms_or_contradicts_the_link() {
        let dir = std::env::temp_dir().join(format!("pgml-agent-nvme-{}", std::process::id()));
        let (dev, sys, byid) = (dir.join("dev"), dir.join("sys"), dir.join("by-id"));
        for d in [&dev, &sys.join("nvme1n1/device"), &byid] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(dev.join("nvme1n1"), b"").unwrap();
        // The kernel pads the serial with spaces.
        std::fs::write(sys.join("nvme1n1/device/serial"), "vol0abc   \n").unwrap();
        std::os::unix::fs::symlink(dev.join("nvme1n1"), link_path(&byid, "vol-0abc")).unwrap();
        std::os::unix::fs::symlink(dev.join("nvme1n1"), link_path(&byid, "vol-0def")).unwrap();
        let mut d = Discovery {
            dev_dir: byid.clone(),
            dev_root: std::fs::canonicalize(&dev).unwrap(),
            sys_block: sys.clone(),
            check_serial: true,
        };
        assert!(matches!(
            d.find("vol-0abc"),
            Lookup::Found {
                serial: Serial::Confirmed,
                ..
            }
        ));
        // A stale link: it points at another volume's device.
        match d.find("vol-0def") {
            Lookup::Stale { serial, .. } => assert_eq!(serial, "vol0abc"),
            other => panic!("{other:?}"),
        }
        d.check_serial = false;
        assert!(matches!(
            d.find("vol-0def"),
            Lookup::Found {
                serial: Serial::NotChecked,
                ..
            }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blkid_types() {
        let out = "DEVNAME=/x\nUUID=1\nVERSION=1.0\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(parse_blkid_type(out).as_deref(), Some("ext4"));
        assert_eq!(parse_blkid_type(""), None);
    }
}
