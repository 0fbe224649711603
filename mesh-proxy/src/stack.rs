//! The layer stack of one listener, assembled from the layer crates:
//! rate limit (listener rules) → authorization (RBAC) → listener filters → router → rate limit (route rules) → load
//! balancer → upstream.
//!
//! With tracing on, the trace layer wraps all of it, so a hop's span covers every answer the
//! listener gives, a listener-wide 429 included.
//! The access log ([`AccessLogLayer`]) wraps it all, so it sees every answer, the mesh's own
//! included; its helper [`NoteUpstreamLayer`] sits between the load balancer and the upstream.
//!
//! Route-scoped limits need the router's decision, so they sit inside it; listener-wide limits
//! stay outside, so even a request that matches no route is counted, as with Envoy's
//! `local_ratelimit` filter.

use mesh_core::{
    body, BoxError, Listener, RateLimitConfig, RateLimitScope, Reload, ReloadError,
    RouteConfiguration,
};
use mesh_lb::{ClusterManager, LoadBalanceLayer};
use mesh_ratelimit::RateLimitLayer;
use mesh_router::rbac::RbacEngine;
use mesh_router::{LayerRegistry, RbacLayer, RouterLayer};
use mesh_telemetry::TraceLayer;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::access_log::{AccessLogLayer, NoteUpstreamLayer, Sink};
use crate::connect::ConnectTerminate;
use crate::decision::DecisionToResponse;
use crate::filters::{self, FilterChain, ListenerFilterLayer};
use crate::server::StackService;

/// The live, reloadable layers of one listener. Cloning shares them.
#[derive(Clone, Debug)]
pub struct ListenerStack {
    listener_limits: RateLimitLayer,
    rbac: RbacLayer,
    filters: ListenerFilterLayer,
    registry: LayerRegistry,
    router: RouterLayer,
    route_limits: RateLimitLayer,
    clusters: ClusterManager,
    trace: Option<TraceLayer>,
    access_log: AccessLogLayer,
}

impl ListenerStack {
    /// Builds the stack for `listener` serving `routes` (the listener's inline table when
    /// `None`), sending to `clusters`.
    pub fn new(
        listener: &Listener,
        routes: Option<&RouteConfiguration>,
        clusters: ClusterManager,
        registry: LayerRegistry,
    ) -> Result<Self, ReloadError> {
        let (outer, inner) = split_limits(RateLimitConfig::for_listener(listener, routes));
        let filters = ListenerFilterLayer::new(filters::build(listener, &registry)?);
        let router = RouterLayer::empty(registry.clone());
        if let Some(rc) = routes.or(listener.route_config.as_ref()) {
            router.reload(rc.clone())?;
        }
        Ok(Self {
            listener_limits: RateLimitLayer::new(outer)?,
            rbac: RbacLayer::from_engine(Self::build_rbac(listener)?),
            filters,
            registry,
            router,
            route_limits: RateLimitLayer::new(inner)?,
            clusters,
            trace: None,
            access_log: AccessLogLayer::off(),
        })
    }

    /// Traces every request of this listener with `trace` (outermost); `None` leaves the
    /// layer out of the stack entirely, so tracing off costs nothing.
    #[must_use]
    pub fn with_trace(mut self, trace: Option<TraceLayer>) -> Self {
        self.trace = trace;
        self
    }

    /// Whether the stack traces requests.
    pub fn is_traced(&self) -> bool {
        self.trace.is_some()
    }

    /// Applies a new route table (RDS) and the route limits it carries, or refuses both.
    pub fn reload_routes(
        &self,
        listener: &Listener,
        routes: RouteConfiguration,
    ) -> Result<(), ReloadError> {
        let (outer, inner) = split_limits(RateLimitConfig::for_listener(listener, Some(&routes)));
        // Validate the limits before the table goes live, so a refusal changes nothing.
        RateLimitLayer::new(inner.clone())?;
        self.router.reload(routes)?;
        self.route_limits.reload(inner)?;
        self.listener_limits.reload(outer)
    }

    /// Builds `listener`'s `http_filters` with this stack's registry, without applying them (so a
    /// refusal changes nothing); [`set_filters`](Self::set_filters) applies the result.
    pub fn build_filters(&self, listener: &Listener) -> Result<FilterChain, ReloadError> {
        filters::build(listener, &self.registry)
    }

    /// Compiles `listener`'s authorization policy without applying it (so a refusal changes
    /// nothing); [`set_rbac`](Self::set_rbac) applies the result.
    pub fn build_rbac(listener: &Listener) -> Result<Option<RbacEngine>, ReloadError> {
        RbacLayer::compile(listener.rbac.as_ref())
            .map_err(|e| ReloadError::new("listener", &listener.name, e.within("rbac")))
    }

    /// Swaps the listener's authorization policy in place (the socket and connections stay).
    pub fn set_rbac(&self, engine: Option<RbacEngine>) {
        self.rbac.set(engine);
    }

    /// Swaps the listener-level filters in place (the socket and connections stay).
    pub fn set_filters(&self, chain: FilterChain) {
        self.filters.reload(chain);
    }

    /// Logs every request of the listener with `access_log` (set before
    /// [`service`](Self::service) is taken; a listener update swaps its logs in place).
    #[must_use]
    pub fn with_access_log(mut self, access_log: AccessLogLayer) -> Self {
        self.access_log = access_log;
        self
    }

    /// Swaps the listener's access logs in place.
    pub(crate) fn set_access_log(&self, sinks: Vec<Sink>) {
        self.access_log.reload(sinks);
    }

    /// The router layer (for its table, e.g. in the config dump).
    pub fn router(&self) -> &RouterLayer {
        &self.router
    }

    /// The boxed service a listener serves.
    pub fn service(&self) -> StackService {
        // The pooled upstream, which also terminates CONNECT for the routes that say so; the
        // access log notes the endpoint picked on the way.
        let upstream = ServiceBuilder::new()
            .layer(LoadBalanceLayer::new(self.clusters.clone()))
            .layer(NoteUpstreamLayer)
            .service(ConnectTerminate::new(self.clusters.clone()));
        let svc = ServiceBuilder::new()
            .layer(self.access_log.clone())
            .layer(self.listener_limits.clone())
            .layer(self.rbac.clone())
            .layer(self.filters.clone())
            .map_err(Into::<BoxError>::into)
            .layer(self.router.clone())
            .layer(self.route_limits.clone())
            .layer(DecisionToResponse)
            .service(upstream)
            .map_err(Into::<BoxError>::into);
        match &self.trace {
            None => BoxCloneService::new(svc),
            Some(trace) => {
                BoxCloneService::new(trace.layer(svc).map_response(|resp| resp.map(body::boxed)))
            }
        }
    }
}

/// Listener-scoped rules go outside the router, route-scoped ones inside.
fn split_limits(all: RateLimitConfig) -> (RateLimitConfig, RateLimitConfig) {
    let (outer, inner) = all
        .rules
        .into_iter()
        .partition(|r| r.scope == RateLimitScope::Listener);
    (
        RateLimitConfig {
            rules: outer,
            max_descriptors: all.max_descriptors,
        },
        RateLimitConfig {
            rules: inner,
            max_descriptors: all.max_descriptors,
        },
    )
}
