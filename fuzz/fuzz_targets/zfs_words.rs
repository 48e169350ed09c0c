//! The small parsers: sizes, counts and percentages as `zpool`/`zfs` print them, pool,
//! dataset and device names, GUIDs, and the dialect probe's output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgml_zfs::size::{parse_bytes, parse_count, parse_percent};
use pgml_zfs::{DatasetName, DevicePath, Guid, HostPath, PoolName, detect};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = (parse_bytes(text), parse_count(text), parse_percent(text));
    if let Ok(p) = PoolName::new(text) {
        // A valid name survives being parsed again.
        assert_eq!(
            PoolName::new(p.as_str())
                .map(|q| q.as_str().to_owned())
                .ok(),
            Some(p.as_str().to_owned())
        );
    }
    if let Ok(d) = DatasetName::new(text) {
        let _ = d.pool();
        let _ = d.child("pgdata");
    }
    let _ = (
        DevicePath::new(text),
        HostPath::new(text),
        Guid::parse(text),
    );
    let (out, err) = text.split_once('\0').unwrap_or((text, ""));
    let code = data.first().map(|b| i32::from(*b) - 1);
    let _ = detect(code, out, err);
    let _ = detect(Some(0), out, err);
});
