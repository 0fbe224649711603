//! The RPC proxy of a listener (bolt, dubbo): downstream frames decoded by the protocol's
//! [`XCodec`], each request routed by the listener's RPC route table, an endpoint picked by the
//! cluster's load balancer (LB policy, health, outlier ejections and the request circuit
//! breaker as for HTTP), and sent on one of at most `max_upstream_connections` shared
//! connections to that endpoint, its request id rewritten per connection
//! ([`mesh_xprotocol::InFlight`]) and restored on the response.
//!
//! Tasks: one per downstream connection (the accept path's, reading and writing in one
//! `select!` loop, module `downstream`) and one per upstream connection (module `upstream`),
//! owned by the proxy's pool: it ends when the pool lets go of it (the listener is gone, or
//! its connection settings changed) or its endpoint left the cluster, once its last response
//! is in; or when the connection fails (its waiting requests are answered with the protocol's
//! upstream-failure error).
//!
//! Shared with HTTP through mesh-lb's public API: outlier detection
//! ([`mesh_lb::ClusterState::record`]; module `outcome` says which protocol statuses count as
//! what) and the in-flight count of an endpoint ([`mesh_lb::InFlightGuard`]: least request,
//! drains). Connections are our own (module `pool`: found without a lock), mesh-lb's pool being
//! an HTTP client.
//!
//! A listener update that keeps the protocol swaps the proxy's routing (route table,
//! time-out, limits) in place with one store (`RoutingUpdate::install`): downstream
//! connections and upstream pools stay; only a change of the connection settings (frame
//! limit, connections per endpoint, requests per connection) lets the pools go, so new
//! connections use them.

mod downstream;
mod outcome;
mod pool;
mod route;
mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::{Listener, LocalRateLimit, MeshError, RpcProtocol, XProtocolProxy};
use mesh_lb::{ClusterManager, ClusterState, EndpointState};
use mesh_ratelimit::{Clock, TokenBucket};
use mesh_router::RouteTable;
use mesh_xprotocol::{BoltCodec, XCodec, XError};

use crate::metrics::Metrics;
use crate::metrics_rpc::ListenerRpcMetrics;

pub(crate) use downstream::serve;
use upstream::{Dispatch, UpstreamConn};

/// One listener's RPC proxy. Cheap to clone.
#[derive(Clone)]
pub struct XProxy {
    inner: Arc<Inner>,
}

struct Inner {
    listener: Arc<String>,
    protocol: RpcProtocol,
    codec: Arc<dyn XCodec>,
    /// What a listener update changes in place; the data path loads it once per request.
    routing: ArcSwap<Routing>,
    clusters: ClusterManager,
    pools: pool::Pools,
    metrics: Metrics,
    rpc_metrics: ListenerRpcMetrics,
}

/// The part of an RPC proxy a listener update swaps in place.
struct Routing {
    config: XProtocolProxy,
    table: RouteTable,
    /// The listener's `rate_limit`, kept to tell whether an update changed it.
    rate_limit: Option<LocalRateLimit>,
    /// The listener's `rate_limit` token bucket: a request without a token is refused with the
    /// protocol's overload error (reject mode; waiting and descriptors are HTTP's only).
    /// Carried over (tokens and all) by an update that leaves the rate limit as it was.
    limit: Option<(String, Arc<TokenBucket>)>,
}

impl Routing {
    /// Compiles `config`'s routes; the bucket of `previous` is kept when the limit is the same.
    fn new(
        listener: &str,
        config: XProtocolProxy,
        rate_limit: Option<LocalRateLimit>,
        previous: Option<&Self>,
    ) -> Result<Self, String> {
        let table = RouteTable::compile(&config.route_config, &Default::default())
            .map_err(|e| e.to_string())?;
        let limit = match previous {
            Some(p) if p.rate_limit == rate_limit => p.limit.clone(),
            _ => rate_limit.as_ref().map(|rl| {
                let bucket = TokenBucket::new(&rl.token_bucket, Clock::system());
                (listener.to_owned(), Arc::new(bucket))
            }),
        };
        Ok(Self {
            config,
            table,
            rate_limit,
            limit,
        })
    }

    /// Whether connections made under `self` are still right under `other`.
    fn same_connections(&self, other: &Self) -> bool {
        let (a, b) = (&self.config, &other.config);
        a.max_frame_bytes == b.max_frame_bytes
            && a.max_upstream_connections == b.max_upstream_connections
            && a.max_requests_per_connection == b.max_requests_per_connection
    }
}

impl std::fmt::Debug for XProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XProxy")
            .field("listener", &self.inner.listener)
            .field("protocol", &self.inner.protocol)
            .finish_non_exhaustive()
    }
}

/// The codec of a protocol: the one place a new protocol plugs in.
pub fn codec(protocol: RpcProtocol) -> Result<Arc<dyn XCodec>, String> {
    match protocol {
        RpcProtocol::Bolt => Ok(Arc::new(BoltCodec)),
        RpcProtocol::Dubbo => Ok(Arc::new(mesh_xprotocol::DubboCodec)),
    }
}

