//! PGDATA's `pg_wal` on the pool's `pgwal` dataset: a symlink to this instance's WAL
//! directory ([`crate::postgres::Pg::wal_dir`]), so that WAL gets that dataset's
//! recordsize and logbias. `initdb --waldir` makes it so for a new database; a data
//! directory that came another way (a pgBackRest restore or `pg_basebackup` writes a real
//! `pg_wal`; a snapshot of another instance carries a link to that instance's path) is
//! converged here before PostgreSQL starts: observe ([`observe`]), decide the one next step
//! ([`next`], pure), carry it out ([`apply`]), again until done ([`converge`]).
//!
//! Crash-safe at every step: a WAL file is copied to a temporary name in the WAL
//! directory, synced, renamed to its name, the directory synced, and only then removed
//! from where it was (a crash leaves it in both places; the copy is done again). The link
//! is made under a temporary name ([`NEW`]) and put in place by a rename, or, for a
//! directory (which a rename cannot replace with a link), by an exchange
//! (`renameat2(RENAME_EXCHANGE)`) of the link and the emptied directory. Where the file
//! system has no exchange, the emptied directory is renamed aside ([`OLD`]) and the link
//! renamed in: between the two renames PGDATA has no `pg_wal`, only the link under
//! [`NEW`], which the next run renames in first (PostgreSQL is never started before).
//! Files found in a directory left aside are moved like those of `pg_wal`.
//!
//! Without a WAL directory (PVC storage, a template without `pgwal`), WAL stays in PGDATA;
//! a `pg_wal` link to a path that does not exist here is a problem said in the report,
//! never something papered over.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The link PostgreSQL follows.
pub const PG_WAL: &str = "pg_wal";
/// The link being put in place (beside `pg_wal` in PGDATA).
pub const NEW: &str = ".pg_wal.pgml-new";
/// An emptied `pg_wal` directory renamed aside (no exchange on this file system).
pub const OLD: &str = ".pg_wal.pgml-old";

/// One name in PGDATA, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Missing,
    /// A real directory: the files below it and its subdirectories (paths relative to
    /// it; subdirectories deepest first).
    Dir {
        files: Vec<PathBuf>,
        dirs: Vec<PathBuf>,
    },
    /// A symlink: where it points, whether that is this instance's WAL directory (the
    /// same directory, however named), and whether it exists at all.
    Link {
        target: PathBuf,
        is_wal_dir: bool,
        exists: bool,
    },
    /// Something else (a file, a directory holding what is neither file nor directory).
    Other(String),
}

/// What [`next`] decides from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub pg_wal: Entry,
    pub new: Entry,
    pub old: Entry,
    /// This instance's WAL directory exists.
    pub wal_dir_exists: bool,
    /// It holds a WAL segment (a 24-hex-digit name).
    pub wal_dir_segments: bool,
}

/// A place WAL files are moved from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    PgWal,
    New,
    Old,
}

impl From {
    fn name(self) -> &'static str {
        match self {
            From::PgWal => PG_WAL,
            From::New => NEW,
            From::Old => OLD,
        }
    }
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Creates the WAL directory (PostgreSQL's, mode 0700).
    MakeWalDir,
    /// Moves one file (relative path) from a directory into the WAL directory.
    MoveFile { from: From, file: PathBuf },
    /// Removes an empty directory (relative path; empty: the directory itself).
    RemoveDir { from: From, dir: PathBuf },
    /// Makes [`NEW`] a link to the WAL directory (replacing what link is there).
    MakeNew,
    /// Removes a [`NEW`] link that is not needed.
    RemoveNew,
    /// `pg_wal` is an empty directory and [`NEW`] the link: exchanges them (or, where
    /// the file system cannot, renames the directory to [`OLD`] and the link to
    /// `pg_wal`).
    Swap,
    /// Renames [`NEW`] (the link) to `pg_wal`, replacing a link to elsewhere or filling
    /// a `pg_wal` that is missing.
    RenameNew,
}

/// What [`next`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Done,
    Step(Step),
    /// Why PostgreSQL must not start on this PGDATA as it is.
    Problem(String),
}

/// Whether `name` is a WAL segment's (24 hex digits).
pub fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit())
}

