//! The small HTTP endpoint both binaries serve for Prometheus and the kubelet:
//! `GET /metrics` (the registry, Prometheus text 0.0.4, or OpenMetrics when the scraper
//! asks for it), `GET /healthz` (liveness: the process answers) and `GET /readyz`
//! (readiness: the process is up and serving; an operator that follows the leader is ready
//! too, it is a warm standby).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The OpenMetrics media type (what Prometheus asks for first).
const OPENMETRICS: &str = "application/openmetrics-text";

/// Binds `addr` (port 0 picks a free port) and serves the endpoints in the background for
/// the life of the process. Returns the address actually bound, which is also logged as
/// the structured field `metrics_addr` (tests that bind port 0 read it from the log).
pub async fn serve(addr: &str, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(metrics_addr = %bound, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &registry)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended");
                }
            });
        }
    });
    Ok(bound)
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" | "/readyz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let open = req
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains(OPENMETRICS));
            let (body, ctype) = render(registry, open);
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The registry as Prometheus text (0.0.4), or OpenMetrics when `openmetrics`, with the
/// content type to send.
pub fn render(registry: &Registry, openmetrics: bool) -> (String, &'static str) {
    let mut body = String::new();
    let ctype = if openmetrics {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut body, registry);
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, registry);
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (body, ctype)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_probes_on_a_free_port() {
        let mut reg = Registry::default();
        let c: Counter = Counter::default();
        reg.register("pgml_test_things", "Things.", c.clone());
        c.inc_by(3);
        let addr = serve("127.0.0.1:0", Arc::new(reg)).await.unwrap();
        assert_ne!(addr.port(), 0);
        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("\npgml_test_things_total 3\n"), "{m}");
        for p in ["/healthz", "/readyz"] {
            let r = get(addr, p).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{p}: {r}");
        }
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
