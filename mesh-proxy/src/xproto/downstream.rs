//! One downstream RPC connection: frames decoded with the listener's codec, heartbeats
//! answered here, requests routed and handed to a shared upstream connection, responses (and
//! the mesh's own error responses) written back as they come, in any order.
//!
//! Reading, writing and the response queue run in one `select!` loop. Requests waiting for
//! a response are bounded per connection ([`MAX_PENDING`]): at the bound the loop stops
//! reading, so neither the response queue nor the upstream queues grow without limit. A frame
//! that cannot be decoded (or is over the limit) closes this connection only, counted in
//! `mesh_rpc_protocol_errors`; but a request whose framing is intact and whose body does not
//! decode is answered with the protocol's bad-request response and the connection goes on, as
//! Dubbo's and SOFA bolt's own servers do.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mesh_core::MeshError;
use mesh_lb::{ClusterState, InFlightGuard, Outcome};
use mesh_xprotocol::{CodecError, Frame, FrameKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::upstream::{fail, Dispatch};
use super::{route, xerror, XProxy};
use crate::metrics::{Metrics, RequestLabels};

/// Requests of one downstream connection waiting for a response at once.
pub(crate) const MAX_PENDING: usize = 4096;
/// Bytes of responses buffered for writing above which the queue is not drained further.
const HIGH_WATER: usize = 256 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Capacity above which an emptied read or write buffer is freed rather than kept: one large
/// frame (up to `max_frame_bytes`) or one burst of responses (up to [`HIGH_WATER`]) must not pin
/// its size for the rest of a long-lived connection's life.
const RETAIN: usize = 64 * 1024;

/// Where a request's response goes, and what it holds while it waits: the downstream
/// connection's pending permit and the cluster's circuit-breaker admission.
pub(crate) struct Reply {
    tx: mpsc::UnboundedSender<Bytes>,
    permit: Option<OwnedSemaphorePermit>,
    admitted: Option<Admitted>,
    /// The endpoint, counted in flight until the answer (least request, drains) and the
    /// outcome recorded against.
    endpoint: InFlightGuard,
    started: Instant,
    labels: RequestLabels,
    metrics: Metrics,
}

impl Reply {
    /// Records what this request's answer (or failure) says about its endpoint, for outlier
    /// detection (nothing when the cluster does not detect outliers).
    pub(crate) fn record(&self, outcome: Outcome) {
        if let Some(Admitted(cluster)) = &self.admitted {
            cluster.record(self.endpoint.endpoint(), outcome);
        }
    }

    /// Sends the upstream's response; `ok` when its status is success.
    pub(crate) fn respond(mut self, bytes: Bytes, ok: bool) {
        self.labels.status_class = if ok { "2xx" } else { "5xx" };
        self.send(bytes);
    }

    /// Sends the mesh's own error response, counted as a local reply by `code`.
    pub(crate) fn fail(mut self, bytes: Bytes, code: &'static str) {
        self.metrics.record_mesh_error(&self.labels.listener, code);
        self.labels.status_class = "5xx";
        self.send(bytes);
    }

    fn send(mut self, bytes: Bytes) {
        // Permit and admission go back before the bytes are queued, so the downstream loop,
        // woken by them, sees the permit free.
        drop(self.permit.take());
        drop(self.admitted.take());
        let labels = self.labels.clone();
        self.metrics.record_request(labels, self.started.elapsed());
        let _ = self.tx.send(bytes);
    }
}

/// A request admitted by a cluster's circuit breaker, given back on drop.
struct Admitted(Arc<ClusterState>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.circuit_breaker().release(false);
    }
}