/// The next step towards `pg_wal` being a link to `wal_dir` (or, without one, towards
/// nothing: it is only checked). Pure.
pub fn next(wal_dir: Option<&Path>, s: &Seen) -> Next {
    let Some(wal_dir) = wal_dir else {
        return without_wal_dir(s);
    };
    // A link set to be renamed in while `pg_wal` is missing: first, so that PGDATA is
    // without `pg_wal` as briefly as can be.
    if s.pg_wal == Entry::Missing
        && let Entry::Link {
            is_wal_dir: true, ..
        } = s.new
    {
        return Next::Step(Step::RenameNew);
    }
    // A directory left aside, or left under the link's name by an exchange: its files
    // (there should be none) into the WAL directory, then it goes.
    for (from, e) in [(From::Old, &s.old), (From::New, &s.new)] {
        if let Entry::Dir { files, dirs } = e {
            return Next::Step(empty_dir(from, files, dirs, s.wal_dir_exists));
        }
        if let Entry::Other(what) = e {
            return Next::Problem(format!(
                "PGDATA/{} is {what}: not a link or directory this manager makes; remove it",
                from.name()
            ));
        }
    }
    if let Entry::Link { .. } = s.old {
        return Next::Problem(format!(
            "PGDATA/{OLD} is a link: not something this manager makes; remove it"
        ));
    }
    match &s.pg_wal {
        Entry::Link {
            is_wal_dir: true, ..
        } => match s.new {
            Entry::Missing => Next::Done,
            _ => Next::Step(Step::RemoveNew),
        },
        Entry::Link { target, exists, .. } => {
            // A copy of another instance's data (a snapshot, restored here): its WAL is
            // on this pool's pgwal dataset at the same place, which is this instance's
            // WAL directory. Without a segment there, the WAL is not here.
            if !s.wal_dir_segments {
                let there = if *exists {
                    "it exists here, but is not this instance's WAL directory"
                } else {
                    "it does not exist here"
                };
                return Next::Problem(format!(
                    "PGDATA/pg_wal links to {} ({there}), and this instance's WAL directory {} holds no WAL segment: the data directory's WAL is not on this instance; not starting",
                    target.display(),
                    wal_dir.display()
                ));
            }
            match s.new {
                Entry::Link {
                    is_wal_dir: true, ..
                } => Next::Step(Step::RenameNew),
                _ => Next::Step(Step::MakeNew),
            }
        }
        Entry::Dir { files, dirs } => {
            if !files.is_empty() || !dirs.is_empty() {
                return Next::Step(empty_dir(From::PgWal, files, dirs, s.wal_dir_exists));
            }
            if !s.wal_dir_exists {
                return Next::Step(Step::MakeWalDir);
            }
            match s.new {
                Entry::Link {
                    is_wal_dir: true, ..
                } => Next::Step(Step::Swap),
                _ => Next::Step(Step::MakeNew),
            }
        }
        Entry::Missing => Next::Problem(format!(
            "PGDATA has no pg_wal{}: not starting (its WAL would be missing)",
            match &s.new {
                Entry::Link { target, .. } => format!(
                    " ({NEW} links to {}, not to this instance's WAL directory {})",
                    target.display(),
                    wal_dir.display()
                ),
                _ => String::new(),
            }
        )),
        Entry::Other(what) => Next::Problem(format!(
            "PGDATA/pg_wal is {what}, neither a directory nor a link: not starting"
        )),
    }
}

/// The next step in emptying a directory into the WAL directory.
fn empty_dir(from: From, files: &[PathBuf], dirs: &[PathBuf], wal_dir_exists: bool) -> Step {
    if !files.is_empty() && !wal_dir_exists {
        return Step::MakeWalDir;
    }
    match (files.first(), dirs.first()) {
        (Some(f), _) => Step::MoveFile {
            from,
            file: f.clone(),
        },
        (None, Some(d)) => Step::RemoveDir {
            from,
            dir: d.clone(),
        },
        // pg_wal itself stays until the link replaces it.
        (None, None) => Step::RemoveDir {
            from,
            dir: PathBuf::new(),
        },
    }
}

fn without_wal_dir(s: &Seen) -> Next {
    if let Entry::Dir { files, .. } = &s.old
        && !files.is_empty()
    {
        return Next::Problem(format!(
            "PGDATA/{OLD} holds WAL files, and this instance has no WAL directory (no pgwal dataset) to move them to: not starting"
        ));
    }
    match &s.pg_wal {
        Entry::Dir { .. } => Next::Done,
        // Someone's own link, to a directory that is here: left as it is.
        Entry::Link { exists: true, .. } => Next::Done,
        Entry::Link { target, .. } => Next::Problem(format!(
            "PGDATA/pg_wal links to {}, which does not exist on this instance, and this instance has no WAL directory (no pgwal dataset in its storage): the data directory was copied from an instance whose WAL was on its pgwal dataset; not starting",
            target.display()
        )),
        Entry::Missing => {
            Next::Problem("PGDATA has no pg_wal: not starting (its WAL would be missing)".into())
        }
        Entry::Other(what) => Next::Problem(format!(
            "PGDATA/pg_wal is {what}, neither a directory nor a link: not starting"
        )),
    }
}

