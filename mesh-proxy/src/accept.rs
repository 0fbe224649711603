//! What a listener does with an accepted connection before any protocol runs: read the first
//! bytes (bounded in size and time), detect the protocol ([`crate::detect`]), and hand the
//! connection, its bytes replayed, to the HTTP server or the TCP proxy, or close it.
//!
//! The decision (`decide`) is a pure function of what was read and the listener's config, so
//! it is tested without sockets; `sniff` is the bounded read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use mesh_core::Detection as DetectionConfig;
use tokio::io::{AsyncRead, AsyncReadExt};

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::conn::{Activity, Ended, GracefulShutdown, Signalled, Supervised, TrackedIo};
use crate::detect::{detect, Detection, MAX_PREFIX};
use crate::metrics::Metrics;
use crate::metrics_l4::CloseReason;
use crate::rewind::Rewind;
use crate::tcp::TcpRelay;
use crate::xproto::XProxy;
use mesh_core::RpcProtocol;

pub(crate) use crate::http_io::HttpIo;
use crate::tls::InboundTls;
use mesh_core::extensions::PeerIdentity;

/// The bytes read at most while detecting (more may arrive in one read; all are replayed).
const SNIFF_BUFFER: usize = 1024;

/// A listener's protocol handling besides HTTP.
#[derive(Clone, Debug)]
pub struct L4Settings {
    /// Whether the listener serves HTTP (has a route table); if not, every connection goes to
    /// the TCP proxy at once, with no detection.
    pub serves_http: bool,
    /// The detection timeout and what happens at it.
    pub detection: DetectionConfig,
    /// Where what is not HTTP goes; closed when `None`.
    pub tcp: Option<TcpRelay>,
    /// TLS termination (listeners with `tls`): a ClientHello is handshaken and the HTTP server
    /// serves the decrypted stream; plaintext is served only in permissive mode.
    pub tls: Option<InboundTls>,
    /// The RPC proxy (bolt, dubbo): takes connections detected as its protocol, or every
    /// connection of a listener that does not serve HTTP.
    pub rpc: Option<XProxy>,
}

impl Default for L4Settings {
    /// HTTP only, detection at its defaults.
    fn default() -> Self {
        Self {
            serves_http: true,
            detection: DetectionConfig::default(),
            tcp: None,
            tls: None,
            rpc: None,
        }
    }
}

