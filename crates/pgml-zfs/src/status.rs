//! `zpool status` and `zpool import` (listing) output: the same layout of `key: value`
//! sections and an indented vdev tree, printed by both dialects.
//!
//! OpenZFS 2.x (`status -P -p`): `  scan: resilver in progress since …` with the progress on
//! continuation lines, `(resilvering)` after a member, full paths (`…-part1` for whole disks).
//! zfs-fuse: ` scrub: resilver in progress for 0h0m, 40.77% done, 0h0m to go`, `307M
//! resilvered` after a member, full paths always. Both name a missing member by its GUID with
//! `was <path>` after it, and put a `replacing-N` vdev over the old and new member.

use serde::{Deserialize, Serialize};

use crate::error::{Result, ZfsError};
pub use crate::scan::{Scan, ScanKind, ScanState};
use crate::size::parse_count;

/// A pool's or vdev's state as ZFS prints it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    Online,
    Degraded,
    Faulted,
    Offline,
    Unavail,
    Removed,
    Suspended,
    /// A hot spare that is free (`AVAIL`).
    Avail,
    /// A hot spare in use (`INUSE`).
    InUse,
    Unknown(String),
}

impl Health {
    pub fn parse(s: &str) -> Health {
        match s {
            "ONLINE" => Health::Online,
            "DEGRADED" => Health::Degraded,
            "FAULTED" => Health::Faulted,
            "OFFLINE" => Health::Offline,
            "UNAVAIL" => Health::Unavail,
            "REMOVED" => Health::Removed,
            "SUSPENDED" => Health::Suspended,
            "AVAIL" => Health::Avail,
            "INUSE" => Health::InUse,
            other => Health::Unknown(other.to_string()),
        }
    }

    fn is_state_word(s: &str) -> bool {
        !matches!(Health::parse(s), Health::Unknown(_))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Health::Online => "ONLINE",
            Health::Degraded => "DEGRADED",
            Health::Faulted => "FAULTED",
            Health::Offline => "OFFLINE",
            Health::Unavail => "UNAVAIL",
            Health::Removed => "REMOVED",
            Health::Suspended => "SUSPENDED",
            Health::Avail => "AVAIL",
            Health::InUse => "INUSE",
            Health::Unknown(s) => s,
        }
    }
}

/// What a vdev is, told from its name and place in the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VdevKind {
    /// The pool itself (first line of the tree).
    Root,
    Raidz {
        parity: u8,
    },
    Mirror,
    Draid,
    /// A member being replaced: its children are the old and the new device.
    Replacing,
    /// A hot spare in use, over the member it stands for.
    Spare,
    /// `logs`, `cache`, `spares`, `special`, `dedup`: a heading, not a vdev.
    Group(String),
    /// A device or file (or the GUID of one that is gone).
    Leaf,
}

impl VdevKind {
    fn of(name: &str, depth: usize) -> VdevKind {
        if depth == 0 && matches!(name, "logs" | "cache" | "spares" | "special" | "dedup") {
            return VdevKind::Group(name.to_string());
        }
        let base = name.rsplit_once('-').map_or(name, |(b, n)| {
            if n.bytes().all(|c| c.is_ascii_digit()) {
                b
            } else {
                name
            }
        });
        match base {
            "raidz" | "raidz1" => VdevKind::Raidz { parity: 1 },
            "raidz2" => VdevKind::Raidz { parity: 2 },
            "raidz3" => VdevKind::Raidz { parity: 3 },
            "mirror" => VdevKind::Mirror,
            "replacing" => VdevKind::Replacing,
            "spare" => VdevKind::Spare,
            _ if name.starts_with("draid") => VdevKind::Draid,
            _ => VdevKind::Leaf,
        }
    }
}