/// Observes PGDATA's `pg_wal`, the temporary names, and the WAL directory.
pub fn observe(pgdata: &Path, wal_dir: Option<&Path>) -> anyhow::Result<Seen> {
    let wal_id = wal_dir.and_then(|w| std::fs::metadata(w).ok().filter(|m| m.is_dir()));
    // Without a WAL directory pg_wal's files are not looked at (nothing moves them).
    let list = wal_dir.is_some();
    let entry = |name: &str, list: bool| entry(&pgdata.join(name), wal_id.as_ref(), list);
    let (wal_dir_exists, wal_dir_segments) = match (wal_dir, &wal_id) {
        (Some(w), Some(_)) => {
            let mut segments = false;
            for e in std::fs::read_dir(w).with_context(|| format!("reading {}", w.display()))? {
                let e = e?;
                if is_segment(&e.file_name().to_string_lossy()) && e.file_type()?.is_file() {
                    segments = true;
                    break;
                }
            }
            (true, segments)
        }
        _ => (false, false),
    };
    Ok(Seen {
        pg_wal: entry(PG_WAL, list)?,
        new: entry(NEW, true)?,
        old: entry(OLD, true)?,
        wal_dir_exists,
        wal_dir_segments,
    })
}

fn entry(path: &Path, wal_dir: Option<&std::fs::Metadata>, list: bool) -> anyhow::Result<Entry> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Entry::Missing),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        let resolved = std::fs::metadata(path).ok();
        let is_wal_dir = match (&resolved, wal_dir) {
            (Some(r), Some(w)) => r.is_dir() && r.dev() == w.dev() && r.ino() == w.ino(),
            _ => false,
        };
        return Ok(Entry::Link {
            target,
            is_wal_dir,
            exists: resolved.is_some(),
        });
    }
    if !meta.is_dir() {
        return Ok(Entry::Other("a file".into()));
    }
    let (mut files, mut dirs) = (vec![], vec![]);
    let mut todo = if list { vec![PathBuf::new()] } else { vec![] };
    while let Some(rel) = todo.pop() {
        let here = path.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&here)
            .with_context(|| format!("reading {}", here.display()))?
            .collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let r = rel.join(e.file_name());
            let t = e.file_type()?;
            if t.is_dir() {
                dirs.push(r.clone());
                todo.push(r);
            } else if t.is_file() {
                files.push(r);
            } else {
                return Ok(Entry::Other(format!(
                    "a directory holding {}, neither file nor directory",
                    path.join(&r).display()
                )));
            }
        }
    }
    // Deepest first, so that each is empty when its turn comes.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    Ok(Entry::Dir { files, dirs })
}

/// Where steps act: PGDATA, the WAL directory, and who owns what is made.
pub struct Place<'a> {
    pub pgdata: &'a Path,
    pub wal_dir: &'a Path,
    /// postgres's uid and gid when this process is root.
    pub owner: Option<(u32, u32)>,
    /// Swap with `RENAME_EXCHANGE` where the file system has it (false: always the two
    /// renames, as where it has not).
    pub exchange: bool,
}

impl Place<'_> {
    fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Makes `dir` (and the folders it is in, below the WAL directory) as postgres's, 0700.
