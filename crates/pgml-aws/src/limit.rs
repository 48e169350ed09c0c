//! Client-side rate limiting that mirrors EC2's own: one token bucket per class of action,
//! shared by every reconcile of the process, so that a call waits for its token instead of
//! being throttled and backed off per object.
//!
//! EC2 meters API calls per account and Region with token buckets by action class
//! (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html>); a throttled
//! call costs a round trip and, worse, the reconcile it belonged to is requeued seconds
//! later, while the bucket may have refilled long before. Waiting here keeps every token
//! EC2 gives in use, in the order the calls asked (the waiters queue fairly).
//!
//! The account's buckets are shared with everything else using it, which this process
//! cannot see: when EC2 throttles a call anyway, the local bucket is emptied (it was
//! optimistic) and the call waits for the next token and tries again, a few times, before
//! the error goes back to the caller.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{
    AttachmentState, AwsError, CreateSnapshotSet, CreateVolume, Ec2, ErrorKind, Instance,
    InstanceTypeLimits, ModifyVolume, Snapshot, Volume,
};

/// EC2's classes of API actions, as its throttling documentation groups them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Creating and deleting resources: CreateVolume, DeleteVolume, CreateSnapshot(s),
    /// DeleteSnapshot.
    Resource,
    /// Other non-Describe actions: AttachVolume, DetachVolume, ModifyVolume, CreateTags.
    Mutating,
    /// Describe* actions with a filter or IDs.
    Describe,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Resource, Class::Mutating, Class::Describe];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Resource => "resource",
            Class::Mutating => "mutating",
            Class::Describe => "describe",
        }
    }
}

/// One bucket: how many tokens it holds and how many it gains per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub size: f64,
    pub refill_per_second: f64,
}

/// The buckets of the three classes; `None` for a class means no limit.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimits {
    pub resource: Option<Bucket>,
    pub mutating: Option<Bucket>,
    pub describe: Option<Bucket>,
}

impl Default for RateLimits {
    /// EC2's documented defaults for an account (resource 100 + 5/s, mutating 50 + 5/s,
    /// filtered describes 100 + 20/s).
    fn default() -> Self {
        RateLimits {
            resource: Some(Bucket {
                size: 100.0,
                refill_per_second: 5.0,
            }),
            mutating: Some(Bucket {
                size: 50.0,
                refill_per_second: 5.0,
            }),
            describe: Some(Bucket {
                size: 100.0,
                refill_per_second: 20.0,
            }),
        }
    }
}

impl RateLimits {
    pub fn off() -> Self {
        RateLimits {
            resource: None,
            mutating: None,
            describe: None,
        }
    }

    fn get_mut(&mut self, class: Class) -> &mut Option<Bucket> {
        match class {
            Class::Resource => &mut self.resource,
            Class::Mutating => &mut self.mutating,
            Class::Describe => &mut self.describe,
        }
    }

    pub fn get(&self, class: Class) -> Option<Bucket> {
        match class {
            Class::Resource => self.resource,
            Class::Mutating => self.mutating,
            Class::Describe => self.describe,
        }
    }

    /// Parses the operator's `--ec2-rate-limits`: `off`, or a comma-separated list over
    /// EC2's defaults of `CLASS=SIZE/REFILL` (tokens, tokens per second), `CLASS=off`, and
    /// `scale=F` (every refill multiplied by F: an account whose limits AWS raised).
    /// Empty: the defaults.
    pub fn parse(s: &str) -> Result<RateLimits, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(RateLimits::off());
        }
        let mut limits = RateLimits::default();
        let mut scale = 1.0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected KEY=VALUE"))?;
            let number = |v: &str, what: &str| -> Result<f64, String> {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n > 0.0)
                    .ok_or_else(|| format!("{part:?}: {what} must be a positive number"))
            };
            if key.trim() == "scale" {
                scale = number(value, "scale")?;
                continue;
            }
            let class = Class::ALL
                .into_iter()
                .find(|c| c.as_str() == key.trim())
                .ok_or_else(|| {
                    format!("{part:?}: unknown class (resource, mutating, describe or scale)")
                })?;
            *limits.get_mut(class) = if value.trim() == "off" {
                None
            } else {
                let (size, refill) = value
                    .split_once('/')
                    .ok_or_else(|| format!("{part:?}: expected {key}=SIZE/REFILL or off"))?;
                Some(Bucket {
                    size: number(size, "the bucket size")?,
                    refill_per_second: number(refill, "the refill rate")?,
                })
            };
        }
        for class in Class::ALL {
            if let Some(b) = limits.get_mut(class) {
                b.refill_per_second *= scale;
            }
        }
        Ok(limits)
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
}

