//! One listener: the accept loop, protocol detection (HTTP/2 prior-knowledge preface, else
//! HTTP/1.1, through hyper-util's auto server), the per-hop edge work, the protections, and a
//! graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_core::extensions::{ClientAddr, ListenerName, MatchedRoute, TargetCluster};
use mesh_core::{body, is_grpc, Body, BoxError, HttpProtocolOptions, MeshError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use crate::conn::{Activity, TrackedIo};
use crate::headers;
use crate::metrics::{ListenerMetrics, Metrics};

/// The service a listener hands each request to: the layer stack, boxed at the boundary.
pub type StackService = BoxCloneService<Request<Body>, Response<Body>, BoxError>;

/// What a listener needs besides its socket.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// The listener's name (metrics label, `ListenerName` extension).
    pub name: Arc<str>,
    /// Protocols and protections.
    pub http: HttpProtocolOptions,
    /// Permits for open downstream connections, shared by every listener of the process (a
    /// global limit); with none left, a new connection is closed at once.
    pub connections: Arc<Semaphore>,
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting and lets open
/// connections finish their in-flight requests for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    service: StackService,
    metrics: Metrics,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let builder = Arc::new(builder(&settings.http));
    let tracker = TaskTracker::new();
    // Cancelled when the drain deadline passes: connections still open are then dropped.
    let force = CancellationToken::new();
    let idle = settings.http.idle_timeout;
    let conns = metrics.active_connections(&settings.name);
    // Resolved once per listener: no label building or family lookup per request for these.
    let listener_metrics = Arc::new(metrics.listener(&settings.name));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %settings.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&settings.connections).try_acquire_owned() else {
            tracing::warn!(listener = %settings.name, %peer, "connection limit reached, closing");
            metrics.record_mesh_error(&settings.name, "connection_limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let edge = Edge {
            activity: Arc::clone(&activity),
            listener: Arc::clone(&settings.name),
            peer,
            max_body: settings.http.max_request_bytes,
            inner: service.clone(),
            metrics: metrics.clone(),
            listener_metrics: Arc::clone(&listener_metrics),
        };
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(TrackedIo::new(stream, Arc::clone(&activity))),
                hyper::service::service_fn(move |req| edge.clone().call(req)),
            )
            .into_owned();
        let gauge = conns.clone();
        gauge.inc();
        let stop = shutdown.clone();
        let force = force.clone();
        tracker.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            let check = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
            loop {
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = force.cancelled() => {
                        tracing::debug!(%peer, "drain deadline: closing the connection");
                        break;
                    }
                    () = stop.cancelled(), if !closing => {
                        // Drain: finish in-flight requests, refuse new ones (GOAWAY / close).
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = tokio::time::sleep(check), if !closing => {
                        if activity.idle_for() >= idle {
                            tracing::debug!(%peer, "idle timeout: closing");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
            gauge.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(listener = %settings.name, "drain deadline passed with connections open; closing them");
        force.cancel();
        tracker.wait().await;
    }
}

fn builder(http: &HttpProtocolOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let header_bytes = usize::try_from(http.max_request_headers_kb).unwrap_or(60) * 1024;
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.request_headers_timeout)
        // hyper answers 431 when the header block outgrows its read buffer.
        .max_buf_size(header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http.max_concurrent_streams)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        // Rapid-reset (CVE-2023-44487) protection: bound streams reset before we accepted them.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    match (http.http1, http.http2) {
        (true, false) => b.http1_only(),
        (false, true) => b.http2_only(),
        _ => b,
    }
}

/// The per-request work at the edge of a listener, before the layer stack and after it.
#[derive(Clone)]
struct Edge {
    activity: Arc<Activity>,
    listener: Arc<str>,
    peer: SocketAddr,
    max_body: u64,
    inner: StackService,
    metrics: Metrics,
    listener_metrics: Arc<ListenerMetrics>,
}

impl Edge {
    async fn call(mut self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let _in_flight = self.activity.begin();
        let started = Instant::now();
        let grpc = is_grpc(&req);
        let active = &self.listener_metrics.active_requests;
        active.inc();
        let (mut parts, incoming) = req.into_parts();
        let too_large = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > self.max_body);
        let (resp, route, cluster) = if too_large {
            (
                self.local_reply(
                    &MeshError::RequestTooLarge {
                        limit: self.max_body,
                    },
                    grpc,
                ),
                String::new(),
                String::new(),
            )
        } else {
            headers::strip_hop_by_hop(&mut parts.headers);
            headers::append_forwarded_for(&mut parts.headers, self.peer.ip());
            headers::ensure_request_id(&mut parts.headers);
            headers::ensure_traceparent(&mut parts.headers);
            parts.extensions.insert(ClientAddr(self.peer));
            parts
                .extensions
                .insert(ListenerName(Arc::clone(&self.listener)));
            let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
            let body = body::boxed(http_body_util::Limited::new(incoming, limit));
            let req = Request::from_parts(parts, body);
            let result = match self.inner.ready().await {
                Ok(svc) => svc.call(req).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(mut resp) => {
                    let route = resp.extensions_mut().remove::<MatchedRoute>();
                    let cluster = resp.extensions_mut().remove::<TargetCluster>();
                    headers::strip_hop_by_hop(resp.headers_mut());
                    (
                        resp,
                        route.map(|r| r.route.name.clone()).unwrap_or_default(),
                        cluster.map(|c| c.0.to_string()).unwrap_or_default(),
                    )
                }
                Err(e) => {
                    let err = body_limit_error(&e, self.max_body)
                        .unwrap_or_else(|| MeshError::from_boxed(e));
                    (self.local_reply(&err, grpc), String::new(), String::new())
                }
            }
        };
        if let Some(code) = resp
            .headers()
            .get("x-mesh-error")
            .and_then(|v| v.to_str().ok())
        {
            self.metrics.record_mesh_error(&self.listener, code);
        }
        self.listener_metrics
            .record(route, cluster, resp.status(), started.elapsed());
        active.dec();
        Ok(resp)
    }

    fn local_reply(&self, err: &MeshError, grpc: bool) -> Response<Body> {
        tracing::debug!(listener = %self.listener, peer = %self.peer, error = %err, "local reply");
        err.to_response(grpc)
    }
}

/// A body that outgrew the limit while streaming (no content-length) surfaces as an upstream
/// error; it is the client's fault, so it answers 413.
fn body_limit_error(e: &BoxError, limit: u64) -> Option<MeshError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return Some(MeshError::RequestTooLarge { limit });
        }
        source = err.source();
    }
    None
}