/// One line of the vdev tree, with its children.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vdev {
    /// As printed: a path, a short device name, a GUID (member gone), or `raidz1-0`…
    pub name: String,
    pub kind: VdevKind,
    /// `None` for group headings.
    pub state: Option<Health>,
    /// Error counters (status only; an import listing has none).
    pub read_errors: Option<u64>,
    pub write_errors: Option<u64>,
    pub checksum_errors: Option<u64>,
    /// The text after the counters: `was /dev/…`, `(resilvering)`, `307M resilvered`,
    /// `cannot open`, `insufficient replicas`…
    pub note: Option<String>,
    /// The last known path of a member that is gone (`was …`).
    pub was: Option<String>,
    /// This member is being resilvered onto.
    pub resilvering: bool,
    pub children: Vec<Vdev>,
}

impl Vdev {
    /// The member's path: its name when absolute, else its `was` path.
    pub fn path(&self) -> Option<&str> {
        if self.name.starts_with('/') {
            Some(&self.name)
        } else {
            self.was.as_deref().filter(|w| w.starts_with('/'))
        }
    }

    /// The member's GUID when ZFS names it by GUID (the device is gone).
    pub fn guid(&self) -> Option<u64> {
        if self.kind == VdevKind::Leaf && self.name.bytes().all(|b| b.is_ascii_digit()) {
            self.name.parse().ok()
        } else {
            None
        }
    }

    /// The EBS volume ID (`vol-0123…`) behind a Nitro by-id name
    /// (`…/nvme-Amazon_Elastic_Block_Store_vol0123…[-part1]`), from the name or `was` path.
    pub fn ebs_volume_id(&self) -> Option<String> {
        [Some(self.name.as_str()), self.was.as_deref()]
            .into_iter()
            .flatten()
            .find_map(ebs_volume_id)
    }

    /// Every leaf below (or this one), depth first.
    pub fn leaves(&self) -> Vec<&Vdev> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, out: &mut Vec<&'a Vdev>) {
        if self.kind == VdevKind::Leaf {
            out.push(self);
        }
        for c in &self.children {
            c.collect_leaves(out);
        }
    }
}

/// `vol-<hex>` from a by-id name or path (OpenZFS may add `-part1` for whole disks).
pub fn ebs_volume_id(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let rest = base.strip_prefix("nvme-Amazon_Elastic_Block_Store_vol")?;
    let rest = rest.split_once("-part").map_or(rest, |(v, _)| v);
    let rest = rest.split_once('_').map_or(rest, |(v, _)| v);
    (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("vol-{rest}"))
}

/// One pool from `zpool status` or `zpool import` (listing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// Pool GUID: printed by `zpool import` (`id:`), not by `zpool status`.
    pub id: Option<u64>,
    pub state: Health,
    /// The `status:` explanation, when the pool is not plainly healthy.
    pub status: Option<String>,
    pub action: Option<String>,
    /// Every `scan:` entry, in order: OpenZFS prints a scrub's and then a resilver's (or one
    /// per vdev being rebuilt); `none requested` gives none.
    pub scans: Vec<Scan>,
    /// The pool's vdev tree (`kind == Root`); `None` only if output was cut short.
    pub root: Option<Vdev>,
    /// `logs`, `cache`, `spares`… headings with their devices.
    pub groups: Vec<Vdev>,
    /// The `errors:` section, line by line: `No known data errors`, or `Permanent errors
    /// have been detected in the following files:` and then each file as printed.
    pub errors: Vec<String>,
}

/// The pool layouts this project builds, recognised from a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedLayout {
    Stripe,
    Raidz1,
    Other,
}

impl PoolStatus {
    /// Every leaf of the data vdevs (not logs/cache/spares).
    pub fn members(&self) -> Vec<&Vdev> {
        self.root.as_ref().map(Vdev::leaves).unwrap_or_default()
    }

