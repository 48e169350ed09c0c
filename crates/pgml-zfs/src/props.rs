//! Dataset properties, and what each dialect makes of them.

use serde::{Deserialize, Serialize};

use crate::dialect::Dialect;
use crate::error::Result;
use crate::names::{check_property_name, check_property_value};

/// A validated `name=value` pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Property {
    name: String,
    value: String,
}

impl Property {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Result<Self> {
        let (name, value) = (name.into(), value.into());
        check_property_name(&name)?;
        check_property_value(&value)?;
        Ok(Property { name, value })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// `name=value`, one argv item after `-o`/`-O`.
    pub fn arg(&self) -> String {
        format!("{}={}", self.name, self.value)
    }
}

/// What became of a requested property on this dialect (for the agent to log or report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Adjustment {
    /// Set with another value (`compression=lz4` → `compression=on` on zfs-fuse).
    Replaced {
        requested: Property,
        used: Property,
        reason: &'static str,
    },
    /// Not set at all: the dialect has no such property.
    Dropped {
        requested: Property,
        reason: &'static str,
    },
}

/// The native dataset properties of pool version 23 (zfs-fuse), as `zfs get all` lists them.
const ZFS_FUSE_NATIVE: &[&str] = &[
    "aclinherit",
    "aclmode",
    "atime",
    "canmount",
    "casesensitivity",
    "checksum",
    "compression",
    "copies",
    "dedup",
    "devices",
    "exec",
    "logbias",
    "mlslabel",
    "mountpoint",
    "nbmand",
    "normalization",
    "primarycache",
    "quota",
    "readonly",
    "recordsize",
    "refquota",
    "refreservation",
    "reservation",
    "secondarycache",
    "setuid",
    "sharenfs",
    "sharesmb",
    "snapdir",
    "utf8only",
    "version",
    "vscan",
    "xattr",
    "zoned",
];

/// Maps requested dataset properties onto what `dialect` accepts.
///
/// OpenZFS takes everything as asked. zfs-fuse has no lz4/zstd (its `on` is lzjb), knows
/// `xattr` only as `on|off` (no system-attribute `sa`), and lacks the properties added after
/// pool version 23 (`relatime`, `dnodesize`, `redundant_metadata`, …), which are dropped.
/// User properties (with a `:`) pass everywhere.
pub fn map_properties(dialect: Dialect, props: &[Property]) -> (Vec<Property>, Vec<Adjustment>) {
    let mut used = Vec::with_capacity(props.len());
    let mut adjustments = Vec::new();
    for p in props {
        match map_one(dialect, p) {
            Mapped::Keep => used.push(p.clone()),
            Mapped::Replace(value, reason) => {
                let q = Property {
                    name: p.name.clone(),
                    value: value.to_string(),
                };
                adjustments.push(Adjustment::Replaced {
                    requested: p.clone(),
                    used: q.clone(),
                    reason,
                });
                used.push(q);
            }
            Mapped::Drop(reason) => adjustments.push(Adjustment::Dropped {
                requested: p.clone(),
                reason,
            }),
        }
    }
    (used, adjustments)
}

enum Mapped {
    Keep,
    Replace(&'static str, &'static str),
    Drop(&'static str),
}

fn map_one(dialect: Dialect, p: &Property) -> Mapped {
    if dialect == Dialect::OpenZfs || p.name.contains(':') {
        return Mapped::Keep;
    }
    match (p.name.as_str(), p.value.as_str()) {
        ("compression" | "compress", v) if v == "lz4" || v.starts_with("zstd") => {
            Mapped::Replace("on", "zfs-fuse has no lz4/zstd; `on` is lzjb there")
        }
        ("xattr", "sa") => Mapped::Replace("on", "zfs-fuse knows xattr only as on|off"),
        ("atime", _) | ("recordsize", _) | ("logbias", _) => Mapped::Keep,
        (name, _) if ZFS_FUSE_NATIVE.contains(&name) => Mapped::Keep,
        _ => Mapped::Drop("not a property of pool version 23 (zfs-fuse)"),
    }
}

/// Postgres-friendly dataset properties (OpenZFS workload-tuning guide): 32K records, lz4,
/// no atime, xattrs in the dnode, throughput logbias. Mapped per dialect by the builders.
pub fn postgres_defaults() -> Vec<Property> {
    [
        ("recordsize", "32K"),
        ("compression", "lz4"),
        ("atime", "off"),
        ("xattr", "sa"),
        ("logbias", "throughput"),
    ]
    .into_iter()
    .map(|(n, v)| Property {
        name: n.into(),
        value: v.into(),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: &str, v: &str) -> Property {
        Property::new(n, v).unwrap()
    }

    #[test]
    fn openzfs_keeps_everything() {
        let props = [
            p("compression", "zstd-3"),
            p("xattr", "sa"),
            p("dnodesize", "auto"),
        ];
        let (used, adj) = map_properties(Dialect::OpenZfs, &props);
        assert_eq!(used, props);
        assert!(adj.is_empty());
    }

    #[test]
    fn zfs_fuse_mapping() {
        let props = [
            p("compression", "lz4"),
            p("compression", "zstd"),
            p("compression", "gzip-6"),
            p("xattr", "sa"),
            p("atime", "off"),
            p("relatime", "on"),
            p("dnodesize", "auto"),
            p("pgml.io:pool", "db1"),
        ];
        let (used, adj) = map_properties(Dialect::ZfsFuse, &props);
        let args: Vec<_> = used.iter().map(Property::arg).collect();
        assert_eq!(
            args,
            [
                "compression=on",
                "compression=on",
                "compression=gzip-6",
                "xattr=on",
                "atime=off",
                "pgml.io:pool=db1"
            ]
        );
        assert_eq!(adj.len(), 5);
        assert!(
            matches!(&adj[3], Adjustment::Dropped { requested, .. } if requested.name() == "relatime")
        );
    }
}
