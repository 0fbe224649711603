//! Listener-level custom filters (`Listener.http_filters`): layers built from the sidecar's
//! [`LayerRegistry`], run on every request of the listener after its rate limit and before the
//! router, swapped in place when LDS changes them.
//!
//! A listener without filters pays one atomic load per request and calls the router in place:
//! no box, no clone. With filters, the chain is assembled per request over a boxed clone of the
//! inner service, as the router does for per-route filters.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use http::{Request, Response};
use mesh_core::{Body, BoxError, Listener, ReloadError, Shared};
use mesh_router::{LayerRegistry, RouteLayer};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

/// Builds the layers of `listener.http_filters` from `registry`, skipping optional filters it has
/// no factory for; a refusal names the listener and the filter.
pub fn build(listener: &Listener, registry: &LayerRegistry) -> Result<FilterChain, ReloadError> {
    registry
        .build_all(&listener.http_filters)
        .map(|layers| FilterChain(layers.into()))
        .map_err(|(i, why)| {
            ReloadError::new(
                "listener",
                &listener.name,
                format!(
                    "http_filters[{i}] ({}): {why}",
                    listener.http_filters[i].name()
                ),
            )
        })
}

/// The built layers of one listener's filters, outermost first.
#[derive(Clone, Debug, Default)]
pub struct FilterChain(Arc<[RouteLayer]>);

impl FilterChain {
    /// Whether there is no filter (the direct path).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The reloadable listener-filter layer; clones share the chain.
#[derive(Clone, Debug)]
pub struct ListenerFilterLayer {
    chain: Shared<FilterChain>,
}

impl ListenerFilterLayer {
    /// A layer running `chain`.
    pub fn new(chain: FilterChain) -> Self {
        Self {
            chain: Shared::new(chain),
        }
    }

    /// Replaces the chain; requests in flight finish with the old one.
    pub fn reload(&self, chain: FilterChain) {
        self.chain.store(chain);
    }
}

impl<S> Layer<S> for ListenerFilterLayer {
    type Service = ListenerFilters<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ListenerFilters {
            inner,
            chain: self.chain.clone(),
        }
    }
}

/// The service of [`ListenerFilterLayer`].
#[derive(Clone, Debug)]
pub struct ListenerFilters<S> {
    inner: S,
    chain: Shared<FilterChain>,
}

impl<S> Service<Request<Body>> for ListenerFilters<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let chain = self.chain.load();
        if chain.is_empty() {
            return Either::Left(self.inner.call(req));
        }
        // The instance polled ready goes into the chain; a clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let svc = RouteLayer::apply_all(&chain.0, BoxCloneService::new(inner));
        Either::Right(Box::pin(svc.oneshot(req)))
    }
}
