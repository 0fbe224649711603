//! Terminating CONNECT (Envoy's route `upgrade_configs: [{upgrade_type: CONNECT,
//! connect_config: {}}]`): for a CONNECT request whose route says so, the innermost service
//! opens a raw TCP connection to the endpoint the load balancer picked and answers `200`
//! itself, handing the connection over in the response's extensions; the listener's upgrade
//! machinery ([`crate::upgrade`]) then relays the tunnel's bytes both ways under its owner.
//!
//! It sits where the pooled HTTP client would send the request, so the route, the cluster
//! pick (policy, health, outlier ejection, circuit breakers) and retries on connect failure all
//! apply as to any request; a connect failure is an `UpstreamConnect` error like the HTTP
//! client's.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use mesh_core::extensions::{MatchedRoute, PickedEndpoint};
use mesh_core::{body, Body, BoxError, MeshError};
use mesh_lb::{ClusterManager, Upstream, UpstreamFuture};
use tokio::net::TcpStream;
use tower::Service;

/// The upstream connection of a terminated CONNECT, on its way from [`ConnectTerminate`] to
/// the relay. Extensions must be `Clone`, a socket is not: the first taker gets it.
#[derive(Clone, Debug)]
pub(crate) struct ConnectTunnel(Arc<Mutex<Option<TcpStream>>>);

impl ConnectTunnel {
    fn new(stream: TcpStream) -> Self {
        Self(Arc::new(Mutex::new(Some(stream))))
    }

    /// The connection, once.
    pub(crate) fn take(&self) -> Option<TcpStream> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The load balancer's inner service: [`Upstream`], except for CONNECT requests whose route
/// terminates CONNECT.
#[derive(Clone, Debug)]
pub(crate) struct ConnectTerminate {
    inner: Upstream,
    clusters: ClusterManager,
}

impl ConnectTerminate {
    /// Over the pooled upstream of `clusters`.
    pub(crate) fn new(clusters: ClusterManager) -> Self {
        Self {
            inner: Upstream::new(clusters.clone()),
            clusters,
        }
    }
}

impl Service<Request<Body>> for ConnectTerminate {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The only cost for other requests: one method comparison.
        if req.method() != Method::CONNECT || !terminates(&req) {
            return self.inner.call(req);
        }
        let Some(picked) = req.extensions().get::<PickedEndpoint>().cloned() else {
            return Box::pin(std::future::ready(Err(MeshError::ClusterNotFound {
                cluster: String::new(),
            }
            .into())));
        };
        let timeout = self
            .clusters
            .get(&picked.cluster)
            .map_or(Duration::from_secs(5), |c| c.config().connect_timeout);
        Box::pin(async move {
            let stream = connect(picked.address, timeout).await.map_err(|reason| {
                tracing::debug!(endpoint = %picked.address, %reason, "CONNECT: upstream connect failed");
                MeshError::UpstreamConnect {
                    endpoint: picked.address,
                    reason,
                }
            })?;
            let _ = stream.set_nodelay(true);
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::OK;
            resp.extensions_mut().insert(ConnectTunnel::new(stream));
            Ok(resp)
        })
    }
}

/// Whether the matched route terminates CONNECT.
fn terminates(req: &Request<Body>) -> bool {
    req.extensions()
        .get::<MatchedRoute>()
        .is_some_and(|m| m.route.action.terminates_connect())
}

async fn connect(addr: std::net::SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("connect timeout after {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{Route, RouteAction, RouteUpgrade};

    fn connect_req(terminate: bool, to: std::net::SocketAddr) -> Request<Body> {
        let mut action = RouteAction::to_cluster("db");
        if terminate {
            action.upgrade_configs = vec![RouteUpgrade::terminate_connect()];
        }
        let mut req = Request::connect("db:5432").body(body::empty()).unwrap();
        req.extensions_mut().insert(MatchedRoute {
            route_config: Arc::from("t"),
            virtual_host: Arc::from("vh"),
            route: Arc::new(Route {
                action,
                ..Route::default()
            }),
        });
        req.extensions_mut().insert(PickedEndpoint {
            cluster: Arc::from("db"),
            address: to,
        });
        req
    }

    #[tokio::test]
    async fn answers_200_with_the_connection_or_a_connect_error() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let mut svc = ConnectTerminate::new(ClusterManager::new());
        let resp = svc.call(connect_req(true, addr)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let tunnel = resp.extensions().get::<ConnectTunnel>().unwrap();
        assert!(tunnel.take().is_some());
        assert!(
            tunnel.take().is_none(),
            "the connection is handed over once"
        );
        server.accept().await.unwrap();

        drop(server);
        let err = svc.call(connect_req(true, addr)).await.unwrap_err();
        let err = MeshError::from_boxed(err);
        assert!(matches!(err, MeshError::UpstreamConnect { .. }), "{err}");
    }
}
