//! The control plane's admin endpoint: `/snapshots` (JSON dump per node: what is set, what the
//! node ACKed or NACKed, with the error, and when), `/metrics` (Prometheus) and `/healthz`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use super::cache::SnapshotCache;
use super::metrics::Metrics;

/// Serves the admin endpoint on `listener` until the task is aborted.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use mesh_xds::server::{admin, Metrics, SnapshotCache};
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:19000").await?;
/// tokio::spawn(admin::serve(listener, SnapshotCache::new(), Arc::new(Metrics::new())));
/// # Ok(()) }
/// ```
pub async fn serve(listener: tokio::net::TcpListener, cache: SnapshotCache, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (cache, metrics) = (cache.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = handle(&req, &cache, &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(
    req: &Request<Incoming>,
    cache: &SnapshotCache,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/snapshots" | "/config_dump" => match serde_json::to_string_pretty(&cache.dump()) {
            Ok(json) => (StatusCode::OK, "application/json", json),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" | "/ready" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /snapshots, /metrics or /healthz\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}
