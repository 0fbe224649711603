//! One listener: the accept loop, protocol detection (`crate::accept`: HTTP/1.1 and HTTP/2
//! prior knowledge to hyper-util's auto server, anything else to the TCP proxy or closed), the
//! per-hop edge work, the protections, and a graceful drain.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_core::extensions::{ClientAddr, ListenerName, PeerIdentity};
use mesh_core::{body, is_grpc, Body, BoxError, HttpProtocolOptions, MeshError, StripHostPort};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use crate::accept::{self, L4Settings};
use crate::conn::{Activity, Connections, Ended, GracefulShutdown, InFlight, Supervised};
use crate::decision::Decision;
use crate::header_timer::HeaderTimer;
use crate::headers;
use crate::limit::{Admission, ConnectionLimit, PerIp, PerIpSlot};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::metrics_l4::CloseReason;
use crate::upgrade::{self, PendingUpgrade, UpgradeRelays};
use mesh_router::rbac::RbacAllowed;

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
    /// global limit); with none left, the connection idle longest is shed for a new one, and
    /// with nothing idle the new one is closed at once.
    pub connections: Arc<ConnectionLimit>,
    /// The stack traces requests (its trace layer owns `traceparent`: it continues the
    /// incoming one or starts a trace by its sampler), so the edge does not generate one.
    pub traced: bool,
    /// Detection and the opaque-TCP proxy.
    pub l4: L4Settings,
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
    let l4 = Arc::new(settings.l4.clone());
    let tracker = TaskTracker::new();
    let connections = Arc::new(Connections::default());
    settings.connections.register(&connections);
    let per_ip = settings.http.max_connections_per_ip.map(PerIp::new);
    let idle = settings.http.idle_timeout;
    let conns = metrics.active_connections(&settings.name);
    let shared = Arc::new(EdgeShared {
        listener: Arc::clone(&settings.name),
        strip_host_port: settings.http.strip_host_port,
        local_port: listener.local_addr().map_or(0, |a| a.port()),
        max_body: settings.http.max_request_bytes,
        traced: settings.traced,
        http: settings.http.clone(),
        upgrades: UpgradeRelays::new(idle),
        // Resolved once per listener: no label building or family lookup per request.
        listener_metrics: metrics.listener(&settings.name),
        metrics,
    });
    // One sweep per listener finds idle connections and passed HTTP/1 header deadlines (no
    // timer per connection or per request), often enough that either fires at most a quarter
    // of its timeout late.
    let period = idle.min(settings.http.request_headers_timeout) / 4;
    let mut sweep =
        tokio::time::interval(period.clamp(Duration::from_millis(10), Duration::from_secs(5)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                connections.close_idle(idle);
                continue;
            }
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
        // The per-address cap first: a flood from one address sheds nobody else's connection.
        let per_ip_slot = match &per_ip {
            None => None,
            Some(per_ip) => match per_ip.take(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(listener = %settings.name, %peer, "per-address connection cap reached, closing");
                    shared
                        .metrics
                        .l4()
                        .closed(&settings.name, CloseReason::PerIpLimit);
                    continue;
                }
            },
        };
        let permit = match settings.connections.admit().await {
            Admission::Admitted(p) => p,
            Admission::Shed(p) => {
                tracing::debug!(listener = %settings.name, %peer, "connection limit reached, shed the connection idle longest");
                shared
                    .metrics
                    .l4()
                    .closed(&settings.name, CloseReason::ShedIdle);
                p
            }
            Admission::Refused => {
                tracing::warn!(listener = %settings.name, %peer, "connection limit reached, closing");
                shared
                    .metrics
                    .record_mesh_error(&settings.name, "connection_limit");
                shared
                    .metrics
                    .l4()
                    .closed(&settings.name, CloseReason::OverLimit);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let edge = Edge {
            shared: Arc::clone(&shared),
            activity: Arc::clone(&activity),
            peer,
            forwarded_for: headers::forwarded_for_value(peer.ip()),
            extensions: http::Extensions::new(),
            inner: RefCell::new(service.clone()),
        };
        let gauge = conns.clone();
        gauge.inc();
        let registered = Registered {
            id: connections.insert(Arc::clone(&activity)),
            registry: Arc::clone(&connections),
            gauge,
            _permit: permit,
            _per_ip: per_ip_slot,
        };
        let (builder, l4) = (Arc::clone(&builder), Arc::clone(&l4));
        tracker.spawn(async move {
            // Dropped however the task ends (also if it is dropped or panics half way), so the
            // registry never keeps a dead connection's waker, and with it the task, alive.
            let _registered = registered;
            let listener = Arc::clone(&edge.shared.listener);
            let metrics = edge.shared.metrics.clone();
            let http = |io, identity| {
                let mut edge = edge;
                edge.extensions = request_extensions(&edge.shared.listener, peer, identity);
                // The connection's own HTTP/1 timer: its header deadline lives in `activity`.
                let mut builder = auto::Builder::clone(&builder);
                builder.http1().timer(HeaderTimer(Arc::clone(&activity)));
                let conn = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(io),
                        hyper::service::service_fn(move |req| edge.call(req)),
                    )
                    .into_owned();
                Supervised::new(conn, Arc::clone(&activity))
            };
            let ended =
                accept::serve_connection(stream, &activity, &l4, &listener, &metrics, http).await;
            match ended {
                Ended::Done(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                Ended::Done(Ok(())) => {}
                Ended::Forced => tracing::debug!(%peer, "drain deadline: closing the connection"),
            }
        });
    }
    drop(listener);
    // Drain: finish in-flight requests, refuse new ones (GOAWAY / close).
    let deadline = tokio::time::Instant::now() + drain;
    connections.close_all_gracefully();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(listener = %settings.name, "drain deadline passed with connections open; closing them");
        connections.close_all_now();
        tracker.wait().await;
    }
    // Upgraded connections (WebSocket, CONNECT) left hyper; they get the same deadline.
    shared.upgrades.drain(deadline).await;
}