/// Serves one accepted connection: detects its protocol (unless the listener is opaque only),
/// counts the outcome, and hands it to `http` (the HTTP server, under the listener's signals),
/// the TCP proxy, or closes it. With TLS, `http` gets the decrypted stream and the client's
/// verified identity.
pub(crate) async fn serve_connection<H, F, E>(
    stream: TcpStream,
    activity: &Arc<Activity>,
    l4: &L4Settings,
    listener: &str,
    metrics: &Metrics,
    http: H,
) -> Ended<String>
where
    H: FnOnce(HttpIo, Option<PeerIdentity>) -> F,
    F: Future<Output = Ended<E>>,
    E: std::fmt::Display,
{
    let mut io = TrackedIo::new(stream, Arc::clone(activity));
    let mut prefix = BytesMut::new();
    let mut tls_hello = false;
    let action = if l4.serves_http {
        // The listener may shed a connection still detecting (it has sent no request: idle).
        let sniffed = tokio::select! {
            s = sniff(&mut io, &mut prefix, l4.detection.timeout) => s,
            () = Signalled(activity) => return Ended::Forced,
        };
        let mut action = match (sniffed, &l4.rpc) {
            (Sniffed::Decided(d), Some(rpc)) if speaks(d, rpc.protocol()) => Action::Rpc,
            _ => decide(sniffed, l4.tcp.is_some(), l4.detection.opaque_on_timeout),
        };
        if let Some(tls) = &l4.tls {
            if sniffed == Sniffed::Decided(Detection::Tls) {
                tls_hello = true;
                action = Action::Http;
            } else if !tls.permissive() {
                // Strict mTLS: nothing but a TLS ClientHello is served.
                tls.refused_plaintext();
                action = Action::Close;
            }
        }
        metrics
            .l4()
            .detected(listener, sniffed.as_str(), action.as_str());
        if sniffed == Sniffed::TimedOut && action == Action::Close {
            metrics.l4().closed(listener, CloseReason::HandshakeTimeout);
        }
        action
    } else if l4.rpc.is_some() {
        Action::Rpc
    } else {
        Action::Tcp
    };
    if action != Action::Http || tls_hello {
        // Opaque or encrypted bytes: no request targets to scan.
        io.stop_scanning();
    }
    let io = Rewind::new(prefix.freeze(), io);
    let (io, identity) = match (&l4.tls, tls_hello) {
        (Some(tls), true) => {
            let handshake = tokio::select! {
                h = tls.accept(io) => h,
                () = Signalled(activity) => return Ended::Forced,
            };
            match handshake {
                Some((stream, identity)) => (HttpIo::Tls(Box::new(stream)), identity),
                // Counted by `accept`; dropping the stream closes the connection.
                None => return Ended::Done(Ok(())),
            }
        }
        _ => (HttpIo::Plain(io), None),
    };
    match (action, &l4.tcp) {
        (Action::Http, _) => match http(io, identity).await {
            Ended::Done(r) => Ended::Done(r.map_err(|e| e.to_string())),
            Ended::Forced => Ended::Forced,
        },
        (Action::Tcp, Some(relay)) => {
            let HttpIo::Plain(io) = io else {
                return Ended::Done(Ok(()));
            };
            let relay = async { relay.relay(io, activity).await.map(|_| ()) };
            match Supervised::new(Relaying::new(relay), Arc::clone(activity)).await {
                Ended::Done(r) => Ended::Done(r.map_err(|e| e.to_string())),
                Ended::Forced => Ended::Forced,
            }
        }
        (Action::Rpc, _) => {
            let Some(rpc) = &l4.rpc else {
                return Ended::Done(Ok(()));
            };
            let serve = async { crate::xproto::serve(rpc, io).await };
            match Supervised::new(Relaying::new(serve), Arc::clone(activity)).await {
                Ended::Done(r) => Ended::Done(r.map_err(|e| e.to_string())),
                Ended::Forced => Ended::Forced,
            }
        }
        // Dropping the IO closes the connection.
        (Action::Tcp | Action::Close, _) => Ended::Done(Ok(())),
    }
}

/// What the first bytes of a connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// Detection decided.
    Decided(Detection),
    /// The client sent nothing decisive within the detection timeout.
    TimedOut,
    /// The client closed its side (or failed) before detection decided.
    Ended,
}

/// What the listener does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Serve it with the HTTP server.
    Http,
    /// Relay it with the TCP proxy.
    Tcp,
    /// Serve it with the RPC proxy.
    Rpc,
    /// Close it.
    Close,
}

impl Action {
    /// The metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Rpc => "rpc",
            Self::Close => "closed",
        }
    }
}

impl Sniffed {
    /// The metrics label of the protocol.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Decided(d) => d.as_str(),
            Self::TimedOut => "timeout",
            Self::Ended => "ended",
        }
    }
}

/// The listener's answer to what was read. HTTP goes to the HTTP server; TLS, bolt and dubbo
/// (no codec or downstream TLS here yet) are opaque TCP like anything else: relayed when the
/// listener has a TCP proxy, closed when not. A timeout relays only when the config says so.
pub(crate) fn decide(sniffed: Sniffed, has_tcp: bool, opaque_on_timeout: bool) -> Action {
    let relay_or_close = |relay: bool| {
        if relay && has_tcp {
            Action::Tcp
        } else {
            Action::Close
        }
    };
    match sniffed {
        Sniffed::Decided(d) if d.is_http() => Action::Http,
        Sniffed::Decided(_) | Sniffed::Ended => relay_or_close(true),
        Sniffed::TimedOut => relay_or_close(opaque_on_timeout),
    }
}

/// Whether a detected protocol is the one the RPC proxy speaks.
fn speaks(d: Detection, p: RpcProtocol) -> bool {
    matches!(
        (d, p),
        (Detection::Bolt, RpcProtocol::Bolt) | (Detection::Dubbo, RpcProtocol::Dubbo)
    )
}

/// The HTTP/2 preface must be followed by a SETTINGS frame (RFC 9113 §3.4); its 9-byte header
/// is read with the preface, so a client that sends the preface alone is bounded by the same
/// timeout as one that sends nothing (hyper's HTTP/2 handshake has no timeout of its own).
const H2_HANDSHAKE: usize = MAX_PREFIX + 9;

