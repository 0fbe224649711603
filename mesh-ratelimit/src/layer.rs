//! `RateLimitLayer`, the `RateLimit<S>` service and its `ResponseFuture`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request, Response};
use mesh_core::{Body, RateLimitConfig, Reload, ReloadError};
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::Clock;
use crate::limiter::{Decision, Limiter, RateInfo, SnapshotCache, WaitGuard};

/// `x-ratelimit-limit`: the bucket's capacity.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`: tokens left.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`: whole seconds (rounded up) until the bucket is full again.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Local rate limiting: applies a [`RateLimitConfig`] to every request of the wrapped service.
///
/// Clones share one set of buckets and one config, so the layer can be handed to the config
/// path as the [`Reload`] sink while its services serve (a reload keeps the buckets of every rule
/// whose name and bucket are unchanged).
///
/// ```
/// use std::convert::Infallible;
/// use mesh_core::{body, Body, RateLimitConfig};
/// use mesh_ratelimit::RateLimitLayer;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config: RateLimitConfig = serde_yaml::from_str(r#"
/// rules:
///   - name: per-client
///     scope: listener
///     token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 1s }
///     descriptor: { header: x-client }
/// "#).unwrap();
/// let layer = RateLimitLayer::new(config).unwrap();
/// let hello = service_fn(|_req: http::Request<Body>| async {
///     Ok::<_, Infallible>(http::Response::new(body::full("hello")))
/// });
/// let svc = layer.layer(hello);
/// let req = || http::Request::builder().header("x-client", "a").body(body::empty()).unwrap();
/// assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), 200);
/// let refused = svc.clone().oneshot(req()).await.unwrap();
/// assert_eq!(refused.status(), 429);
/// assert_eq!(refused.headers()["retry-after"], "1");
/// assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    pub(crate) limiter: Arc<Limiter>,
    success_headers: bool,
}

impl RateLimitLayer {
    /// A layer enforcing `config`, on the system clock.
    pub fn new(config: RateLimitConfig) -> Result<Self, ReloadError> {
        Self::with_clock(config, Clock::system())
    }

    /// A layer enforcing `config` on `clock` (tests use [`Clock::tokio`] or [`Clock::manual`]).
    pub fn with_clock(config: RateLimitConfig, clock: Clock) -> Result<Self, ReloadError> {
        Ok(Self {
            limiter: Arc::new(Limiter::new(config, clock)?),
            success_headers: false,
        })
    }

    /// Also put the `x-ratelimit-*` headers on admitted responses (as Envoy's
    /// `enable_x_ratelimit_headers`). Off by default: rejections always carry them, and the
    /// admitted path then costs no header formatting.
    pub fn success_headers(mut self, on: bool) -> Self {
        self.success_headers = on;
        self
    }

    /// The clock the buckets read.
    pub fn clock(&self) -> &Clock {
        self.limiter.clock()
    }

    /// How many descriptor buckets rule `name` holds now (`None` if there is no such rule; 0 for
    /// a rule without a descriptor), for metrics and tests of the eviction bound.
    pub fn descriptor_buckets(&self, rule: &str) -> Option<usize> {
        Some(self.limiter.rule(rule)?.descriptor_count())
    }
}

impl Reload<RateLimitConfig> for RateLimitLayer {
    fn reload(&self, update: RateLimitConfig) -> Result<(), ReloadError> {
        self.limiter.reload(update)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            rules: self.limiter.cache(),
            layer: self.clone(),
        }
    }
}

/// The rate-limiting service: answers over-limit requests itself (429 / gRPC 8) or holds them
/// (wait mode), and passes the rest to `S`.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    rules: SnapshotCache,
    layer: RateLimitLayer,
}

impl<S> RateLimit<S> {
    /// The layer (and reload handle) this service shares with its clones.
    pub fn layer(&self) -> &RateLimitLayer {
        &self.layer
    }
}