    /// Stripe (all top-level vdevs are devices), one raidz1, or something else.
    pub fn layout(&self) -> ObservedLayout {
        let Some(root) = &self.root else {
            return ObservedLayout::Other;
        };
        match root.children.as_slice() {
            [] => ObservedLayout::Other,
            [one] if one.kind == (VdevKind::Raidz { parity: 1 }) => ObservedLayout::Raidz1,
            top if top.iter().all(|v| v.kind == VdevKind::Leaf) => ObservedLayout::Stripe,
            _ => ObservedLayout::Other,
        }
    }

    /// A resilver may be running: one in progress, or a scan line not read in full.
    pub fn resilvering(&self) -> bool {
        self.scans.iter().any(Scan::may_be_resilvering)
    }

    /// The scan that tells of resilvering: one that may be resilvering now, else the last
    /// resilver that is over.
    pub fn resilver(&self) -> Option<&Scan> {
        self.scans
            .iter()
            .find(|s| s.may_be_resilvering())
            .or_else(|| {
                self.scans
                    .iter()
                    .rev()
                    .find(|s| s.kind == ScanKind::Resilver)
            })
    }
}

/// Parses `zpool status` output: one pool or more. Output with no pool in it is an error:
/// [`ZfsError::NoPools`] when it is ZFS saying so (`no pools available`, which OpenZFS
/// prints on stderr with nothing on stdout), a parse error for anything else, empty
/// included.
pub fn parse_status(out: &str) -> Result<Vec<PoolStatus>> {
    parse_pools("zpool status", out)
}

/// Parses the listing of `zpool import [-d dir]` (pools that could be imported). None is
/// [`ZfsError::NoPools`] when the text is ZFS's `no pools available to import` (stderr, exit
/// 1), a parse error when it is anything else.
pub fn parse_import_list(out: &str) -> Result<Vec<PoolStatus>> {
    parse_pools("zpool import", out)
}

