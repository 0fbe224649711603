//! One shared upstream connection: requests from any downstream connection are written with
//! ids of this connection ([`InFlight`]), responses are matched back in any order, requests
//! past their deadline are answered with the protocol's timeout error, and when the
//! connection ends every waiting request gets the upstream-failure error. Each answer, and
//! each of those failures, is recorded for outlier detection against the endpoint (see
//! module `outcome`).
//!
//! When the endpoint leaves its cluster and has drained ([`EndpointState::closed`]), the
//! connection takes no new request, finishes those it carries and ends.
//!
//! One task per connection reads, writes and expires in one `select!` loop, so a slow
//! downstream never stalls it: responses go to each downstream's unbounded queue, whose length
//! the downstream bounds by its own in-flight permits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mesh_core::RpcProtocol;
use mesh_lb::{EndpointState, Outcome};
use mesh_xprotocol::{Frame, FrameKind, InFlight, XCodec, XError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::downstream::Reply;
use super::outcome;
use crate::metrics_rpc::ListenerRpcMetrics;

/// Bytes queued for writing above which the connection takes no new requests until the
/// socket drains (backpressure on the downstream connections sending to it).
const HIGH_WATER: usize = 256 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// A request handed to an upstream connection.
pub(crate) struct Dispatch {
    /// The request frame, with the downstream's id.
    pub(crate) frame: Frame,
    /// Where its response goes; `None` for a oneway request.
    pub(crate) reply: Option<Reply>,
    /// When the mesh answers with a timeout instead.
    pub(crate) deadline: std::time::Instant,
}

/// A handle on a shared upstream connection (its task ends when every handle is gone and its
/// last response is in).
#[derive(Clone)]
pub(crate) struct UpstreamConn {
    tx: mpsc::UnboundedSender<Dispatch>,
    /// Set when the upstream said it takes no new requests (dubbo's read-only event, sent by a
    /// provider about to shut down): the pool then replaces the connection, whose requests in
    /// flight still complete.
    read_only: Arc<AtomicBool>,
}

/// What an upstream connection's task needs.
pub(crate) struct Settings {
    pub(crate) addr: SocketAddr,
    pub(crate) connect_timeout: Duration,
    pub(crate) codec: Arc<dyn XCodec>,
    pub(crate) max_frame: usize,
    pub(crate) capacity: usize,
    pub(crate) metrics: ListenerRpcMetrics,
    /// The endpoint at `addr`: outcomes are recorded against it, and the connection ends
    /// when it leaves its cluster.
    pub(crate) endpoint: Arc<EndpointState>,
    /// How response statuses read for outlier detection.
    pub(crate) protocol: RpcProtocol,
}

impl UpstreamConn {
    /// Starts connecting to `settings.addr`; requests sent meanwhile wait for the connection.
    pub(crate) fn spawn(settings: Settings) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let read_only = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(settings, rx, Arc::clone(&read_only)));
        Self { tx, read_only }
    }

    /// Whether the connection has ended or takes no new requests (the pool replaces it).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.read_only.load(Ordering::Relaxed)
    }

    /// Queues a request; gives it back when the connection has ended.
    pub(crate) fn send(&self, d: Dispatch) -> Result<(), Box<Dispatch>> {
        self.tx.send(d).map_err(|e| Box::new(e.0))
    }
}

/// Answers a request the connection cannot carry with `error`.
pub(crate) fn fail(codec: &dyn XCodec, d: Dispatch, error: XError, code: &'static str) {
    if let Some(reply) = d.reply {
        reply.fail(codec.error_response(&d.frame, error), code);
    }
}