/// A connection's place in its listener: registry entry, open-connections gauge,
/// connection-limit permit and per-address slot, all given back when dropped.
struct Registered {
    id: u64,
    registry: Arc<Connections>,
    gauge: prometheus_client::metrics::gauge::Gauge,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _per_ip: Option<PerIpSlot>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.id);
        self.gauge.dec();
    }
}

impl<I, S, E, B> GracefulShutdown for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

fn builder(http: &HttpProtocolOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let header_bytes = usize::try_from(http.max_request_headers_kb).unwrap_or(60) * 1024;
    // The HTTP/1 timer is set per connection (`HeaderTimer`).
    b.http1()
        .header_read_timeout(http.request_headers_timeout)
        // hyper answers 431 when the header block outgrows its read buffer.
        .max_buf_size(header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http.max_concurrent_streams)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        // Rapid-reset (CVE-2023-44487) protection: bound streams reset before we accepted them.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024));
    // No HTTP/2 keep-alive PINGs (as Envoy, whose `connection_keepalive` is off unless set):
    // with them on, hyper locks the connection's ping state and reads the clock on every
    // frame received and on every poll of the connection (~600 instructions per request on
    // an h2c hop, callgrind). Idle connections are closed by the listener's idle sweep.
    match (http.http1, http.http2) {
        (true, false) => b.http1_only(),
        (false, true) => b.http2_only(),
        _ => b,
    }
}

/// What every connection of a listener shares.
struct EdgeShared {
    listener: Arc<str>,
    /// The listener's `strip_host_port` and its own port (for `Matching`).
    strip_host_port: StripHostPort,
    local_port: u16,
    max_body: u64,
    traced: bool,
    /// For the allowed upgrades.
    http: HttpProtocolOptions,
    /// The owner of upgraded relays.
    upgrades: UpgradeRelays,
    metrics: Metrics,
    listener_metrics: ListenerMetrics,
}

/// The per-request work at the edge of a listener, before the layer stack and after it: one per
/// connection.
struct Edge {
    shared: Arc<EdgeShared>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    /// The peer's address as an `x-forwarded-for` value, made once for all its requests.
    forwarded_for: Option<http::HeaderValue>,
    /// The extensions the edge gives each request of the connection (client address, listener,
    /// verified identity), cloned per request: see [`request_extensions`].
    extensions: http::Extensions,
    /// hyper calls its service through `&self`; the stack's `poll_ready` and `call` want
    /// `&mut`. Both happen synchronously inside [`Edge::call`] (the response future owns what it
    /// needs), so the borrow never spans an await, and the stack is not cloned (a boxed
    /// allocation and a handful of reference counts) per request.
    inner: RefCell<StackService>,
}

