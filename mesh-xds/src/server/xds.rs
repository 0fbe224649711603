//! `XdsServer`: the aggregated and per-type discovery services on tonic.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::runtime::v3::runtime_discovery_service_server::{
    RuntimeDiscoveryService, RuntimeDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cache::SnapshotCache;
use super::callbacks::{Callbacks, NoCallbacks, StreamId, StreamKind};
use super::delta::Delta;
use super::diff::DiffMemo;
use super::grpc::Discovery;
use super::sotw::Sotw;
use super::stream::{self, Protocol, StreamBase};
use super::wire::Out;
use crate::ResourceType;

/// What every stream of a server shares.
pub(crate) struct Shared {
    pub(crate) cache: SnapshotCache,
    pub(crate) callbacks: Arc<dyn Callbacks>,
    /// What changed between recent versions, shared by the streams that push it.
    pub(crate) diffs: DiffMemo,
    max_streams: usize,
    open: AtomicUsize,
    next_id: AtomicU64,
}

/// Counts a stream as open while alive; reports its close.
pub(crate) struct StreamGuard {
    pub(crate) id: StreamId,
    shared: Arc<Shared>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.callbacks.stream_closed(self.id);
    }
}

/// The discovery server: ADS (state of the world and delta) and the per-type services (LDS,
/// RDS, CDS, EDS, SDS, RTDS; streaming, delta and fetch), all serving one [`SnapshotCache`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_xds::server::{SnapshotCache, XdsServer};
///
/// let cache = SnapshotCache::new();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:18000").await?;
/// XdsServer::new(cache.clone())
///     .max_concurrent_streams(10_000)
///     .serve(listener, std::future::pending())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("max_streams", &self.shared.max_streams)
            .field("open_streams", &self.open_streams())
            .finish_non_exhaustive()
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Responses queued per stream before the sender waits for the client to read.
const STREAM_BUFFER: usize = 16;

impl XdsServer {
    /// A server of `cache` with no callbacks and no stream limit.
    pub fn new(cache: SnapshotCache) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                callbacks: Arc::new(NoCallbacks),
                diffs: DiffMemo::default(),
                max_streams: usize::MAX,
                open: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut s = Shared {
            cache: self.shared.cache.clone(),
            callbacks: self.shared.callbacks.clone(),
            diffs: DiffMemo::default(),
            max_streams: self.shared.max_streams,
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        };
        f(&mut s);
        Self {
            shared: Arc::new(s),
        }
    }

    /// Calls `callbacks` on stream and protocol events.
    #[must_use]
    pub fn with_callbacks(self, callbacks: Arc<dyn Callbacks>) -> Self {
        self.rebuild(|s| s.callbacks = callbacks)
    }

    /// Refuses streams beyond `n` open at once (with `RESOURCE_EXHAUSTED`).
    #[must_use]
    pub fn max_concurrent_streams(self, n: usize) -> Self {
        self.rebuild(|s| s.max_streams = n)
    }

    #[cfg(test)]
    pub(crate) fn shared_for_test(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The cache served.
    pub fn cache(&self) -> &SnapshotCache {
        &self.shared.cache
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Every discovery service, to mount on a tonic server.
    ///
    /// Their streams send responses as shared pre-encoded bytes (no per-stream encoding or
    /// encode buffer); mounting the generated `*DiscoveryServiceServer`s on this server
    /// directly also works, at the cost of decoding and re-encoding every response.
    pub fn routes(&self) -> tonic::service::Routes {
        use ResourceType as T;
        let s = || self.clone();
        tonic::service::Routes::new(Discovery::new(
            AggregatedDiscoveryServiceServer::new(s()),
            s(),
            None,
        ))
        .add_service(Discovery::new(
            ListenerDiscoveryServiceServer::new(s()),
            s(),
            Some(T::Listener),
        ))
        .add_service(Discovery::new(
            RouteDiscoveryServiceServer::new(s()),
            s(),
            Some(T::Route),
        ))
        .add_service(Discovery::new(
            ClusterDiscoveryServiceServer::new(s()),
            s(),
            Some(T::Cluster),
        ))
        .add_service(Discovery::new(
            EndpointDiscoveryServiceServer::new(s()),
            s(),
            Some(T::Endpoint),
        ))
        .add_service(Discovery::new(
            SecretDiscoveryServiceServer::new(s()),
            s(),
            Some(T::Secret),
        ))
        .add_service(Discovery::new(
            RuntimeDiscoveryServiceServer::new(s()),
            s(),
            Some(T::Runtime),
        ))
    }

    /// Serves every discovery service on `listener` until `shutdown` completes, then drains
    /// (a GOAWAY to every connection) and returns once all connections have closed.
    ///
    /// Plaintext HTTP/2 only, served by hyper directly (see `server/serve.rs`: less memory per
    /// connection than tonic's transport server). A failed accept is retried, so this returns
    /// `Ok`; the `Result` is kept for [`serve_tls`](Self::serve_tls)'s signature.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        super::serve::serve(self.routes(), listener, shutdown).await;
        Ok(())
    }

    /// Binds `addr` and serves, returning the bound address and the serving task.
    pub async fn spawn(
        self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = self.serve(listener, std::future::pending()).await {
                tracing::error!(error = %e, "xDS server failed");
            }
        });
        Ok((bound, task))
    }

    pub(crate) fn open(&self, kind: StreamKind) -> Result<StreamGuard, Status> {
        let prev = self.shared.open.fetch_add(1, Ordering::Relaxed);
        if prev >= self.shared.max_streams {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "at most {} xDS streams at once",
                self.shared.max_streams
            )));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.callbacks.stream_opened(id, kind);
        Ok(StreamGuard {
            id,
            shared: self.shared.clone(),
        })
    }

    /// Opens a stream of `kind` (refused beyond the stream limit) and spawns its task; the
    /// receiver yields its encoded responses.
    pub(crate) fn start<P, S>(
        &self,
        kind: StreamKind,
        protocol: impl FnOnce(StreamBase) -> P,
        requests: S,
        peer: Option<Arc<Vec<String>>>,
    ) -> Result<mpsc::Receiver<Out>, Status>
    where
        P: Protocol,
        S: Stream<Item = Result<P::Request, Status>> + Unpin + Send + 'static,
    {
        let fixed = match kind {
            StreamKind::Single(k) | StreamKind::DeltaSingle(k) => Some(k),
            StreamKind::Ads | StreamKind::DeltaAds => None,
        };
        let guard = self.open(kind)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let base = StreamBase::new(self.shared.clone(), guard, fixed, tx, peer);
        tokio::spawn(stream::drive(protocol(base), requests));
        Ok(rx)
    }

    fn sotw(
        &self,
        fixed: Option<ResourceType>,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Boxed<DiscoveryResponse>>, Status> {
        let kind = fixed.map_or(StreamKind::Ads, StreamKind::Single);
        let peer = super::identity::peer_uri_sans(req.extensions());
        let rx = self.start(kind, Sotw::new, req.into_inner(), peer)?;
        Ok(Response::new(typed(rx)))
    }

    fn delta(
        &self,
        fixed: Option<ResourceType>,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Boxed<DeltaDiscoveryResponse>>, Status> {
        let kind = fixed.map_or(StreamKind::DeltaAds, StreamKind::DeltaSingle);
        let peer = super::identity::peer_uri_sans(req.extensions());
        let rx = self.start(kind, Delta::new, req.into_inner(), peer)?;
        Ok(Response::new(typed(rx)))
    }

    fn fetch(
        &self,
        kind: ResourceType,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let peer = super::identity::peer_uri_sans(req.extensions());
        let req = req.into_inner();
        let node = req
            .node
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("a fetch must carry a node"))?;
        let key = self.shared.cache.node_key(node);
        let snap = self
            .shared
            .cache
            .snapshot(&key)
            .ok_or_else(|| Status::unavailable(format!("no snapshot for node {key:?} yet")))?;
        let ts = snap.of(kind);
        let resources = ts
            .items()
            .values()
            .filter(|r| {
                req.resource_names.is_empty()
                    || req.resource_names.iter().any(|n| n == r.name() || n == "*")
            })
            .filter(|r| super::identity::may_receive(peer.as_deref().map(Vec::as_slice), r))
            .map(|r| r.any().clone())
            .collect();
        Ok(Response::new(DiscoveryResponse {
            version_info: ts.version(),
            resources,
            type_url: kind.type_url().to_owned(),
            nonce: String::new(),
            ..DiscoveryResponse::default()
        }))
    }
}

