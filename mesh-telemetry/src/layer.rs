//! `TraceLayer`: one span per request, a child of the incoming W3C trace context, passed on to
//! the next hop.

use std::any::Any;
use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use mesh_core::{BoxError, MeshError};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{record_grpc_status, TracedBody};
use crate::{attributes, propagation};

/// Traces every request through the service it wraps: a span of `kind` per request (a child
/// of the request's `traceparent`, or a new trace), the outgoing `traceparent` set to that
/// span, HTTP semantic-convention attributes, and the span's end when the response body ends.
///
/// Cheap to clone (the tracer is reference-counted). Sampling happens at the span's start (the
/// tracer's sampler); an unsampled request still gets its own span id in the outgoing
/// `traceparent` (flags `00`), so the next hop follows the decision, and costs no attributes
/// and no export.
#[derive(Clone, Debug)]
pub struct TraceLayer {
    tracer: SdkTracer,
    kind: SpanKind,
}

impl TraceLayer {
    /// Spans of `kind` from `tracer`: [`SpanKind::Server`] for a hop that receives calls (the
    /// sidecar's inbound listener), [`SpanKind::Client`] for one that makes calls on its
    /// application's behalf (the outbound listener, an application's own client).
    pub fn new(tracer: SdkTracer, kind: SpanKind) -> Self {
        Self { tracer, kind }
    }

    /// The kind of the spans this layer starts.
    pub fn kind(&self) -> &SpanKind {
        &self.kind
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            tracer: self.tracer.clone(),
            kind: self.kind.clone(),
        }
    }
}

/// The service [`TraceLayer`] builds.
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
    tracer: SdkTracer,
    kind: SpanKind,
}

impl<S, B, ResB> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Display + 'static,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let parent = propagation::extract(req.headers());
        let mut span = self
            .tracer
            .span_builder(attributes::span_name(req.method()))
            .with_kind(self.kind.clone())
            .start_with_context(&self.tracer, &parent);
        // Attributes only for spans that will be exported: an unsampled request pays none.
        if span.is_recording() {
            span.set_attributes(attributes::request(&req, &self.kind));
        }
        propagation::inject(req.headers_mut(), span.span_context());
        ResponseFuture {
            inner: self.inner.call(req),
            span: Some(span),
            kind: self.kind.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`Trace`] call: the inner future, then the response with its body
    /// holding the span.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
        kind: SpanKind,
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Display + 'static,
{
    type Output = Result<Response<TracedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut span) = this.span.take() else {
            // Polled after completion: a contract breach by the caller; pass the result on.
            return Poll::Ready(result.map(|r| r.map(|b| TracedBody::untraced(b))));
        };
        Poll::Ready(match result {
            Ok(resp) => {
                if span.is_recording() {
                    let (attrs, status) = attributes::response(resp.status().as_u16(), this.kind);
                    span.set_attributes(attrs);
                    if let Some(status) = status {
                        span.set_status(status);
                    }
                    record_grpc_status(&mut span, resp.headers(), this.kind);
                }
                let kind = this.kind.clone();
                Ok(resp.map(|b| TracedBody::new(b, span, kind)))
            }
            Err(e) => {
                if span.is_recording() {
                    span.set_attribute(KeyValue::new("error.type", error_type(&e)));
                    span.set_status(Status::error(e.to_string()));
                }
                span.end();
                Err(e)
            }
        })
    }
}

/// `error.type` of a hop that failed without a response: the mesh's error code when the error
/// is a [`MeshError`] (boxed or not), else `_OTHER`.
fn error_type<E: 'static>(e: &E) -> Cow<'static, str> {
    let any: &dyn Any = e;
    let mesh = any.downcast_ref::<MeshError>().or_else(|| {
        any.downcast_ref::<BoxError>()
            .and_then(|b| b.downcast_ref::<MeshError>())
    });
    Cow::Borrowed(mesh.map_or("_OTHER", MeshError::code))
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
