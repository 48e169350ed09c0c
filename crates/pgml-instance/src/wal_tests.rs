use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

const SEG1: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";

fn dir(files: &[&str], dirs: &[&str]) -> Entry {
    Entry::Dir {
        files: files.iter().map(PathBuf::from).collect(),
        dirs: dirs.iter().map(PathBuf::from).collect(),
    }
}

fn link(target: &str, is_wal_dir: bool, exists: bool) -> Entry {
    Entry::Link {
        target: target.into(),
        is_wal_dir,
        exists,
    }
}

fn seen(pg_wal: Entry) -> Seen {
    Seen {
        pg_wal,
        new: Entry::Missing,
        old: Entry::Missing,
        wal_dir_exists: true,
        wal_dir_segments: false,
    }
}

const W: &str = "/var/lib/postgresql/wal/pg_wal";

fn next_w(s: &Seen) -> Next {
    next(Some(Path::new(W)), s)
}

#[test]
fn a_link_to_the_wal_directory_is_done_and_a_spare_new_link_goes() {
    let s = seen(link(W, true, true));
    assert_eq!(next_w(&s), Next::Done);
    let s = Seen {
        new: link(W, true, true),
        ..seen(link(W, true, true))
    };
    assert_eq!(next_w(&s), Next::Step(Step::RemoveNew));
}

#[test]
fn a_real_pg_wal_is_emptied_file_by_file_then_replaced_by_the_link() {
    // A pgBackRest restore's or pg_basebackup's pg_wal, into a WAL directory not made.
    let s = Seen {
        wal_dir_exists: false,
        ..seen(dir(&[SEG1, "archive_status/x.done"], &["archive_status"]))
    };
    assert_eq!(next_w(&s), Next::Step(Step::MakeWalDir));
    let s = seen(dir(&[SEG1, "archive_status/x.done"], &["archive_status"]));
    assert_eq!(
        next_w(&s),
        Next::Step(Step::MoveFile {
            from: From::PgWal,
            file: SEG1.into()
        })
    );
    let s = seen(dir(&[], &["archive_status"]));
    assert_eq!(
        next_w(&s),
        Next::Step(Step::RemoveDir {
            from: From::PgWal,
            dir: "archive_status".into()
        })
    );
    // Empty: pgBackRest restores pg_wal empty, and the WAL directory may not exist yet.
    let s = Seen {
        wal_dir_exists: false,
        ..seen(dir(&[], &[]))
    };
    assert_eq!(next_w(&s), Next::Step(Step::MakeWalDir));
    assert_eq!(next_w(&seen(dir(&[], &[]))), Next::Step(Step::MakeNew));
    let s = Seen {
        new: link("/elsewhere", false, false),
        ..seen(dir(&[], &[]))
    };
    assert_eq!(next_w(&s), Next::Step(Step::MakeNew));
    let s = Seen {
        new: link(W, true, true),
        ..seen(dir(&[], &[]))
    };
    assert_eq!(next_w(&s), Next::Step(Step::Swap));
}

#[test]
fn a_link_to_another_instances_path_is_pointed_here_only_when_the_wal_is_here() {
    let other = "/var/mnt/pgml/other-pool/pgwal/pg_wal";
    let s = Seen {
        wal_dir_segments: true,
        ..seen(link(other, false, false))
    };
    assert_eq!(next_w(&s), Next::Step(Step::MakeNew));
    let s = Seen {
        new: link(W, true, true),
        ..s
    };
    assert_eq!(next_w(&s), Next::Step(Step::RenameNew));
    // No segment here: the WAL is elsewhere; never pointed at an empty directory.
    for exists in [false, true] {
        let Next::Problem(why) = next_w(&seen(link(other, false, exists))) else {
            panic!("a problem");
        };
        assert!(why.contains(other) && why.contains(W), "{why}");
        assert!(why.contains("holds no WAL segment"), "{why}");
    }
}

#[test]
fn a_crash_between_the_two_renames_is_finished_first() {
    let s = Seen {
        new: link(W, true, true),
        old: dir(&[], &[]),
        ..seen(Entry::Missing)
    };
    assert_eq!(next_w(&s), Next::Step(Step::RenameNew));
    let s = Seen {
        old: dir(&[], &[]),
        ..seen(link(W, true, true))
    };
    assert_eq!(
        next_w(&s),
        Next::Step(Step::RemoveDir {
            from: From::Old,
            dir: PathBuf::new()
        })
    );
    // An exchange leaves the emptied directory under the link's name.
    let s = Seen {
        new: dir(&[], &[]),
        ..seen(link(W, true, true))
    };
    assert_eq!(
        next_w(&s),
        Next::Step(Step::RemoveDir {
            from: From::New,
            dir: PathBuf::new()
        })
    );
    // Files in a directory set aside are moved too, never dropped.
    let s = Seen {
        old: dir(&[SEG2], &[]),
        ..seen(link(W, true, true))
    };
    assert_eq!(
        next_w(&s),
        Next::Step(Step::MoveFile {
            from: From::Old,
            file: SEG2.into()
        })
    );
}

