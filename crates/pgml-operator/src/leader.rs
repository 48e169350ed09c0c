//! Leader election on a `coordination.k8s.io/v1` Lease (kube-rs has none built in), the
//! way client-go's leaderelection does it: the holder renews `renewTime` every retry
//! period; anyone may take the Lease once it is released (no holder) or expired
//! (`renewTime + leaseDurationSeconds` before now); every write is a replace carrying the
//! `resourceVersion` read, so of two candidates only one wins (the other gets 409
//! Conflict). A holder that cannot renew within the renew deadline, or that sees another
//! holder, has lost: the process exits at once (non-zero) so nothing acts on a stale
//! Lease, and Kubernetes restarts it as a follower. On SIGTERM the holder releases the
//! Lease (no holder, duration 1 s) so a follower takes over at its next look.
//!
//! Expiry compares the holder's `renewTime` with this process's clock, so the replicas'
//! clocks must agree to well within the lease duration (NTP does that on EC2).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This process's holderIdentity (the Pod name, or hostname_pid).
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub duration: Duration,
    /// How long the holder keeps trying to renew before it gives up (less than `duration`,
    /// so it stops before anyone else may take over).
    pub renew_deadline: Duration,
    /// How often the holder renews and a follower looks.
    pub retry: Duration,
}

impl LeaseSettings {
    /// Refuses timings that would let two processes lead at once.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.duration
            ));
        }
        if self.retry.is_zero() || self.retry >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be positive and shorter than the renew deadline ({:?})",
                self.retry, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// The default identity: `POD_NAME`, else `<hostname>_<pid>`.
pub fn default_identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME")
        && !p.is_empty()
    {
        return p;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "pgml-operator".into());
    format!("{host}_{}", std::process::id())
}

/// What to do with the Lease as it stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (absent, released or expired): take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Another process holds it and it is still valid: keep watching.
    Wait { holder: String },
    /// We were leading and another process holds it now: stop at once.
    Lost { holder: String },
}

/// The pure decision: given the Lease (`None`: it does not exist), the time, our identity
/// and whether we believe we lead.
pub fn decide(spec: Option<&LeaseSpec>, now: Timestamp, identity: &str, leading: bool) -> Decision {
    let Some(spec) = spec else {
        return if leading {
            Decision::Lost {
                holder: String::new(),
            }
        } else {
            Decision::Acquire
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if leading {
        return Decision::Lost { holder };
    }
    if holder.is_empty() || expired(spec, now) {
        Decision::Acquire
    } else {
        Decision::Wait { holder }
    }
}

/// Whether the holder's last renewal is more than the lease duration ago.
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0)
    else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    renewed
        .checked_add(SignedDuration::from_secs(duration))
        .map_or(true, |until| until < now)
}

/// The Lease spec after `identity` takes it over from `old` (or creates it).
pub fn claimed(
    old: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let transitions = old.map_or(0, |o| {
        let t = o.lease_transitions.unwrap_or(0);
        if o.holder_identity.as_deref() == Some(identity) {
            t
        } else {
            t + 1
        }
    });
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(seconds(duration)),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// The Lease spec after its holder renews it.
pub fn renewed(old: &LeaseSpec, now: Timestamp, duration: Duration) -> LeaseSpec {
    LeaseSpec {
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(seconds(duration)),
        ..old.clone()
    }
}

/// The Lease spec its holder leaves behind on a clean stop: no holder, valid for 1 s, so
/// a follower takes it at its next look.
pub fn released(old: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..old.clone()
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("another process holds the Lease now: {0:?}")]
    Taken(String),
    #[error("could not renew the Lease for {0:?} (the renew deadline): {1}")]
    Deadline(Duration, String),
}

