//! Access logs: one line per request of a listener, in Envoy's default text format or as JSON,
//! to standard output or a file (Envoy's file access log on the connection manager).
//!
//! [`AccessLogLayer`] is the outermost layer of a listener's stack. With no access log
//! configured it costs one atomic load per request and passes everything through. With one, it
//! notes the request's fields on the way in, turns a mesh error into its local reply on the way
//! out (so the line carries the typed error's Envoy response flag: `NR`, `RL`, `UH`, `UF`, ...),
//! counts body bytes as they stream and hands the finished record to the writers when the
//! response body ends. Writing happens on writer tasks behind bounded queues
//! ([`AccessLogWriters`]); the data path never waits for a disk.
//!
//! The upstream host of the last attempt comes from [`NoteUpstreamLayer`], which sits between
//! the load balancer and the upstream client and copies the picked endpoint into a slot the
//! request carries (only requests that are logged carry one).

mod body;
mod record;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::{header, HeaderName, HeaderValue, Request, Response};
use mesh_core::extensions::{ClientAddr, PickedEndpoint};
use mesh_core::{body as mbody, is_grpc, Body, BoxError, MeshError, Shared};
use tower::{Layer, Service};

use crate::decision::Decision;
use body::{CountedRequestBody, LoggedBody, Pending};
use record::Record;
pub(crate) use writer::Sink;
pub use writer::{AccessLogOpenError, AccessLogWriters};

/// Set by a hop that rewrote the path, so the log shows the path the client sent.
const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
/// Set by Envoy on responses it proxied: its time waiting for the upstream.
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// Logs each request of a listener to its access logs (none: a pass-through). Cheap to clone;
/// clones share the live set of logs, which a listener update swaps in place.
#[derive(Clone, Debug)]
pub struct AccessLogLayer {
    sinks: Shared<Vec<Sink>>,
}

impl AccessLogLayer {
    /// A layer writing to `sinks`.
    pub(crate) fn new(sinks: Vec<Sink>) -> Self {
        Self {
            sinks: Shared::new(sinks),
        }
    }

    /// A layer that logs nothing.
    pub fn off() -> Self {
        Self::new(Vec::new())
    }

