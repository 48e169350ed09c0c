//! What the parser tests share.

use pgml_zfs::{PoolStatus, Scan, parse_status};

/// The one pool of a `zpool status` output.
pub fn one(out: &str) -> PoolStatus {
    let mut pools = parse_status(out).expect("parses");
    assert_eq!(pools.len(), 1);
    pools.remove(0)
}

/// The pool's one `scan:` entry.
pub fn only_scan(p: &PoolStatus) -> &Scan {
    assert_eq!(p.scans.len(), 1, "{:?}", p.scans);
    &p.scans[0]
}
