//! Device names on EC2 instances: which name to ask AttachVolume for, and the names asked
//! for but not yet visible in a DescribeInstances, shared by every reconcile in the process
//! (pools on one instance reconcile side by side). Pure: time comes in as an argument.

use std::collections::{BTreeMap, BTreeSet};

/// The device name to ask for: member `index`'s hint unless another device holds it, else
/// the first free hint. The name is only a hint on Nitro, but it must be unique.
pub fn pick_device(index: usize, used: &BTreeSet<String>) -> Option<String> {
    let preferred = pgml_aws::device_name_hint(index)?;
    if !used.contains(&preferred) {
        return Some(preferred);
    }
    (0..)
        .map_while(pgml_aws::device_name_hint)
        .find(|d| !used.contains(d))
}

/// Device names asked for per instance (instance → device → reservation), shared by the
/// reconciles of every pool: pools on one instance reconcile side by side, each from its
/// own DescribeInstances, and would otherwise all ask for the same names, all but one
/// failing "already in use" (a wasted AttachVolume, and the member attached a requeue later).
///
/// A reservation holds while its AttachVolume is in flight (which may wait long for a token
/// of the rate limiter), then `ttl` from the answer: long enough that every view of the
/// instance taken before the answer is out of use by then ([`INSTANCE_VIEW_MAX_AGE`]).
#[derive(Debug, Default)]
pub struct DeviceReservations {
    names: std::collections::HashMap<String, BTreeMap<String, Reservation>>,
}

#[derive(Debug)]
struct Reservation {
    /// Empty: the name is held by a device that is not ours.
    volume: String,
    at: std::time::Instant,
    in_flight: bool,
}

/// How old a DescribeInstances may be when a device name is picked from it; older views are
/// fetched again. Shorter than the reservations' `ttl`.
pub const INSTANCE_VIEW_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// An AttachVolume that never answered (its reconcile cancelled) frees its name after
/// this many `ttl`s.
const IN_FLIGHT_TTLS: u32 = 15;

impl DeviceReservations {
    /// The device name for attaching `volume` as member `index` to `instance`, reserved for
    /// it at once (in flight): the name it holds already, else [`pick_device`] among the
    /// names neither in `used` nor reserved. Answered reservations older than `ttl` lapse;
    /// one is not dropped when a DescribeInstances shows the name, since other reconciles
    /// may hold an older view.
    pub fn reserve(
        &mut self,
        now: std::time::Instant,
        ttl: std::time::Duration,
        instance: &str,
        volume: &str,
        index: usize,
        used: &BTreeSet<String>,
    ) -> Option<String> {
        let names = self.names.entry(instance.to_string()).or_default();
        names.retain(|_, r| {
            let lapse = if r.in_flight {
                ttl * IN_FLIGHT_TTLS
            } else {
                ttl
            };
            now.saturating_duration_since(r.at) < lapse
        });
        if let Some((d, r)) = names.iter_mut().find(|(_, r)| r.volume == volume) {
            r.in_flight = true;
            r.at = now;
            return Some(d.clone());
        }
        let mut taken = used.clone();
        taken.extend(names.keys().cloned());
        let device = pick_device(index, &taken)?;
        names.insert(
            device.clone(),
            Reservation {
                volume: volume.to_string(),
                at: now,
                in_flight: true,
            },
        );
        Some(device)
    }

    /// EC2 answered the AttachVolume: the name stays reserved `ttl` from now.
    pub fn answered(&mut self, now: std::time::Instant, instance: &str, device: &str) {
        if let Some(r) = self.names.get_mut(instance).and_then(|n| n.get_mut(device)) {
            r.in_flight = false;
            r.at = now;
        }
    }

    /// EC2 said another device holds the name: it stays reserved `ttl` from now, for no
    /// volume of ours.
    pub fn taken(&mut self, now: std::time::Instant, instance: &str, device: &str) {
        self.answered(now, instance, device);
        if let Some(r) = self.names.get_mut(instance).and_then(|n| n.get_mut(device)) {
            r.volume.clear();
        }
    }

    /// The attach failed for another reason than the name: the name is free again.
    pub fn release(&mut self, instance: &str, device: &str) {
        if let Some(names) = self.names.get_mut(instance) {
            names.remove(device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_reservations_keep_side_by_side_pools_apart() {
        use std::time::{Duration, Instant};
        let ttl = Duration::from_secs(20);
        let t = Instant::now();
        let used: BTreeSet<String> = ["/dev/xvdba".to_string()].into();
        let mut r = DeviceReservations::default();
        // Two pools' member 0, from the same view of the instance: different names.
        let a = r.reserve(t, ttl, "i-1", "vol-a", 0, &used).unwrap();
        let b = r.reserve(t, ttl, "i-1", "vol-b", 0, &used).unwrap();
        assert_eq!(a, "/dev/xvdbb");
        assert_eq!(b, "/dev/xvdbc");
        // The same volume again (a retry): its name. Another instance: names of its own.
        assert_eq!(r.reserve(t, ttl, "i-1", "vol-a", 0, &used).unwrap(), a);
        assert_eq!(
            r.reserve(t, ttl, "i-2", "vol-c", 0, &BTreeSet::new())
                .unwrap(),
            "/dev/xvdba"
        );
        // Taken by another: vol-b gets another name; released: the name is free again.
        r.taken(t, "i-1", &b);
        let b2 = r.reserve(t, ttl, "i-1", "vol-b", 0, &used).unwrap();
        assert_eq!(b2, "/dev/xvdbd");
        r.release("i-1", &b2);
        assert_eq!(r.reserve(t, ttl, "i-1", "vol-d", 3, &used).unwrap(), b2);
        // An attach in flight keeps its name however long it waits for its token; answered,
        // the name lapses `ttl` later.
        let later = t + ttl * 2;
        assert_eq!(
            r.reserve(later, ttl, "i-1", "vol-e", 1, &used).unwrap(),
            "/dev/xvdbc",
            "the taken name lapsed; vol-a's (xvdbb) and vol-d's (xvdbd) attaches are in flight"
        );
        r.answered(later, "i-1", &a);
        assert_eq!(
            r.reserve(later + ttl / 2, ttl, "i-1", "vol-f", 1, &used)
                .unwrap(),
            "/dev/xvdbe"
        );
        assert_eq!(
            r.reserve(later + ttl, ttl, "i-1", "vol-g", 1, &used)
                .unwrap(),
            "/dev/xvdbb",
            "answered a ttl ago: lapsed"
        );
        // An attach that never answers frees its name in the end.
        let much_later = later + ttl * IN_FLIGHT_TTLS;
        assert_eq!(
            r.reserve(much_later, ttl, "i-1", "vol-h", 3, &used)
                .unwrap(),
            "/dev/xvdbd",
            "vol-d's attach, asked at t, never answered"
        );
    }

    #[test]
    fn devices_skip_names_in_use() {
        let used: BTreeSet<String> = ["/dev/xvda", "/dev/xvdba", "/dev/xvdbb"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(pick_device(2, &used).as_deref(), Some("/dev/xvdbc"));
        assert_eq!(pick_device(0, &used).as_deref(), Some("/dev/xvdbc"));
        assert_eq!(
            pick_device(1, &BTreeSet::new()).as_deref(),
            Some("/dev/xvdbb")
        );
    }
}