/// Encoded responses decoded back into messages, for the generated services' typed streams
/// (used only when those are mounted directly rather than through [`XdsServer::routes`]).
pub(crate) fn typed<M>(rx: mpsc::Receiver<Out>) -> Boxed<M>
where
    M: prost::Message + Default + Send + 'static,
{
    Box::pin(ReceiverStream::new(rx).map(|out| match out {
        Ok(msg) => msg.decode::<M>(),
        Err(status) => Err(*status),
    }))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = Boxed<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Boxed<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.sotw(None, req)
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.delta(None, req)
    }
}

/// Implements one per-type service by delegating to the shared stream handlers.
macro_rules! per_type {
    ($trait:ident, $kind:expr, $stream:ident, $delta:ident,
     $stream_fn:ident, $delta_fn:ident, $fetch_fn:ident) => {
        #[tonic::async_trait]
        impl $trait for XdsServer {
            type $stream = Boxed<DiscoveryResponse>;
            type $delta = Boxed<DeltaDiscoveryResponse>;

            async fn $stream_fn(
                &self,
                req: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$stream>, Status> {
                self.sotw(Some($kind), req)
            }

            async fn $delta_fn(
                &self,
                req: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta>, Status> {
                self.delta(Some($kind), req)
            }

            async fn $fetch_fn(
                &self,
                req: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch($kind, req)
            }
        }
    };
}

per_type!(
    ListenerDiscoveryService,
    ResourceType::Listener,
    StreamListenersStream,
    DeltaListenersStream,
    stream_listeners,
    delta_listeners,
    fetch_listeners
);
per_type!(
    RouteDiscoveryService,
    ResourceType::Route,
    StreamRoutesStream,
    DeltaRoutesStream,
    stream_routes,
    delta_routes,
    fetch_routes
);
per_type!(
    ClusterDiscoveryService,
    ResourceType::Cluster,
    StreamClustersStream,
    DeltaClustersStream,
    stream_clusters,
    delta_clusters,
    fetch_clusters
);
per_type!(
    EndpointDiscoveryService,
    ResourceType::Endpoint,
    StreamEndpointsStream,
    DeltaEndpointsStream,
    stream_endpoints,
    delta_endpoints,
    fetch_endpoints
);
per_type!(
    SecretDiscoveryService,
    ResourceType::Secret,
    StreamSecretsStream,
    DeltaSecretsStream,
    stream_secrets,
    delta_secrets,
    fetch_secrets
);
per_type!(
    RuntimeDiscoveryService,
    ResourceType::Runtime,
    StreamRuntimeStream,
    DeltaRuntimeStream,
    stream_runtime,
    delta_runtime,
    fetch_runtime
);
