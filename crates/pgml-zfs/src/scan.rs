//! The `scan:` lines of `zpool status` (zfs-fuse: `scrub:`), read against the exact formats
//! OpenZFS 2.1–2.3 and zfs-fuse print them in (`print_scan_scrub_resilver_status`,
//! `print_rebuild_status_impl` and `print_err_scrub_status` in OpenZFS's `zpool_main.c`;
//! `print_scrub_status` in zfs-fuse's).
//!
//! Nothing is guessed from a keyword: a scan is finished only when its whole line reads as
//! a finished one, date included. Anything else — a line cut short, numbers printed in
//! another locale (`1,23G`, `14,91% done`), a newer ZFS's wording — has the state
//! [`ScanState::Unknown`], which counts as "may still be running" wherever it matters.

use serde::{Deserialize, Serialize};

use crate::size::parse_bytes;

/// What a scan does, from its first words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanKind {
    Scrub,
    /// A resilver, or a sequential rebuild (`resilver (mirror-0) in progress since …`).
    Resilver,
    /// `zpool scrub -e` (OpenZFS 2.2+): only the blocks in the error log.
    ErrorScrub,
    /// The text starts with no word we know (cut short, or a wording we have never seen):
    /// it may be a resilver.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanState {
    InProgress,
    /// A scrub paused with `zpool scrub -p` (resilvers cannot be paused).
    Paused,
    Finished,
    Canceled,
    /// The text could not be read in full: as far as anyone can tell, still running.
    Unknown,
}

impl ScanState {
    /// Finished or canceled: known to be over. `Unknown` is not.
    pub fn is_over(self) -> bool {
        matches!(self, ScanState::Finished | ScanState::Canceled)
    }
}

/// One `scan:` entry (OpenZFS prints one for a scrub and another for a resilver or each
/// rebuild), when a scan has ever run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    pub kind: ScanKind,
    pub state: ScanState,
    /// `14.91` for `14.91% done`; `None` when not printed or not in the C locale's format.
    pub percent_done: Option<f64>,
    /// `with N errors` of a finished (or zfs-fuse's stopped) scan.
    pub errors: Option<u64>,
    /// The whole text, continuation lines joined by spaces.
    pub text: String,
}

impl Scan {
    /// A resilver that may still be running: one in progress, or any scan whose text could
    /// not be read in full (it may be a resilver, and it is not known to be over).
    pub fn may_be_resilvering(&self) -> bool {
        matches!(self.kind, ScanKind::Resilver | ScanKind::Unknown) && !self.state.is_over()
    }

    /// Reads one entry: the text after `scan:` and its continuation lines. `None` for
    /// `none requested`.
    pub(crate) fn parse(lines: &[String]) -> Option<Scan> {
        let lines: Vec<&str> = lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        let text = lines.join(" ");
        if text == "none requested" {
            return None;
        }
        // `scan warning: skipped blocks that are only referenced by the checkpoint.` follows
        // the scan it is about; it says nothing of its state.
        let read: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.starts_with("scan warning:"))
            .collect();
        let (kind, state, errors) = read_state(&read);
        Some(Scan {
            kind,
            state,
            percent_done: percent_done(&read),
            errors,
            text,
        })
    }
}

/// Kind, state and (finished) error count, from the first line and whether more follow.
fn read_state(lines: &[&str]) -> (ScanKind, ScanState, Option<u64>) {
    let Some((first, more)) = lines.split_first() else {
        return (ScanKind::Unknown, ScanState::Unknown, None);
    };
    let words: Vec<&str> = first.split_whitespace().collect();
    match state_of(&words) {
        // A finished or canceled scan is one line; anything after it is not understood.
        Some((kind, state, _)) if state.is_over() && !more.is_empty() => {
            (kind, ScanState::Unknown, None)
        }
        Some(read) => read,
        None => (kind_of(&words), ScanState::Unknown, None),
    }
}

