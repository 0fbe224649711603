//! The in-process mesh in one call: from a control-plane address and a node id to ready tower
//! layers (router → rate limit → load balancer), every xDS sink wired inside.
//!
//! ```no_run
//! use http::Request;
//! use mesh_core::body;
//! use mesh_xds::sdk::{Mesh, MeshOptions};
//! use tower::{Layer, ServiceExt};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Connects, waits until the first full config arrived, and keeps it live.
//! let mesh = Mesh::connect(MeshOptions::new("http://127.0.0.1:18000", "orders-1")).await?;
//!
//! // Our pooled upstream (HTTP/1.1 or HTTP/2 per cluster, as CDS says) ...
//! let client = mesh.client();
//! // ... or your own hyper client under the same layers.
//! let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//!     .build_http::<mesh_core::Body>();
//! let yours = mesh.layer().layer(hyper);
//!
//! let resp = client.oneshot(Request::get("http://orders/api").body(body::empty())?).await?;
//! // The client is Clone + Send + Sync + 'static, its futures are Send + 'static:
//! let handle = tokio::spawn(yours.oneshot(Request::get("http://orders/api").body(body::empty())?));
//! # let _ = (resp, handle.await??);
//! # Ok(()) }
//! ```
//!
//! What applies in-process: everything the outbound route table and the clusters carry (route
//! matching, rewrites, header edits, timeouts, retries, route-level rate limits; LB policies,
//! circuit breakers, outlier detection, health checks). A service's own `rate_limit` in
//! mesh.yaml is enforced on the inbound side of that service's sidecar, not by its callers.
//!
//! Requests must name their destination: `http://orders/api` (or a `Host` header) picks the
//! virtual host. A tonic client built with `new(service)` sends only the path, so build it with
//! `with_origin(service, "http://orders".parse()?)`: the origin is the service to call.
//!
//! Tracing (feature `otel`): `otel` is mesh-telemetry. Put its `TraceLayer` over the client
//! and every call gets a CLIENT span, a child of the `traceparent` the request carries (or a
//! new trace), with the outgoing `traceparent` set to it, exported over OTLP/gRPC:
//!
//! ```ignore
//! use mesh_xds::sdk::otel::{OtlpTracing, SpanKind, TracingOptions};
//! let tracing = OtlpTracing::start(&TracingOptions::new("http://127.0.0.1:4317").service_name("orders"))?;
//! let client = tower::ServiceBuilder::new()
//!     .layer(tracing.layer(SpanKind::Client))
//!     .service(mesh.client());
//! // ... on the way out: tracing.shutdown().await flushes the queued spans.
//! ```
//!
//! Below this, the same wiring by hand: [`XdsClient::builder`](crate::client::XdsClient::builder)
//! with `sink_all::<Cluster>`, `sink_each::<ClusterLoadAssignment>` (removals are part of the
//! `ReloadEach` contract), `sink_named::<RouteConfiguration>` and `sink_rate_limits`.

mod service;

use std::sync::Arc;
use std::time::Duration;

use mesh_core::{Cluster, ClusterLoadAssignment, RateLimitConfig, RouteConfiguration};
use mesh_lb::{ClusterManager, LoadBalance, Upstream};
use mesh_ratelimit::RateLimitLayer;
use mesh_router::{LayerRegistry, RouterLayer};

use crate::client::{AdsMode, XdsClient, XdsClientError, XdsTls};

pub use service::{IntoMeshBody, MeshFuture, MeshLayer, MeshService, MeshStack};

/// Tracing for the in-process mesh (feature `otel`): the per-hop trace layer and the OTLP/gRPC
/// export pipeline of the [`mesh_telemetry`] crate.
#[cfg(feature = "otel")]
pub use mesh_telemetry as otel;

/// The route table (and listener) the SDK follows by default: the outbound side, as our control
/// plane names it.
pub const OUTBOUND: &str = "outbound";

/// What [`Mesh::connect`] needs: where the control plane is and who this node is; the rest has
/// defaults.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    addresses: Vec<String>,
    node_id: String,
    node_cluster: Option<String>,
    mode: AdsMode,
    tls: Option<XdsTls>,
    listener: String,
    ready_timeout: Duration,
    filters: LayerRegistry,
}

