//! Command builders: a program and an argument vector, never a shell string.
//!
//! Every builder takes validated names ([`crate::names`]) and the node's [`Dialect`], and
//! refuses (rather than approximates) what the dialect cannot do. None of them ever adds
//! `-f`: forcing a create over devices that carry labels is exactly what the agent must not do.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dialect::Dialect;
use crate::error::{Result, ZfsError};
use crate::names::{DatasetName, DevicePath, Guid, HostPath, PoolName};
use crate::props::{Property, map_properties};

/// What every command runs with, on top of the runner's own environment: the C locale.
/// The parsers read numbers with a decimal point (`1.23G`, `14.91% done`) and English
/// words; in another locale ZFS prints `1,23G` and `14,91% done`, which must never be read.
pub const ENV: &[(&str, &str)] = &[("LC_ALL", "C")];

/// A command to run: `program` with `args`, exactly as given (no shell), with `env` set on
/// top of the runner's environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    /// Always [`ENV`]: set here, once, so that no caller can forget it.
    pub env: Vec<(String, String)>,
}

impl Command {
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            env: ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// `[program, args…]`, e.g. to prefix with `nsenter -t PID -m --`.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

impl fmt::Display for Command {
    /// For logs only; the output is not meant to be fed to a shell.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// How the pool's members are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// RAID0: every device a top-level vdev; no redundancy.
    Stripe,
    /// One raidz1 vdev over all devices: survives one lost member.
    Raidz1,
}

impl Layout {
    fn min_devices(self) -> usize {
        match self {
            Layout::Stripe => 1,
            // zpool accepts two; with two, a mirror is strictly better, so insist on three.
            Layout::Raidz1 => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Stripe => "stripe",
            Layout::Raidz1 => "raidz1",
        }
    }
}

/// Where a dataset mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// `mountpoint=none`: not mounted (the usual choice for a pool's root dataset).
    None,
    /// `mountpoint=legacy`: mounted by someone else.
    Legacy,
    At(HostPath),
}

impl Mount {
    fn value(&self) -> &str {
        match self {
            Mount::None => "none",
            Mount::Legacy => "legacy",
            Mount::At(p) => p.as_str(),
        }
    }
}

/// Everything `zpool create` needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: PoolName,
    pub layout: Layout,
    /// Stable paths (by-id links), in member order.
    pub devices: Vec<DevicePath>,
    /// `ashift` (12 for EBS: 4 KiB sectors). Both dialects accept `-o ashift=`.
    pub ashift: Option<u8>,
    /// More pool properties (`-o`), e.g. `autoexpand=on`.
    pub pool_properties: Vec<Property>,
    /// Properties of the root dataset, inherited by every dataset (`-O`); mapped per dialect.
    pub fs_properties: Vec<Property>,
    /// The root dataset's mount point (`-m`).
    pub mount: Mount,
    /// `-R`: an alternate root, which also sets `cachefile=none`.
    pub altroot: Option<HostPath>,
}

fn zpool<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Command {
    Command::new("zpool", args)
}

fn zfs<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Command {
    Command::new("zfs", args)
}

/// `zpool create` for a stripe or a raidz1 over `spec.devices`. Never `-f`.
pub fn create_pool(dialect: Dialect, spec: &PoolSpec) -> Result<Command> {
    let min = spec.layout.min_devices();
    if spec.devices.len() < min {
        return Err(ZfsError::TooFewDevices {
            layout: spec.layout.name(),
            min,
            got: spec.devices.len(),
        });
    }
    let mut seen = BTreeSet::new();
    for d in &spec.devices {
        if !seen.insert(d.as_str()) {
            return Err(ZfsError::DuplicateDevice(d.to_string()));
        }
    }
    let mut c = zpool(["create"]);
    if let Some(a) = spec.ashift {
        if !(9..=16).contains(&a) || (dialect == Dialect::ZfsFuse && a > 13) {
            return Err(ZfsError::InvalidName {
                kind: "ashift",
                value: a.to_string(),
                reason: "out of range",
            });
        }
        c = c.arg("-o").arg(format!("ashift={a}"));
    }
    for p in &spec.pool_properties {
        c = c.arg("-o").arg(p.arg());
    }
    let (fs, _) = map_properties(dialect, &spec.fs_properties);
    for p in &fs {
        c = c.arg("-O").arg(p.arg());
    }
    c = c.arg("-m").arg(spec.mount.value());
    if let Some(r) = &spec.altroot {
        c = c.arg("-R").arg(r.as_str());
    }
    c = c.arg(spec.name.as_str());
    if spec.layout == Layout::Raidz1 {
        c = c.arg("raidz1");
    }
    Ok(Command {
        args: [c.args, spec.devices.iter().map(|d| d.to_string()).collect()].concat(),
        ..c
    })
}