#[test]
fn a_missing_pg_wal_or_a_file_is_a_problem() {
    for s in [
        seen(Entry::Missing),
        Seen {
            new: link("/x", false, false),
            ..seen(Entry::Missing)
        },
        seen(Entry::Other("a file".into())),
    ] {
        assert!(matches!(next_w(&s), Next::Problem(_)), "{s:?}");
    }
}

#[test]
fn without_a_wal_directory_wal_stays_in_pgdata_and_a_dangling_link_is_said() {
    assert_eq!(next(None, &seen(dir(&[SEG1], &[]))), Next::Done);
    assert_eq!(next(None, &seen(link("/mine", false, true))), Next::Done);
    let Next::Problem(why) = next(None, &seen(link("/gone/pg_wal", false, false))) else {
        panic!("a problem");
    };
    assert!(why.contains("/gone/pg_wal"), "{why}");
    assert!(why.contains("does not exist"), "{why}");
    assert!(matches!(
        next(None, &seen(Entry::Missing)),
        Next::Problem(_)
    ));
    let s = Seen {
        old: dir(&[SEG1], &[]),
        ..seen(dir(&[], &[]))
    };
    assert!(matches!(next(None, &s), Next::Problem(_)));
}

#[test]
fn segment_names() {
    assert!(is_segment(SEG1));
    assert!(is_segment("00000002000000A1000000FF"));
    assert!(!is_segment("00000002.history"));
    assert!(!is_segment("000000010000000000000001.partial"));
}

// On files.

struct Bed {
    root: PathBuf,
    pgdata: PathBuf,
    wal: PathBuf,
    exchange: bool,
}

impl Bed {
    fn new(name: &str) -> Bed {
        let root = std::env::temp_dir().join(format!("pgml-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pgdata = root.join("data/pgdata");
        let wal = root.join("wal/pg_wal");
        std::fs::create_dir_all(&pgdata).unwrap();
        std::fs::create_dir_all(wal.parent().unwrap()).unwrap();
        Bed {
            root,
            pgdata,
            wal,
            exchange: true,
        }
    }

    /// As on a file system without `RENAME_EXCHANGE`.
    fn without_exchange(mut self) -> Bed {
        self.exchange = false;
        self
    }

    fn place(&self) -> Place<'_> {
        Place {
            pgdata: &self.pgdata,
            wal_dir: &self.wal,
            owner: None,
            exchange: self.exchange,
        }
    }

    fn write(&self, path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A restored PGDATA: WAL in a real pg_wal, with archive_status and a history file.
    fn restored(&self) -> BTreeMap<PathBuf, String> {
        let files: BTreeMap<PathBuf, String> = [
            (SEG1, "segment one"),
            (SEG2, "segment two"),
            ("00000002.history", "1\t0/3000000\tno recovery target"),
            ("archive_status/000000010000000000000001.done", ""),
            ("archive_status/000000010000000000000002.ready", ""),
        ]
        .into_iter()
        .map(|(f, t)| (PathBuf::from(f), t.to_string()))
        .collect();
        for (f, t) in &files {
            self.write(&self.pgdata.join(PG_WAL).join(f), t);
        }
        self.write(&self.pgdata.join("PG_VERSION"), "15\n");
        files
    }

    /// Every file below `dir` (following a link at the top), with its text; none when
    /// there is no `dir`.
    fn files(&self, dir: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        if !dir.exists() {
            return out;
        }
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
                let e = e.unwrap();
                let r = rel.join(e.file_name());
                if e.file_type().unwrap().is_dir() {
                    todo.push(r);
                } else {
                    out.insert(r.clone(), std::fs::read_to_string(dir.join(&r)).unwrap());
                }
            }
        }
        out
    }