/// A token bucket whose waiters are served in the order they came (tokio's Mutex is fair:
/// the first in line holds the lock while it sleeps for its token).
#[derive(Debug)]
struct TokenBucket {
    bucket: Bucket,
    state: Mutex<State>,
}

impl TokenBucket {
    fn new(bucket: Bucket) -> Self {
        TokenBucket {
            bucket,
            state: Mutex::new(State {
                tokens: bucket.size,
                at: Instant::now(),
            }),
        }
    }

    fn refill(&self, s: &mut State, now: Instant) {
        let gained =
            now.saturating_duration_since(s.at).as_secs_f64() * self.bucket.refill_per_second;
        s.tokens = (s.tokens + gained).min(self.bucket.size);
        s.at = now;
    }

    /// Takes one token, waiting for it; returns how long it waited.
    async fn take(&self) -> Duration {
        let started = Instant::now();
        let mut s = self.state.lock().await;
        self.refill(&mut s, Instant::now());
        if s.tokens < 1.0 {
            let wait = (1.0 - s.tokens) / self.bucket.refill_per_second;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.refill(&mut s, Instant::now());
        }
        s.tokens -= 1.0;
        started.elapsed()
    }

    /// EC2 throttled a call although this bucket had a token: someone else shares the
    /// account's bucket. Start again from empty.
    async fn drain(&self) {
        let mut s = self.state.lock().await;
        self.refill(&mut s, Instant::now());
        s.tokens = s.tokens.min(0.0);
    }
}

/// Told of each wait for a token (class, seconds) and each call EC2 throttled anyway.
pub type LimitObserver = Arc<dyn Fn(Class, LimitEvent) + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub enum LimitEvent {
    Waited(Duration),
    ThrottledAnyway,
}

/// [`Ec2`] behind per-class token buckets ([`RateLimits`]).
pub struct Limited {
    inner: Arc<dyn Ec2>,
    buckets: [Option<TokenBucket>; 3],
    observer: Option<LimitObserver>,
}

/// How many times a call EC2 throttled anyway is tried (each after a fresh token).
const ATTEMPTS: u32 = 4;

