//! A cluster's HTTP/1.1 keep-alive pool, on hyper's own `client::conn::http1` API.
//!
//! Why not hyper-util's legacy pool (which the HTTP/2 side still uses): under callgrind it
//! cost a SipHash of a `(scheme, authority)` key on checkout and again on return, a boxed
//! request future, a race of checkout against a connect future, and a spawned task per
//! request that waits for the connection to become ready again before it goes back to the
//! pool. Here the idle connections of an endpoint are a LIFO stack under one short lock, keyed
//! by the endpoint's address with foldhash, and a connection goes back to its stack from the
//! response body the moment that body ends: no task, no per-request hashing of strings.
//!
//! What it keeps of hyper-util's behaviour: a request that a reused connection refused before
//! writing it (the peer closed the idle connection) is retried on another one; the connection
//! task runs with upgrades (WebSocket); `Host` is set from the URI when the request has none;
//! the request-target is origin-form (authority-form for CONNECT); idle connections older than
//! [`IDLE_TIMEOUT`] are not reused.

use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{Entry, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use mesh_core::{body, Body, BoxError, MeshError};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::connector::MeshConnector;

/// How long an idle connection may wait in the pool and still be reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// An idle connection and when it went idle.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Idle connections per endpoint; most recently used last.
type IdleMap = HashMap<SocketAddr, VecDeque<Idle>, foldhash::fast::RandomState>;

/// The HTTP/1.1 keep-alive connections of one cluster.
pub(crate) struct H1Pool {
    connector: MeshConnector,
    idle: Mutex<IdleMap>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("cluster", &self.connector.cluster)
            .finish_non_exhaustive()
    }
}

impl H1Pool {
    /// An empty pool connecting through `connector`.
    pub(crate) fn new(connector: MeshConnector) -> Self {
        Self {
            connector,
            idle: Mutex::new(IdleMap::default()),
        }
    }

    /// Sends `req` (its URI pointed at `endpoint`) over an idle connection to `endpoint`, or a
    /// new one. Errors are [`MeshError`]s. One state machine (the caller boxes it), so nothing
    /// wraps it only to convert the error type.
    pub(crate) async fn send(
        self: Arc<Self>,
        mut req: Request<Body>,
        endpoint: SocketAddr,
    ) -> Result<Response<Body>, BoxError> {
        let target = to_request_target(&mut req);
        while let Some(mut sender) = self.checkout(endpoint) {
            // A connection whose last response body just ended may not have been polled into
            // its next wait yet: wait for it rather than open another one.
            if poll_fn(|cx| sender.poll_ready(cx)).await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender, endpoint)),
                Err(mut e) => match e.take_message() {
                    // Refused before a byte was written (the peer closed the idle connection
                    // meanwhile): safe to send again, on another connection.
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_error(e.error()).into()),
                },
            }
        }
        let mut sender = self.connect(target, endpoint).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.pooled(resp, sender, endpoint)),
            Err(e) => Err(upstream_error(&e).into()),
        }
    }

    /// The most recently used idle connection to `endpoint` that is still open and fresh.
    fn checkout(&self, endpoint: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let stack = idle.get_mut(&endpoint)?;
        while let Some(conn) = stack.pop_back() {
            if !conn.sender.is_closed() && conn.since.elapsed() < IDLE_TIMEOUT {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Puts a connection whose response has ended back on its endpoint's stack, and drops
    /// the stack's oldest connections that are closed or too old to reuse.
    fn put(&self, endpoint: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let stack = idle.entry(endpoint).or_default();
        while stack.front().is_some_and(|c| {
            c.sender.is_closed() || now.saturating_duration_since(c.since) >= IDLE_TIMEOUT
        }) {
            stack.pop_front();
        }
        stack.push_back(Idle { sender, since: now });
    }

    /// Opens a connection to `endpoint` (`uri` names it) and starts its connection task, which
    /// ends when the peer closes it or the last sender of it is dropped.
    async fn connect(
        &self,
        uri: Uri,
        endpoint: SocketAddr,
    ) -> Result<SendRequest<Body>, MeshError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(uri)
            .await
            .map_err(|e| connect_error(&*e, endpoint))?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, Body>(io)
            .await
            .map_err(|e| connect_error(&e, endpoint))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The response with a body that returns `sender` to the pool when it ends.
    fn pooled(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<Body>,
        endpoint: SocketAddr,
    ) -> Response<Body> {
        // A switched protocol owns the connection now.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(body::boxed);
        }
        let give_back = GiveBack {
            pool: Arc::clone(self),
            endpoint,
            sender,
        };
        if resp.body().is_end_stream() {
            give_back.run();
            return resp.map(body::boxed);
        }
        resp.map(|inner| {
            body::boxed(PooledBody {
                inner,
                give_back: Some(give_back),
            })
        })
    }
}

/// Turns the request's URI into the request-target HTTP/1.1 sends (origin-form, or
/// authority-form for CONNECT), sets `Host` if the request has none, and returns the absolute
/// URI (what the connector connects to).
fn to_request_target(req: &mut Request<Body>) -> Uri {
    let uri = std::mem::take(req.uri_mut());
    if let (Some(authority), Entry::Vacant(host)) = (uri.authority(), req.headers_mut().entry(HOST))
    {
        // Only when missing: building the value copies the authority.
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            host.insert(value);
        }
    }
    *req.uri_mut() = if req.method() == Method::CONNECT {
        uri.authority()
            .map(|a| Uri::from(a.clone()))
            .unwrap_or_default()
    } else {
        Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
    };
    uri
}

/// Returns a connection to its pool.
struct GiveBack {
    pool: Arc<H1Pool>,
    endpoint: SocketAddr,
    sender: SendRequest<Body>,
}

impl GiveBack {
    fn run(self) {
        self.pool.put(self.endpoint, self.sender);
    }
}

pin_project! {
    /// A pooled connection's response body: at its end the connection goes back to the pool;
    /// dropped before its end, the connection closes with it (hyper cannot reuse it).
    struct PooledBody {
        #[pin]
        inner: Incoming,
        give_back: Option<GiveBack>,
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            // The last frame, or a known length now read in full (hyper's server stops
            // polling a body that says it has ended, so do not wait for `None`).
            None => {
                if let Some(g) = this.give_back.take() {
                    g.run();
                }
            }
            Some(Ok(_)) if this.inner.is_end_stream() => {
                if let Some(g) = this.give_back.take() {
                    g.run();
                }
            }
            Some(Err(_)) => drop(this.give_back.take()),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A failure to connect: the breaker's own refusal stays what it is; anything else is
/// `UpstreamConnect` with the error chain as the reason.
fn connect_error(e: &(dyn StdError + 'static), endpoint: SocketAddr) -> MeshError {
    typed(e).unwrap_or_else(|| MeshError::UpstreamConnect {
        endpoint,
        reason: chain(e),
    })
}

/// A failure on an open connection: a `MeshError` inside it (the client's request body failed
/// us, typed where it is read: 413 or 400) stays what it is; anything else is `Upstream`.
fn upstream_error(e: &hyper::Error) -> MeshError {
    typed(e).unwrap_or_else(|| MeshError::Upstream { reason: chain(e) })
}

/// The first `MeshError` in an error's chain.
fn typed(e: &(dyn StdError + 'static)) -> Option<MeshError> {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(m) = s.downcast_ref::<MeshError>() {
            return Some(m.clone());
        }
        src = s.source();
    }
    None
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut reason = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    reason
}