/// `zfs create` with properties mapped for the dialect (see [`map_properties`] for what
/// changes; call it yourself to report the adjustments). `parents` adds `-p`.
pub fn create_dataset(
    dialect: Dialect,
    name: &DatasetName,
    properties: &[Property],
    mount: Option<&Mount>,
    parents: bool,
) -> Command {
    let mut c = zfs(["create"]);
    if parents {
        c = c.arg("-p");
    }
    let (props, _) = map_properties(dialect, properties);
    for p in props
        .iter()
        .filter(|p| p.name() != "mountpoint" || mount.is_none())
    {
        c = c.arg("-o").arg(p.arg());
    }
    if let Some(m) = mount {
        c = c.arg("-o").arg(format!("mountpoint={}", m.value()));
    }
    c.arg(name.as_str())
}

/// Which pool to import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportTarget {
    Name(PoolName),
    /// By pool GUID: the only unambiguous choice when two pools share a name.
    Guid(Guid),
}

/// Everything `zpool import` needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSpec {
    pub target: ImportTarget,
    /// Import under another name (the pool keeps it afterwards).
    pub new_name: Option<PoolName>,
    /// `-d`: folders to search for members (the by-id folder), instead of the default.
    pub search_dirs: Vec<HostPath>,
    /// `-R`: mount everything under this root (and do not record the pool in the cache).
    pub altroot: Option<HostPath>,
    /// `false` imports without mounting (`-N`): OpenZFS only.
    pub mount: bool,
    /// `-f`: import a pool another host did not export (a node that died). The caller
    /// decides, knowing that host is gone; never a default.
    pub force: bool,
}

/// `zpool import …` of one pool.
pub fn import_pool(dialect: Dialect, spec: &ImportSpec) -> Result<Command> {
    let mut c = zpool(["import"]);
    if !spec.mount {
        if dialect == Dialect::ZfsFuse {
            return Err(ZfsError::Unsupported {
                dialect,
                what: "import without mounting (-N)",
            });
        }
        c = c.arg("-N");
    }
    if spec.force {
        c = c.arg("-f");
    }
    for d in &spec.search_dirs {
        c = c.arg("-d").arg(d.as_str());
    }
    if let Some(r) = &spec.altroot {
        c = c.arg("-R").arg(r.as_str());
    }
    c = c.arg(match &spec.target {
        ImportTarget::Name(n) => n.to_string(),
        ImportTarget::Guid(g) => g.to_string(),
    });
    if let Some(n) = &spec.new_name {
        c = c.arg(n.as_str());
    }
    Ok(c)
}

/// `zpool import [-d dir]…`: lists importable pools (parse with [`crate::parse_import_list`]).
pub fn list_importable(search_dirs: &[HostPath]) -> Command {
    let mut c = zpool(["import"]);
    for d in search_dirs {
        c = c.arg("-d").arg(d.as_str());
    }
    c
}

/// `zpool export [-f] <pool>`.
pub fn export_pool(name: &PoolName, force: bool) -> Command {
    let c = zpool(["export"]);
    let c = if force { c.arg("-f") } else { c };
    c.arg(name.as_str())
}

/// `zpool destroy [-f] <pool>`. Destroys the data: the caller must be sure.
pub fn destroy_pool(name: &PoolName, force: bool) -> Command {
    let c = zpool(["destroy"]);
    let c = if force { c.arg("-f") } else { c };
    c.arg(name.as_str())
}

/// `zfs destroy <dataset>` (not recursive).
pub fn destroy_dataset(name: &DatasetName) -> Command {
    zfs(["destroy", name.as_str()])
}

/// `zpool status`: `-P -p` on OpenZFS (full paths, exact counters); zfs-fuse prints full
/// paths anyway and has neither flag.
pub fn status(dialect: Dialect, pool: Option<&PoolName>) -> Command {
    let mut c = zpool(["status"]);
    if dialect == Dialect::OpenZfs {
        c = c.arg("-P").arg("-p");
    }
    if let Some(p) = pool {
        c = c.arg(p.as_str());
    }
    c
}

/// The columns [`list_pools`] asks for, in order: both dialects know these names.
pub const LIST_COLUMNS: &[&str] = &[
    "name",
    "size",
    "allocated",
    "free",
    "health",
    "guid",
    "altroot",
];

/// `zpool list -H [-p] -o name,size,allocated,free,health,guid,altroot [pool]`.
pub fn list_pools(dialect: Dialect, pool: Option<&PoolName>) -> Command {
    let mut c = zpool(["list", "-H"]);
    if dialect == Dialect::OpenZfs {
        c = c.arg("-p");
    }
    c = c.arg("-o").arg(LIST_COLUMNS.join(","));
    if let Some(p) = pool {
        c = c.arg(p.as_str());
    }
    c
}