/// Reads from `io` into `buf` until detection decides, the client stops sending, or `timeout`
/// passes. Never reads for longer than `timeout`, whatever the client does. HTTP/2 is decided
/// only with the SETTINGS frame header that must follow the preface.
pub(crate) async fn sniff<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Sniffed {
    buf.reserve(SNIFF_BUFFER);
    let read = async {
        loop {
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return Sniffed::Ended,
                Ok(_) => {}
            }
            match detect(buf) {
                Detection::NeedMore if buf.len() < MAX_PREFIX => {}
                // `detect` always decides on MAX_PREFIX bytes; this arm is unreachable but
                // keeps the loop bounded by construction.
                Detection::NeedMore => return Sniffed::Decided(Detection::Opaque),
                // Whatever frame follows is hyper's to judge (not SETTINGS: GOAWAY at once).
                Detection::Http2 if buf.len() < H2_HANDSHAKE => {}
                d => return Sniffed::Decided(d),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Sniffed::TimedOut)
}

pin_project_lite::pin_project! {
    /// A relay under the listener's signals: it has no requests to finish, so a graceful
    /// close (drain, the HTTP idle sweep) leaves it running; its own idle timeout ends it, or
    /// the drain deadline does.
    pub(crate) struct Relaying<F> {
        #[pin]
        relay: F,
    }
}

impl<F> Relaying<F> {
    pub(crate) fn new(relay: F) -> Self {
        Self { relay }
    }
}

impl<F: Future> Future for Relaying<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().relay.poll(cx)
    }
}

impl<F> GracefulShutdown for Relaying<F> {
    fn graceful_shutdown(self: Pin<&mut Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn decisions() {
        use Action::*;
        let d = |x| Sniffed::Decided(x);
        for (sniffed, tcp, on_timeout, want) in [
            (d(Detection::Http1), false, true, Http),
            (d(Detection::Http2), true, true, Http),
            (d(Detection::Opaque), true, false, Tcp),
            (d(Detection::Opaque), false, true, Close),
            (d(Detection::Tls), true, true, Tcp),
            (d(Detection::Bolt), false, true, Close),
            (d(Detection::Dubbo), true, true, Tcp),
            (Sniffed::TimedOut, true, true, Tcp),
            (Sniffed::TimedOut, true, false, Close),
            (Sniffed::TimedOut, false, true, Close),
            (Sniffed::Ended, true, true, Tcp),
            (Sniffed::Ended, false, true, Close),
        ] {
            assert_eq!(
                decide(sniffed, tcp, on_timeout),
                want,
                "{sniffed:?} tcp={tcp} on_timeout={on_timeout}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_given_up_on_at_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let mut buf = BytesMut::new();
        let got = sniff(&mut server, &mut buf, Duration::from_millis(300)).await;
        assert_eq!(got, Sniffed::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_client_is_bounded_too() {
        // One byte of a plausible method every 100 ms: still undecided at the timeout.
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for b in b"GETGETGETGETGETGET" {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let mut buf = BytesMut::new();
        let got = sniff(&mut server, &mut buf, Duration::from_millis(450)).await;
        assert_eq!(got, Sniffed::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(450));
        assert_eq!(&buf[..], b"GETGE", "what was read is kept for the relay");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_h2_preface_or_one_without_settings_times_out() {
        for sent in [&b"PRI * HTTP"[..], &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]] {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            let started = tokio::time::Instant::now();
            let mut buf = BytesMut::new();
            let got = sniff(&mut server, &mut buf, Duration::from_millis(500)).await;
            assert_eq!(got, Sniffed::TimedOut, "{sent:?}");
            assert_eq!(started.elapsed(), Duration::from_millis(500));
            assert_eq!(decide(got, false, true), Action::Close);
        }
    }

    #[tokio::test]
    async fn split_prefixes_are_put_together() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let got = sniff(&mut server, &mut buf, Duration::from_secs(5)).await;
            (got, buf)
        });
        tokio::task::yield_now().await;
        client.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
        tokio::task::yield_now().await;
        assert!(
            !task.is_finished(),
            "the preface alone does not decide HTTP/2"
        );
        client
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let (got, buf) = task.await.unwrap();
        assert_eq!(got, Sniffed::Decided(Detection::Http2));
        assert_eq!(buf.len(), H2_HANDSHAKE);
        // The client closing before anything decisive.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let got = sniff(&mut server, &mut buf, Duration::from_secs(5)).await;
        assert_eq!(got, Sniffed::Ended);
    }
}
