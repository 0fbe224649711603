//! The connector under a cluster's pooled client: hyper-util's `HttpConnector` (connect timeout,
//! TCP_NODELAY) plus the connection circuit breakers, and connections that close themselves
//! once their endpoint has left the cluster and drained; with the cluster's `tls`, mTLS over
//! the TCP connection (`crate::tls`), a failed handshake being a connect failure.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use mesh_core::{BoxError, MeshError, Shared};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::circuit_breaker::{CircuitBreaker, ConnectionPermit};
use crate::endpoint::EndpointState;
use crate::tls::ClusterTls;

/// Live endpoint states of a cluster by address (swapped whole at each EDS update). foldhash
/// rather than SipHash: an EDS update of 10,000 endpoints spent a third of its time hashing.
pub type EndpointMap = HashMap<SocketAddr, Arc<EndpointState>, foldhash::fast::RandomState>;

/// Connects to a cluster's endpoints under its connection breakers.
#[derive(Clone)]
pub(crate) struct MeshConnector {
    pub(crate) http: HttpConnector,
    pub(crate) cluster: Arc<str>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) endpoints: Shared<EndpointMap>,
    pub(crate) tls: Option<ClusterTls>,
}

impl Service<Uri> for MeshConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let permit = match self.breaker.try_connect() {
            Ok(p) => p,
            Err(limit) => {
                let err = MeshError::CircuitOpen {
                    cluster: self.cluster.to_string(),
                    limit,
                };
                return Box::pin(std::future::ready(Err(err.into())));
            }
        };
        let endpoint = uri
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
            .and_then(|addr| self.endpoints.load().get(&addr).cloned());
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let cluster = Arc::clone(&self.cluster);
        Box::pin(async move {
            let tcp = connecting.await?;
            let io = match tls {
                None => Io::Plain(tcp),
                Some(tls) => {
                    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                    match connector
                        .connect(tls.server_name.clone(), tcp.into_inner())
                        .await
                    {
                        Ok(stream) => Io::Tls(Box::new(TokioIo::new(stream))),
                        Err(e) => {
                            let reason = e.to_string();
                            tls.secrets.outbound_handshake_failed(&cluster, &reason);
                            tracing::debug!(%cluster, error = %reason, "upstream TLS handshake failed");
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionRefused,
                                format!("TLS handshake failed: {reason}"),
                            )
                            .into());
                        }
                    }
                }
            };
            Ok(Conn {
                io,
                _permit: permit.connected(),
                close: endpoint.map(|ep| {
                    let waker = ep.closer.watch();
                    (ep, waker)
                }),
            })
        })
    }
}

/// A pooled upstream connection: counts against `max_connections` while open, and reads EOF
/// once its endpoint is closed, so hyper drops it from the pool.
pub(crate) struct Conn {
    io: Io,
    _permit: ConnectionPermit,
    close: Option<(Arc<EndpointState>, Arc<AtomicWaker>)>,
}

/// A plaintext or a TLS connection.
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Forwards an IO call to whichever connection `Io` holds.
macro_rules! io_call {
    ($io:expr, $s:ident => $call:expr) => {
        match $io {
            Io::Plain($s) => $call,
            Io::Tls($s) => $call,
        }
    };
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match &self.io {
            Io::Plain(io) => io.connected(),
            Io::Tls(io) => {
                let (tcp, session) = io.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((endpoint, waker)) = &this.close {
            // Register first: a close after the check wakes this task.
            waker.register(cx.waker());
            if endpoint.closer.is_closed() {
                // EOF: the endpoint left the cluster and has no request in flight.
                return Poll::Ready(Ok(()));
            }
        }
        io_call!(&mut this.io, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        io_call!(&mut self.get_mut().io, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io_call!(&mut self.get_mut().io, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io_call!(&mut self.get_mut().io, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        io_call!(&self.io, io => io.is_write_vectored())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io_call!(&mut self.get_mut().io, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}
