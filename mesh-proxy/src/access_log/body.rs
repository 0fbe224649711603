//! The bodies that count bytes as they stream: the request's (`%BYTES_RECEIVED%`) and the
//! response's (`%BYTES_SENT%`), which also hands the record to the writers when it ends, or when
//! it is dropped before its end (the client went away: Envoy's `DC`), as Envoy logs a request.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use mesh_core::{Body, BoxError};

use super::record::Record;
use super::writer::Sink;

/// A request body that adds the bytes it yields to a shared counter.
pub(crate) struct CountedRequestBody {
    inner: Body,
    received: Arc<AtomicU64>,
}

impl CountedRequestBody {
    /// Counts `inner`'s data into `received`.
    pub(crate) fn new(inner: Body, received: Arc<AtomicU64>) -> Self {
        Self { inner, received }
    }
}

impl http_body::Body for CountedRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.received
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request's record waiting for its response to end.
pub(crate) struct Pending {
    /// The record, complete but for bytes and duration.
    pub(crate) record: Record,
    /// When the request arrived.
    pub(crate) started: Instant,
    /// The request body's bytes so far.
    pub(crate) received: Arc<AtomicU64>,
    /// Where the line goes.
    pub(crate) sinks: Arc<Vec<Sink>>,
}

impl Pending {
    /// Completes the record and hands it to every sink (never waits: a full sink drops it).
    pub(crate) fn finish(self: Box<Self>, sent: u64, downstream_closed: bool) {
        let Pending {
            mut record,
            started,
            received,
            sinks,
        } = *self;
        record.duration = started.elapsed();
        record.bytes_received = received.load(Ordering::Relaxed);
        record.bytes_sent = sent;
        record.downstream_closed = downstream_closed;
        let record = Arc::new(record);
        for sink in sinks.iter() {
            sink.send(Arc::clone(&record));
        }
    }
}

/// A response body that counts what it yields and logs the request at its end.
pub(crate) struct LoggedBody {
    inner: Body,
    sent: u64,
    pending: Option<Box<Pending>>,
}

impl LoggedBody {
    /// Wraps `inner`; `pending` is logged when it ends.
    pub(crate) fn new(inner: Body, pending: Box<Pending>) -> Self {
        Self {
            inner,
            sent: 0,
            pending: Some(pending),
        }
    }

    fn log(&mut self, downstream_closed: bool) {
        if let Some(p) = self.pending.take() {
            p.finish(self.sent, downstream_closed);
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                // hyper stops polling a body that says it has ended.
                if this.inner.is_end_stream() {
                    this.log(false);
                }
            }
            // An upstream failure mid-body is the upstream's; the client was still there.
            Poll::Ready(None | Some(Err(_))) => this.log(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // An empty body is never polled; a body dropped before its end lost its client.
        let closed = !self.inner.is_end_stream();
        self.log(closed);
    }
}
