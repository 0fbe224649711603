//! The router's decision (matched route, target cluster) carried from inside the layer stack
//! to the listener's metrics on the response: the stack adds [`DecisionToResponse`], the
//! listener takes the [`Decision`] off the response it serves.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use mesh_core::extensions::{MatchedRoute, TargetCluster};
use mesh_core::Body;
use tower::Layer;

/// Copies the router's decision onto the response, so the listener's metrics can label it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecisionToResponse;

impl<S> Layer<S> for DecisionToResponse {
    type Service = CopyDecision<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CopyDecision { inner }
    }
}

/// The service of [`DecisionToResponse`].
#[derive(Clone, Debug)]
pub(crate) struct CopyDecision<S> {
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
    pub(crate) struct CopyDecisionFuture<F> {
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
