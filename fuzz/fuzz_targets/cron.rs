//! The cron language of `spec.snapshots.schedule` and the pgBackRest schedules: any text
//! parses or is refused with a message, and a parsed schedule agrees with itself: the next
//! slot after `t` is later than `t`, is a slot (the last one at or before it is itself), and
//! no slot lies between `t` and it.
#![no_main]

use k8s_openapi::jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use pgml_api::cron::Cron;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (when, expr) = data.split_at(8);
    let Ok(expr) = std::str::from_utf8(expr) else {
        return;
    };
    let cron = match Cron::parse(expr) {
        Ok(c) => c,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    // Any second from 1970 to about 2100.
    let secs = (u64::from_le_bytes(when.try_into().unwrap()) % 4_102_444_800) as i64;
    let t = Timestamp::from_second(secs).unwrap();
    if let Some(next) = cron.next_after(t) {
        assert!(next > t, "{expr:?}: next {next} not after {t}");
        assert_eq!(
            cron.last_at_or_before(next),
            Some(next),
            "{expr:?}: {next} is not a slot"
        );
        if let Some(prev) = cron.last_at_or_before(t) {
            assert!(prev <= t);
            if let Some(after_prev) = cron.next_after(prev) {
                assert_eq!(after_prev, next, "{expr:?}: from {prev} and from {t}");
            }
        }
        assert_eq!(cron.latest_due(t, next), Some(next));
    }
});
