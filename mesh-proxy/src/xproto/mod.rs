//! The RPC proxy of a listener (bolt, dubbo): downstream frames decoded by the protocol's
//! [`XCodec`], each request routed by the listener's RPC route table, an endpoint picked by the
//! cluster's load balancer (LB policy, health, outlier ejections and the request circuit
//! breaker as for HTTP), and sent on one of at most `max_upstream_connections` shared
//! connections to that endpoint, its request id rewritten per connection
//! ([`mesh_xprotocol::InFlight`]) and restored on the response.
//!
//! Tasks: one per downstream connection (the accept path's, reading and writing in one
//! `select!` loop, module `downstream`) and one per upstream connection (module `upstream`), owned by
//! the proxy's pool: it ends when the pool lets go of it (the listener is gone) and its last
//! response is in, or when the connection fails (its waiting requests are answered with the
//! protocol's upstream-failure error).
//!
//! Not reused from mesh-lb (its API keeps them crate-private): outlier detection's recording
//! of outcomes (RPC failures do not eject endpoints; ejections made by HTTP traffic and health
//! checks still apply to picks) and its connection pool (an HTTP client).

mod downstream;
mod route;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mesh_core::{Listener, MeshError, RpcProtocol, XProtocolProxy};
use mesh_lb::ClusterManager;
use mesh_ratelimit::{Clock, TokenBucket};
use mesh_router::RouteTable;
use mesh_xprotocol::{BoltCodec, XCodec, XError};

use crate::metrics::Metrics;
use crate::metrics_rpc::ListenerRpcMetrics;

pub(crate) use downstream::serve;
use upstream::UpstreamConn;

/// One listener's RPC proxy. Cheap to clone.
#[derive(Clone)]
pub struct XProxy {
    inner: Arc<Inner>,
}

struct Inner {
    listener: Arc<String>,
    codec: Arc<dyn XCodec>,
    config: XProtocolProxy,
    table: RouteTable,
    clusters: ClusterManager,
    pools: Mutex<HashMap<SocketAddr, Pool>>,
    metrics: Metrics,
    rpc_metrics: ListenerRpcMetrics,
    /// The listener's `rate_limit` token bucket: a request without a token is refused with the
    /// protocol's overload error (reject mode; waiting and descriptors are HTTP's only).
    limit: Option<(String, TokenBucket)>,
}

/// The shared connections to one endpoint, used round robin.
#[derive(Default)]
struct Pool {
    conns: Vec<UpstreamConn>,
    next: AtomicUsize,
}

impl std::fmt::Debug for XProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XProxy")
            .field("listener", &self.inner.listener)
            .field("protocol", &self.inner.config.protocol)
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

impl XProxy {
    /// The RPC proxy of a listener that has one (checked by [`check_listener`] when the
    /// listener was applied, so a failure here is only logged).
    pub(crate) fn of_listener(
        l: &Listener,
        clusters: &ClusterManager,
        metrics: &Metrics,
    ) -> Option<Self> {
        let x = l.xprotocol.clone()?;
        let mut proxy = Self::new(&l.name, x, clusters.clone(), metrics.clone())
            .map_err(|e| tracing::error!(listener = %l.name, error = %e, "rpc proxy"))
            .ok()?;
        if let (Some(rl), Some(inner)) = (&l.rate_limit, Arc::get_mut(&mut proxy.inner)) {
            let bucket = TokenBucket::new(&rl.token_bucket, Clock::system());
            inner.limit = Some((l.name.clone(), bucket));
        }
        Some(proxy)
    }

    /// The RPC proxy of `listener`; an error when the routes do not compile or the protocol
    /// has no codec.
    pub fn new(
        listener: &str,
        config: XProtocolProxy,
        clusters: ClusterManager,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let codec = codec(config.protocol)?;
        let table = RouteTable::compile(&config.route_config, &Default::default())
            .map_err(|e| e.to_string())?;
        let rpc_metrics = metrics.rpc().listener(listener, config.protocol.as_str());
        Ok(Self {
            inner: Arc::new(Inner {
                listener: Arc::new(listener.to_owned()),
                codec,
                config,
                table,
                clusters,
                pools: Mutex::new(HashMap::new()),
                metrics,
                rpc_metrics,
                limit: None,
            }),
        })
    }

    /// The protocol served.
    pub fn protocol(&self) -> RpcProtocol {
        self.inner.config.protocol
    }

    /// A connection to `addr` to send a request on: the next of the pool's live connections,
    /// or a new one while the pool holds fewer than the maximum. The lock covers a vector
    /// scan of at most `max_upstream_connections` entries, never I/O.
    fn upstream(&self, addr: SocketAddr, connect_timeout: std::time::Duration) -> UpstreamConn {
        let inner = &self.inner;
        let mut pools = inner
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pool = pools.entry(addr).or_default();
        pool.conns.retain(|c| !c.is_closed());
        let max = inner.config.max_upstream_connections as usize;
        if pool.conns.len() < max {
            let conn = UpstreamConn::spawn(upstream::Settings {
                addr,
                connect_timeout,
                codec: Arc::clone(&inner.codec),
                max_frame: inner.config.max_frame_bytes as usize,
                capacity: inner.config.max_requests_per_connection as usize,
                metrics: inner.rpc_metrics.clone(),
            });
            pool.conns.push(conn.clone());
            return conn;
        }
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.conns.len();
        pool.conns[i].clone()
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