fn make_dir(p: &Place, dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir != p.wal_dir {
        make_dir(p, parent(dir))?;
    }
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    p.give(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    sync_dir(parent(dir))
}

/// Carries out one step.
pub fn apply(p: &Place, step: &Step) -> anyhow::Result<()> {
    let pgdata = p.pgdata;
    match step {
        Step::MakeWalDir => make_dir(p, p.wal_dir),
        Step::MoveFile { from, file } => move_file(p, &pgdata.join(from.name()), file),
        Step::RemoveDir { from, dir } => {
            let d = pgdata.join(from.name()).join(dir);
            // Never recursive: only an empty directory goes.
            std::fs::remove_dir(&d).with_context(|| format!("removing {}", d.display()))?;
            sync_dir(parent(&d))
        }
        Step::MakeNew => {
            let new = pgdata.join(NEW);
            match std::fs::symlink_metadata(&new) {
                Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&new)?,
                Ok(_) => bail!("{} is not a link: not replacing it", new.display()),
                Err(_) => {}
            }
            std::os::unix::fs::symlink(p.wal_dir, &new)
                .with_context(|| format!("linking {} to {}", new.display(), p.wal_dir.display()))?;
            p.give(&new)?;
            sync_dir(pgdata)
        }
        Step::RemoveNew => {
            let new = pgdata.join(NEW);
            if !std::fs::symlink_metadata(&new)?.file_type().is_symlink() {
                bail!("{} is not a link: not removing it", new.display());
            }
            std::fs::remove_file(&new)?;
            sync_dir(pgdata)
        }
        Step::Swap => {
            let (new, pg_wal) = (pgdata.join(NEW), pgdata.join(PG_WAL));
            let swapped = if p.exchange {
                exchange(&new, &pg_wal)
            } else {
                Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            };
            match swapped {
                Ok(()) => {}
                Err(e) if exchange_unsupported(&e) => {
                    tracing::info!(error = %e, "no RENAME_EXCHANGE here: pg_wal set aside, then the link renamed in");
                    std::fs::rename(&pg_wal, pgdata.join(OLD))
                        .with_context(|| format!("renaming {} aside", pg_wal.display()))?;
                    sync_dir(pgdata)?;
                    pgml_runtime::failpoint("instance.wal-between-renames");
                    std::fs::rename(&new, &pg_wal)
                        .with_context(|| format!("renaming {} to pg_wal", new.display()))?;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("exchanging {} and {}", new.display(), pg_wal.display())
                    });
                }
            }
            sync_dir(pgdata)
        }
        Step::RenameNew => {
            let (new, pg_wal) = (pgdata.join(NEW), pgdata.join(PG_WAL));
            if std::fs::symlink_metadata(&pg_wal).is_ok_and(|m| !m.file_type().is_symlink()) {
                bail!("{} is not a link: not replacing it", pg_wal.display());
            }
            std::fs::rename(&new, &pg_wal)
                .with_context(|| format!("renaming {} to pg_wal", new.display()))?;
            sync_dir(pgdata)
        }
    }
}

/// Copies `dir/file` to the WAL directory under a temporary name, syncs it, renames it to
/// its name there (replacing what is there: the file being moved is the one PostgreSQL
/// wrote last), syncs that directory, then removes the original.
fn move_file(p: &Place, dir: &Path, file: &Path) -> anyhow::Result<()> {
    let src = dir.join(file);
    let dst = p.wal_dir.join(file);
    let dst_dir = parent(&dst).to_path_buf();
    make_dir(p, &dst_dir)?;
    let name = dst.file_name().context("a file has a name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".pgml-tmp");
    let tmp = dst_dir.join(tmp_name);
    {
        let mut from =
            std::fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        std::io::copy(&mut from, &mut to)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        to.flush()?;
        to.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::set_permissions(&tmp, std::fs::metadata(&src)?.permissions())?;
    p.give(&tmp)?;
    std::fs::rename(&tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
    sync_dir(&dst_dir)?;
    pgml_runtime::failpoint("instance.wal-file-copied");
    std::fs::remove_file(&src).with_context(|| format!("removing {}", src.display()))?;
    sync_dir(parent(&src))
}

/// `renameat2(a, b, RENAME_EXCHANGE)`: `a` and `b` swap names at once.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn exchange_unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|c| [libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP].contains(&c))
}

/// What a start would meet: None when `pg_wal` is as it should be, else what to do or
/// why not (for the decision; nothing is changed).
pub fn check(pgdata: &Path, wal_dir: Option<&Path>) -> Next {
    match observe(pgdata, wal_dir) {
        Ok(s) => next(wal_dir, &s),
        Err(e) => Next::Problem(format!("looking at PGDATA/pg_wal: {e:#}")),
    }
}

/// Steps until done (`Ok(n)`: how many were taken) or a problem (an error saying it).
/// `budget` caps the steps (tests stop it part-way, as a crash would).
pub fn converge(p: &Place, budget: usize) -> anyhow::Result<usize> {
    for n in 0..budget {
        let seen = observe(p.pgdata, Some(p.wal_dir))?;
        match next(Some(p.wal_dir), &seen) {
            Next::Done => return Ok(n),
            Next::Problem(why) => bail!(why),
            Next::Step(step) => {
                tracing::debug!(?step, "pg_wal");
                pgml_runtime::failpoint("instance.wal-step");
                apply(p, &step).with_context(|| format!("{step:?}"))?;
            }
        }
    }
    Ok(budget)
}

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
