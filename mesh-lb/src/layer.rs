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
use mesh_core::extensions::{Deadline, PickedEndpoint, RequestHash, RetryAttempt, TargetCluster};
use mesh_core::{body, Body, BoxError, MeshError};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::cluster::ClusterState;
use crate::endpoint::InFlightGuard;
use crate::manager::ClusterManager;
use crate::outlier::Outcome;
use crate::upstream::Upstream;

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
///
/// `S` may answer with any body (hyper's `Incoming`, say): the load balancer boxes it into a
/// [`Body`] anyway (it wraps it to hold the request counted until it ends), so a client under
/// it needs no adapter that boxes it first.
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

/// What a request holds while in flight: its endpoint (counted in flight) and its cluster,
/// whose breaker admitted it and is released when this is dropped (the response body's end).
struct Admitted {
    cluster: Arc<ClusterState>,
    endpoint: InFlightGuard,
    /// Admitted as a retry (counted against `max_retries` too).
    retry: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.cluster.circuit_breaker().release(self.retry);
    }
}

impl<S> LoadBalance<S> {
    fn admit(&self, req: &mut Request<Body>) -> Result<Admitted, MeshError> {
        let ext = req.extensions();
        let Some(TargetCluster(target)) = ext.get::<TargetCluster>() else {
            return Err(MeshError::ClusterNotFound {
                cluster: String::new(),
            });
        };
        let cluster = self
            .clusters
            .get(target)
            .ok_or_else(|| MeshError::ClusterNotFound {
                cluster: target.to_string(),
            })?;
        // The name as the router shared it (the same string as the cluster's, whose Arc lives
        // elsewhere): its count was just touched, so the clone hits the cache.
        let target = Arc::clone(target);
        let retry = ext.get::<RetryAttempt>().is_some_and(|r| r.0 > 0);
        cluster
            .circuit_breaker()
            .try_admit(retry)
            .map_err(|limit| MeshError::CircuitOpen {
                cluster: cluster.name().to_string(),
                limit,
            })?;
        let hash = ext.get::<RequestHash>().map(|h| h.0);
        let picked = cluster
            .current_set()
            .pick(hash)
            .cloned()
            .ok_or_else(|| MeshError::NoHealthyEndpoint {
                cluster: cluster.name().to_string(),
            })
            .and_then(|endpoint| {
                point_at(req, endpoint.authority())?;
                Ok(endpoint)
            });
        let endpoint = match picked {
            Ok(endpoint) => endpoint,
            Err(e) => {
                cluster.circuit_breaker().release(retry);
                return Err(e);
            }
        };
        // Only the endpoint goes into the extensions: `Upstream` finds its cluster by name, so
        // the request pays for one boxed extension (and no map growth) less.
        req.extensions_mut().insert(PickedEndpoint {
            cluster: target,
            address: endpoint.address(),
        });
        // Dropping `Admitted` gives the breaker and the in-flight count back.
        Ok(Admitted {
            endpoint: InFlightGuard::new(endpoint),
            cluster,
            retry,
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
    // Only a URI that names an authority (HTTP/2, absolute form) can leave `Host` to fill in:
    // an origin-form request skips the header lookup.
    if let Some(a) = req.uri().authority() {
        if !req.headers().contains_key(HOST) {
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

impl<S, B> Service<Request<Body>> for LoadBalance<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
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
                // Only a cluster that detects outliers needs to know what a drop means.
                let deadline = if admitted.cluster.detects_outliers() {
                    req.extensions().get::<Deadline>().map(|d| d.0)
                } else {
                    None
                };
                // The instance polled ready is called in place: its future owns what it needs,
                // so no clone of the inner service per request.
                ResponseFuture {
                    inner: Some(self.inner.call(req)),
                    admitted: Some(admitted),
                    deadline,
                    error: None,
                }
            }
            Err(e) => ResponseFuture {
                inner: None,
                admitted: None,
                deadline: None,
                // Boxed now rather than when polled: the future stays small on the admitted
                // path, and the error is returned boxed anyway.
                error: Some(e.into()),
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
        // The router's deadline (see [`Deadline`]), when the cluster detects outliers.
        deadline: Option<std::time::Instant>,
        error: Option<BoxError>,
    }
    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Still admitted: dropped before the endpoint answered. At or past the router's
            // deadline that is the endpoint's time-out, a gateway failure (as Envoy counts it),
            // or a stalled or black-holed endpoint would never be ejected.
            if let (Some(admitted), Some(deadline)) = (this.admitted.take(), *this.deadline) {
                if tokio::time::Instant::now().into_std() >= deadline {
                    admitted
                        .cluster
                        .record(&admitted.endpoint.0, Outcome::Failure { gateway: true });
                }
            }
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let err = this.error.take().unwrap_or_else(|| {
                MeshError::Upstream {
                    reason: "response future polled after completion".into(),
                }
                .into()
            });
            return Poll::Ready(Err(err));
        };
        let result = std::task::ready!(inner.poll(cx));
        let Some(admitted) = this.admitted.take() else {
            return Poll::Ready(result.map(|r| r.map(body::boxed)).map_err(Into::into));
        };
        match result {
            Ok(resp) => {
                let outcome = Outcome::of_status(resp.status());
                admitted.cluster.record(&admitted.endpoint.0, outcome);
                Poll::Ready(Ok(resp.map(|b| {
                    body::boxed_exact(Guarded {
                        inner: b,
                        _admitted: admitted,
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
    struct Guarded<B> {
        #[pin]
        inner: B,
        _admitted: Admitted,
    }
}

impl<B> HttpBody for Guarded<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project()
            .inner
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use mesh_core::{Cluster, ClusterLoadAssignment, Reload};
    use tower::{service_fn, ServiceExt};

    use super::*;

    fn manager(addrs: &[SocketAddr]) -> ClusterManager {
        let mut c = Cluster::new("c");
        c.load_assignment = Some(ClusterLoadAssignment::from_addrs(
            "c",
            addrs.iter().copied(),
        ));
        let m = ClusterManager::new();
        m.reload(vec![c]).unwrap();
        m
    }

    fn request(retry: Option<u32>) -> Request<Body> {
        let mut req = Request::get("/p?q=1").body(body::empty()).unwrap();
        req.extensions_mut().insert(TargetCluster::new("c"));
        if let Some(n) = retry {
            req.extensions_mut().insert(RetryAttempt(n));
        }
        req
    }

    /// The request's breaker slot (and retry slot) is held until the response body is dropped,
    /// and the picked endpoint reaches the inner service with the URI pointed at it.
    #[tokio::test]
    async fn admitted_requests_hold_the_breaker_until_the_body_ends() {
        let addr: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let m = manager(&[addr]);
        let inner = service_fn(|req: Request<Body>| async move {
            let picked = req.extensions().get::<PickedEndpoint>().cloned().unwrap();
            assert_eq!(
                (&*picked.cluster, picked.address),
                ("c", "10.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(req.uri().to_string(), "http://10.0.0.1:8080/p?q=1");
            Ok::<_, BoxError>(Response::new(body::full("hi")))
        });
        let svc = LoadBalanceLayer::new(m.clone()).layer(inner);
        let cluster = m.get("c").unwrap();
        let resp = svc.clone().oneshot(request(Some(1))).await.unwrap();
        let s = cluster.circuit_breaker().stats();
        assert_eq!((s.requests, s.retries), (1, 1));
        let ep = cluster.pick(None).unwrap();
        assert_eq!((ep.in_flight(), ep.requests()), (1, 1));
        drop(resp);
        let s = cluster.circuit_breaker().stats();
        assert_eq!((s.requests, s.retries), (0, 0));
        assert_eq!(ep.in_flight(), 0);
    }

    /// A request refused after the breaker admitted it (no endpoint) gives its slot back.
    #[tokio::test]
    async fn a_refusal_after_admission_releases_the_breaker() {
        let m = manager(&[]);
        let inner = service_fn(|_req: Request<Body>| async {
            Ok::<_, BoxError>(Response::new(body::empty()))
        });
        let svc = LoadBalanceLayer::new(m.clone()).layer(inner);
        let err = svc.oneshot(request(Some(2))).await.unwrap_err();
        assert!(matches!(
            MeshError::from_boxed(err),
            MeshError::NoHealthyEndpoint { .. }
        ));
        let s = m.get("c").unwrap().circuit_breaker().stats();
        assert_eq!((s.requests, s.retries), (0, 0));
    }

    /// A request the router's time-out dropped (at its deadline) counts against its endpoint
    /// as a gateway failure, so a stalled endpoint is ejected; one dropped before its deadline
    /// (the caller went away) or without one counts for nothing.
    #[tokio::test(start_paused = true)]
    async fn a_drop_at_the_deadline_is_the_endpoints_time_out_an_earlier_drop_is_not() {
        use mesh_core::OutlierDetection;
        use std::time::Duration;

        let addr: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let mut c = Cluster::new("c");
        c.load_assignment = Some(ClusterLoadAssignment::from_addrs("c", [addr]));
        c.outlier_detection = Some(OutlierDetection {
            consecutive_gateway_failure: 2,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        });
        let m = ClusterManager::new();
        m.reload(vec![c]).unwrap();
        let stalled = service_fn(|_req: Request<Body>| {
            std::future::pending::<Result<Response<Body>, BoxError>>()
        });
        let svc = LoadBalanceLayer::new(m.clone()).layer(stalled);
        let ep = m.get("c").unwrap().endpoints()[&addr].clone();
        let limit = Duration::from_millis(300);
        let call = |deadline: Option<Duration>| {
            let mut req = request(None);
            if let Some(d) = deadline {
                req.extensions_mut()
                    .insert(Deadline(tokio::time::Instant::now().into_std() + d));
            }
            tokio::time::timeout(limit, svc.clone().oneshot(req))
        };

        // The caller gives up before the deadline, or there is none: nothing is recorded.
        for _ in 0..3 {
            assert!(call(Some(limit * 2)).await.is_err());
            assert!(call(None).await.is_err());
        }
        assert!(!ep.is_ejected(), "early drops are not the endpoint's fault");
        // Dropped by the time-out at the deadline, twice in a row: ejected.
        assert!(call(Some(limit)).await.is_err());
        assert!(!ep.is_ejected());
        assert!(call(Some(limit)).await.is_err());
        assert!(ep.is_ejected(), "two time-outs in a row eject it");
    }
}
