//! `MeshLayer`, the boxed `MeshService` it builds, and `IntoMeshBody`, the adapter that puts any
//! HTTP client (hyper's, say) on the mesh's body type.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{FutureExt, Map, MapErr, TryFutureExt};
use http::header::{Entry, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, Request, Response};
use mesh_core::{body, Body, BoxError, MeshError};
use mesh_lb::{ClusterManager, LoadBalance, LoadBalanceLayer};
use mesh_ratelimit::{RateLimit, RateLimitLayer};
use mesh_router::{Router, RouterLayer};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

/// The full in-process stack over an inner client `S` (which takes `Request<Body>` and answers
/// with any body of `Bytes`): the router outside (it picks the route, whose rate limit and
/// policy the inner layers apply), then the rate limiter, then the load balancer.
pub type MeshStack<S> = Router<RateLimit<LoadBalance<S>>>;

/// The future of a [`MeshService`] call: `Send + 'static`, failing with a [`MeshError`].
pub type MeshFuture = MapErr<
    Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send + 'static>>,
    fn(BoxError) -> MeshError,
>;

/// Builds the mesh layers around a client: `mesh.layer().layer(client)` gives a
/// [`MeshService`]. Cheap to clone; every clone serves the same live config.
#[derive(Clone, Debug)]
pub struct MeshLayer {
    router: RouterLayer,
    limits: RateLimitLayer,
    clusters: ClusterManager,
}

impl MeshLayer {
    /// The layers over these live tables (what [`Mesh`](super::Mesh) wires to xDS).
    pub fn new(router: RouterLayer, limits: RateLimitLayer, clusters: ClusterManager) -> Self {
        Self {
            router,
            limits,
            clusters,
        }
    }

    /// The clusters the load balancer picks from.
    pub fn clusters(&self) -> &ClusterManager {
        &self.clusters
    }

    /// The router's layer.
    pub fn router(&self) -> &RouterLayer {
        &self.router
    }

    /// The rate limiter's layer.
    pub fn rate_limits(&self) -> &RateLimitLayer {
        &self.limits
    }

    /// The unboxed stack over `inner` (a service on the mesh's own body type).
    pub fn stack<S>(&self, inner: S) -> MeshStack<S> {
        self.router.layer(
            self.limits
                .layer(LoadBalanceLayer::new(self.clusters.clone()).layer(inner)),
        )
    }

    /// The boxed stack over `inner`. The load balancer takes any response body and error that
    /// convert (it boxes the body once, into the guard that keeps the request counted), so
    /// `inner` sits right under it, with no adapter boxing its body first.
    pub(crate) fn service<S, B>(&self, inner: S) -> MeshService
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        MeshService {
            inner: BoxCloneSyncService::new(self.stack(inner)),
        }
    }
}

impl<S, B> Layer<S> for MeshLayer
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Service = MeshService;

    fn layer(&self, inner: S) -> MeshService {
        self.service(inner)
    }
}

/// The mesh layers over a client, boxed into one concrete type: `Clone + Send + Sync +
/// 'static`, its futures `Send + 'static`, its error a [`MeshError`]. So it moves into
/// `tokio::spawn`, is shared by many tasks (clone it per task), and needs no generic bounds
/// where it is stored.
///
/// It takes `Request<mesh_core::Body>` and also `Request<tonic::body::Body>`, so a tonic
/// generated client can use it as its transport (`FooClient::with_origin(svc, origin)`).
///
/// The router answers its own decisions (no route: 404 or gRPC UNIMPLEMENTED, naming the
/// authority and path; timeout: 504) as responses; the load balancer's and the upstream's
/// failures are `Err(MeshError)` (`NoHealthyEndpoint`, `CircuitOpen`, `UpstreamConnect`, ...).
#[derive(Clone)]
pub struct MeshService {
    inner: BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>,
}

impl fmt::Debug for MeshService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshService").finish_non_exhaustive()
    }
}

