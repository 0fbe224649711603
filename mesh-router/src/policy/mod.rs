//! Per-route policy around the inner service: the request timeout, retries (with a budget),
//! rewrites and header edits, compiled once per route at reload.

mod headers;
mod retry;
mod rewrite;
mod timeout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::extensions::Deadline;
use mesh_core::{Body, BoxError, RouteAction, ValidationError};
use tower::{Service, ServiceExt};

pub(crate) use headers::HeaderEdits;
pub(crate) use retry::Retry;
pub use retry::MAX_REPLAY_BODY;
pub(crate) use rewrite::Rewrite;

/// The boxed future of the policy service (and of the router when a route has policy).
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// `inner.oneshot(req)`, boxed outside any `async` block: holding a generic service's future
/// inside one trips rustc's "`Send` is not general enough" on `BoxError`'s elided lifetime.
pub(crate) fn oneshot<S>(inner: S, req: Request<Body>) -> BoxFuture
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    Box::pin(inner.oneshot(req))
}

/// A route's compiled policy.
#[derive(Debug)]
pub(crate) struct RoutePolicy {
    /// The whole-request timeout (all attempts); `None` when the route's timeout is zero.
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<Retry>,
    pub(crate) rewrite: Rewrite,
    pub(crate) request_headers: HeaderEdits,
    pub(crate) response_headers: HeaderEdits,
}

impl RoutePolicy {
    /// Compiles `action`; `matched_prefix` is the length of the route's path prefix when the
    /// route matches by prefix (a prefix rewrite replaces it), `None` otherwise.
    pub(crate) fn compile(
        action: &RouteAction,
        matched_prefix: Option<usize>,
    ) -> Result<Self, ValidationError> {
        Ok(Self {
            timeout: Some(action.timeout).filter(|t| !t.is_zero()),
            retry: action.retry_policy.as_ref().map(Retry::compile),
            rewrite: Rewrite::compile(
                action.prefix_rewrite.as_deref(),
                matched_prefix,
                action.host_rewrite.as_deref(),
            )?,
            request_headers: HeaderEdits::compile(
                "request",
                &action.request_headers_to_add,
                &action.request_headers_to_remove,
            )?,
            response_headers: HeaderEdits::compile(
                "response",
                &action.response_headers_to_add,
                &action.response_headers_to_remove,
            )?,
        })
    }

    /// Whether calls need the policy service (a timeout or retries) rather than a direct call.
    pub(crate) fn wraps_call(&self) -> bool {
        self.timeout.is_some() || self.retry.is_some()
    }
}

/// The inner service under a route's timeout and retries.
#[derive(Debug, Clone)]
pub(crate) struct Policy<S> {
    inner: S,
    policy: Arc<RoutePolicy>,
}

impl<S> Policy<S> {
    pub(crate) fn new(inner: S, policy: Arc<RoutePolicy>) -> Self {
        Self { inner, policy }
    }
}

impl<S> Service<Request<Body>> for Policy<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt waits for the inner service's readiness itself (`oneshot`), so a retry
        // never calls a service that was not polled ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        Self::run(self.inner.clone(), Arc::clone(&self.policy), req)
    }
}

impl<S> Policy<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    /// [`Service::call`] for a policy used once: the inner service moves into the future
    /// instead of being cloned into it.
    pub(crate) fn call_once(self, req: Request<Body>) -> BoxFuture {
        Self::run(self.inner, self.policy, req)
    }

    fn run(inner: S, policy: Arc<RoutePolicy>, mut req: Request<Body>) -> BoxFuture {
        if let Some(limit) = policy.timeout {
            set_deadline(&mut req, limit);
        }
        if policy.retry.is_none() {
            // The common case (a timeout, no retries) in a future of a few words: one holding
            // the retry machinery and the request as well was copied whole into its box on
            // every request (the chain benchmark's largest `memcpy`).
            let grpc = mesh_core::is_grpc(&req);
            let attempt = oneshot(inner, req);
            return Box::pin(async move { timeout::within(policy.timeout, grpc, attempt).await.0 });
        }
        Box::pin(async move {
            let grpc = mesh_core::is_grpc(&req);
            let run = async {
                match &policy.retry {
                    Some(r) => retry::run(r, inner, req, grpc).await,
                    None => oneshot(inner, req).await,
                }
            };
            timeout::within(policy.timeout, grpc, run).await.0
        })
    }
}

/// Marks when the time-out of `limit` from now fires (the earlier one if a deadline is already
/// set), so that the load balancer can count a request dropped by it against its endpoint.
/// Read off tokio's clock, so that paused-time tests agree with the timer.
pub(crate) fn set_deadline(req: &mut Request<Body>, limit: Duration) {
    set_deadline_at(req, tokio::time::Instant::now().into_std() + limit);
}

/// [`set_deadline`] for a time-out firing `at`.
pub(crate) fn set_deadline_at(req: &mut Request<Body>, at: std::time::Instant) {
    let ext = req.extensions_mut();
    let at = match ext.get::<Deadline>() {
        Some(Deadline(earlier)) => at.min(*earlier),
        None => at,
    };
    ext.insert(Deadline(at));
}