    /// pg_wal is a link to the WAL directory, which holds exactly `want`, and nothing of
    /// the manager's is left in PGDATA.
    fn assert_converged(&self, want: &BTreeMap<PathBuf, String>) {
        let link = self.pgdata.join(PG_WAL);
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_link(&link).unwrap(), self.wal);
        assert_eq!(&self.files(&self.wal), want);
        assert_eq!(&self.files(&link), want);
        for name in [NEW, OLD] {
            assert!(
                std::fs::symlink_metadata(self.pgdata.join(name)).is_err(),
                "{name} left"
            );
        }
        assert_eq!(check(&self.pgdata, Some(&self.wal)), Next::Done);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn a_restored_pg_wal_moves_to_the_wal_directory() {
    let b = Bed::new("restored");
    let want = b.restored();
    let steps = converge(&b.place(), 1000).unwrap();
    assert!(steps > want.len(), "{steps}");
    b.assert_converged(&want);
    // Again: nothing to do.
    assert_eq!(converge(&b.place(), 1000).unwrap(), 0);
}

#[test]
fn a_crash_after_any_step_converges_on_the_next_run() {
    crash_after_any_step(true);
}

#[test]
fn a_crash_after_any_step_converges_without_exchange_too() {
    crash_after_any_step(false);
}

fn crash_after_any_step(exchange: bool) {
    let bed = |name: &str| {
        let b = Bed::new(&format!("{name}-{exchange}"));
        if exchange { b } else { b.without_exchange() }
    };
    let total = {
        let b = bed("count");
        b.restored();
        converge(&b.place(), 1000).unwrap()
    };
    for k in 0..total {
        let b = bed(&format!("crash-{k}"));
        let want = b.restored();
        assert_eq!(converge(&b.place(), k).unwrap(), k);
        // At every point PGDATA has pg_wal, or the link to rename in; no file is lost.
        let s = observe(&b.pgdata, Some(&b.wal)).unwrap();
        assert!(
            s.pg_wal != Entry::Missing
                || matches!(
                    s.new,
                    Entry::Link {
                        is_wal_dir: true,
                        ..
                    }
                ),
            "after {k} steps: {s:?}"
        );
        let mut have = b.files(&b.wal);
        for from in [PG_WAL, NEW, OLD] {
            let d = b.pgdata.join(from);
            if std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                have.extend(b.files(&d));
            }
        }
        for (f, t) in &want {
            assert_eq!(have.get(f), Some(t), "after {k} steps: {f:?}");
        }
        converge(&b.place(), 1000).unwrap();
        b.assert_converged(&want);
    }
}

#[test]
fn a_crash_inside_a_file_move_converges() {
    // Killed while copying: a partial temporary copy in the WAL directory.
    let b = Bed::new("partial");
    let want = b.restored();
    std::fs::create_dir_all(&b.wal).unwrap();
    b.write(&b.wal.join(format!(".{SEG1}.pgml-tmp")), "segm");
    // Killed after the rename, before the original was removed: in both places.
    b.write(&b.wal.join(SEG2), "segment two");
    converge(&b.place(), 1000).unwrap();
    b.assert_converged(&want);
}

#[test]
fn a_crash_between_the_fallbacks_two_renames_converges() {
    // No exchange on the file system: pg_wal renamed aside, killed before the link was
    // renamed in.
    let b = Bed::new("fallback").without_exchange();
    let want = b.restored();
    let p = b.place();
    converge(&p, 1000).unwrap();
    std::fs::remove_file(b.pgdata.join(PG_WAL)).unwrap();
    std::os::unix::fs::symlink(&b.wal, b.pgdata.join(NEW)).unwrap();
    std::fs::create_dir(b.pgdata.join(OLD)).unwrap();
    assert_eq!(check(&b.pgdata, Some(&b.wal)), Next::Step(Step::RenameNew));
    converge(&p, 1000).unwrap();
    b.assert_converged(&want);
}

#[test]
fn a_snapshot_of_another_instance_is_pointed_at_this_ones_wal() {
    let b = Bed::new("seeded");
    // The donor's link: its own path, not there on this instance.
    let other = b.root.join("other-pool/wal/pg_wal");
    std::os::unix::fs::symlink(&other, b.pgdata.join(PG_WAL)).unwrap();
    // The WAL directory holds nothing yet: a problem, and the link is left as it is.
    std::fs::create_dir_all(&b.wal).unwrap();
    let err = converge(&b.place(), 1000).unwrap_err().to_string();
    assert!(err.contains("holds no WAL segment"), "{err}");
    assert_eq!(std::fs::read_link(b.pgdata.join(PG_WAL)).unwrap(), other);
    // The pool's pgwal dataset came with the snapshot: the same files at the same place.
    let want: BTreeMap<PathBuf, String> = [(PathBuf::from(SEG1), "one".to_string())].into();
    b.write(&b.wal.join(SEG1), "one");
    converge(&b.place(), 1000).unwrap();
    b.assert_converged(&want);
}

#[test]
fn without_a_wal_directory_a_dangling_link_stops_the_start_and_is_left_alone() {
    let b = Bed::new("nowal");
    let other = b.root.join("other-pool/wal/pg_wal");
    std::os::unix::fs::symlink(&other, b.pgdata.join(PG_WAL)).unwrap();
    let Next::Problem(why) = check(&b.pgdata, None) else {
        panic!("a problem");
    };
    assert!(why.contains(&other.display().to_string()), "{why}");
    assert_eq!(std::fs::read_link(b.pgdata.join(PG_WAL)).unwrap(), other);
    std::fs::remove_file(b.pgdata.join(PG_WAL)).unwrap();
    std::fs::create_dir(b.pgdata.join(PG_WAL)).unwrap();
    assert_eq!(check(&b.pgdata, None), Next::Done);
}