/// Campaigns for and holds one Lease.
pub struct Elector {
    api: Api<Lease>,
    s: LeaseSettings,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            s: settings,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.s
    }

    /// Waits (looking every retry period, reading only) until this process holds the
    /// Lease.
    pub async fn acquire(&self) {
        let mut last_holder: Option<String> = None;
        loop {
            match self.try_acquire().await {
                Ok(None) => return,
                Ok(Some(holder)) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        tracing::info!(lease = %self.s.name, holder = %holder, identity = %self.s.identity, "another process leads; following");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => {
                    tracing::info!(lease = %self.s.name, error = %e, "could not take the Lease; trying again")
                }
            }
            tokio::time::sleep(self.s.retry).await;
        }
    }

    /// One look: `Ok(None)` when we now hold the Lease, `Ok(Some(holder))` when another
    /// does.
    async fn try_acquire(&self) -> Result<Option<String>, kube::Error> {
        let current = self.api.get_opt(&self.s.name).await?;
        let now = Timestamp::now();
        match decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            now,
            &self.s.identity,
            false,
        ) {
            Decision::Wait { holder } | Decision::Lost { holder } => Ok(Some(holder)),
            Decision::Renew | Decision::Acquire => {
                let spec = claimed(
                    current.as_ref().and_then(|l| l.spec.as_ref()),
                    &self.s.identity,
                    now,
                    self.s.duration,
                );
                let result = match current {
                    None => {
                        let lease = Lease {
                            metadata: ObjectMeta {
                                name: Some(self.s.name.clone()),
                                namespace: Some(self.s.namespace.clone()),
                                ..ObjectMeta::default()
                            },
                            spec: Some(spec),
                        };
                        self.api.create(&PostParams::default(), &lease).await
                    }
                    Some(mut lease) => {
                        // resourceVersion stays as read: a concurrent writer makes this 409.
                        lease.spec = Some(spec);
                        self.api
                            .replace(&self.s.name, &PostParams::default(), &lease)
                            .await
                    }
                };
                match result {
                    Ok(l) => {
                        let transitions = l.spec.and_then(|s| s.lease_transitions).unwrap_or(0);
                        tracing::info!(lease = %self.s.name, namespace = %self.s.namespace, identity = %self.s.identity, transitions, "took the Lease; leading");
                        Ok(None)
                    }
                    // Someone else created or updated it first: they won this round.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        Ok(Some("(a concurrent candidate)".into()))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Renews the Lease every retry period for as long as this process leads; returns why
    /// it stopped leading. Never returns while leadership holds.
    pub async fn hold(&self) -> Lost {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.s.retry).await;
            let left = self.s.renew_deadline.saturating_sub(last_renewal.elapsed());
            let attempt = tokio::time::timeout(left, self.try_renew()).await;
            match attempt {
                Ok(Ok(())) => last_renewal = Instant::now(),
                Ok(Err(RenewError::Taken(holder))) => return Lost::Taken(holder),
                Ok(Err(RenewError::Api(e))) => {
                    tracing::warn!(lease = %self.s.name, error = %e, "could not renew the Lease; trying again");
                    if last_renewal.elapsed() >= self.s.renew_deadline {
                        return Lost::Deadline(self.s.renew_deadline, e.to_string());
                    }
                }
                Err(_) => {
                    return Lost::Deadline(self.s.renew_deadline, "renewal timed out".into());
                }
            }
        }
    }

    async fn try_renew(&self) -> Result<(), RenewError> {
        let current = self.api.get_opt(&self.s.name).await?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        match decide(spec, now, &self.s.identity, true) {
            Decision::Renew => {}
            Decision::Lost { holder } | Decision::Wait { holder } => {
                return Err(RenewError::Taken(holder));
            }
            Decision::Acquire => return Err(RenewError::Taken(String::new())),
        }
        let (Some(mut lease), Some(spec)) = (current.clone(), spec) else {
            return Err(RenewError::Taken(String::new()));
        };
        lease.spec = Some(renewed(spec, now, self.s.duration));
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone wrote the Lease since we read it: look again at once.
            Err(kube::Error::Api(s)) if s.code == 409 => Box::pin(self.try_renew()).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up (a clean stop after the controllers finished): no holder, so a
    /// follower takes over at its next look. Does nothing if another process holds it.
    pub async fn release(&self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
                return Ok(false);
            };
            let Some(spec) = lease.spec.as_ref() else {
                return Ok(false);
            };
            if spec.holder_identity.as_deref() != Some(self.s.identity.as_str()) {
                return Ok(false);
            }
            lease.spec = Some(released(spec, Timestamp::now()));
            self.api
                .replace(&self.s.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        }
        .await;
        match result {
            Ok(true) => {
                tracing::info!(lease = %self.s.name, identity = %self.s.identity, "released the Lease")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(lease = %self.s.name, error = %e, "could not release the Lease; it expires by itself")
            }
        }
    }
}

#[derive(Debug)]
enum RenewError {
    Taken(String),
    Api(kube::Error),
}

