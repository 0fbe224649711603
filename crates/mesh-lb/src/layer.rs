//! `LoadBalanceLayer`: target cluster → breakers → picked endpoint → inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use mesh_core::extensions::{PickedEndpoint, RequestHash, RetryAttempt, TargetCluster};
use mesh_core::{body, Body, BoxError, MeshError};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::circuit_breaker::RequestPermit;
use crate::cluster::ClusterState;
use crate::endpoint::InFlightGuard;
use crate::outlier::Outcome;
use crate::upstream::Upstream;
use crate::ClusterManager;

/// The cluster the load balancer picked from, handed to [`Upstream`] in the extensions so it
/// need not look the cluster up again.
#[derive(Clone, Debug)]
pub(crate) struct PickedCluster(pub(crate) Arc<ClusterState>);

/// Load-balances requests over the clusters of a [`ClusterManager`].
///
/// Errors are returned, not answered: a request the load balancer refuses fails with a boxed
/// [`MeshError`] (`ClusterNotFound`, `CircuitOpen`, `NoHealthyEndpoint`; the default upstream
/// adds `UpstreamConnect` and `Upstream`), so an outer retry policy can see them. The edge maps
/// them with [`MeshError::from_boxed`] and [`MeshError::to_response`].
///
/// ```no_run
/// use mesh_core::{body, extensions::TargetCluster, Cluster, ClusterLoadAssignment, Reload};
/// use mesh_lb::{ClusterManager, LoadBalance};
/// use tower::{Service, ServiceExt};
///
/// # async fn demo() -> Result<(), mesh_core::BoxError> {
/// let clusters = ClusterManager::new();
/// let mut backend = Cluster::new("backend");
/// backend.load_assignment = Some(ClusterLoadAssignment::from_addrs(
///     "backend",
///     ["127.0.0.1:8080".parse()?],
/// ));
/// clusters.reload(vec![backend])?;
///
/// let mut svc = LoadBalance::upstream(clusters);
/// let mut req = http::Request::get("/hello").body(body::empty())?;
/// req.extensions_mut().insert(TargetCluster::new("backend"));
/// let resp = svc.ready().await?.call(req).await?;
/// assert!(resp.status().is_success());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LoadBalanceLayer {
    clusters: ClusterManager,
}

impl LoadBalanceLayer {
    /// A layer balancing over `clusters`.
    pub fn new(clusters: ClusterManager) -> Self {
        Self { clusters }
    }
}

impl<S> Layer<S> for LoadBalanceLayer {
    type Service = LoadBalance<S>;

    fn layer(&self, inner: S) -> LoadBalance<S> {
        LoadBalance {
            inner,
            clusters: self.clusters.clone(),
        }
    }
}

/// The load-balancing service; `S` receives the request with its URI pointed at the picked
/// endpoint (`http://ip:port/path?query`, the original `Host` kept).
#[derive(Clone, Debug)]
pub struct LoadBalance<S> {
    inner: S,
    clusters: ClusterManager,
}

impl LoadBalance<Upstream> {
    /// The layer over our pooled upstream client: the whole data path to the endpoints.
    pub fn upstream(clusters: ClusterManager) -> Self {
        LoadBalanceLayer::new(clusters.clone()).layer(Upstream::new(clusters))
    }
}

/// What a request holds while in flight.
struct Admitted {
    cluster: Arc<ClusterState>,
    endpoint: InFlightGuard,
    permit: RequestPermit,
}

impl<S> LoadBalance<S> {
    fn admit(&self, req: &mut Request<Body>) -> Result<Admitted, MeshError> {
        let ext = req.extensions();
        let Some(target) = ext.get::<TargetCluster>() else {
            return Err(MeshError::ClusterNotFound {
                cluster: String::new(),
            });
        };
        let cluster = self
            .clusters
            .get(&target.0)
            .ok_or_else(|| MeshError::ClusterNotFound {
                cluster: target.0.to_string(),
            })?;
        let retry = ext.get::<RetryAttempt>().is_some_and(|r| r.0 > 0);
        let permit =
            cluster
                .breaker
                .try_request(retry)
                .map_err(|limit| MeshError::CircuitOpen {
                    cluster: cluster.name.to_string(),
                    limit,
                })?;
        let hash = ext.get::<RequestHash>().map(|h| h.0);
        let endpoint =
            cluster
                .set
                .load()
                .pick(hash)
                .cloned()
                .ok_or_else(|| MeshError::NoHealthyEndpoint {
                    cluster: cluster.name.to_string(),
                })?;
        let address = endpoint.address();
        point_at(req, endpoint.authority())?;
        let ext = req.extensions_mut();
        ext.insert(PickedEndpoint {
            cluster: cluster.name.clone(),
            address,
        });
        ext.insert(PickedCluster(cluster.clone()));
        Ok(Admitted {
            endpoint: InFlightGuard::new(endpoint),
            cluster,
            permit,
        })
    }
}

/// Points the request's URI at the endpoint's `authority` (built once per endpoint, so no
/// formatting or parsing per request), keeping path and query, and keeps the original authority
/// as the `Host` header.
fn point_at(req: &mut Request<Body>, authority: Option<&Authority>) -> Result<(), MeshError> {
    let authority = authority.ok_or_else(|| MeshError::BadRequest {
        reason: "the endpoint's address is not a valid URI authority".into(),
    })?;
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| MeshError::BadRequest {
        reason: e.to_string(),
    })?;
    Ok(())
}

impl<S> Service<Request<Body>> for LoadBalance<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match self.admit(&mut req) {
            Ok(admitted) => {
                // Call the instance that was polled ready; keep a fresh clone for next time.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    inner: Some(inner.call(req)),
                    admitted: Some(admitted),
                    error: None,
                }
            }
            Err(e) => ResponseFuture {
                inner: None,
                admitted: None,
                error: Some(e),
            },
        }
    }
}

pin_project! {
    /// The [`LoadBalance`] response future: records the outcome for outlier detection and
    /// keeps the request counted (breakers, least request, draining) until the response body
    /// ends.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        admitted: Option<Admitted>,
        error: Option<MeshError>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let err = this.error.take().unwrap_or(MeshError::Upstream {
                reason: "response future polled after completion".into(),
            });
            return Poll::Ready(Err(err.into()));
        };
        let result = std::task::ready!(inner.poll(cx));
        let Some(admitted) = this.admitted.take() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        match result {
            Ok(resp) => {
                let outcome = Outcome::of_status(resp.status());
                admitted.cluster.record(&admitted.endpoint.0, outcome);
                Poll::Ready(Ok(resp.map(|b| {
                    body::boxed(Guarded {
                        inner: b,
                        _endpoint: admitted.endpoint,
                        _permit: admitted.permit,
                    })
                })))
            }
            Err(e) => {
                let e: BoxError = e.into();
                admitted
                    .cluster
                    .record(&admitted.endpoint.0, Outcome::of_error(&e));
                Poll::Ready(Err(e))
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted until it ends (or is dropped).
    struct Guarded {
        #[pin]
        inner: Body,
        _endpoint: InFlightGuard,
        _permit: RequestPermit,
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