    /// Swaps the set of logs; requests in flight finish with the set they started with.
    pub(crate) fn reload(&self, sinks: Vec<Sink>) {
        self.sinks.store(sinks);
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLogging<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLogging {
            inner,
            sinks: self.sinks.clone(),
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub struct AccessLogging<S> {
    inner: S,
    sinks: Shared<Vec<Sink>>,
}

impl<S> Service<Request<Body>> for AccessLogging<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if self.sinks.load().is_empty() {
            return ResponseFuture {
                inner: self.inner.call(req),
                logged: None,
            };
        }
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let slot = UpstreamSlot::default();
        parts.extensions.insert(slot.clone());
        let received = Arc::new(AtomicU64::new(0));
        let body = mbody::boxed(CountedRequestBody::new(body, Arc::clone(&received)));
        let h = |name: &HeaderName| parts.headers.get(name).cloned();
        let authority = h(&header::HOST).or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let record = Record {
            start_time: SystemTime::now(),
            method: parts.method.clone(),
            path: parts.uri.path_and_query().cloned(),
            original_path: h(&X_ENVOY_ORIGINAL_PATH),
            protocol: parts.version,
            authority,
            x_forwarded_for: h(&crate::headers::X_FORWARDED_FOR),
            user_agent: h(&header::USER_AGENT),
            request_id: h(&crate::headers::X_REQUEST_ID),
            downstream: parts.extensions.get::<ClientAddr>().map(|c| c.0),
            response_code: 0,
            flag: "-",
            downstream_closed: false,
            upstream_service_time: None,
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: std::time::Duration::ZERO,
        };
        let req = Request::from_parts(parts, body);
        let logged = Logged {
            grpc: is_grpc(&req),
            slot,
            pending: Some(Box::new(Pending {
                record,
                started,
                received,
                sinks: self.sinks.load_full(),
            })),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            logged: Some(logged),
        }
    }
}

/// What a logged request's future carries besides the inner future.
struct Logged {
    grpc: bool,
    slot: UpstreamSlot,
    /// Taken when the response arrives; still here if the client went away before it.
    pending: Option<Box<Pending>>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        // As Envoy: no response was sent (code 0), the downstream closed (`DC`).
        if let Some(mut p) = self.pending.take() {
            self.slot.note(&mut p.record);
            p.finish(0, true);
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`AccessLogging`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        logged: Option<Logged>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        let Some(mut logged) = this.logged.take() else {
            return Poll::Ready(result);
        };
        let Some(mut pending) = logged.pending.take() else {
            return Poll::Ready(result);
        };
        let (grpc, slot) = (logged.grpc, &logged.slot);
        let record = &mut pending.record;
        slot.note(record);
        let resp = match result {
            Ok(resp) => {
                if let Some(d) = resp.extensions().get::<Decision>() {
                    let (route, cluster) = d.names();
                    record.route_name = (!route.is_empty()).then(|| route.to_string());
                    if record.upstream_cluster.is_none() && !cluster.is_empty() {
                        record.upstream_cluster = Some(Arc::from(cluster));
                    }
                }
                record.upstream_service_time =
                    resp.headers().get(X_ENVOY_UPSTREAM_SERVICE_TIME).cloned();
                // A layer inside (router, rate limit) answered itself: `to_response` left the
                // typed error on the response.
                if let Some(err) = resp.extensions().get::<MeshError>() {
                    record.flag = err.response_flag();
                    note_error_target(err, record);
                }
                resp
            }
            Err(e) => {
                // The local reply is made here rather than at the edge, so the line carries
                // the typed error's flag; the edge passes it on unchanged.
                let err = crate::server::mesh_error(e);
                tracing::debug!(error = %err, "local reply");
                record.flag = err.response_flag();
                note_error_target(&err, record);
                err.to_response(grpc)
            }
        };
        pending.record.response_code = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = mbody::boxed(LoggedBody::new(body, pending));
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// The upstream a mesh error names, when the load balancer's pick did not record it.
fn note_error_target(err: &MeshError, record: &mut Record) {
    match err {
        MeshError::UpstreamConnect { endpoint, .. } => record.upstream_host = Some(*endpoint),
        MeshError::NoHealthyEndpoint { cluster }
        | MeshError::CircuitOpen { cluster, .. }
        | MeshError::ClusterNotFound { cluster }
            if record.upstream_cluster.is_none() =>
        {
            record.upstream_cluster = Some(Arc::from(cluster.as_str()));
        }
        _ => {}
    }
}

/// Where [`NoteUpstream`] records the endpoint of a logged request's last attempt (retries
/// clone it with the request, so every attempt writes to the same slot).
#[derive(Clone, Debug, Default)]
pub struct UpstreamSlot(Arc<ArcSwapOption<PickedEndpoint>>);

impl UpstreamSlot {
    /// Copies the last pick, if any, into `record`.
    fn note(&self, record: &mut Record) {
        if let Some(picked) = self.0.load_full() {
            record.upstream_host = Some(picked.address);
            record.upstream_cluster = Some(Arc::clone(&picked.cluster));
        }
    }
}

/// Copies the load balancer's pick into the request's [`UpstreamSlot`], when it has one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoteUpstreamLayer;

impl<S> Layer<S> for NoteUpstreamLayer {
    type Service = NoteUpstream<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NoteUpstream { inner }
    }
}

/// The service of [`NoteUpstreamLayer`]; its future is the inner service's.
#[derive(Clone, Debug)]
pub struct NoteUpstream<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for NoteUpstream<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ext = req.extensions();
        if let Some(slot) = ext.get::<UpstreamSlot>() {
            slot.0
                .store(ext.get::<PickedEndpoint>().cloned().map(Arc::new));
        }
        self.inner.call(req)
    }
}