/// Checks that a proxy for `config` can be built (a codec for its protocol, routes that
/// compile), without building it.
pub fn check(config: &XProtocolProxy) -> Result<(), String> {
    codec(config.protocol)?;
    RouteTable::compile(&config.route_config, &Default::default())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// [`check`] for a listener's RPC proxy, if it has one; the error names the field.
pub(crate) fn check_listener(l: &Listener) -> Result<(), String> {
    match &l.xprotocol {
        Some(x) => check(x).map_err(|e| format!("xprotocol: {e}")),
        None => Ok(()),
    }
}

/// An RPC proxy's new routing, built and checked, not in place yet.
pub(crate) struct RoutingUpdate {
    proxy: XProxy,
    routing: Routing,
}

impl RoutingUpdate {
    /// Puts the routing in place (one store): requests read from now on, on connections
    /// already open too, are routed by the new table with the new time-out and limits. The
    /// pools stay unless the connection settings changed; then they are let go (their
    /// connections end after their last response) and new requests dial anew.
    pub(crate) fn install(self) {
        let inner = &*self.proxy.inner;
        let keep_pools = inner.routing.load().same_connections(&self.routing);
        inner.routing.store(Arc::new(self.routing));
        if !keep_pools {
            inner.pools.clear();
        }
    }
}

/// Whether a listener update from `old` to `new` can keep the listener's RPC proxy (and
/// swap its [`Routing`] in place): both have none, or both speak the same protocol.
pub(crate) fn same_protocol(old: &Listener, new: &Listener) -> bool {
    old.xprotocol.as_ref().map(|x| x.protocol) == new.xprotocol.as_ref().map(|x| x.protocol)
}

impl XProxy {
    /// The RPC proxy of a listener that has one (checked by [`check_listener`] when the
    /// listener was applied, so a failure here is only logged).
    pub(crate) fn of_listener(
        l: &Listener,
        clusters: &ClusterManager,
        metrics: &Metrics,
    ) -> Option<Self> {
        let x = l.xprotocol.clone()?;
        Self::build(
            &l.name,
            x,
            l.rate_limit.clone(),
            clusters.clone(),
            metrics.clone(),
        )
        .map_err(|e| tracing::error!(listener = %l.name, error = %e, "rpc proxy"))
        .ok()
    }

    /// The RPC proxy of `listener`; an error when the routes do not compile or the protocol
    /// has no codec.
    pub fn new(
        listener: &str,
        config: XProtocolProxy,
        clusters: ClusterManager,
        metrics: Metrics,
    ) -> Result<Self, String> {
        Self::build(listener, config, None, clusters, metrics)
    }

    fn build(
        listener: &str,
        config: XProtocolProxy,
        rate_limit: Option<LocalRateLimit>,
        clusters: ClusterManager,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let codec = codec(config.protocol)?;
        let protocol = config.protocol;
        let routing = Routing::new(listener, config, rate_limit, None)?;
        let rpc_metrics = metrics.rpc().listener(listener, protocol.as_str());
        Ok(Self {
            inner: Arc::new(Inner {
                listener: Arc::new(listener.to_owned()),
                protocol,
                codec,
                routing: ArcSwap::from_pointee(routing),
                clusters,
                pools: pool::Pools::default(),
                metrics,
                rpc_metrics,
            }),
        })
    }

    /// The protocol served.
    pub fn protocol(&self) -> RpcProtocol {
        self.inner.protocol
    }

    /// Builds listener `l`'s RPC routing for this proxy, to put in place with
    /// [`RoutingUpdate::install`] once the rest of the update is known to succeed. Refused
    /// when `l` has no RPC config, speaks another protocol (that needs a new proxy:
    /// [`same_protocol`]), or its routes do not compile.
    pub(crate) fn prepare_update(&self, l: &Listener) -> Result<RoutingUpdate, String> {
        let x = match &l.xprotocol {
            Some(x) if x.protocol == self.inner.protocol => x.clone(),
            _ => return Err("xprotocol: the protocol cannot change in place".into()),
        };
        let old = self.inner.routing.load();
        let routing = Routing::new(&l.name, x, l.rate_limit.clone(), Some(&old))
            .map_err(|e| format!("xprotocol: {e}"))?;
        Ok(RoutingUpdate {
            proxy: self.clone(),
            routing,
        })
    }

    /// The largest frame accepted now.
    fn max_frame(&self) -> usize {
        self.inner.routing.load().config.max_frame_bytes as usize
    }

    /// Sends `d` to `endpoint` (picked from `cluster`) on one of the endpoint's shared
    /// connections, dialling one when its pool has room (see module `pool`). Gives the request
    /// back when the connection ended before it could take it.
    fn send_upstream(
        &self,
        routing: &Routing,
        cluster: &ClusterState,
        endpoint: &Arc<EndpointState>,
        d: Dispatch,
    ) -> Result<(), Box<Dispatch>> {
        let inner = &*self.inner;
        let dial = || {
            UpstreamConn::spawn(upstream::Settings {
                addr: endpoint.address(),
                connect_timeout: cluster.config().connect_timeout,
                codec: Arc::clone(&inner.codec),
                max_frame: routing.config.max_frame_bytes as usize,
                capacity: routing.config.max_requests_per_connection as usize,
                metrics: inner.rpc_metrics.clone(),
                endpoint: Arc::clone(endpoint),
                protocol: inner.protocol,
            })
        };
        let max_conns = routing.config.max_upstream_connections as usize;
        inner.pools.send(endpoint, max_conns, &dial, d)
    }
}

/// The protocol error a local reply for `e` carries (the one place mesh errors become RPC
/// errors, as `MeshError::to_response` is for HTTP).
pub(crate) fn xerror(e: &MeshError) -> XError {
    match e {
        MeshError::NoRoute { .. }
        | MeshError::ClusterNotFound { .. }
        | MeshError::NoHealthyEndpoint { .. } => XError::NoProvider,
        MeshError::CircuitOpen { .. } | MeshError::RateLimited { .. } => XError::Overloaded,
        MeshError::UpstreamTimeout { .. } => XError::Timeout,
        MeshError::UpstreamConnect { .. } | MeshError::Upstream { .. } => XError::UpstreamFailure,
        _ => XError::Malformed,
    }
}