/// The kind named by the first words, for text that did not read in full.
fn kind_of(words: &[&str]) -> ScanKind {
    match words {
        ["error", "scrub", ..] | ["scrubbed", ..] => ScanKind::ErrorScrub,
        ["scrub", ..] => ScanKind::Scrub,
        ["resilver" | "resilvered", ..] => ScanKind::Resilver,
        _ => ScanKind::Unknown,
    }
}

fn state_of(w: &[&str]) -> Option<(ScanKind, ScanState, Option<u64>)> {
    use ScanKind::*;
    use ScanState::*;
    match w {
        // `resilvered 8.21G in 00:03:17 with 0 errors on <date>`; a rebuild names its vdev:
        // `resilvered (draid2-0) 4.1G in …`.
        ["resilvered", v, size, rest @ ..] if is_vdev(v) => {
            done_with_errors(size, rest).map(|n| (Resilver, Finished, Some(n)))
        }
        ["resilvered", size, rest @ ..] => {
            done_with_errors(size, rest).map(|n| (Resilver, Finished, Some(n)))
        }
        // `scrubbed 12 error blocks in 0 days 00:00:01 on <date>` (error scrub, 2.2+).
        ["scrubbed", n, "error", "blocks", "in", rest @ ..] => {
            let n = integer(n)?;
            match after_duration(rest)? {
                ["on", date @ ..] if is_ctime(date) => Some((ErrorScrub, Finished, Some(n))),
                _ => None,
            }
        }
        _ => {
            let (kind, rest) = kind_prefix(w)?;
            match rest {
                ["in", "progress", "since", date @ ..] if is_ctime(date) => {
                    Some((kind, InProgress, None))
                }
                ["paused", "since", date @ ..] if kind != Resilver && is_ctime(date) => {
                    Some((kind, Paused, None))
                }
                ["canceled", "on", date @ ..] if is_ctime(date) => Some((kind, Canceled, None)),
                // `scrub repaired 0B in 00:03:26 with 0 errors on <date>`
                ["repaired", size, rest @ ..] if kind == Scrub => {
                    done_with_errors(size, rest).map(|n| (Scrub, Finished, Some(n)))
                }
                // zfs-fuse: `resilver in progress for 0h0m, 40.77% done, 0h0m to go`
                ["in", "progress", "for", hm, ..]
                    if kind != ErrorScrub && is_hm(hm.trim_end_matches(',')) =>
                {
                    Some((kind, InProgress, None))
                }
                // zfs-fuse: `resilver completed after 0h0m with 0 errors on <date>`; a scrub
                // stopped by `zpool scrub -s` says `stopped`.
                [
                    how @ ("completed" | "stopped"),
                    "after",
                    hm,
                    "with",
                    n,
                    "errors",
                    "on",
                    date @ ..,
                ] if kind != ErrorScrub && is_hm(hm) && is_ctime(date) => {
                    let state = if *how == "completed" {
                        Finished
                    } else {
                        Canceled
                    };
                    Some((kind, state, Some(integer(n)?)))
                }
                _ => None,
            }
        }
    }
}

