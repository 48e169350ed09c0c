//! What the kubelet's probes of an instance Pod are answered with, judged from the
//! manager's last look (pure; the HTTP side is `pgml_runtime::http::serve_with`):
//!
//! - liveness (`/healthz`): the manager answers. PostgreSQL itself is not judged: the
//!   manager restarts a server that exits (with a back-off) and fences what must stop, so
//!   a container restart would only add a restart; and a liveness that followed PostgreSQL
//!   would kill a Pod in the middle of a long restore or base backup.
//! - startup (`/startupz`): the manager finished its first look (it reached the API and its
//!   files).
//! - readiness (`/readyz`): PostgreSQL answered the last look, which is recent, nothing is
//!   being restored, the instance is not fenced, and a replica, when
//!   `spec.replicas.maximumLagBytes` is set, streams with at most that much WAL not
//!   replayed. The `-rw`/`-ro` Services and the PodDisruptionBudget follow readiness.

use std::time::{Duration, Instant};

use pgml_runtime::http::Probe;

use crate::report::Lsn;

/// A look older than this says nothing about now: not ready.
pub const STALE: Duration = Duration::from_secs(30);

/// What a look saw that the probes need.
#[derive(Clone, Debug, PartialEq)]
pub struct Look {
    pub at: Instant,
    /// PostgreSQL answered a query.
    pub answered: bool,
    pub primary: bool,
    /// A replica's WAL receiver streams.
    pub streaming: bool,
    /// A replica's WAL not replayed yet (see [`replica_lag`]).
    pub lag_bytes: Option<u64>,
    pub restoring: bool,
    pub fenced: bool,
    /// `spec.replicas.maximumLagBytes`.
    pub maximum_lag_bytes: Option<u64>,
}

/// How far a replica is behind: the furthest position it knows of (what it received, or
/// what the primary last reported as written) less what it replayed. None when it has not
/// replayed anything yet.
pub fn replica_lag(
    primary: Option<Lsn>,
    received: Option<Lsn>,
    replayed: Option<Lsn>,
) -> Option<u64> {
    let replayed = replayed?;
    let known = primary.max(received).unwrap_or(replayed);
    Some(known.0.saturating_sub(replayed.0))
}

/// The probe's verdict from the last look (None: no look finished yet).
pub fn judge(probe: Probe, last: Option<&Look>, now: Instant) -> Result<(), String> {
    match probe {
        Probe::Live => Ok(()),
        Probe::Startup => last
            .map(|_| ())
            .ok_or_else(|| "the instance manager has not finished its first look".into()),
        Probe::Ready => ready(last.ok_or("no look finished yet")?, now),
    }
}

fn ready(l: &Look, now: Instant) -> Result<(), String> {
    let age = now.saturating_duration_since(l.at);
    if age > STALE {
        return Err(format!("the last look is {} s old", age.as_secs()));
    }
    if l.fenced {
        return Err("fenced".into());
    }
    if l.restoring {
        return Err("the database is being restored".into());
    }
    if !l.answered {
        return Err("PostgreSQL does not accept connections".into());
    }
    if l.primary {
        return Ok(());
    }
    let Some(max) = l.maximum_lag_bytes else {
        return Ok(());
    };
    if !l.streaming {
        return Err("the replica does not stream from the primary".into());
    }
    match l.lag_bytes {
        Some(lag) if lag > max => Err(format!(
            "the replica is {lag} bytes behind (spec.replicas.maximumLagBytes: {max})"
        )),
        Some(_) => Ok(()),
        None => Err("the replica has replayed nothing yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(lag: Option<u64>, max: Option<u64>) -> Look {
        Look {
            at: Instant::now(),
            answered: true,
            primary: false,
            streaming: true,
            lag_bytes: lag,
            restoring: false,
            fenced: false,
            maximum_lag_bytes: max,
        }
    }

    #[test]
    fn a_replica_is_ready_within_its_lag_bound_only() {
        let now = Instant::now();
        assert_eq!(
            judge(Probe::Ready, Some(&replica(Some(10), Some(10))), now),
            Ok(())
        );
        let far = judge(Probe::Ready, Some(&replica(Some(11), Some(10))), now).unwrap_err();
        assert!(far.contains("11 bytes behind"), "{far}");
        // No bound: however far behind.
        assert_eq!(
            judge(Probe::Ready, Some(&replica(Some(1 << 40), None)), now),
            Ok(())
        );
        // A bound needs streaming.
        let mut cut = replica(Some(0), Some(10));
        cut.streaming = false;
        assert!(judge(Probe::Ready, Some(&cut), now).is_err());
        cut.maximum_lag_bytes = None;
        assert_eq!(judge(Probe::Ready, Some(&cut), now), Ok(()));
    }

    #[test]
    fn not_ready_without_a_recent_answer_or_while_restoring_or_fenced() {
        let now = Instant::now();
        assert!(judge(Probe::Ready, None, now).is_err());
        let mut primary = replica(None, Some(0));
        primary.primary = true;
        primary.streaming = false;
        assert_eq!(judge(Probe::Ready, Some(&primary), now), Ok(()));
        let later = now + STALE + Duration::from_secs(1);
        assert!(judge(Probe::Ready, Some(&primary), later).is_err());
        for change in [
            |l: &mut Look| l.answered = false,
            |l: &mut Look| l.restoring = true,
            |l: &mut Look| l.fenced = true,
        ] {
            let mut l = primary.clone();
            change(&mut l);
            assert!(judge(Probe::Ready, Some(&l), now).is_err(), "{l:?}");
        }
        // Liveness never follows PostgreSQL; startup needs one look.
        assert_eq!(judge(Probe::Live, None, now), Ok(()));
        assert!(judge(Probe::Startup, None, now).is_err());
        assert_eq!(judge(Probe::Startup, Some(&primary), later), Ok(()));
    }

    #[test]
    fn lag_counts_from_the_furthest_known_position() {
        let l = |x| Some(Lsn(x));
        assert_eq!(replica_lag(l(100), l(90), l(80)), Some(20));
        assert_eq!(replica_lag(l(50), l(90), l(80)), Some(10));
        assert_eq!(replica_lag(None, None, l(80)), Some(0));
        assert_eq!(replica_lag(l(100), None, None), None);
        assert_eq!(replica_lag(l(70), None, l(80)), Some(0));
    }
}