/// Serves one downstream connection until the client closes it (and its last response is
/// written), a write fails, or a frame cannot be decoded (an error: the caller closes it).
pub(crate) async fn serve<D>(proxy: &XProxy, io: D) -> Result<(), CodecError>
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let mut tx = Some(tx);
    let permits = Arc::new(Semaphore::new(MAX_PENDING));
    let (mut rbuf, mut wbuf) = (BytesMut::new(), BytesMut::new());
    loop {
        release_if_large(&mut rbuf);
        release_if_large(&mut wbuf);
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(READ_CHUNK);
        }
        let reading = tx.is_some() && permits.available_permits() > 0;
        tokio::select! {
            r = rd.read_buf(&mut rbuf), if reading => match r {
                // The client is done sending: answer what it sent, then close.
                Ok(0) | Err(_) => tx = None,
                Ok(_) => {
                    let Some(sender) = &tx else { continue };
                    let max_frame = proxy.max_frame();
                    loop {
                        match proxy.inner.codec.decode(&mut rbuf, max_frame) {
                            Ok(Some(frame)) => proxy.handle(frame, sender, &permits),
                            Ok(None) => break,
                            // Framing intact: answered, and the connection goes on.
                            Err(CodecError::BadRequest { frame, reason, .. }) => {
                                proxy.inner.rpc_metrics.protocol_error("bad_request");
                                proxy.bad_request(&frame, reason, sender);
                            }
                            Err(e) => {
                                let reason = match e {
                                    CodecError::TooLarge { .. } => "too_large",
                                    _ => "malformed",
                                };
                                proxy.inner.rpc_metrics.protocol_error(reason);
                                return Err(e);
                            }
                        }
                    }
                }
            },
            b = rx.recv(), if wbuf.len() < HIGH_WATER => match b {
                Some(b) => {
                    wbuf.extend_from_slice(&b);
                    while wbuf.len() < HIGH_WATER {
                        match rx.try_recv() {
                            Ok(b) => wbuf.extend_from_slice(&b),
                            Err(_) => break,
                        }
                    }
                }
                // Every sender is gone: nothing more will be written.
                None if wbuf.is_empty() => return Ok(()),
                None => {}
            },
            r = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                if r.is_err() {
                    return Ok(());
                }
            }
        }
        if tx.is_none() && wbuf.is_empty() && rx.is_closed() && rx.is_empty() {
            return Ok(());
        }
    }
}

/// Frees `buf` when it is empty and above [`RETAIN`]: after a large frame is split off, the
/// tail left in the read buffer would otherwise keep the frame's whole allocation alive (and a
/// drained write buffer its largest burst) for the rest of the connection's life.
fn release_if_large(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > RETAIN {
        *buf = BytesMut::new();
    }
}

impl XProxy {
    /// Handles one frame from a downstream client.
    fn handle(&self, frame: Frame, tx: &mpsc::UnboundedSender<Bytes>, permits: &Arc<Semaphore>) {
        match frame.kind {
            FrameKind::HeartbeatRequest => {
                let _ = tx.send(self.inner.codec.heartbeat_response(&frame));
            }
            FrameKind::Request { oneway } => self.request(frame, oneway, tx, permits),
            // A client does not answer us: nothing to match, dropped. A consumer's read-only
            // notice concerns only requests to it, and the mesh sends it none.
            FrameKind::Response | FrameKind::HeartbeatResponse | FrameKind::Event { .. } => {}
        }
    }

    /// Answers a request whose body did not decode with the protocol's bad-request response
    /// (dubbo's BAD_REQUEST, bolt's CODEC_EXCEPTION), counted as a local reply.
    fn bad_request(&self, frame: &Frame, reason: String, tx: &mpsc::UnboundedSender<Bytes>) {
        let inner = &*self.inner;
        let e = MeshError::BadRequest { reason };
        tracing::debug!(listener = %inner.listener, error = %e, "rpc request refused");
        inner.metrics.record_mesh_error(&inner.listener, e.code());
        let labels = RequestLabels {
            listener: Arc::clone(&inner.listener),
            route: String::new(),
            cluster: String::new(),
            status_class: "4xx",
        };
        inner
            .metrics
            .record_request(labels, std::time::Duration::ZERO);
        if frame.kind == (FrameKind::Request { oneway: false }) {
            let _ = tx.send(inner.codec.error_response(frame, xerror(&e)));
        }
    }

