//! `RouterLayer`, the `Router<S>` service and its `ResponseFuture`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::{Body, BoxError, MeshError, Reload, ReloadError, RouteConfiguration, Shared};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use crate::filters::{LayerRegistry, RouteLayer};
use crate::policy::{self, BoxFuture, Policy};
use crate::table::{CompiledRoute, RouteTable};

/// The routing layer, and the handle its route table is reloaded through.
///
/// Clones share one table: a [`Reload`] on any clone is seen by every [`Router`] built from it.
#[derive(Clone, Debug)]
pub struct RouterLayer {
    table: Shared<RouteTable>,
    registry: Arc<LayerRegistry>,
}

impl RouterLayer {
    /// A layer serving `config`, with the default layer registry (`fault`).
    pub fn new(config: &RouteConfiguration) -> Result<Self, ReloadError> {
        Self::with_registry(config, LayerRegistry::default())
    }

    /// A layer serving `config`, building route filters from `registry`.
    pub fn with_registry(
        config: &RouteConfiguration,
        registry: LayerRegistry,
    ) -> Result<Self, ReloadError> {
        let table = RouteTable::compile(config, &registry)?;
        Ok(Self {
            table: Shared::new(table),
            registry: Arc::new(registry),
        })
    }

    /// A layer with an empty table (every request answers 404 until the first reload).
    pub fn empty(registry: LayerRegistry) -> Self {
        Self {
            table: Shared::new(RouteTable::empty()),
            registry: Arc::new(registry),
        }
    }

    /// The table serving now.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }
}

impl Reload<RouteConfiguration> for RouterLayer {
    /// Compiles and validates `update` off the data path, then swaps it in with one atomic
    /// store; requests in flight keep the route they matched. A bad table is refused and the
    /// old one keeps serving.
    fn reload(&self, update: RouteConfiguration) -> Result<(), ReloadError> {
        let table = RouteTable::compile(&update, &self.registry)?;
        self.table.store(table);
        Ok(())
    }
}

impl<S> Layer<S> for RouterLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router {
            inner,
            table: self.table.clone(),
        }
    }
}

/// Routes each request, records the decision in its extensions, and calls the inner service
/// under the route's policy and filters.
///
/// Error rule: the router's own decisions become responses through
/// `MeshError::to_response` — no route (404 / gRPC UNIMPLEMENTED), route or per-try timeout
/// (504 / DEADLINE_EXCEEDED), fault abort (its status) — so the router can sit directly under a
/// hyper server. Errors of the inner service pass through unchanged as `Err`.
#[derive(Clone, Debug)]
pub struct Router<S> {
    inner: S,
    table: Shared<RouteTable>,
}

impl<S> Router<S> {
    /// The table serving now.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }
}

impl<S> Service<Request<Body>> for Router<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // One atomic load; the guard is dropped before the inner service is called, the
        // route's Arc cloned only when the response future needs the route.
        let table = self.table.load();
        let route = match table.route_for(&req) {
            Ok((route, cluster, hash)) => {
                if route.shape.edits_request {
                    let policy = &route.policy;
                    policy.rewrite.apply(&mut req);
                    policy.request_headers.apply(req.headers_mut());
                }
                let ext = req.extensions_mut();
                ext.insert(route.matched.clone());
                ext.insert(cluster);
                if let Some(h) = hash {
                    ext.insert(h);
                }
                route
            }
            Err(e) => {
                let resp = e.to_response(mesh_core::is_grpc(&req));
                return ResponseFuture::new(
                    Kind::Ready {
                        resp: Some(Box::new(resp)),
                    },
                    None,
                );
            }
        };
        let edits = route.shape.edits_response.then(|| Arc::clone(route));
        if route.shape.direct {
            drop(table);
            // The instance polled ready is called in place: no clone of the inner service.
            let fut = self.inner.call(req);
            return ResponseFuture::new(Kind::Direct { fut }, edits);
        }
        if let Some(limit) = route.shape.timer {
            drop(table);
            // The route timeout alone (the default 15 s): no retry needs the service again, so
            // the instance polled ready is called in place, as above, and timed here. What the
            // policy service costs per call (a clone of the inner stack, two boxed futures, a
            // second clock read) is left out; the timer itself is made at the first poll.
            let grpc = mesh_core::is_grpc(&req);
            let at = tokio::time::Instant::now() + limit;
            policy::set_deadline_at(&mut req, at.into_std());
            let fut = self.inner.call(req);
            let kind = Kind::Timed {
                fut,
                sleep: None,
                at,
                limit,
                grpc,
            };
            return ResponseFuture::new(kind, edits);
        }
        let route = Arc::clone(route);
        drop(table);
        // The policy owns the service it calls (retries call it again): take the one that was
        // polled ready, leaving a clone for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let policy = Arc::clone(&route.policy);
        let kind = if route.filters.is_empty() {
            Kind::Boxed {
                fut: Policy::new(inner, policy).call_once(req),
            }
        } else {
            let svc = RouteLayer::apply_all(
                &route.filters,
                BoxCloneService::new(Policy::new(inner, policy)),
            );
            Kind::Boxed {
                fut: Box::pin(svc.oneshot(req)),
            }
        };
        ResponseFuture::new(kind, edits)
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Router`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        route: Option<Arc<CompiledRoute>>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // Boxed: the router's own answers are rare, and the future (moved up through every
        // layer's call) should not carry a response's worth of bytes for them.
        Ready { resp: Option<Box<Response<Body>>> },
        Direct { #[pin] fut: F },
        // The inner call under the route timeout alone: `sleep` (due `at`) is made when `fut`
        // first stays pending, so an answer at the first poll (a refusal) never arms a timer.
        Timed {
            #[pin] fut: F,
            #[pin] sleep: Option<tokio::time::Sleep>,
            at: tokio::time::Instant,
            limit: Duration,
            grpc: bool,
        },
        Boxed { fut: BoxFuture },
    }
}

impl<F> ResponseFuture<F> {
    fn new(kind: Kind<F>, route: Option<Arc<CompiledRoute>>) -> Self {
        Self { kind, route }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut result = match this.kind.as_mut().project() {
            KindProj::Ready { resp } => resp
                .take()
                .map(|r| *r)
                .ok_or_else(|| "router response polled after completion".into()),
            KindProj::Direct { fut } => ready!(fut.poll(cx)),
            KindProj::Timed {
                fut,
                mut sleep,
                at,
                limit,
                grpc,
            } => match fut.poll(cx) {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    if sleep.is_none() {
                        sleep.set(Some(tokio::time::sleep_until(*at)));
                    }
                    if let Some(sleep) = sleep.as_pin_mut() {
                        ready!(sleep.poll(cx));
                    }
                    let resp = MeshError::UpstreamTimeout { timeout: *limit }.to_response(*grpc);
                    // The inner call is dropped now, before the answer (as tokio's `timeout`
                    // drops it): the load balancer counts a drop at the deadline against its
                    // endpoint.
                    this.kind.set(Kind::Ready { resp: None });
                    Ok(resp)
                }
            },
            KindProj::Boxed { fut } => ready!(fut.as_mut().poll(cx)),
        };
        if let (Ok(resp), Some(route)) = (&mut result, this.route.as_ref()) {
            route.policy.response_headers.apply(resp.headers_mut());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests;
