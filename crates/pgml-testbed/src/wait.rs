//! Waiting on objects in the real apiserver, the way a person watches `kubectl get`.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Whether `obj.status.conditions` has `type_` with `status` (works for any kind).
pub fn has_condition(obj: &impl Serialize, type_: &str, status: &str) -> bool {
    condition(obj, type_).is_some_and(|c| c["status"] == status)
}

/// `obj.status.conditions[type == type_]`, as JSON.
pub fn condition(obj: &impl Serialize, type_: &str) -> Option<serde_json::Value> {
    let v = serde_json::to_value(obj).ok()?;
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Polls `name` until `ok` holds; panics with the object's status after `timeout`.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&K) -> bool,
) -> K
where
    K: Clone + DeserializeOwned + Debug + Serialize,
{
    let every = Duration::from_millis(500);
    try_wait_for(api, name, what, timeout, every, String::new, ok)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// As [`wait_for`], polling every `every` and returning an error instead of panicking:
/// the object's status after `timeout`, then `context()` (e.g. a process's log).
pub async fn try_wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    every: Duration,
    context: impl Fn() -> String,
    ok: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: Clone + DeserializeOwned + Debug + Serialize,
{
    let how = Poll {
        timeout,
        every,
        missing_is_not_yet: false,
    };
    poll_for(api, name, what, how, context, ok).await
}

/// How [`poll_for`] waits.
#[derive(Clone, Copy, Debug)]
pub struct Poll {
    /// How long until it gives up.
    pub timeout: Duration,
    /// How often it reads the object.
    pub every: Duration,
    /// A missing object counts as not yet (one a controller is still to make) rather than
    /// as an error.
    pub missing_is_not_yet: bool,
}

/// Polls `name` as `how` says until `ok` holds; after the timeout, an error with the
/// object's status and `context()` (e.g. a process's log).
pub async fn poll_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    how: Poll,
    context: impl Fn() -> String,
    ok: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: Clone + DeserializeOwned + Debug + Serialize,
{
    let start = Instant::now();
    loop {
        let obj = if how.missing_is_not_yet {
            api.get_opt(name).await
        } else {
            api.get(name).await.map(Some)
        }
        .map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
        if let Some(o) = &obj
            && ok(o)
        {
            return Ok(o.clone());
        }
        if start.elapsed() > how.timeout {
            let status = obj
                .and_then(|o| serde_json::to_value(&o).ok())
                .map(|v| v["status"].clone())
                .unwrap_or_default();
            anyhow::bail!(
                "{name}: {what} not reached in {:?}; status: {status:#}\n{}",
                how.timeout,
                context()
            );
        }
        tokio::time::sleep(how.every).await;
    }
}

/// Polls the Events of `events`' namespace every 500 ms until one satisfies `ok`, and
/// returns it; panics with `no {what} Event` and `context()` after `timeout`.
pub async fn wait_event(
    events: &Api<Event>,
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    ok: impl Fn(&Event) -> bool,
) -> Event {
    let start = Instant::now();
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("listing Events: {e}"))
            .items
            .into_iter()
            .find(|e| ok(e));
        if let Some(e) = found {
            return e;
        }
        assert!(
            start.elapsed() < timeout,
            "no {what} Event in {timeout:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls until `name` no longer exists; panics with its status after `timeout`.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Clone + DeserializeOwned + Debug + Serialize,
{
    let start = Instant::now();
    while let Some(obj) = api
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
    {
        if start.elapsed() > timeout {
            let status = serde_json::to_value(&obj)
                .map(|v| v["status"].clone())
                .unwrap_or_default();
            panic!("{name} still exists after {timeout:?}; status: {status:#}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (polling every 500 ms, up to `timeout`) for `name`'s `Ready` condition to be
/// `True`; panics with its status and `context()` otherwise.
pub async fn wait_ready<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> K
where
    K: Clone + DeserializeOwned + Debug + Serialize,
{
    try_wait_for(
        api,
        name,
        "Ready",
        timeout,
        Duration::from_millis(500),
        context,
        |o| has_condition(o, "Ready", "True"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Polls an EbsSnapshot every 250 ms until it is Completed or Failed (whichever; the caller
/// asserts which), with `context()` (e.g. process logs) in the error after `timeout`.
pub async fn snapshot_settled(
    api: &Api<pgml_api::EbsSnapshot>,
    name: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> anyhow::Result<pgml_api::EbsSnapshot> {
    use pgml_api::snapshot::SnapshotPhase;
    try_wait_for(
        api,
        name,
        "Completed or Failed",
        timeout,
        Duration::from_millis(250),
        context,
        |s: &pgml_api::EbsSnapshot| {
            s.status
                .as_ref()
                .and_then(|st| st.phase)
                .is_some_and(|p| matches!(p, SnapshotPhase::Completed | SnapshotPhase::Failed))
        },
    )
    .await
}
