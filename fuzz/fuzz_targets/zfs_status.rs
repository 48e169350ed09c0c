//! `zpool status -P` and `zpool import` listings, OpenZFS and zfs-fuse alike: any text
//! parses to pools or to an error, never a panic, and whatever parses can be walked (layout,
//! members, volume ids, scan state) without one either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgml_zfs::{PoolStatus, ebs_volume_id, parse_import_list, parse_status};

fn walk(pools: &[PoolStatus]) {
    for p in pools {
        let _ = p.layout();
        let _ = p.resilvering();
        for m in p.members() {
            let _ = (m.path(), m.guid(), m.ebs_volume_id());
            for leaf in m.leaves() {
                if let Some(id) = leaf.ebs_volume_id() {
                    assert!(id.starts_with("vol-"), "volume id {id:?}");
                }
            }
        }
        let _ = p.state.as_str();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pools) = parse_status(text) {
        walk(&pools);
    }
    if let Ok(pools) = parse_import_list(text) {
        walk(&pools);
    }
    if let Some(id) = ebs_volume_id(text) {
        assert!(id.starts_with("vol-"), "volume id {id:?}");
    }
});
