//! The default inner service of the load balancer: sends each request over its picked
//! cluster's pooled clients.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::extensions::PickedEndpoint;
use mesh_core::{Body, BoxError, MeshError};
use tower_service::Service;

use crate::manager::ClusterManager;

/// The future of [`Upstream`] (boxed once, by the cluster's pooled client).
pub type UpstreamFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// The default inner service of [`crate::LoadBalance`]: sends the request to the endpoint its
/// URI names over the picked cluster's pooled client.
///
/// It finds the cluster by the request's [`PickedEndpoint`] (which [`crate::LoadBalance`]
/// records): one map lookup here rather than a second boxed extension on every request.
#[derive(Clone, Debug)]
pub struct Upstream {
    clusters: ClusterManager,
}

impl Upstream {
    /// An upstream over these clusters.
    pub fn new(clusters: ClusterManager) -> Self {
        Self { clusters }
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The pooled clients are always ready; back-pressure is the breakers' job.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let picked = req.extensions().get::<PickedEndpoint>();
        let cluster = picked.and_then(|p| self.clusters.get(&p.cluster));
        let endpoint = picked
            .map(|p| p.address)
            .or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()));
        match (cluster, endpoint) {
            (Some(c), Some(ep)) => c.send(req, ep),
            _ => {
                let err = MeshError::ClusterNotFound {
                    cluster: picked.map(|p| p.cluster.to_string()).unwrap_or_default(),
                };
                Box::pin(std::future::ready(Err(err.into())))
            }
        }
    }
}
