//! `TracedBody`: a response body that holds its hop's span until the body ends, so the span
//! covers the whole proxied exchange, streaming included.

use std::fmt::Display;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::{Span as _, SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::Span;

use crate::attributes;

pin_project_lite::pin_project! {
    /// A response body carrying its hop's span: the span ends when the body has been read to
    /// its end, fails, or is dropped (a client that went away). A failing body marks the span
    /// an error; gRPC trailers add `rpc.grpc.status_code`.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
        kind: SpanKind,
    }
}

impl<B> TracedBody<B> {
    pub(crate) fn new(inner: B, span: Span, kind: SpanKind) -> Self {
        Self {
            inner,
            span: Some(span),
            kind,
        }
    }

    /// A body with no span to end (a response future polled after it completed).
    pub(crate) fn untraced(inner: B) -> Self {
        Self {
            inner,
            span: None,
            kind: SpanKind::Internal,
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for TracedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBody")
            .field("inner", &self.inner)
            .field("ended", &self.span.is_none())
            .finish_non_exhaustive()
    }
}

impl<B> Body for TracedBody<B>
where
    B: Body,
    B::Error: Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        match &polled {
            None => end(this.span),
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(span)) = (frame.trailers_ref(), this.span.as_mut()) {
                    record_grpc_status(span, trailers, this.kind);
                }
            }
            Some(Err(e)) => {
                if let Some(span) = this.span.as_mut() {
                    span.set_attribute(KeyValue::new("error.type", "response_body"));
                    span.set_status(Status::error(format!("response body: {e}")));
                }
                end(this.span);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn end(span: &mut Option<Span>) {
    if let Some(mut span) = span.take() {
        span.end();
    }
}

/// `rpc.grpc.status_code` from `grpc-status` (in trailers, or in the headers of a trailers-only
/// response), and the error status for the codes the convention counts as errors.
pub(crate) fn record_grpc_status(span: &mut Span, headers: &HeaderMap, kind: &SpanKind) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return;
    };
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
    if attributes::is_grpc_error(code, kind) {
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        span.set_status(Status::error(message));
    }
}