impl MeshOptions {
    /// The control plane at `address` (`http://host:port`, or `https://` with
    /// [`tls`](Self::tls)) and this node's id; state of the world, the `outbound` listener,
    /// a 10 s wait for the first config, the default route filters (`fault`).
    pub fn new(address: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            addresses: vec![address.into()],
            node_id: node_id.into(),
            node_cluster: None,
            mode: AdsMode::Sotw,
            tls: None,
            listener: OUTBOUND.to_owned(),
            ready_timeout: Duration::from_secs(10),
            filters: LayerRegistry::default(),
        }
    }

    /// Another control-plane address, tried in order when the ones before fail.
    pub fn fallback(mut self, address: impl Into<String>) -> Self {
        self.addresses.push(address.into());
        self
    }

    /// This node's cluster (service) name, sent in the xDS `Node`.
    pub fn node_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.node_cluster = Some(cluster.into());
        self
    }

    /// Incremental (delta) xDS instead of state of the world.
    pub fn delta(mut self) -> Self {
        self.mode = AdsMode::Delta;
        self
    }

    /// TLS (or mTLS) to the control plane.
    pub fn tls(mut self, tls: XdsTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The listener whose route table and rate limits the SDK applies (default `outbound`).
    pub fn listener(mut self, name: impl Into<String>) -> Self {
        self.listener = name.into();
        self
    }

    /// How long [`Mesh::connect`] waits for the first complete config (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The registry of per-route filters routes may name (default: `fault`).
    pub fn filters(mut self, registry: LayerRegistry) -> Self {
        self.filters = registry;
        self
    }
}

/// Why [`Mesh::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshConnectError {
    /// The xDS client could not start, or no complete config came in time.
    #[error(transparent)]
    Xds(#[from] XdsClientError),
    /// The rate limiter could not be built (never for the empty initial config).
    #[error("rate limiter: {0}")]
    RateLimit(#[from] mesh_core::ReloadError),
}

/// A live in-process mesh: the layers, and the xDS client that keeps them current.
///
/// Dropping it (or [`shutdown`](Self::shutdown)) stops the xDS client; services already built
/// keep serving the last config.
#[derive(Debug)]
pub struct Mesh {
    layer: MeshLayer,
    xds: XdsClient,
}

impl Mesh {
    /// Connects to the control plane and waits until the first complete config (listener,
    /// route table, clusters and their endpoints) arrived, or
    /// [`ready_timeout`](MeshOptions::ready_timeout) passed (an error).
    pub async fn connect(opts: MeshOptions) -> Result<Self, MeshConnectError> {
        let timeout = opts.ready_timeout;
        let mesh = Self::start(opts)?;
        mesh.xds.wait_ready(timeout).await?;
        Ok(mesh)
    }

    /// Starts the xDS client without waiting: requests answer 404 (no route) until the first
    /// config arrives. [`xds`](Self::xds) tells when it has.
    pub fn start(opts: MeshOptions) -> Result<Self, MeshConnectError> {
        let clusters = ClusterManager::new();
        let router = RouterLayer::empty(opts.filters);
        let limits = RateLimitLayer::new(RateLimitConfig::default())?;
        let mut builder = XdsClient::builder()
            .node_id(opts.node_id)
            .mode(opts.mode)
            .user_agent("mesh-sdk")
            .metadata("mesh.node_kind", "sdk")
            .sink_all::<Cluster>(Arc::new(clusters.clone()))
            .sink_each::<ClusterLoadAssignment>(Arc::new(clusters.clone()))
            .sink_named::<RouteConfiguration>(opts.listener.clone(), Arc::new(router.clone()))
            .sink_rate_limits(opts.listener, Arc::new(limits.clone()));
        for a in opts.addresses {
            builder = builder.address(a);
        }
        if let Some(c) = opts.node_cluster {
            builder = builder.node_cluster(c);
        }
        if let Some(tls) = opts.tls {
            builder = builder.tls(tls);
        }
        let xds = builder.start()?;
        Ok(Self {
            layer: MeshLayer::new(router, limits, clusters),
            xds,
        })
    }

    /// The layers, to wrap a client of your own (a hyper client, or any `Service` taking
    /// `http::Request<mesh_core::Body>` and reaching the endpoint the request's URI names).
    pub fn layer(&self) -> MeshLayer {
        self.layer.clone()
    }

    /// The layers over our pooled upstream client (HTTP/1.1 or HTTP/2 per cluster, as CDS
    /// says): the whole data path, ready to call. Works as a tonic transport too.
    pub fn client(&self) -> MeshService {
        self.layer
            .service(Upstream::new(self.layer.clusters().clone()))
    }

    /// The unboxed stack over our pooled upstream, for those who want its concrete type.
    pub fn stack(&self) -> MeshStack<Upstream> {
        self.layer
            .stack(Upstream::new(self.layer.clusters().clone()))
    }

    /// The load balancer over our pooled upstream alone (no routing or limits): requests must
    /// carry a [`TargetCluster`](mesh_core::extensions::TargetCluster).
    pub fn load_balancer(&self) -> LoadBalance<Upstream> {
        LoadBalance::upstream(self.layer.clusters().clone())
    }

    /// The xDS client: status, watches of every resource type, readiness.
    pub fn xds(&self) -> &XdsClient {
        &self.xds
    }

    /// The clusters as the load balancer holds them.
    pub fn clusters(&self) -> &ClusterManager {
        self.layer.clusters()
    }

    /// The router's layer (its live table).
    pub fn router(&self) -> &RouterLayer {
        self.layer.router()
    }

    /// Stops the xDS client; services already built keep the last config.
    pub async fn shutdown(self) {
        self.xds.shutdown().await;
    }
}
