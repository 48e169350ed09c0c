//! The small HTTP endpoint the binaries serve for Prometheus and the kubelet:
//! `GET /metrics` (the registry, Prometheus text 0.0.4, or OpenMetrics when the scraper
//! asks for it), `GET /healthz` (liveness), `GET /readyz` (readiness) and `GET /startupz`.
//! [`serve`]: all three pass while the process answers (an operator that follows the leader
//! is ready too, it is a warm standby); [`serve_with`]: the caller judges them (the
//! instance manager's readiness is its PostgreSQL's).

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

/// What the kubelet asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Startup,
    Live,
    Ready,
}

/// Judges a probe: Ok passes (200), Err fails (503, the reason as the body).
pub type Probes = Arc<dyn Fn(Probe) -> Result<(), String> + Send + Sync>;

/// Binds `addr` (port 0 picks a free port) and serves the endpoints in the background for
/// the life of the process. Returns the address actually bound, which is also logged as
/// the structured field `metrics_addr` (tests that bind port 0 read it from the log).
pub async fn serve(addr: &str, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    serve_with(addr, registry, Arc::new(|_| Ok(()))).await
}

/// [`serve`], the probes judged by `probes`.
pub async fn serve_with(
    addr: &str,
    registry: Arc<Registry>,
    probes: Probes,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(metrics_addr = %bound, "serving /metrics, /healthz, /readyz and /startupz");
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
            let probes = probes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let registry = registry.clone();
                    let probes = probes.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &registry, &probes)) }
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

fn answer(req: &Request<Incoming>, registry: &Registry, probes: &Probes) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let probe = match req.uri().path() {
        "/healthz" => Some(Probe::Live),
        "/readyz" => Some(Probe::Ready),
        "/startupz" => Some(Probe::Startup),
        _ => None,
    };
    if let Some(p) = probe {
        return match probes(p) {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(why) => {
                let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, "");
                *resp.body_mut() = Full::new(Bytes::from(format!("{why}\n")));
                resp
            }
        };
    }
    match req.uri().path() {
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
        for p in ["/healthz", "/readyz", "/startupz"] {
            let r = get(addr, p).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{p}: {r}");
        }
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn probes_judged_by_the_caller_fail_with_their_reason() {
        let probes: Probes = Arc::new(|p| match p {
            Probe::Ready => Err("replica 5 MiB behind".into()),
            _ => Ok(()),
        });
        let addr = serve_with("127.0.0.1:0", Arc::new(Registry::default()), probes)
            .await
            .unwrap();
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("replica 5 MiB behind\n"), "{r}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/startupz").await.starts_with("HTTP/1.1 200"));
    }
}