async fn run(s: Settings, mut rx: mpsc::UnboundedReceiver<Dispatch>, read_only: Arc<AtomicBool>) {
    let codec = &*s.codec;
    let connected = tokio::time::timeout(s.connect_timeout, TcpStream::connect(s.addr)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return refuse_all(codec, &mut rx, &format!("connect {}: {e}", s.addr)),
        Err(_) => return refuse_all(codec, &mut rx, &format!("connect {}: timed out", s.addr)),
    };
    let _ = stream.set_nodelay(true);
    s.metrics.upstream_opened.inc();
    s.metrics.upstream_open.inc();
    let (mut rd, mut wr) = stream.into_split();
    let mut in_flight: InFlight<Reply> = InFlight::new(s.capacity);
    let (mut rbuf, mut wbuf) = (BytesMut::new(), BytesMut::new());
    let mut open = true;
    let endpoint_closed = s.endpoint.closed();
    tokio::pin!(endpoint_closed);
    let mut closing = false;
    let reason = loop {
        if !open && in_flight.is_empty() && wbuf.is_empty() {
            break None;
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(READ_CHUNK);
        }
        let deadline = in_flight.next_deadline().map(Instant::from_std);
        tokio::select! {
            d = rx.recv(), if open && wbuf.len() < HIGH_WATER => match d {
                Some(d) => dispatch(codec, d, &mut in_flight, &mut wbuf, &s.metrics),
                None => open = false,
            },
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) => break Some("closed by the upstream".to_owned()),
                Err(e) => break Some(format!("read: {e}")),
                Ok(_) => {
                    if let Err(e) = responses(&s, &mut rbuf, &mut in_flight, &mut wbuf, &read_only) {
                        break Some(e);
                    }
                }
            },
            r = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                if let Err(e) = r {
                    break Some(format!("write: {e}"));
                }
            }
            // The endpoint left its cluster: no new requests (the pool sees the queue closed
            // and lets go); those queued and in flight are still carried.
            () = &mut endpoint_closed, if !closing => {
                closing = true;
                rx.close();
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                for p in in_flight.expire(Instant::now().into_std()) {
                    s.metrics.in_flight.dec();
                    p.downstream.record(Outcome::LOCAL_ORIGIN_FAILURE);
                    let bytes = p.error_response(codec, XError::Timeout);
                    p.downstream.fail(bytes, "upstream_timeout");
                }
            }
        }
    };
    s.metrics.upstream_open.dec();
    let reason = reason.unwrap_or_default();
    if !reason.is_empty() {
        tracing::debug!(upstream = %s.addr, %reason, "rpc upstream connection ended");
    }
    for p in in_flight.fail_all() {
        s.metrics.in_flight.dec();
        p.downstream.record(Outcome::LOCAL_ORIGIN_FAILURE);
        let bytes = p.error_response(codec, XError::UpstreamFailure);
        p.downstream.fail(bytes, "upstream_failure");
    }
    refuse_all(codec, &mut rx, &reason);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Closes the queue and answers whatever is in it with the upstream-failure error.
fn refuse_all(codec: &dyn XCodec, rx: &mut mpsc::UnboundedReceiver<Dispatch>, reason: &str) {
    if !reason.is_empty() {
        tracing::debug!(%reason, "rpc upstream refused its queued requests");
    }
    rx.close();
    while let Ok(d) = rx.try_recv() {
        if let Some(reply) = &d.reply {
            reply.record(Outcome::LOCAL_ORIGIN_FAILURE);
        }
        fail(
            codec,
            d,
            XError::UpstreamFailure,
            "upstream_connect_failure",
        );
    }
}

fn dispatch(
    codec: &dyn XCodec,
    mut d: Dispatch,
    in_flight: &mut InFlight<Reply>,
    wbuf: &mut BytesMut,
    metrics: &ListenerRpcMetrics,
) {
    match d.reply.take() {
        // Oneway: no response to match, so the id needs no rewriting.
        None => wbuf.extend_from_slice(&d.frame.raw),
        Some(reply) => {
            let mut frame = d.frame;
            // The map's capacity bounds it; a full map answers overload at once.
            if let Err(reply) = in_flight.insert(codec, &mut frame, reply, d.deadline) {
                reply.fail(
                    codec.error_response(&frame, XError::Overloaded),
                    "upstream_overflow",
                );
                return;
            }
            metrics.in_flight.inc();
            wbuf.extend_from_slice(&frame.raw);
        }
    }
}

/// Decodes what the upstream sent: responses go back to their downstream with the original
/// id; heartbeats from the upstream are answered; a read-only event sets `read_only`.
fn responses(
    s: &Settings,
    rbuf: &mut BytesMut,
    in_flight: &mut InFlight<Reply>,
    wbuf: &mut BytesMut,
    read_only: &AtomicBool,
) -> Result<(), String> {
    let codec = &*s.codec;
    loop {
        let mut frame = match codec.decode(rbuf, s.max_frame) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("upstream sent {e}")),
        };
        match frame.kind {
            FrameKind::Response => {
                // An unknown id is a late response to a request already answered: dropped.
                if let Some(p) = in_flight.complete(frame.request_id) {
                    s.metrics.in_flight.dec();
                    p.downstream
                        .record(outcome::of_response(s.protocol, frame.status));
                    codec.set_request_id(&mut frame, p.original_id);
                    let ok = codec.is_success(&frame);
                    p.downstream.respond(frame.raw.freeze(), ok);
                }
            }
            FrameKind::HeartbeatRequest => {
                wbuf.extend_from_slice(&codec.heartbeat_response(&frame));
            }
            // As a Dubbo consumer marks the channel: read-only, or writable again.
            FrameKind::Event {
                read_only: Some(flag),
            } => read_only.store(flag, Ordering::Relaxed),
            FrameKind::HeartbeatResponse
            | FrameKind::Request { .. }
            | FrameKind::Event { read_only: None } => {}
        }
    }
}
