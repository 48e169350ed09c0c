//! Validated names. Every builder takes these types, so nothing unchecked reaches an argv.
//!
//! The patterns are stricter than ZFS's own: they admit what the operator generates
//! (Kubernetes names, by-id paths, host folders) and refuse anything that could be read as an
//! option (`-f`), a path escape (`..`), or that needs quoting anywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ZfsError};

fn invalid(kind: &'static str, value: &str, reason: &'static str) -> ZfsError {
    ZfsError::InvalidName {
        kind,
        value: value.chars().take(300).collect(),
        reason,
    }
}

fn is_component_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

/// Keywords zpool reads as vdev types or that it reserves as pool names.
// As libzfs checks them (zpool_name_valid): these as prefixes, `log` as a whole name.
const RESERVED_POOL_PREFIXES: &[&str] = &["mirror", "raidz", "draid", "spare"];

/// A pool name: a letter, then letters, digits, `_ - . :`; at most 200 characters, not a
/// vdev keyword (`mirror`, `raidz…`, `draid…`, `spare…`, `log…`) and not `c<digit>…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(String);

impl PoolName {
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        const K: &str = "pool name";
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(invalid(K, &s, "empty")),
            Some(c) if !c.is_ascii_alphabetic() => {
                return Err(invalid(K, &s, "must start with a letter"));
            }
            _ => {}
        }
        if s.len() > 200 {
            return Err(invalid(K, &s, "longer than 200 characters"));
        }
        if !s.chars().all(is_component_char) {
            return Err(invalid(
                K,
                &s,
                "only letters, digits and _ - . : are allowed",
            ));
        }
        if RESERVED_POOL_PREFIXES.iter().any(|p| s.starts_with(p)) {
            return Err(invalid(K, &s, "starts with a reserved vdev keyword"));
        }
        if s == "log" {
            return Err(invalid(K, &s, "is a reserved vdev keyword"));
        }
        let b = s.as_bytes();
        if b[0] == b'c' && b.len() > 1 && b[1].is_ascii_digit() {
            return Err(invalid(
                K,
                &s,
                "looks like a Solaris device name (c<digit>…)",
            ));
        }
        Ok(PoolName(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A dataset: `<pool>/<child>[/<child>…]`, each child letters, digits, `_ - . :`, not `.`
/// or `..`; under 256 characters in all. Snapshots (`@`) and bookmarks (`#`) are not datasets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatasetName(String);

impl DatasetName {
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        const K: &str = "dataset name";
        if s.len() >= 256 {
            return Err(invalid(K, &s, "256 characters or more"));
        }
        let mut parts = s.split('/');
        let pool = parts.next().unwrap_or_default();
        PoolName::new(pool).map_err(|_| invalid(K, &s, "does not start with a valid pool name"))?;
        for part in parts {
            if part.is_empty() {
                return Err(invalid(K, &s, "empty component"));
            }
            if part == "." || part == ".." {
                return Err(invalid(K, &s, "`.` or `..` component"));
            }
            if !part.chars().all(is_component_char) {
                return Err(invalid(
                    K,
                    &s,
                    "only letters, digits and _ - . : are allowed",
                ));
            }
        }
        Ok(DatasetName(s))
    }

    /// The pool part of the name.
    pub fn pool(&self) -> PoolName {
        PoolName(self.0.split('/').next().unwrap_or_default().to_string())
    }

    /// A child dataset `<self>/<child>`.
    pub fn child(&self, child: &str) -> Result<DatasetName> {
        DatasetName::new(format!("{}/{child}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<PoolName> for DatasetName {
    /// A pool's root dataset has the pool's name.
    fn from(p: PoolName) -> Self {
        DatasetName(p.0)
    }
}

fn check_abs_path(kind: &'static str, s: &str) -> Result<()> {
    if !s.starts_with('/') {
        return Err(invalid(kind, s, "must be absolute"));
    }
    if s.len() > 1024 {
        return Err(invalid(kind, s, "longer than 1024 characters"));
    }
    if s == "/" {
        return Ok(());
    }
    if s.ends_with('/') {
        return Err(invalid(kind, s, "trailing slash"));
    }
    for part in s[1..].split('/') {
        if part.is_empty() {
            return Err(invalid(kind, s, "empty component (`//`)"));
        }
        if part == "." || part == ".." {
            return Err(invalid(kind, s, "`.` or `..` component"));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '+' | '@'))
        {
            return Err(invalid(
                kind,
                s,
                "only letters, digits and _ - . : + @ are allowed",
            ));
        }
    }
    Ok(())
}

/// An absolute device path (`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…`, or an
/// image file in tests): no `..`, no spaces, nothing that needs quoting.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DevicePath(String);

impl DevicePath {
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check_abs_path("device path", &s)?;
        if s == "/" {
            return Err(invalid(
                "device path",
                &s,
                "the root folder is not a device",
            ));
        }
        Ok(DevicePath(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute folder: a mount point, an altroot, or an import search folder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPath(String);

impl HostPath {
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check_abs_path("host path", &s)?;
        Ok(HostPath(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A pool or vdev GUID as ZFS prints it (decimal u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Guid(pub u64);

impl Guid {
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("guid", s, "must be a decimal number"));
        }
        s.parse()
            .map(Guid)
            .map_err(|_| invalid("guid", s, "out of range for 64 bits"))
    }
}

macro_rules! string_newtype_impls {
    ($($t:ident),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $t {
            type Error = ZfsError;
            fn try_from(s: String) -> Result<Self> {
                $t::new(s)
            }
        }
        impl TryFrom<&str> for $t {
            type Error = ZfsError;
            fn try_from(s: &str) -> Result<Self> {
                $t::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    )*};
}
string_newtype_impls!(PoolName, DatasetName, DevicePath, HostPath);

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A property name: lower-case native (`recordsize`) or a user property (`pgml.io:role`).
pub(crate) fn check_property_name(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | '-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "property name",
            s,
            "lower-case letters, digits and _ . : - only",
        ))
    }
}

/// A property value: printable ASCII, no spaces or commas (so it can never be mistaken for
/// a second `-o` list item), at most 1024 characters.
pub(crate) fn check_property_value(s: &str) -> Result<()> {
    let ok =
        !s.is_empty() && s.len() <= 1024 && s.chars().all(|c| c.is_ascii_graphic() && c != ',');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "property value",
            s,
            "printable ASCII without spaces or commas",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names() {
        for ok in ["tank", "pgml-db1", "a", "db_1.x:y"] {
            assert!(PoolName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-f", "1tank", "mirror1", "raidz", "log", "spares", "c0d0", "a b", "a/b", "tänk",
            "a\nb",
        ] {
            assert!(PoolName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dataset_names() {
        assert!(DatasetName::new("tank/pgdata/wal").is_ok());
        assert_eq!(DatasetName::new("tank/x").unwrap().pool().as_str(), "tank");
        for bad in [
            "tank/",
            "tank//x",
            "tank/..",
            "tank/x@snap",
            "-o/x",
            "tank/a b",
            "/tank",
        ] {
            assert!(DatasetName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(
            DevicePath::new("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0")
                .is_ok()
        );
        for bad in [
            "dev/x",
            "/dev/../etc/passwd",
            "/dev/x/",
            "/dev//x",
            "/dev/a b",
            "/",
            "/dev/$(x)",
            "-f",
        ] {
            assert!(DevicePath::new(bad).is_err(), "{bad}");
        }
        assert!(HostPath::new("/").is_ok());
        assert!(HostPath::new("/var/lib/pgml/mnt").is_ok());
    }

    #[test]
    fn guids() {
        assert_eq!(
            Guid::parse("16863254040485926458").unwrap().0,
            16863254040485926458
        );
        assert!(Guid::parse("18446744073709551616").is_err());
        assert!(Guid::parse("-1").is_err());
    }

    #[test]
    fn properties() {
        assert!(check_property_name("recordsize").is_ok());
        assert!(check_property_name("pgml.io:pool").is_ok());
        assert!(check_property_name("Recordsize").is_err());
        assert!(check_property_value("32K").is_ok());
        assert!(check_property_value("a,b").is_err());
        assert!(check_property_value("a b").is_err());
    }
}