impl From<kube::Error> for RenewError {
    fn from(e: kube::Error) -> Self {
        RenewError::Api(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn lease(holder: Option<&str>, renewed_at: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(t(0))),
            renew_time: Some(MicroTime(t(renewed_at))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn absent_released_or_expired_leases_are_taken() {
        assert_eq!(decide(None, t(0), "me", false), Decision::Acquire);
        assert_eq!(
            decide(Some(&lease(None, 10, 15)), t(11), "me", false),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&lease(Some(""), 10, 15)), t(11), "me", false),
            Decision::Acquire
        );
        // Renewed at 10 for 15 s: valid through 25, expired after.
        assert_eq!(
            decide(Some(&lease(Some("other"), 10, 15)), t(25), "me", false),
            Decision::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&lease(Some("other"), 10, 15)), t(26), "me", false),
            Decision::Acquire
        );
        let mut never = lease(Some("other"), 0, 15);
        never.renew_time = None;
        never.acquire_time = None;
        assert_eq!(decide(Some(&never), t(0), "me", false), Decision::Acquire);
    }

    #[test]
    fn the_holder_renews_and_loses_to_another_holder() {
        assert_eq!(
            decide(Some(&lease(Some("me"), 10, 15)), t(11), "me", true),
            Decision::Renew
        );
        // Our own Lease, even expired, is ours to renew (no one took it).
        assert_eq!(
            decide(Some(&lease(Some("me"), 10, 15)), t(100), "me", true),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("other"), 10, 15)), t(11), "me", true),
            Decision::Lost {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&lease(None, 10, 1)), t(11), "me", true),
            Decision::Lost {
                holder: String::new()
            }
        );
        assert_eq!(
            decide(None, t(11), "me", true),
            Decision::Lost {
                holder: String::new()
            }
        );
    }

    #[test]
    fn takeover_counts_a_transition_and_renewal_does_not() {
        let old = lease(Some("other"), 10, 15);
        let new = claimed(Some(&old), "me", t(30), Duration::from_secs(15));
        assert_eq!(new.holder_identity.as_deref(), Some("me"));
        assert_eq!(new.lease_transitions, Some(4));
        assert_eq!(new.acquire_time, Some(MicroTime(t(30))));
        assert_eq!(new.renew_time, Some(MicroTime(t(30))));
        assert_eq!(new.lease_duration_seconds, Some(15));
        assert_eq!(
            claimed(None, "me", t(0), Duration::from_secs(15)).lease_transitions,
            Some(0)
        );
        let again = renewed(&new, t(32), Duration::from_secs(15));
        assert_eq!(again.lease_transitions, Some(4));
        assert_eq!(again.acquire_time, Some(MicroTime(t(30))));
        assert_eq!(again.renew_time, Some(MicroTime(t(32))));
        let gone = released(&again, t(33));
        assert_eq!(gone.holder_identity, None);
        assert_eq!(gone.lease_duration_seconds, Some(1));
        assert_eq!(decide(Some(&gone), t(33), "next", false), Decision::Acquire);
        let next = claimed(Some(&gone), "next", t(33), Duration::from_secs(15));
        assert_eq!(next.lease_transitions, Some(5));
    }

    /// A leader that cannot reach the API server gives up at the renew deadline (well
    /// before its Lease could expire for the others).
    #[tokio::test]
    async fn an_unreachable_api_server_loses_the_lease_at_the_renew_deadline() {
        // Nothing listens on port 9 (discard) here: every request is refused.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let elector = Elector::new(
            client,
            LeaseSettings {
                name: "l".into(),
                namespace: "ns".into(),
                identity: "me".into(),
                duration: Duration::from_secs(3),
                renew_deadline: Duration::from_millis(1500),
                retry: Duration::from_millis(200),
            },
        );
        let start = Instant::now();
        let lost = tokio::time::timeout(Duration::from_secs(10), elector.hold())
            .await
            .expect("hold returns");
        let took = start.elapsed();
        assert!(matches!(lost, Lost::Deadline(..)), "{lost:?}");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(2500),
            "{took:?}"
        );
    }

    #[test]
    fn timings_that_allow_two_leaders_are_refused() {
        let s = |d, r, p| LeaseSettings {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration: Duration::from_secs(d),
            renew_deadline: Duration::from_secs(r),
            retry: Duration::from_secs(p),
        };
        assert!(s(15, 10, 2).check().is_ok());
        assert!(s(15, 15, 2).check().is_err());
        assert!(s(15, 10, 10).check().is_err());
        assert!(s(15, 10, 0).check().is_err());
    }
}