/// Set on local replies (`MeshError::to_response`).
const X_MESH_ERROR: http::HeaderName = http::HeaderName::from_static("x-mesh-error");

/// How a request left the edge for the stack.
enum Sent {
    /// The stack was ready at once and took it.
    Called(<StackService as Service<Request<Body>>>::Future),
    /// Refused before the stack (too large) or by the stack's readiness.
    Failed(BoxError),
    /// The stack was not ready: wait for it (boxed, so the common case's future stays small).
    Waiting(Box<(StackService, Request<Body>)>),
}

impl Edge {
    /// The request's per-hop work is done synchronously, and the stack polled ready with a no-op
    /// waker: our layers are always ready, so the returned future only holds the stack's
    /// response future and a few fields. hyper keeps one such future allocated per connection
    /// for the connection's lifetime; an `async fn` holding the request across the readiness
    /// wait would be five times larger.
    fn call(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static {
        let guard = Active::new(&self.shared, &self.activity);
        let started = Instant::now();
        let grpc = is_grpc(&req);
        let mut pending = None;
        let sent = match self.prepare(req, &mut pending) {
            Err(e) => Sent::Failed(e.into()),
            Ok(req) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut inner = self.inner.borrow_mut();
                match inner.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => Sent::Called(inner.call(req)),
                    Poll::Ready(Err(e)) => Sent::Failed(e),
                    // Wait on a clone, polled ready itself before it is called.
                    Poll::Pending => Sent::Waiting(Box::new((inner.clone(), req))),
                }
            }
        };
        let peer = self.peer;
        async move {
            let result = match sent {
                Sent::Called(fut) => fut.await,
                Sent::Failed(e) => Err(e),
                Sent::Waiting(mut waiting) => match waiting.0.ready().await {
                    Ok(_) => {
                        let (mut svc, req) = *waiting;
                        svc.call(req).await
                    }
                    Err(e) => Err(e),
                },
            };
            let relay = match (pending, result) {
                (Some(p), Ok(mut resp)) => (p.accept(&mut resp), Ok(resp)),
                (_, result) => (None, result),
            };
            let (relay, result) = relay;
            let mut resp = guard.shared.finish(result, grpc, peer, started);
            if let Some(relay) = relay {
                relay.start(&mut resp, &guard.shared.upgrades);
            }
            Ok(resp)
        }
    }

    /// The per-hop request work: the request target, size limit, headers, extensions, body
    /// limit; an allowed upgrade is taken into `pending`.
    fn prepare(
        &self,
        req: Request<Incoming>,
        pending: &mut Option<PendingUpgrade>,
    ) -> Result<Request<Body>, MeshError> {
        let max_body = self.shared.max_body;
        let (mut parts, incoming) = req.into_parts();
        if self.activity.fragments.take(&parts.uri) {
            // As Envoy: a request target with a fragment is malformed (hyper drops it silently).
            return Err(MeshError::BadRequest {
                reason: "request target with a fragment".into(),
            });
        }
        if self.shared.strip_host_port != StripHostPort::None {
            headers::strip_host_port(
                &mut parts,
                self.shared.strip_host_port,
                self.shared.local_port,
            );
        }
        let too_large = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > max_body);
        if too_large {
            return Err(MeshError::RequestTooLarge { limit: max_body });
        }
        *pending = upgrade::take(&mut parts, &self.shared.http);
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(p) = pending {
            p.restore_request(&mut parts.headers);
        }
        if let Some(ip) = &self.forwarded_for {
            headers::append_forwarded_for_value(&mut parts.headers, ip);
        }
        headers::ensure_request_id(&mut parts.headers);
        if !self.shared.traced {
            headers::ensure_traceparent(&mut parts.headers);
        }
        // What hyper put there (an upgrade, an HTTP/2 `:protocol`) joins the edge's own.
        let mut extensions = self.extensions.clone();
        extensions.extend(std::mem::take(&mut parts.extensions));
        parts.extensions = extensions;
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        let body = http_body_util::BodyExt::map_err(
            http_body_util::Limited::new(incoming, limit),
            move |e| client_body_error(&e, max_body),
        );
        let body = body::boxed(body);
        Ok(Request::from_parts(parts, body))
    }
}

