//! The pooled upstream: one hyper-util legacy `Client` per cluster and protocol (HTTP/1.1
//! keep-alive, or HTTP/2 prior knowledge), whose pool keeps connections per endpoint.

use std::error::Error as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_core::extensions::PickedEndpoint;
use mesh_core::{body, Body, BoxError, Cluster, MeshError, Shared, UpstreamProtocol};
use tower_service::Service;

use crate::circuit_breaker::CircuitBreaker;
use crate::cluster::ClusterState;
use crate::connector::{EndpointMap, MeshConnector};
use crate::ClusterManager;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type HttpClient = Client<MeshConnector, Body>;

/// A cluster's pooled clients.
#[derive(Clone)]
pub(crate) struct UpstreamClients {
    protocol: UpstreamProtocol,
    h1: HttpClient,
    h2: HttpClient,
}

impl UpstreamClients {
    pub(crate) fn new(
        config: &Cluster,
        cluster: Arc<str>,
        breaker: Arc<CircuitBreaker>,
        endpoints: Shared<EndpointMap>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let connector = MeshConnector {
            http,
            cluster,
            breaker,
            endpoints,
        };
        let build = |h2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(h2)
                .build(connector.clone())
        };
        Self {
            protocol: config.protocol,
            h1: build(false),
            h2: build(true),
        }
    }

    /// Sends `req` (URI already pointed at the endpoint) over the pooled client of the
    /// cluster's protocol.
    pub(crate) fn send(
        &self,
        mut req: Request<Body>,
        endpoint: SocketAddr,
    ) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send + 'static {
        let h2 = match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::UseDownstream => req.version() == Version::HTTP_2,
        };
        // The downstream version says nothing about the upstream hop: speak the cluster's.
        *req.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let fut = if h2 { &self.h2 } else { &self.h1 }.request(req);
        async move {
            match fut.await {
                Ok(resp) => Ok(resp.map(body::boxed)),
                Err(e) => Err(map_client_error(&e, endpoint).into()),
            }
        }
    }
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

/// The future of [`Upstream`] (boxed: hyper-util's own response future is boxed already).
pub type UpstreamFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// The default inner service of [`crate::LoadBalance`]: sends the request to the endpoint its
/// URI names over the picked cluster's pooled client.
///
/// It finds the cluster by the request's [`PickedEndpoint`] (which [`crate::LoadBalance`]
/// records): one map lookup here rather than a second boxed extension on every request.
#[derive(Clone, Debug)]
pub struct Upstream {
    clusters: ClusterManager,
}

impl Upstream {
    /// An upstream over these clusters.
    pub fn new(clusters: ClusterManager) -> Self {
        Self { clusters }
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // hyper-util's client is always ready; back-pressure is the breakers' job.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let picked = req.extensions().get::<PickedEndpoint>();
        let cluster: Option<Arc<ClusterState>> = picked.and_then(|p| self.clusters.get(&p.cluster));
        let endpoint = picked
            .map(|p| p.address)
            .or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()));
        match (cluster, endpoint) {
            (Some(c), Some(ep)) => Box::pin(c.upstream.send(req, ep)),
            _ => {
                let err = MeshError::ClusterNotFound {
                    cluster: picked.map(|p| p.cluster.to_string()).unwrap_or_default(),
                };
                Box::pin(std::future::ready(Err(err.into())))
            }
        }
    }
}
