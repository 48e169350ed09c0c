//! `zpool list -H[p]` with each column set the agent asks for or a dialect prints by
//! default, and `zfs get`/`zpool get -H[p]`: parse or error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgml_zfs::{
    LIST_COLUMNS, OPENZFS_DEFAULT_COLUMNS, ZFS_FUSE_DEFAULT_COLUMNS, parse_zfs_get,
    parse_zpool_get, parse_zpool_list,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let columns: &[&str] = match selector % 3 {
        0 => LIST_COLUMNS,
        1 => OPENZFS_DEFAULT_COLUMNS,
        _ => ZFS_FUSE_DEFAULT_COLUMNS,
    };
    let _ = parse_zpool_list(text, columns);
    for values in [parse_zfs_get(text), parse_zpool_get(text)]
        .into_iter()
        .flatten()
    {
        for v in &values {
            let _ = v.bytes();
        }
        let _ = pgml_zfs::list::by_name(&values);
    }
});
