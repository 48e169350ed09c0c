//! `/proc/<pid>/mountinfo` (proc(5)), read by the node agent (which device is mounted
//! where) and the instance manager (which file system PGDATA is on).

/// A device number, as mountinfo prints it (`259:1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn parse(s: &str) -> Option<DevNum> {
        let (a, b) = s.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }

    /// From `st_rdev` (Linux's encoding, as glibc's `major()`/`minor()` decode it).
    pub fn from_rdev(dev: u64) -> DevNum {
        DevNum {
            major: (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32,
        }
    }
}

/// One line of `/proc/<pid>/mountinfo` (proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount IDs grow in mount order.
    pub id: u64,
    pub dev: DevNum,
    /// The folder of the file system mounted here (`/` unless a bind mount of a subfolder).
    pub root: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    /// The file system's own options (`rw,cpu,cpuacct` for a cgroup v1 hierarchy).
    pub super_options: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 5 || r.len() < 3 {
                return None;
            }
            Some(MountEntry {
                id: f[0].parse().ok()?,
                dev: DevNum::parse(f[2])?,
                root: unescape(f[3]),
                mount_point: unescape(f[4]),
                fstype: r[0].to_string(),
                source: unescape(r[1]),
                super_options: unescape(r[2]),
            })
        })
        .collect()
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
    fn mountinfo_lines_parse_with_escapes() {
        let e = parse_mountinfo(MOUNTINFO);
        assert_eq!(e.len(), 7);
        assert_eq!(
            e[0].dev,
            DevNum {
                major: 259,
                minor: 1
            }
        );
        assert_eq!(e[0].fstype, "ext4");
        let l = e.iter().find(|e| e.source == "/dev/loop3").unwrap();
        assert_eq!(l.mount_point, "/tmp/node a/kubelet/pv1/globalmount");
        assert_eq!(parse_mountinfo("garbage\n\n1 2 3"), vec![]);
    }

    #[test]
    fn device_numbers() {
        assert_eq!(DevNum::parse("7:3\n"), Some(DevNum { major: 7, minor: 3 }));
        assert_eq!(DevNum::parse("7"), None);
        // makedev(259, 4) and a large minor.
        assert_eq!(
            DevNum::from_rdev((259 << 8) | 4),
            DevNum {
                major: 259,
                minor: 4
            }
        );
        let big = ((1000u64 & 0xfff) << 8) | ((300u64 & 0xff) | ((300u64 & !0xff) << 12));
        assert_eq!(
            DevNum::from_rdev(big),
            DevNum {
                major: 1000,
                minor: 300
            }
        );
    }
}
