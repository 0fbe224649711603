//! The layer stack of one listener, assembled from the layer crates:
//! rate limit (listener rules) → listener filters → router → rate limit (route rules) → load
//! balancer → upstream.
//!
//! Route-scoped limits need the router's decision, so they sit inside it; listener-wide limits
//! stay outside, so even a request that matches no route is counted, as with Envoy's
//! `local_ratelimit` filter.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use mesh_core::extensions::{MatchedRoute, TargetCluster};
use mesh_core::{
    Body, BoxError, Listener, RateLimitConfig, RateLimitScope, Reload, ReloadError,
    RouteConfiguration,
};
use mesh_lb::{ClusterManager, LoadBalance};
use mesh_ratelimit::RateLimitLayer;
use mesh_router::{LayerRegistry, RouterLayer};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::filters::{self, FilterChain, ListenerFilterLayer};
use crate::server::StackService;

/// The live, reloadable layers of one listener. Cloning shares them.
#[derive(Clone, Debug)]
pub struct ListenerStack {
    listener_limits: RateLimitLayer,
    filters: ListenerFilterLayer,
    registry: LayerRegistry,
    router: RouterLayer,
    route_limits: RateLimitLayer,
    clusters: ClusterManager,
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
            filters,
            registry,
            router,
            route_limits: RateLimitLayer::new(inner)?,
            clusters,
        })
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

    /// Swaps the listener-level filters in place (the socket and connections stay).
    pub fn set_filters(&self, chain: FilterChain) {
        self.filters.reload(chain);
    }

    /// The router layer (for its table, e.g. in the config dump).
    pub fn router(&self) -> &RouterLayer {
        &self.router
    }

    /// The boxed service a listener serves.
    pub fn service(&self) -> StackService {
        let upstream = LoadBalance::upstream(self.clusters.clone());
        let svc = ServiceBuilder::new()
            .layer(self.listener_limits.clone())
            .layer(self.filters.clone())
            .map_err(Into::<BoxError>::into)
            .layer(self.router.clone())
            .layer(self.route_limits.clone())
            .layer(DecisionToResponse)
            .service(upstream);
        BoxCloneService::new(svc.map_err(Into::<BoxError>::into))
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

/// Copies the router's decision onto the response, so the listener's metrics can label it.
#[derive(Clone, Copy, Debug)]
struct DecisionToResponse;

impl<S> Layer<S> for DecisionToResponse {
    type Service = CopyDecision<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CopyDecision { inner }
    }
}

/// The service of [`DecisionToResponse`].
#[derive(Clone, Debug)]
struct CopyDecision<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for CopyDecision<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = CopyDecisionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let decision = Decision {
            route: req.extensions().get::<MatchedRoute>().cloned(),
            cluster: req.extensions().get::<TargetCluster>().cloned(),
        };
        CopyDecisionFuture {
            inner: self.inner.call(req),
            decision: Some(decision),
        }
    }
}

/// The router's decision, carried on the response to the listener's metrics as one extension
/// (one insert instead of two).
#[derive(Clone, Debug, Default)]
pub(crate) struct Decision {
    route: Option<MatchedRoute>,
    cluster: Option<TargetCluster>,
}

impl Decision {
    /// Takes the decision off a response; a stack without [`DecisionToResponse`] may have put
    /// the router's extensions there directly.
    pub(crate) fn take(ext: &mut http::Extensions) -> Self {
        ext.remove::<Decision>().unwrap_or_else(|| Self {
            route: ext.remove(),
            cluster: ext.remove(),
        })
    }

    /// The route and cluster names, empty when there were none.
    pub(crate) fn names(&self) -> (&str, &str) {
        (
            self.route.as_ref().map_or("", |r| r.route.name.as_str()),
            self.cluster.as_ref().map_or("", |c| &c.0),
        )
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`CopyDecision`].
    struct CopyDecisionFuture<F> {
        #[pin]
        inner: F,
        decision: Option<Decision>,
    }
}

impl<F, E> Future for CopyDecisionFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        if let Some(d) = this.decision.take() {
            resp.extensions_mut().insert(d);
        }
        Poll::Ready(Ok(resp))
    }
}
