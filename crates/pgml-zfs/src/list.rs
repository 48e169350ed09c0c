//! `zpool list`, `zfs get` and `zpool get` output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ZfsError};
use crate::size::parse_bytes;
use crate::status::Health;

/// One row of `zpool list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolListEntry {
    pub name: String,
    pub size: Option<u64>,
    pub allocated: Option<u64>,
    pub free: Option<u64>,
    pub health: Health,
    pub guid: Option<u64>,
    pub altroot: Option<String>,
}

/// The default columns of `zpool list -H[p]` on OpenZFS 2.x.
pub const OPENZFS_DEFAULT_COLUMNS: &[&str] = &[
    "name",
    "size",
    "allocated",
    "free",
    "checkpoint",
    "expandsize",
    "fragmentation",
    "capacity",
    "dedupratio",
    "health",
    "altroot",
];

/// The default columns of `zpool list -H` on zfs-fuse (pool version 23).
pub const ZFS_FUSE_DEFAULT_COLUMNS: &[&str] = &[
    "name",
    "size",
    "allocated",
    "free",
    "capacity",
    "dedupratio",
    "health",
    "altroot",
];

/// Parses tab-separated `zpool list -H` output whose columns are `columns` (as given to `-o`,
/// or one of the default sets). Sizes may be exact or human.
pub fn parse_zpool_list(out: &str, columns: &[&str]) -> Result<Vec<PoolListEntry>> {
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name || (name == "allocated" && *c == "alloc"))
    };
    let name_i = col("name").ok_or_else(|| ZfsError::parse("zpool list", "no name column", ""))?;
    let mut pools = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != columns.len() {
            return Err(ZfsError::parse(
                "zpool list",
                format!(
                    "expected {} tab-separated fields, found {}",
                    columns.len(),
                    fields.len()
                ),
                line,
            ));
        }
        let get = |name: &str| col(name).map(|i| fields[i]).filter(|v| *v != "-");
        pools.push(PoolListEntry {
            name: fields[name_i].to_string(),
            size: get("size").and_then(parse_bytes),
            allocated: get("allocated").and_then(parse_bytes),
            free: get("free").and_then(parse_bytes),
            health: get("health")
                .map(Health::parse)
                .unwrap_or(Health::Unknown(String::new())),
            guid: get("guid").and_then(|g| g.parse().ok()),
            altroot: get("altroot").map(str::to_string),
        });
    }
    Ok(pools)
}

/// One `zfs get` / `zpool get` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyValue {
    /// The dataset or pool.
    pub name: String,
    pub property: String,
    /// As printed: exact with `-p` (`32768`), human without (`32K`). `-` means unset.
    pub value: String,
    /// `local`, `default`, `-`, `inherited from tank`, …
    pub source: String,
}

impl PropertyValue {
    /// The value in bytes, whether printed exact or human.
    pub fn bytes(&self) -> Option<u64> {
        parse_bytes(&self.value)
    }
}

/// `zfs get -H[p] -o name,property,value,source …` (tab-separated; a source may hold spaces).
pub fn parse_zfs_get(out: &str) -> Result<Vec<PropertyValue>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                [name, property, value, source] => Ok(PropertyValue {
                    name: name.to_string(),
                    property: property.to_string(),
                    value: value.to_string(),
                    source: source.to_string(),
                }),
                _ => Err(ZfsError::parse(
                    "zfs get",
                    "expected 4 tab-separated fields",
                    line,
                )),
            }
        })
        .collect()
}

/// `zpool get`: OpenZFS `-Hp -o name,property,value,source` (tab-separated), or the
/// zfs-fuse table (`NAME  PROPERTY  VALUE  SOURCE` header, space-aligned).
pub fn parse_zpool_get(out: &str) -> Result<Vec<PropertyValue>> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty()).peekable();
    let header = lines
        .peek()
        .is_some_and(|l| l.split_whitespace().take(2).eq(["NAME", "PROPERTY"]));
    if !header {
        return parse_zfs_get(out);
    }
    lines.next();
    lines
        .map(|line| {
            let mut it = line.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some(name), Some(property), Some(value)) => Ok(PropertyValue {
                    name: name.into(),
                    property: property.into(),
                    value: value.into(),
                    source: it.collect::<Vec<_>>().join(" "),
                }),
                _ => Err(ZfsError::parse(
                    "zpool get",
                    "expected NAME PROPERTY VALUE [SOURCE]",
                    line,
                )),
            }
        })
        .collect()
}

/// Groups property rows by dataset/pool name: `{"tank/pgdata": {"recordsize": "32768"}}`.
pub fn by_name(values: &[PropertyValue]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut m: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for v in values {
        m.entry(v.name.clone())
            .or_default()
            .insert(v.property.clone(), v.value.clone());
    }
    m
}
