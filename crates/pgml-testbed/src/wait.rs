//! Waiting on objects in the real apiserver, the way a person watches `kubectl get`.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use kube::Api;
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
    let start = Instant::now();
    loop {
        let obj = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading {name}: {e}"));
        if ok(&obj) {
            return obj;
        }
        if start.elapsed() > timeout {
            let status = serde_json::to_value(&obj)
                .map(|v| v["status"].clone())
                .unwrap_or_default();
            panic!("{name}: {what} not reached in {timeout:?}; status: {status:#}");
        }
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