impl<S> Reload<RateLimitConfig> for RateLimit<S>
where
    S: Send + Sync,
{
    fn reload(&self, update: RateLimitConfig) -> Result<(), ReloadError> {
        self.layer.reload(update)
    }
}

impl<S> Service<Request<Body>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let headers = |info: Option<RateInfo>| info.filter(|_| self.layer.success_headers);
        let decision = self.layer.limiter.check(self.rules.load(), &req);
        match decision {
            Decision::Go { info } => ResponseFuture {
                headers: headers(info),
                state: State::Inner {
                    fut: self.inner.call(req),
                },
            },
            Decision::Reject(rejection) => {
                let (error, info) = *rejection;
                let mut response = error.to_response(mesh_core::is_grpc(&req));
                add_headers(response.headers_mut(), info);
                ResponseFuture {
                    headers: None,
                    state: State::Ready {
                        response: Some(Box::new(response)),
                    },
                }
            }
            Decision::Wait { wait, guard, info } => {
                // Take the service that poll_ready readied; leave a clone for the next call.
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    headers: headers(info),
                    state: State::Waiting {
                        waiting: Box::pin(Waiting {
                            sleep: tokio::time::sleep(std::time::Duration::from_nanos(wait)),
                            svc: Some(svc),
                            req: Some(req),
                            guard: Some(guard),
                        }),
                    },
                }
            }
        }
    }
}

fn add_headers(headers: &mut HeaderMap, info: RateInfo) {
    let reset_secs = info.reset.div_ceil(1_000_000_000);
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(info.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset_secs));
}

pin_project_lite::pin_project! {
    /// The response future of [`RateLimit`]: `F` is the inner service's future, `S` the inner
    /// service (held while a request waits). Generic over `F` itself rather than `S::Future`, so
    /// that the future stays provably `Send` inside spawned async blocks.
    pub struct ResponseFuture<F, S> {
        headers: Option<RateInfo>,
        #[pin]
        state: State<S, F>,
    }
}

impl<F, S> std::fmt::Debug for ResponseFuture<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        /// Answered by the limiter (boxed, like `Waiting`, to keep the admitted path's future
        /// small: it is moved a few times per request).
        Ready { response: Option<Box<Response<Body>>> },
        /// Admitted: the inner service's future.
        Inner { #[pin] fut: F },
        /// Waiting for a reserved token.
        Waiting { waiting: Pin<Box<Waiting<S>>> },
    }
}

pin_project_lite::pin_project! {
    /// A request held for its reserved token, with the service that will take it.
    struct Waiting<S> {
        #[pin]
        sleep: tokio::time::Sleep,
        svc: Option<S>,
        req: Option<Request<Body>>,
        guard: Option<WaitGuard>,
    }
}

impl<F, S, E> Future for ResponseFuture<F, S>
where
    F: Future<Output = Result<Response<Body>, E>>,
    S: Service<Request<Body>, Response = Response<Body>, Error = E, Future = F>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Ready { response } => {
                    // Polled again after completion: an empty response rather than a panic.
                    let response = response
                        .take()
                        .map_or_else(|| Response::new(mesh_core::body::empty()), |r| *r);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Inner { fut } => {
                    let mut response = ready!(fut.poll(cx))?;
                    if let Some(info) = this.headers.take() {
                        add_headers(response.headers_mut(), info);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Waiting { waiting } => {
                    let w = waiting.as_mut().project();
                    ready!(w.sleep.poll(cx));
                    if let Some(guard) = w.guard.take() {
                        guard.complete();
                    }
                    let (Some(mut svc), Some(req)) = (w.svc.take(), w.req.take()) else {
                        // Polled again after completion.
                        return Poll::Ready(Ok(Response::new(mesh_core::body::empty())));
                    };
                    let fut = svc.call(req);
                    this.state.set(State::Inner { fut });
                }
            }
        }
    }
}