fn prop_list(props: &[&str]) -> Result<String> {
    if props.is_empty() {
        return Ok("all".into());
    }
    for p in props {
        crate::names::check_property_name(p)?;
    }
    Ok(props.join(","))
}

/// `zfs get -Hp -o name,property,value,source <props|all> <dataset>`. zfs-fuse accepts `-p`
/// on `zfs get` too (seen live), unlike on `zpool list`.
pub fn get_properties(dataset: &DatasetName, props: &[&str]) -> Result<Command> {
    Ok(zfs(["get", "-Hp", "-o", "name,property,value,source"])
        .arg(prop_list(props)?)
        .arg(dataset.as_str()))
}

/// `zpool get`: `-Hp -o name,property,value,source` on OpenZFS; zfs-fuse takes no options
/// and prints a table with a header (both parse with [`crate::parse_zpool_get`]).
pub fn get_pool_properties(dialect: Dialect, pool: &PoolName, props: &[&str]) -> Result<Command> {
    let mut c = zpool(["get"]);
    if dialect == Dialect::OpenZfs {
        c = c.arg("-Hp").arg("-o").arg("name,property,value,source");
    }
    Ok(c.arg(prop_list(props)?).arg(pool.as_str()))
}

/// `zpool set <prop>=<value> <pool>`, e.g. `autoexpand=on`.
pub fn set_pool_property(pool: &PoolName, prop: &Property) -> Command {
    zpool(["set".to_string(), prop.arg(), pool.to_string()])
}

/// Commits the pool's open transaction group now, so that what was written before is in
/// the pool's on-disk state itself, not only in its intent log (the ZIL). Before an EBS
/// snapshot: the copy then imports without replaying the log (and on zfs-fuse, whose log
/// does not carry renames made durable by fsyncing their folder, without losing them).
/// OpenZFS: `zpool sync <pool>`. zfs-fuse has no `zpool sync`; setting a user property on
/// the pool's root dataset is a sync task, which waits for the transaction group to commit:
/// `zfs set pgml.io:synced=<token> <pool>`.
pub fn sync_pool(dialect: Dialect, pool: &PoolName, token: &str) -> Result<Command> {
    match dialect {
        Dialect::OpenZfs => Ok(zpool(["sync".to_string(), pool.to_string()])),
        Dialect::ZfsFuse => {
            if token.is_empty()
                || !token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            {
                return Err(ZfsError::InvalidName {
                    kind: "sync token",
                    value: token.to_string(),
                    reason: "letters, digits, - _ . : only",
                });
            }
            Ok(zfs([
                "set".to_string(),
                format!("pgml.io:synced={token}"),
                pool.to_string(),
            ]))
        }
    }
}

/// `zfs set <prop>=<value> <dataset>` (mapped for the dialect; `None` if dropped there).
pub fn set_property(dialect: Dialect, dataset: &DatasetName, prop: &Property) -> Option<Command> {
    let (props, _) = map_properties(dialect, std::slice::from_ref(prop));
    props
        .first()
        .map(|p| zfs(["set".to_string(), p.arg(), dataset.to_string()]))
}

/// A member as `zpool replace`/`online` name it: by path, or by the GUID `zpool status`
/// shows for a member that is gone (`… UNAVAIL … was /dev/…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceRef {
    Path(DevicePath),
    Guid(Guid),
}

impl DeviceRef {
    fn arg(&self) -> String {
        match self {
            DeviceRef::Path(p) => p.to_string(),
            DeviceRef::Guid(g) => g.to_string(),
        }
    }
}

/// `zpool replace <pool> <old> <new>`: resilvers onto `new`. Never `-f`.
pub fn replace_device(pool: &PoolName, old: &DeviceRef, new: &DevicePath) -> Command {
    zpool([
        "replace".to_string(),
        pool.to_string(),
        old.arg(),
        new.to_string(),
    ])
}

/// `zpool online -e <pool> <device>`: grow into a larger device. zfs-fuse accepts `-e`
/// (its usage text does not show it).
pub fn online_expand(pool: &PoolName, device: &DeviceRef) -> Command {
    zpool([
        "online".to_string(),
        "-e".into(),
        pool.to_string(),
        device.arg(),
    ])
}

/// `zpool online <pool> <device>`.
pub fn online(pool: &PoolName, device: &DeviceRef) -> Command {
    zpool(["online".to_string(), pool.to_string(), device.arg()])
}

/// `zpool labelclear <device>` (OpenZFS only; never `-f`, so a device of an active or
/// exported pool is refused by ZFS itself).
pub fn labelclear(dialect: Dialect, device: &DevicePath) -> Result<Command> {
    match dialect {
        Dialect::OpenZfs => Ok(zpool(["labelclear", device.as_str()])),
        Dialect::ZfsFuse => Err(ZfsError::Unsupported {
            dialect,
            what: "zpool labelclear",
        }),
    }
}