/// The extensions every request of a connection starts with, made once per connection.
///
/// Cloned per request, the map keeps the room this one was made with: room for the four
/// entries the router and the load balancer add later (matched route, target cluster,
/// deadline, picked endpoint). Inserted one by one into a fresh map, the fourth grew (rehashed)
/// it on every request (callgrind, one sidecar hop: see the commit message).
fn request_extensions(
    listener: &Arc<str>,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
) -> http::Extensions {
    /// Placeholders that grow the map to eight buckets (room for seven entries), then leave.
    #[derive(Clone, Copy)]
    struct Room<const N: u8>;
    let mut ext = http::Extensions::new();
    ext.insert(ClientAddr(peer));
    ext.insert(ListenerName(Arc::clone(listener)));
    if let Some(id) = identity {
        ext.insert(id);
    }
    ext.insert(Room::<0>);
    ext.insert(Room::<1>);
    ext.remove::<Room<0>>();
    ext.remove::<Room<1>>();
    ext
}

impl EdgeShared {
    /// The per-hop response work and the request's metrics; errors become local replies here.
    fn finish(
        &self,
        result: Result<Response<Body>, BoxError>,
        grpc: bool,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<Body> {
        let (resp, decision) = match result {
            Ok(mut resp) => {
                if resp.extensions().get::<RbacAllowed>().is_some() {
                    self.metrics.record_rbac(&self.listener, None);
                }
                let decision = Decision::take(resp.extensions_mut());
                headers::strip_hop_by_hop(resp.headers_mut());
                (resp, Some(decision))
            }
            Err(e) => {
                let err = mesh_error(e);
                tracing::debug!(listener = %self.listener, %peer, error = %err, "local reply");
                (err.to_response(grpc), None)
            }
        };
        // Local replies are errors, or gRPC errors inside a 200: look no further otherwise.
        if grpc || !resp.status().is_success() {
            if let Some(code) = resp
                .headers()
                .get(X_MESH_ERROR)
                .and_then(|v| v.to_str().ok())
            {
                self.metrics.record_mesh_error(&self.listener, code);
                if let Some(MeshError::RbacDenied { policy }) = resp.extensions().get() {
                    self.metrics.record_rbac(&self.listener, Some(policy));
                }
            }
        }
        let (route, cluster) = decision.as_ref().map_or(("", ""), Decision::names);
        self.listener_metrics
            .record(route, cluster, resp.status(), started.elapsed());
        resp
    }
}

/// A request in flight on the listener's gauge and on its connection, until dropped: also when
/// the client goes away and hyper drops the request's future half way.
struct Active {
    shared: Arc<EdgeShared>,
    _conn: InFlight,
}

impl Active {
    fn new(shared: &Arc<EdgeShared>, conn: &Arc<Activity>) -> Self {
        shared.listener_metrics.active_requests.inc();
        Self {
            shared: Arc::clone(shared),
            _conn: conn.begin(),
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.shared.listener_metrics.active_requests.dec();
    }
}

/// The mesh error a request failed with: the one place a boxed error from the stack becomes a
/// `MeshError` (the access log makes its local reply with it too). A client body error is
/// already typed where the body is read ([`client_body_error`]).
pub(crate) fn mesh_error(e: BoxError) -> MeshError {
    MeshError::from_boxed(e)
}

/// An error reading the client's request body, as the mesh answers it: over the limit while
/// streaming (no content-length) 413; malformed (a bad chunk size, a chunk without its CRLF)
/// 400, as Envoy answers a codec error. Typed here, where the body is read, so that the
/// upstream failure it causes (the upstream client passes a `MeshError` through) is not taken
/// for the upstream's own (502).
fn client_body_error(e: &BoxError, limit: u64) -> MeshError {
    if e.is::<http_body_util::LengthLimitError>() {
        MeshError::RequestTooLarge { limit }
    } else {
        MeshError::BadRequest {
            reason: format!("request body: {e}"),
        }
    }
}
