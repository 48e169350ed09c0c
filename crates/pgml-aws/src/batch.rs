//! Describes batched across reconciles: the DescribeInstances of one instance, the
//! DescribeVolumes of one pool's tag and the DescribeVolumes of volume IDs (a pool waiting
//! for its volumes to become available or attached), asked by many reconciles at once, go
//! out as one call for all of them (as the EBS CSI driver batches its describes).
//!
//! Each kind of describe has a task that takes the requests queued while the previous call
//! was out (and those arriving within a short window after the first), asks EC2 once with
//! every key as a filter value, and hands each caller its part of the answer. With a
//! hundred pools reconciling, a hundred DescribeVolumes become a few.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::{
    AttachmentState, AwsError, CreateSnapshotSet, CreateVolume, Ec2, ErrorKind, Instance,
    InstanceTypeLimits, ModifyVolume, Snapshot, Volume,
};

/// How long a batch stays open for more requests after its first.
pub const WINDOW: Duration = Duration::from_millis(50);
/// Filter values per call (EC2 takes up to 200 per filter).
pub const MAX_KEYS: usize = 100;

type Reply<T> = oneshot::Sender<Result<T, AwsError>>;

/// One kind of batched describe: a key in, the rows for that key out.
struct Queue<T> {
    tx: mpsc::UnboundedSender<(String, Reply<Vec<T>>)>,
}