/// The pools a finished `zpool import [-d dir]` offers, from its exit code and both of its
/// streams. Each dialect's way of saying there are none is an answer (no pools): OpenZFS
/// exits 1 with `no pools available to import` on stderr; zfs-fuse exits 1 and prints
/// nothing at all (seen on the test bed's zfs-fuse 0.7). Anything else without a pool is an
/// error, so a listing that went wrong is never taken for "nothing to import".
pub fn parse_import_answer(
    dialect: crate::Dialect,
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> Result<Vec<PoolStatus>> {
    let silent = stdout.trim().is_empty() && stderr.trim().is_empty();
    if dialect == crate::Dialect::ZfsFuse && silent && code == Some(1) {
        return Ok(vec![]);
    }
    let said = if stdout.trim().is_empty() {
        stderr
    } else {
        stdout
    };
    match parse_import_list(said) {
        Err(ZfsError::NoPools { .. }) => Ok(vec![]),
        other => other,
    }
}

/// What ZFS prints instead of pools when it has none.
const NO_POOLS: &[&str] = &["no pools available", "no pools available to import"];

/// A `key: value` line: a lower-case word and a colon, indented by spaces only.
fn key_line(line: &str) -> Option<(&str, &str)> {
    let lead = &line[..line.len() - line.trim_start().len()];
    if lead.contains('\t') || lead.len() > 7 {
        return None;
    }
    let t = line.trim_start();
    let (k, v) = t.split_once(':')?;
    (!k.is_empty()
        && k.bytes().all(|b| b.is_ascii_lowercase())
        && (v.is_empty() || v.starts_with(' ')))
    .then(|| (k, v.trim()))
}

struct Builder {
    pool: PoolStatus,
    key: String,
    /// The lines of each `scan:` entry.
    scans: Vec<Vec<String>>,
    in_config: bool,
    table: bool,
    entries_done: bool,
    root_indent: Option<usize>,
    /// (depth, vdev) stack of open vdevs.
    stack: Vec<(usize, Vdev)>,
}

fn parse_pools(command: &'static str, out: &str) -> Result<Vec<PoolStatus>> {
    let mut pools = Vec::new();
    let mut cur: Option<Builder> = None;
    for line in out.lines() {
        if let Some((key, value)) = key_line(line) {
            if key == "pool" {
                if let Some(b) = cur.take() {
                    pools.push(b.finish(command)?);
                }
                if value.is_empty() {
                    return Err(ZfsError::parse(command, "pool without a name", line));
                }
                cur = Some(Builder::new(value));
                continue;
            }
            let Some(b) = cur.as_mut() else {
                continue;
            };
            b.close_config();
            b.key = key.to_string();
            b.in_config = key == "config";
            b.set(key, value, command, line)?;
            continue;
        }
        let Some(b) = cur.as_mut() else { continue };
        if b.in_config {
            b.config_line(line, command)?;
        } else if !line.trim().is_empty() {
            let key = b.key.clone();
            b.append(&key, line.trim());
        }
    }
    if let Some(b) = cur.take() {
        pools.push(b.finish(command)?);
    }
    if pools.is_empty() {
        let said = out.trim();
        return Err(if NO_POOLS.contains(&said) {
            ZfsError::NoPools { command }
        } else {
            let first = said.lines().next().unwrap_or("");
            ZfsError::parse(command, "no pool in the output", first)
        });
    }
    Ok(pools)
}

impl Builder {
    fn new(name: &str) -> Self {
        Builder {
            pool: PoolStatus {
                name: name.to_string(),
                id: None,
                state: Health::Unknown(String::new()),
                status: None,
                action: None,
                scans: Vec::new(),
                root: None,
                groups: Vec::new(),
                errors: Vec::new(),
            },
            key: "pool".into(),
            scans: Vec::new(),
            in_config: false,
            table: false,
            entries_done: false,
            root_indent: None,
            stack: Vec::new(),
        }
    }

    fn set(&mut self, key: &str, value: &str, command: &'static str, line: &str) -> Result<()> {
        let v = (!value.is_empty()).then(|| value.to_string());
        match key {
            "id" => {
                self.pool.id = Some(
                    value
                        .parse()
                        .map_err(|_| ZfsError::parse(command, "bad pool id", line))?,
                );
            }
            "state" => self.pool.state = Health::parse(value),
            "status" => self.pool.status = v,
            "action" => self.pool.action = v,
            // Each is an entry of its own: several follow one another.
            "scan" | "scrub" => self.scans.push(vec![value.to_string()]),
            "errors" => self.pool.errors.extend(v),
            _ => {}
        }
        Ok(())
    }

    fn append(&mut self, key: &str, more: &str) {
        let slot = match key {
            "status" => &mut self.pool.status,
            "action" => &mut self.pool.action,
            "scan" | "scrub" => {
                if let Some(lines) = self.scans.last_mut() {
                    lines.push(more.to_string());
                }
                return;
            }
            // One entry a line: file names may hold spaces.
            "errors" => {
                self.pool.errors.push(more.to_string());
                return;
            }
            _ => return,
        };
        match slot {
            Some(s) => {
                s.push(' ');
                s.push_str(more);
            }
            None => *slot = Some(more.to_string()),
        }
    }

    fn config_line(&mut self, line: &str, command: &'static str) -> Result<()> {
        if line.trim().is_empty() {
            if self.root_indent.is_some() {
                self.entries_done = true;
            }
            return Ok(());
        }
        if self.entries_done {
            // Trailing remarks (`Additional devices are known to be part of this pool…`).
            return Ok(());
        }
        let body = line.strip_prefix('\t').unwrap_or(line);
        let indent = body.len() - body.trim_start().len();
        let tokens: Vec<&str> = body.split_whitespace().collect();
        if tokens.first() == Some(&"NAME") && tokens.get(1) == Some(&"STATE") {
            self.table = tokens.contains(&"READ");
            return Ok(());
        }
        let root_indent = *self.root_indent.get_or_insert(indent);
        if indent < root_indent || !(indent - root_indent).is_multiple_of(2) {
            return Err(ZfsError::parse(
                command,
                "vdev line with unexpected indentation",
                line,
            ));
        }
        let depth = (indent - root_indent) / 2;
        let vdev = self.vdev_from(tokens, depth, command, line)?;
        while self.stack.last().is_some_and(|(d, _)| *d >= depth) {
            self.pop();
        }
        if depth > 0 && self.stack.last().is_none_or(|(d, _)| *d != depth - 1) {
            return Err(ZfsError::parse(command, "vdev line without a parent", line));
        }
        self.stack.push((depth, vdev));
        Ok(())
    }

    fn vdev_from(
        &self,
        tokens: Vec<&str>,
        depth: usize,
        command: &'static str,
        line: &str,
    ) -> Result<Vdev> {
        let name = tokens[0].to_string();
        let kind = if depth == 0
            && self.pool.root.is_none()
            && self.stack.is_empty()
            && name == self.pool.name
        {
            VdevKind::Root
        } else {
            VdevKind::of(&name, depth)
        };
        let mut v = Vdev {
            name,
            kind,
            state: None,
            read_errors: None,
            write_errors: None,
            checksum_errors: None,
            note: None,
            was: None,
            resilvering: false,
            children: Vec::new(),
        };
        let mut rest = &tokens[1..];
        if let Some(s) = rest.first().filter(|s| Health::is_state_word(s)) {
            v.state = Some(Health::parse(s));
            rest = &rest[1..];
        } else if !matches!(v.kind, VdevKind::Group(_)) {
            return Err(ZfsError::parse(command, "vdev line without a state", line));
        }
        // Counters follow the state in a status table (not for spares, not in import lists).
        if self.table
            && rest.len() >= 3
            && let (Some(r), Some(w), Some(c)) = (
                parse_count(rest[0]),
                parse_count(rest[1]),
                parse_count(rest[2]),
            )
        {
            (v.read_errors, v.write_errors, v.checksum_errors) = (Some(r), Some(w), Some(c));
            rest = &rest[3..];
        }
        if !rest.is_empty() {
            let note = rest.join(" ");
            v.was = note
                .strip_prefix("was ")
                .map(|p| p.split_whitespace().next().unwrap_or("").to_string());
            v.resilvering = note.contains("(resilvering)");
            v.note = Some(note);
        }
        Ok(v)
    }

    fn pop(&mut self) {
        let Some((depth, v)) = self.stack.pop() else {
            return;
        };
        if let Some((_, parent)) = self.stack.last_mut() {
            parent.children.push(v);
        } else if depth == 0 && v.kind == VdevKind::Root {
            self.pool.root = Some(v);
        } else {
            self.pool.groups.push(v);
        }
    }

    fn close_config(&mut self) {
        while !self.stack.is_empty() {
            self.pop();
        }
        self.in_config = false;
    }

    fn finish(mut self, command: &'static str) -> Result<PoolStatus> {
        self.close_config();
        self.pool.scans = self.scans.iter().filter_map(|l| Scan::parse(l)).collect();
        if matches!(self.pool.state, Health::Unknown(ref s) if s.is_empty()) {
            return Err(ZfsError::parse(
                command,
                "pool without a state line",
                &self.pool.name,
            ));
        }
        // zfs-fuse marks the member being resilvered onto only with `<size> resilvered`.
        let resilver_running = self
            .pool
            .scans
            .iter()
            .any(|s| s.kind == ScanKind::Resilver && s.state == ScanState::InProgress);
        if resilver_running && let Some(root) = self.pool.root.as_mut() {
            mark_zfs_fuse_resilvering(root);
        }
        Ok(self.pool)
    }
}

fn mark_zfs_fuse_resilvering(v: &mut Vdev) {
    if v.note
        .as_deref()
        .is_some_and(|n| n.ends_with(" resilvered"))
    {
        v.resilvering = true;
    }
    for c in &mut v.children {
        mark_zfs_fuse_resilvering(c);
    }
}