impl Limited {
    pub fn new(inner: Arc<dyn Ec2>, limits: &RateLimits) -> Self {
        Limited {
            inner,
            buckets: Class::ALL.map(|c| limits.get(c).map(TokenBucket::new)),
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: LimitObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn bucket(&self, class: Class) -> Option<&TokenBucket> {
        self.buckets[class as usize].as_ref()
    }

    async fn call<T, F, Fut>(&self, class: Class, f: F) -> Result<T, AwsError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        let Some(bucket) = self.bucket(class) else {
            return f().await;
        };
        let mut attempt = 1;
        loop {
            let waited = bucket.take().await;
            tracing::debug!(
                class = class.as_str(),
                waited_ms = waited.as_millis() as u64,
                "EC2 rate limiter: token taken"
            );
            if let Some(o) = &self.observer
                && !waited.is_zero()
            {
                o(class, LimitEvent::Waited(waited));
            }
            match f().await {
                Err(e) if e.kind == ErrorKind::Throttled && attempt < ATTEMPTS => {
                    if let Some(o) = &self.observer {
                        o(class, LimitEvent::ThrottledAnyway);
                    }
                    tracing::debug!(
                        action = e.action,
                        attempt,
                        "EC2 throttled a call the local bucket allowed; waiting for the next token"
                    );
                    bucket.drain().await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl Ec2 for Limited {
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, AwsError> {
        self.call(Class::Describe, || {
            self.inner.describe_instance(instance_id)
        })
        .await
    }

    async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        self.call(Class::Describe, || self.inner.describe_instances(ids))
            .await
    }

    async fn find_volumes_any(
        &self,
        key: &str,
        values: &[String],
    ) -> Result<Vec<Volume>, AwsError> {
        if values.is_empty() {
            return Ok(vec![]);
        }
        self.call(Class::Describe, || self.inner.find_volumes_any(key, values))
            .await
    }

    async fn instance_type_limits(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeLimits, AwsError> {
        self.call(Class::Describe, || {
            self.inner.instance_type_limits(instance_type)
        })
        .await
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume, AwsError> {
        self.call(Class::Resource, || self.inner.create_volume(req))
            .await
    }

    async fn find_volumes(&self, tags: &[(String, String)]) -> Result<Vec<Volume>, AwsError> {
        self.call(Class::Describe, || self.inner.find_volumes(tags))
            .await
    }

    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<Volume>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        self.call(Class::Describe, || self.inner.describe_volumes(ids))
            .await
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<AttachmentState, AwsError> {
        self.call(Class::Mutating, || {
            self.inner.attach_volume(volume_id, instance_id, device)
        })
        .await
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), AwsError> {
        self.call(Class::Mutating, || {
            self.inner.detach_volume(volume_id, instance_id, force)
        })
        .await
    }

    async fn modify_volume(&self, req: &ModifyVolume) -> Result<(), AwsError> {
        self.call(Class::Mutating, || self.inner.modify_volume(req))
            .await
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        self.call(Class::Resource, || self.inner.delete_volume(volume_id))
            .await
    }

    async fn create_snapshot_set(
        &self,
        req: &CreateSnapshotSet,
    ) -> Result<Vec<Snapshot>, AwsError> {
        // Not idempotent (no client token): a throttled request made nothing, so trying it
        // again is safe; any other outcome goes back to the caller as it is.
        self.call(Class::Resource, || self.inner.create_snapshot_set(req))
            .await
    }

    async fn describe_snapshots(&self, ids: &[String]) -> Result<Vec<Snapshot>, AwsError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        self.call(Class::Describe, || self.inner.describe_snapshots(ids))
            .await
    }

    async fn attached_volumes(&self, instance_id: &str) -> Result<Vec<Volume>, AwsError> {
        self.call(Class::Describe, || self.inner.attached_volumes(instance_id))
            .await
    }

    async fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        self.call(Class::Mutating, || {
            self.inner.create_tags(resource_ids, tags)
        })
        .await
    }

    async fn changed_bytes(&self, first: &str, second: &str) -> Result<i64, AwsError> {
        // The EBS direct APIs are metered apart from EC2's classes.
        self.inner.changed_bytes(first, second).await
    }

    async fn find_snapshots(&self, tags: &[(String, String)]) -> Result<Vec<Snapshot>, AwsError> {
        self.call(Class::Describe, || self.inner.find_snapshots(tags))
            .await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), AwsError> {
        self.call(Class::Resource, || self.inner.delete_snapshot(snapshot_id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_over_the_defaults() {
        assert_eq!(RateLimits::parse("").unwrap(), RateLimits::default());
        assert_eq!(RateLimits::parse("off").unwrap(), RateLimits::off());
        let l = RateLimits::parse("scale=2, describe=off").unwrap();
        assert_eq!(
            l.mutating,
            Some(Bucket {
                size: 50.0,
                refill_per_second: 10.0
            })
        );
        assert_eq!(l.describe, None);
        let l = RateLimits::parse("resource=400/20").unwrap();
        assert_eq!(
            l.resource,
            Some(Bucket {
                size: 400.0,
                refill_per_second: 20.0
            })
        );
        for bad in [
            "scale=0",
            "scale=x",
            "mutating=50",
            "create=1/1",
            "describe=-1/2",
            "nonsense",
        ] {
            assert!(RateLimits::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_serves_its_burst_then_one_token_per_refill_interval_in_order() {
        let b = Arc::new(TokenBucket::new(Bucket {
            size: 3.0,
            refill_per_second: 2.0,
        }));
        let t0 = Instant::now();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..7 {
            let (b, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                b.take().await;
                order.lock().unwrap().push((i, t0.elapsed()));
            }));
            // Spawned in order and polled in order: each queues behind the previous.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let ids: Vec<_> = order.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, (0..7).collect::<Vec<_>>(), "served in the order asked");
        let secs: Vec<f64> = order.iter().map(|(_, d)| d.as_secs_f64()).collect();
        // Three at once, then one every 0.5 s.
        for (got, want) in secs.iter().zip([0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]) {
            assert!((got - want).abs() < 0.01, "{secs:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_call_empties_the_bucket_and_is_tried_again_after_one_token() {
        let b = TokenBucket::new(Bucket {
            size: 10.0,
            refill_per_second: 4.0,
        });
        b.take().await;
        b.drain().await;
        let t0 = Instant::now();
        b.take().await;
        let waited = t0.elapsed().as_secs_f64();
        assert!((waited - 0.25).abs() < 0.01, "{waited}");
    }
}