    fn request(
        &self,
        frame: Frame,
        oneway: bool,
        tx: &mpsc::UnboundedSender<Bytes>,
        permits: &Arc<Semaphore>,
    ) {
        let inner = &*self.inner;
        let routing = inner.routing.load();
        let started = Instant::now();
        let mut labels = RequestLabels {
            listener: Arc::clone(&inner.listener),
            route: String::new(),
            cluster: String::new(),
            status_class: "5xx",
        };
        let local = |e: MeshError, labels: RequestLabels| {
            inner.metrics.record_mesh_error(&inner.listener, e.code());
            inner.metrics.record_request(labels, started.elapsed());
            if !oneway {
                let _ = tx.send(inner.codec.error_response(&frame, xerror(&e)));
            }
        };
        if let Some((rule, bucket)) = &routing.limit {
            if let Err(retry_after) = bucket.try_acquire() {
                let rule = rule.clone();
                return local(MeshError::RateLimited { rule, retry_after }, labels);
            }
        }
        let decision = match route::decide(&routing.table, &frame.header) {
            Ok(d) => d,
            Err(e) => return local(e, labels),
        };
        labels.route = decision.matched().route.name.clone();
        labels.cluster = decision.cluster.0.to_string();
        let Some(cluster) = inner.clusters.get(&decision.cluster.0) else {
            let cluster = labels.cluster.clone();
            return local(MeshError::ClusterNotFound { cluster }, labels);
        };
        if let Err(limit) = cluster.circuit_breaker().try_admit(false) {
            let cluster = labels.cluster.clone();
            return local(MeshError::CircuitOpen { cluster, limit }, labels);
        }
        let admitted = Admitted(Arc::clone(&cluster));
        let Some(endpoint) = cluster.pick(decision.hash.map(|h| h.0)) else {
            let cluster = labels.cluster.clone();
            return local(MeshError::NoHealthyEndpoint { cluster }, labels);
        };
        let reply = if oneway {
            None
        } else {
            let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
                let cluster = labels.cluster.clone();
                let limit = "max_pending_requests";
                return local(MeshError::CircuitOpen { cluster, limit }, labels);
            };
            Some(Reply {
                tx: tx.clone(),
                permit: Some(permit),
                admitted: Some(admitted),
                endpoint: InFlightGuard::new(Arc::clone(&endpoint)),
                started,
                labels,
                metrics: inner.metrics.clone(),
            })
        };
        let deadline = tokio::time::Instant::now().into_std() + routing.config.request_timeout;
        let d = Dispatch {
            frame,
            reply,
            deadline,
        };
        if let Err(d) = self.send_upstream(&routing, &cluster, &endpoint, d) {
            fail(
                &*inner.codec,
                *d,
                mesh_xprotocol::XError::UpstreamFailure,
                "upstream_failure",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_large_buffer_is_freed_and_others_are_kept() {
        // The tail of a read buffer after a large frame was split off: empty, large, shared.
        let mut rbuf = BytesMut::with_capacity(4 * RETAIN);
        rbuf.resize(RETAIN, 0);
        let frame = rbuf.split_to(RETAIN);
        assert!(rbuf.is_empty() && rbuf.capacity() > RETAIN);
        release_if_large(&mut rbuf);
        assert_eq!(rbuf.capacity(), 0);
        assert_eq!(frame.len(), RETAIN, "the frame split off is untouched");

        let mut small = BytesMut::with_capacity(READ_CHUNK);
        release_if_large(&mut small);
        assert_eq!(small.capacity(), READ_CHUNK, "a small buffer is reused");

        let mut holding = BytesMut::with_capacity(2 * RETAIN);
        holding.extend_from_slice(b"a partial frame");
        release_if_large(&mut holding);
        assert_eq!(
            &holding[..],
            b"a partial frame",
            "a buffer holding bytes is kept"
        );
        assert!(holding.capacity() >= 2 * RETAIN);
    }
}