/// `scrub …`, `error scrub …`, `resilver …`, `resilver (mirror-0) …`: the kind and the rest.
fn kind_prefix<'a>(w: &'a [&'a str]) -> Option<(ScanKind, &'a [&'a str])> {
    match w {
        ["error", "scrub", rest @ ..] => Some((ScanKind::ErrorScrub, rest)),
        ["scrub", rest @ ..] => Some((ScanKind::Scrub, rest)),
        ["resilver", v, rest @ ..] if is_vdev(v) => Some((ScanKind::Resilver, rest)),
        ["resilver", rest @ ..] => Some((ScanKind::Resilver, rest)),
        _ => None,
    }
}

/// `<size> in <duration> with <n> errors on <date>`, all of it: the error count.
fn done_with_errors(size: &str, rest: &[&str]) -> Option<u64> {
    if !is_bytes(size) {
        return None;
    }
    let ["in", rest @ ..] = rest else {
        return None;
    };
    match after_duration(rest)? {
        ["with", n, "errors", "on", date @ ..] if is_ctime(date) => integer(n),
        _ => None,
    }
}

/// What follows `hh:mm:ss` or `N days hh:mm:ss` (OpenZFS's `secs_to_dhms`).
fn after_duration<'a>(w: &'a [&'a str]) -> Option<&'a [&'a str]> {
    match w {
        [n, "days", hms, rest @ ..] if integer(n).is_some() && is_hms(hms) => Some(rest),
        [hms, rest @ ..] if is_hms(hms) => Some(rest),
        _ => None,
    }
}

/// `(draid2-0)`, `(mirror-0)`: the vdev of a sequential rebuild.
fn is_vdev(w: &str) -> bool {
    w.len() > 2 && w.starts_with('(') && w.ends_with(')')
}

/// A size as `zfs_nicebytes` prints it in the C locale: `0B`, `616K`, `8.21G`.
fn is_bytes(w: &str) -> bool {
    !w.contains(',') && parse_bytes(w).is_some()
}

fn integer(w: &str) -> Option<u64> {
    (!w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
        .then(|| w.parse().ok())
        .flatten()
}

fn digits(w: &str, n: usize) -> bool {
    w.len() == n && w.bytes().all(|b| b.is_ascii_digit())
}

/// `01:14:01`.
fn is_hms(w: &str) -> bool {
    let parts: Vec<&str> = w.split(':').collect();
    parts.len() == 3 && parts.iter().all(|p| digits(p, 2))
}

/// zfs-fuse's `0h0m`, `12h34m`.
fn is_hm(w: &str) -> bool {
    let Some((h, m)) = w.strip_suffix('m').and_then(|w| w.split_once('h')) else {
        return false;
    };
    integer(h).is_some() && integer(m).is_some()
}

/// `ctime(3)` in the C locale, as five words: `Sun Mar 8 01:14:01 2026`.
fn is_ctime(w: &[&str]) -> bool {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let [day, month, date, hms, year] = w else {
        return false;
    };
    DAYS.contains(day)
        && MONTHS.contains(month)
        && integer(date).is_some_and(|d| (1..=31).contains(&d) && date.len() <= 2)
        && is_hms(hms)
        && digits(year, 4)
}

/// `14.91` from `… 14.91% done …`, only in the C locale's `%.2f` form: `14,91% done` (or a
/// number cut short) gives `None`, never `91`.
fn percent_done(lines: &[&str]) -> Option<f64> {
    let words: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
    let at = words
        .windows(2)
        .position(|w| w[0].ends_with('%') && w[1].starts_with("done"))?;
    let number = words[at].strip_suffix('%')?;
    let (whole, fraction) = number.split_once('.')?;
    (integer(whole).is_some() && digits(fraction, 2))
        .then(|| number.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Option<Scan> {
        let lines: Vec<String> = text.lines().map(String::from).collect();
        Scan::parse(&lines)
    }

    fn read(text: &str) -> (ScanKind, ScanState, Option<u64>) {
        let s = scan(text).unwrap();
        (s.kind, s.state, s.errors)
    }

    use ScanKind::*;
    use ScanState::*;

    // Lines in the formats of OpenZFS 2.1–2.3's zpool_main.c (the real outputs these come
    // from are in tests/fixtures/public; see its README).
    #[test]
    fn every_form_openzfs_prints() {
        assert_eq!(scan("none requested"), None);
        assert_eq!(
            read("scrub repaired 0B in 00:03:26 with 0 errors on Sun Mar  8 00:24:02 2026"),
            (Scrub, Finished, Some(0))
        );
        assert_eq!(
            read("resilvered 2.31T in 1 days 02:55:32 with 3 errors on Sat Dec 24 02:33:08 2022"),
            (Resilver, Finished, Some(3))
        );
        assert_eq!(
            read(
                "resilvered (draid2-0) 4.10G in 00:01:02 with 0 errors on Mon Oct  6 10:00:00 2025"
            ),
            (Resilver, Finished, Some(0))
        );
        assert_eq!(
            read("scrub canceled on Mon Jul 16 16:30:35 2018"),
            (Scrub, Canceled, None)
        );
        assert_eq!(
            read("resilver (mirror-0) canceled on Mon Jul 16 16:30:35 2018"),
            (Resilver, Canceled, None)
        );
        assert_eq!(
            read(
                "resilver (mirror-0) in progress since Mon Jul 16 16:30:35 2018\n\
                 \t1.00G / 2.00G scanned at 10.0M/s, 1.00G / 2.00G issued at 10.0M/s\n\
                 \t1.00G resilvered, 50.00% done, 00:01:40 to go"
            ),
            (Resilver, InProgress, None)
        );
        assert_eq!(
            read(
                "error scrub paused since Mon Jul 16 16:30:35 2018\n\terror scrub started on Mon Jul 16 16:00:00 2018\n\t12.50% done, issued I/O for 1 error blocks"
            ),
            (ErrorScrub, Paused, None)
        );
        assert_eq!(
            read("scrubbed 12 error blocks in 0 days 00:00:01 on Mon Jul 16 16:30:35 2018"),
            (ErrorScrub, Finished, Some(12))
        );
        let s = scan(
            "scrub repaired 0B in 00:00:01 with 0 errors on Mon Jul 16 16:30:35 2018\n    \
             scan warning: skipped blocks that are only referenced by the checkpoint.",
        )
        .unwrap();
        assert_eq!((s.kind, s.state), (Scrub, Finished));
    }

    #[test]
    fn zfs_fuse_forms() {
        assert_eq!(
            read("resilver completed after 0h0m with 0 errors on Fri Nov 27 02:13:01 2026"),
            (Resilver, Finished, Some(0))
        );
        assert_eq!(
            read("scrub stopped after 1h2m with 0 errors on Fri Nov 27 02:13:01 2026"),
            (Scrub, Canceled, Some(0))
        );
        let s = scan("resilver in progress for 0h0m, 40.77% done, 0h0m to go").unwrap();
        assert_eq!(
            (s.kind, s.state, s.percent_done),
            (Resilver, InProgress, Some(40.77))
        );
    }

    #[test]
    fn what_is_not_read_in_full_is_never_over() {
        for text in [
            // Cut short anywhere in a finished line.
            "resilvered 8.21G in 00:03:17 with 0 errors on Sun Mar  8 01:14",
            "resilvered 8.21G in 00:03:17 with 0 err",
            "resilvered",
            "resilver in prog",
            "resilver (draid2-0) canceled on",
            // Another locale's numbers, or an older release's duration.
            "resilvered 1,73T in 18h26m with 1 errors on Fri Jul  6 06:20:41 2018",
            "resilvered 8,21G in 00:03:17 with 0 errors on Sun Mar  8 01:14:01 2026",
            // A finished line with something after it.
            "resilvered 8.21G in 00:03:17 with 0 errors on Sun Mar  8 01:14:01 2026\n\tmore",
            // Words nobody printed yet.
            "rebuilt 8.21G in 00:03:17 with 0 errors on Sun Mar  8 01:14:01 2026",
            "resi",
            "",
        ] {
            let s = scan(text).unwrap();
            assert_eq!(s.state, ScanState::Unknown, "{text:?}");
            assert!(s.may_be_resilvering(), "{text:?}");
        }
        // A scrub's own words say it is no resilver, read in full or not.
        let s = scan("scrub repaired 0B in 00:0").unwrap();
        assert_eq!((s.kind, s.state), (Scrub, ScanState::Unknown));
        assert!(!s.may_be_resilvering());
    }

    #[test]
    fn percentages_only_in_the_c_locale() {
        let p = |t: &str| scan(t).unwrap().percent_done;
        assert_eq!(
            p(
                "resilver in progress since Sun Mar  8 01:10:44 2026\n\t1.22G resilvered, 14.91% done, 00:02:49 to go"
            ),
            Some(14.91)
        );
        assert_eq!(
            p(
                "resilver in progress since Sun Mar  8 01:10:44 2026\n\t1,22G resilvered, 14,91% done, 00:02:49 to go"
            ),
            None
        );
        assert_eq!(
            p("resilver in progress since Sun Mar  8 01:10:44 2026\n\t1.22G resilvered, 14.9"),
            None
        );
    }
}
