//! A cluster's pooled clients: HTTP/1.1 keep-alive over our own pool ([`H1Pool`], on hyper's
//! connection API), HTTP/2 prior knowledge over hyper-util's legacy `Client`, whose pool keeps
//! one multiplexed connection per endpoint.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_core::{body, Body, Cluster, MeshError, Shared, UpstreamProtocol};

use crate::circuit_breaker::CircuitBreaker;
use crate::connector::{EndpointMap, MeshConnector};
use crate::h1_pool::{H1Pool, IDLE_TIMEOUT};
use crate::tls::ClusterTls;
use crate::upstream::UpstreamFuture;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = IDLE_TIMEOUT;

type HttpClient = Client<MeshConnector, Body>;

/// A cluster's pooled clients.
#[derive(Clone)]
pub(crate) struct UpstreamClients {
    protocol: UpstreamProtocol,
    h1: Arc<H1Pool>,
    h2: HttpClient,
}

impl UpstreamClients {
    pub(crate) fn new(
        config: &Cluster,
        cluster: Arc<str>,
        breaker: Arc<CircuitBreaker>,
        endpoints: Shared<EndpointMap>,
        tls: Option<ClusterTls>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let connector = MeshConnector {
            http,
            cluster,
            breaker,
            endpoints,
            tls: None,
        };
        // Each protocol's connector carries the cluster's TLS with that protocol's ALPN.
        let with_tls = |h2: bool| {
            let mut connector = connector.clone();
            connector.tls = tls.as_ref().map(|t| t.for_protocol(h2));
            connector
        };
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(with_tls(true));
        Self {
            protocol: config.protocol,
            h1: Arc::new(H1Pool::new(with_tls(false))),
            h2,
        }
    }

    /// Sends `req` (URI already pointed at the endpoint) over the pooled client of the
    /// cluster's protocol.
    pub(crate) fn send(&self, mut req: Request<Body>, endpoint: SocketAddr) -> UpstreamFuture {
        let h2 = match self.protocol {
            UpstreamProtocol::Http1 => false,
            // An HTTP/1.1 upgrade (WebSocket) or CONNECT cannot ride an HTTP/2 stream without
            // extended CONNECT (RFC 8441), which hyper's client lacks: it takes an HTTP/1.1
            // connection of its own. Endpoints marked HTTP/2 for the hop between sidecars
            // accept both (the inbound listener detects the protocol).
            UpstreamProtocol::Http2 => !is_upgrade(&req),
            UpstreamProtocol::UseDownstream => req.version() == Version::HTTP_2,
        };
        // The downstream version says nothing about the upstream hop: speak the cluster's.
        *req.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        if !h2 {
            return Box::pin(Arc::clone(&self.h1).send(req, endpoint));
        }
        let fut = self.h2.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp.map(body::boxed)),
                Err(e) => Err(map_client_error(&e, endpoint).into()),
            }
        })
    }
}

/// Whether `req` asks for an HTTP/1.1 upgrade or is an HTTP/1.1 CONNECT (a CONNECT that came
/// over HTTP/2 stays an HTTP/2 stream, as before).
fn is_upgrade(req: &Request<Body>) -> bool {
    req.headers().contains_key(http::header::UPGRADE)
        || (req.method() == http::Method::CONNECT && req.version() != Version::HTTP_2)
}

/// A client error as a `MeshError`: a breaker refusal from our connector stays what it is,
/// a connect failure is `UpstreamConnect`, anything else `Upstream`.
fn map_client_error(e: &hyper_util::client::legacy::Error, endpoint: SocketAddr) -> MeshError {
    let mut reason = String::new();
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(m) = s.downcast_ref::<MeshError>() {
            return m.clone();
        }
        if !reason.is_empty() {
            reason.push_str(": ");
        }
        reason.push_str(&s.to_string());
        src = s.source();
    }
    if reason.is_empty() {
        reason = e.to_string();
    }
    if e.is_connect() {
        MeshError::UpstreamConnect { endpoint, reason }
    } else {
        MeshError::Upstream { reason }
    }
}