impl<T: Clone + Send + 'static> Queue<T> {
    /// `call` asks EC2 for several keys at once; `key_of` tells which key a row answers.
    fn start<F, Fut, K>(window: Duration, call: F, key_of: K) -> Self
    where
        F: Fn(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<T>, AwsError>> + Send,
        K: Fn(&T) -> Option<String> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Reply<Vec<T>>)>();
        tokio::spawn(async move {
            while let Some((key, reply)) = rx.recv().await {
                let mut waiting: BTreeMap<String, Vec<Reply<Vec<T>>>> = BTreeMap::new();
                waiting.entry(key).or_default().push(reply);
                let deadline = tokio::time::Instant::now() + window;
                while waiting.len() < MAX_KEYS {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some((k, r))) => waiting.entry(k).or_default().push(r),
                        Ok(None) | Err(_) => break,
                    }
                }
                let answer = call(waiting.keys().cloned().collect()).await;
                let mut rows: BTreeMap<String, Vec<T>> = BTreeMap::new();
                if let Ok(all) = &answer {
                    for row in all {
                        if let Some(k) = key_of(row) {
                            rows.entry(k).or_default().push(row.clone());
                        }
                    }
                }
                for (k, replies) in waiting {
                    let mine = match &answer {
                        Ok(_) => Ok(rows.remove(&k).unwrap_or_default()),
                        Err(e) => Err(e.clone()),
                    };
                    for r in replies {
                        let _ = r.send(mine.clone());
                    }
                }
            }
        });
        Queue { tx }
    }

    async fn ask(&self, action: &'static str, key: &str) -> Result<Vec<T>, AwsError> {
        let stopped = || {
            AwsError::new(
                action,
                ErrorKind::Transient,
                "BatcherStopped",
                "the describe batcher stopped",
            )
        };
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((key.to_string(), reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// [`Queue::start`] with a call made on `inner` (each batch gets its own handle).
    fn over<F, Fut, K>(inner: &Arc<dyn Ec2>, window: Duration, call: F, key_of: K) -> Self
    where
        F: Fn(Arc<dyn Ec2>, Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<T>, AwsError>> + Send,
        K: Fn(&T) -> Option<String> + Send + 'static,
    {
        let inner = inner.clone();
        Self::start(window, move |keys| call(inner.clone(), keys), key_of)
    }

    /// [`Queue::ask`] for several keys, all queued at once; the rows of all of them.
    async fn ask_all(&self, action: &'static str, keys: &[String]) -> Result<Vec<T>, AwsError> {
        let answers = futures::future::join_all(keys.iter().map(|k| self.ask(action, k))).await;
        let mut rows = Vec::new();
        for a in answers {
            rows.extend(a?);
        }
        Ok(rows)
    }
}

/// [`Ec2`] with [`Ec2::describe_instance`], single-tag [`Ec2::find_volumes`] and
/// [`Ec2::describe_volumes`] batched; everything else goes straight to `inner`. Must be
/// made inside a tokio runtime.
pub struct Batched {
    inner: Arc<dyn Ec2>,
    instances: Queue<Instance>,
    by_id: Queue<Volume>,
    /// Per tag key (the pool tag): a queue of that tag's values.
    volumes: std::sync::Mutex<BTreeMap<String, Arc<Queue<Volume>>>>,
    window: Duration,
}

impl Batched {
    pub fn new(inner: Arc<dyn Ec2>) -> Self {
        Self::with_window(inner, WINDOW)
    }

    pub fn with_window(inner: Arc<dyn Ec2>, window: Duration) -> Self {
        let instances = Queue::over(
            &inner,
            window,
            |i, ids| async move { i.describe_instances(&ids).await },
            |inst: &Instance| Some(inst.instance_id.clone()),
        );
        let by_id = Queue::over(
            &inner,
            window,
            |i, ids| async move { i.describe_volumes(&ids).await },
            |v: &Volume| Some(v.volume_id.clone()),
        );
        Batched {
            inner,
            instances,
            by_id,
            volumes: std::sync::Mutex::default(),
            window,
        }
    }

    fn volume_queue(&self, key: &str) -> Arc<Queue<Volume>> {
        let mut queues = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .entry(key.to_string())
            .or_insert_with(|| {
                let (k, tag) = (key.to_string(), key.to_string());
                Arc::new(Queue::over(
                    &self.inner,
                    self.window,
                    move |i, values| {
                        let k = k.clone();
                        async move { i.find_volumes_any(&k, &values).await }
                    },
                    move |v: &Volume| v.tags.get(&tag).cloned(),
                ))
            })
            .clone()
    }
}

#[async_trait]
impl Ec2 for Batched {
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, AwsError> {
        Ok(self
            .instances
            .ask("DescribeInstances", instance_id)
            .await?
            .into_iter()
            .next())
    }

    async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
        self.inner.describe_instances(ids).await
    }

    async fn instance_type_limits(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeLimits, AwsError> {
        self.inner.instance_type_limits(instance_type).await
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume, AwsError> {
        self.inner.create_volume(req).await
    }

    async fn find_volumes(&self, tags: &[(String, String)]) -> Result<Vec<Volume>, AwsError> {
        match tags {
            [(key, value)] => self.volume_queue(key).ask("DescribeVolumes", value).await,
            _ => self.inner.find_volumes(tags).await,
        }
    }

    async fn find_volumes_any(
        &self,
        key: &str,
        values: &[String],
    ) -> Result<Vec<Volume>, AwsError> {
        self.inner.find_volumes_any(key, values).await
    }

    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<Volume>, AwsError> {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        self.by_id.ask_all("DescribeVolumes", &ids).await
    }

    async fn attach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> Result<AttachmentState, AwsError> {
        self.inner
            .attach_volume(volume_id, instance_id, device)
            .await
    }

    async fn detach_volume(
        &self,
        volume_id: &str,
        instance_id: &str,
        force: bool,
    ) -> Result<(), AwsError> {
        self.inner
            .detach_volume(volume_id, instance_id, force)
            .await
    }

    async fn modify_volume(&self, req: &ModifyVolume) -> Result<(), AwsError> {
        self.inner.modify_volume(req).await
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        self.inner.delete_volume(volume_id).await
    }

    async fn create_snapshot_set(
        &self,
        req: &CreateSnapshotSet,
    ) -> Result<Vec<Snapshot>, AwsError> {
        self.inner.create_snapshot_set(req).await
    }

    async fn describe_snapshots(&self, ids: &[String]) -> Result<Vec<Snapshot>, AwsError> {
        self.inner.describe_snapshots(ids).await
    }

    async fn attached_volumes(&self, instance_id: &str) -> Result<Vec<Volume>, AwsError> {
        self.inner.attached_volumes(instance_id).await
    }

    async fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        self.inner.create_tags(resource_ids, tags).await
    }

    async fn changed_bytes(&self, first: &str, second: &str) -> Result<i64, AwsError> {
        self.inner.changed_bytes(first, second).await
    }

    async fn find_snapshots(&self, tags: &[(String, String)]) -> Result<Vec<Snapshot>, AwsError> {
        self.inner.find_snapshots(tags).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), AwsError> {
        self.inner.delete_snapshot(snapshot_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn requests_within_the_window_share_one_call_and_get_their_own_rows() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, s) = (calls.clone(), seen.clone());
        let q: Arc<Queue<(String, u32)>> = Arc::new(Queue::start(
            Duration::from_millis(50),
            move |keys: Vec<String>| {
                c.fetch_add(1, Ordering::SeqCst);
                s.lock().unwrap().push(keys.clone());
                async move {
                    // Two rows for "a", one for "b", none for "c" (unknown).
                    Ok(keys
                        .iter()
                        .filter(|k| *k != "c")
                        .flat_map(|k| {
                            let n = if k == "a" { 2 } else { 1 };
                            (0..n).map(move |i| (k.clone(), i))
                        })
                        .collect::<Vec<_>>())
                }
            },
            |row: &(String, u32)| Some(row.0.clone()),
        ));
        let ask = |k: &'static str| {
            let q = q.clone();
            tokio::spawn(async move { q.ask("Describe", k).await })
        };
        let (a1, a2, b, c) = (ask("a"), ask("a"), ask("b"), ask("c"));
        let a1 = a1.await.unwrap().unwrap();
        assert_eq!(a1, vec![("a".to_string(), 0), ("a".to_string(), 1)]);
        assert_eq!(a2.await.unwrap().unwrap(), a1);
        assert_eq!(b.await.unwrap().unwrap(), vec![("b".to_string(), 0)]);
        assert!(c.await.unwrap().unwrap().is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one call for all four");
        assert_eq!(seen.lock().unwrap()[0], vec!["a", "b", "c"]);
        // After the window: a call of its own.
        tokio::time::sleep(Duration::from_millis(100)).await;
        ask("b").await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn several_keys_of_one_request_and_others_share_one_call() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let q: Arc<Queue<(String, u32)>> = Arc::new(Queue::start(
            Duration::from_millis(50),
            move |keys: Vec<String>| {
                c.fetch_add(1, Ordering::SeqCst);
                async move { Ok(keys.iter().map(|k| (k.clone(), 0)).collect::<Vec<_>>()) }
            },
            |row: &(String, u32)| Some(row.0.clone()),
        ));
        let keys = ["v1".to_string(), "v2".to_string()];
        let (mine, other) = tokio::join!(
            q.ask_all("DescribeVolumes", &keys),
            q.ask("DescribeVolumes", "v3")
        );
        let mut mine = mine.unwrap();
        mine.sort();
        assert_eq!(mine, vec![("v1".to_string(), 0), ("v2".to_string(), 0)]);
        assert_eq!(other.unwrap(), vec![("v3".to_string(), 0)]);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one call for three keys");
        assert!(q.ask_all("DescribeVolumes", &[]).await.unwrap().is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no keys, no call");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_fails_every_request_of_its_batch() {
        let q: Arc<Queue<(String, u32)>> = Arc::new(Queue::start(
            Duration::from_millis(50),
            |_keys: Vec<String>| async {
                Err(AwsError::new(
                    "Describe",
                    ErrorKind::Throttled,
                    "RequestLimitExceeded",
                    "slow down",
                ))
            },
            |row: &(String, u32)| Some(row.0.clone()),
        ));
        let (x, y) = tokio::join!(q.ask("Describe", "x"), q.ask("Describe", "y"));
        assert_eq!(x.unwrap_err().kind, ErrorKind::Throttled);
        assert_eq!(y.unwrap_err().code, "RequestLimitExceeded");
    }
}