impl MeshService {
    fn call_boxed(&mut self, mut req: Request<Body>) -> MeshFuture {
        mark_sensitive(req.headers_mut());
        self.inner
            .call(req)
            .map_err(MeshError::from_boxed as fn(BoxError) -> MeshError)
    }
}

impl Service<Request<Body>> for MeshService {
    type Response = Response<Body>;
    type Error = MeshError;
    type Future = MeshFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MeshError>> {
        self.inner.poll_ready(cx).map_err(MeshError::from_boxed)
    }

    fn call(&mut self, req: Request<Body>) -> MeshFuture {
        self.call_boxed(req)
    }
}

/// A tonic transport: tonic's request body is boxed into the mesh's.
impl Service<Request<tonic::body::Body>> for MeshService {
    type Response = Response<Body>;
    type Error = MeshError;
    type Future = MeshFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MeshError>> {
        self.inner.poll_ready(cx).map_err(MeshError::from_boxed)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> MeshFuture {
        self.call_boxed(req.map(body::boxed))
    }
}

/// The credentials [`mark_sensitive`] marks.
const CREDENTIALS: [HeaderName; 3] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

/// Marks credentials sensitive before anything sees them (what tower-http's
/// `SetSensitiveRequestHeaders` does): `Debug` output and logs show them redacted, and HTTP/2
/// never indexes them in HPACK (no compression oracle on a shared connection). The sidecar does
/// not pay for this; the SDK, where a credential is the application's own, does.
///
/// Done in place rather than as a layer: a request without these headers (most) costs three
/// lookups that reserve nothing (`entry` grows the map even when nothing is inserted), and the
/// request is not moved through one more service.
fn mark_sensitive(headers: &mut HeaderMap) {
    if headers.is_empty() {
        return;
    }
    for name in CREDENTIALS {
        if !headers.contains_key(&name) {
            continue;
        }
        if let Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

/// Puts a client with its own response body and error type (hyper's `Incoming` and
/// `hyper_util::client::legacy::Error`, say) on the mesh's body and boxed error, for layers
/// that want `Response<Body>` from the service they wrap. No allocation beyond boxing the
/// response body. The load balancer takes such a client as it is (and [`MeshLayer`] puts it
/// there so), so under it this adapter would only box the body twice.
#[derive(Clone, Debug)]
pub struct IntoMeshBody<S> {
    inner: S,
}

impl<S> IntoMeshBody<S> {
    /// Adapts `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// The response conversion of [`IntoMeshBody`], as a nameable function pointer.
type Convert<B, E> = fn(Result<Response<B>, E>) -> Result<Response<Body>, BoxError>;

fn convert<B, E>(result: Result<Response<B>, E>) -> Result<Response<Body>, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    result.map(|r| r.map(body::boxed)).map_err(Into::into)
}

impl<S, B> Service<Request<Body>> for IntoMeshBody<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Map<S::Future, Convert<B, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.inner
            .call(req)
            .map(convert::<B, S::Error> as Convert<B, S::Error>)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tower::ServiceExt;

    use super::*;

    /// Credentials reach the client marked sensitive; other headers do not.
    #[tokio::test]
    async fn credentials_are_marked_sensitive() {
        let inner = tower::service_fn(|req: Request<Body>| async move {
            assert!(req.headers()[http::header::AUTHORIZATION].is_sensitive());
            assert!(req.headers()[http::header::COOKIE].is_sensitive());
            assert!(!req.headers()["x-other"].is_sensitive());
            Ok::<_, BoxError>(Response::new(body::empty()))
        });
        let req = Request::get("http://a/")
            .header(http::header::AUTHORIZATION, "Bearer secret")
            .header(http::header::COOKIE, "session=1")
            .header("x-other", "1")
            .body(body::empty())
            .unwrap();
        MeshService {
            inner: BoxCloneSyncService::new(inner),
        }
        .oneshot(req)
        .await
        .unwrap();
    }
}
