//! A scripted API server for whole-reconcile tests: a kube Client whose every request is
//! answered by a function of its method, path and body, in-process (a tower `service_fn`),
//! so a test keeps the objects and sees every write.

// Each test binary that includes this module uses its own part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::{Value, json};

/// A Client whose requests `answer` answers with (HTTP status, JSON body).
pub fn client<F>(answer: F) -> kube::Client
where
    F: Fn(&str, &str, &[u8]) -> (u16, Value) + Send + Sync + 'static,
{
    client_with(move |method, path, _query, body| Some(answer(method, path, body)))
}

/// A Client whose requests `answer` answers from (method, path, query, body); `None`
/// never answers (a request that took effect but whose answer was lost, the caller cut
/// off while it waits).
pub fn client_with<F>(answer: F) -> kube::Client
where
    F: Fn(&str, &str, &str, &[u8]) -> Option<(u16, Value)> + Send + Sync + 'static,
{
    client_seeing(move |parts, body| {
        let query = parts.uri.query().unwrap_or_default();
        answer(parts.method.as_str(), parts.uri.path(), query, body)
    })
}

/// A Client whose requests `answer` answers from the whole request head (method, URI,
/// headers) and body; `None` never answers (a watch left open).
pub fn client_seeing<F>(answer: F) -> kube::Client
where
    F: Fn(&http::request::Parts, &[u8]) -> Option<(u16, Value)> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            let Some((code, value)) = answer(&parts, &body) else {
                return std::future::pending().await;
            };
            let response = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(
                    serde_json::to_vec(&value).unwrap(),
                ))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    kube::Client::new(service, "default")
}

/// The apiserver's 404 for a request nothing answers.
pub fn not_found(method: &str, path: &str) -> (u16, Value) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": format!("{method} {path}")});
    (404, status)
}

/// Adds one to an object's `metadata.resourceVersion`, as every write does.
pub fn bump(obj: &mut Value) {
    let rv: u64 = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    obj["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
}
