//! The admin endpoint (127.0.0.1:15000 by default): `/healthz`, `/ready`, `/metrics` (also
//! `/stats/prometheus`: OpenMetrics when the `Accept` header asks for it, else Prometheus's
//! classic text, see [`mesh_core::exposition`]) and `/config_dump` (Envoy's shape and query, see
//! [`mesh_xds::config_dump`]). Routes registered by other parts (the registration API, the xDS
//! status) are served too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_core::{body, exposition, Body};
use mesh_xds::config_dump::{ConfigDump, DumpQuery, DumpQueryError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::warming::WarmingStatus;

/// What `/config_dump` shows: a function so it always reflects the live config.
pub type ConfigDumpFn = Arc<dyn Fn() -> ConfigDump + Send + Sync>;

/// A handler for an extra admin route: gets the method and the whole body, returns a response.
pub type AdminHandler = Arc<
    dyn Fn(Method, Bytes) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// Largest admin request body read (the registration API's JSON is small).
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// The admin endpoint's state.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    config_dump: ConfigDumpFn,
    routes: Arc<HashMap<String, AdminHandler>>,
    warming: Option<WarmingReport>,
    security: Option<SecurityNote>,
}

/// A line `/ready` adds about transport security (e.g. that the sidecar runs plaintext), read
/// live.
pub type SecurityNote = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What `/ready` reports as warming: a function so it always reflects the live state.
pub type WarmingReport = Arc<dyn Fn() -> WarmingStatus + Send + Sync>;

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin endpoint exposing `registry`, with `/config_dump` from `config_dump`.
    pub fn new(registry: Registry, config_dump: ConfigDumpFn) -> Self {
        Self {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(false)),
            config_dump,
            routes: Arc::new(HashMap::new()),
            warming: None,
            security: None,
        }
    }

    /// Has `/ready` add `note`'s line (when it has one) to its body, whatever the status.
    #[must_use]
    pub fn with_security_note(mut self, note: SecurityNote) -> Self {
        self.security = Some(note);
        self
    }

    /// Has `/ready` name the warming listeners and clusters, and answer 503 while a listener
    /// warms (a listener is where traffic arrives; a warming cluster is only listed).
    #[must_use]
    pub fn with_warming(mut self, report: WarmingReport) -> Self {
        self.warming = Some(report);
        self
    }

    /// Adds a route (e.g. `/pub`) served by `handler`.
    #[must_use]
    pub fn with_route(mut self, path: &str, handler: AdminHandler) -> Self {
        Arc::make_mut(&mut self.routes).insert(path.to_string(), handler);
        self
    }

    /// Uses `flag` as the readiness flag (shared with whoever knows when config is complete).
    #[must_use]
    pub fn with_ready_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.ready = flag;
        self
    }

    /// The readiness flag: set once the first full config is in place.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    /// Answers one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, incoming) = req.into_parts();
        let path = parts.uri.path();
        if let Some(handler) = self.routes.get(path) {
            let limited = http_body_util::Limited::new(incoming, MAX_ADMIN_BODY);
            return match http_body_util::BodyExt::collect(limited).await {
                Ok(b) => handler(parts.method.clone(), b.to_bytes()).await,
                Err(e) => text(StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}\n")),
            };
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/ready" => self.readiness(),
            "/metrics" | "/stats/prometheus" => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
                    Ok(()) => {
                        let accept = parts.headers.get(header::ACCEPT);
                        let (ctype, exposed) =
                            exposition::negotiate(accept.and_then(|v| v.to_str().ok()), &out);
                        Response::builder()
                            .header(header::CONTENT_TYPE, ctype)
                            .body(body::full(exposed))
                            .unwrap_or_else(|_| {
                                text(StatusCode::INTERNAL_SERVER_ERROR, "encode\n".into())
                            })
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            "/config_dump" => self.config_dump(parts.uri.query()),
            _ => text(
                StatusCode::NOT_FOUND,
                "admin: /healthz /ready /metrics /config_dump\n".into(),
            ),
        }
    }

    /// `/config_dump[?resource=..][&name_regex=..]`: 400 for a bad query, 404 for a `resource`
    /// that names no field, as Envoy answers.
    fn config_dump(&self, query: Option<&str>) -> Response<Body> {
        let rendered = DumpQuery::parse(query).and_then(|q| (self.config_dump)().render(&q));
        match rendered {
            Ok(dump) => {
                let json = serde_json::to_string_pretty(&dump)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body::full(json))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "dump\n".into()))
            }
            Err(e @ DumpQueryError::UnknownResource(_)) => {
                text(StatusCode::NOT_FOUND, format!("{e}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }

    /// `/ready`: 200 `LIVE` once the first full config is in and no listener warms; each
    /// warming listener and cluster on a line of its own, with what it waits for.
    fn readiness(&self) -> Response<Body> {
        let warming = self.warming.as_ref().map(|f| f()).unwrap_or_default();
        let config = self.ready.load(Ordering::Acquire);
        let (status, mut msg) = match (config, warming.listeners.is_empty()) {
            (true, true) => (StatusCode::OK, "LIVE\n".to_string()),
            (true, false) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "INITIALIZING: listeners warming\n".to_string(),
            ),
            (false, _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "PRE_INITIALIZING: waiting for the first config\n".to_string(),
            ),
        };
        for (kind, map) in [
            ("listener", &warming.listeners),
            ("cluster", &warming.clusters),
        ] {
            for (name, why) in map {
                msg.push_str(&format!("warming {kind} {name:?}: waiting for {why}\n"));
            }
        }
        if let Some(line) = self.security.as_ref().and_then(|f| f()) {
            msg.push_str(&line);
            msg.push('\n');
        }
        text(status, msg)
    }

    /// Serves the admin endpoint on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
            };
            let (admin, builder, stop) = (self.clone(), Arc::clone(&builder), shutdown.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(body::full(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
