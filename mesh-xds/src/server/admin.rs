//! The control plane's admin endpoint: `/snapshots` (JSON dump per node: what is set, what the
//! node ACKed or NACKed, with the error, and when), `/config_dump?node=ID` (what one node is
//! served, in the shape of Envoy's config dump, see [`crate::config_dump`]), `/metrics`
//! (Prometheus) and `/healthz`.

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
use crate::config_dump::{query_pairs, DumpQuery};

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
        "/snapshots" => match serde_json::to_string_pretty(&cache.dump()) {
            Ok(json) => (StatusCode::OK, JSON, json),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, TEXT, e.to_string()),
        },
        "/config_dump" => config_dump(req.uri().query(), cache),
        "/metrics" | "/stats/prometheus" => {
            let accept = req.headers().get(http::header::ACCEPT);
            let (ctype, text) = mesh_core::exposition::negotiate(
                accept.and_then(|v| v.to_str().ok()),
                &metrics.encode(),
            );
            (StatusCode::OK, ctype, text)
        }
        "/healthz" | "/ready" => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "try /snapshots, /config_dump?node=ID, /metrics or /healthz\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// `/config_dump?node=ID[&resource=..][&name_regex=..]`: 400 without a node (naming the nodes
/// with a snapshot of their own) or with a bad query, 404 for a node that is served nothing.
fn config_dump(query: Option<&str>, cache: &SnapshotCache) -> (StatusCode, &'static str, String) {
    let Some(node) = query_pairs(query)
        .into_iter()
        .find_map(|(k, v)| (k == "node").then_some(v))
    else {
        return (
            StatusCode::BAD_REQUEST,
            TEXT,
            format!(
                "config_dump needs ?node=ID; nodes with a snapshot: {}\n",
                cache.node_keys().join(", ")
            ),
        );
    };
    let q = match DumpQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
    };
    let Some(dump) = cache.config_dump(&node) else {
        return (
            StatusCode::NOT_FOUND,
            TEXT,
            format!("no snapshot for node {node:?}\n"),
        );
    };
    match dump.render(&q) {
        Ok(v) => match serde_json::to_string_pretty(&v) {
            Ok(json) => (StatusCode::OK, JSON, json),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, TEXT, e.to_string()),
        },
        Err(e @ crate::config_dump::DumpQueryError::UnknownResource(_)) => {
            (StatusCode::NOT_FOUND, TEXT, format!("{e}\n"))
        }
        Err(e) => (StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
    }
}
