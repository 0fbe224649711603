//! Fault injection: a fixed delay and/or an abort with a status, each for a percentage of
//! requests. Ships as the `fault` entry of the default [`LayerRegistry`](crate::LayerRegistry).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::{Body, BoxError, FaultConfig, MeshError};
use rand::Rng;
use tower::{Layer, Service};

use crate::policy::BoxFuture;

/// Wraps a service with fault injection.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    config: Arc<FaultConfig>,
}

impl FaultLayer {
    /// A layer injecting the faults of `config`.
    pub fn new(config: FaultConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The fault-injecting service. An abort answers through `MeshError::FaultAbort` (the
/// configured status, or the matching gRPC status for gRPC requests) without calling the inner
/// service; a delay holds the request before it goes on.
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    config: Arc<FaultConfig>,
}

fn roll(percentage: f64) -> bool {
    percentage >= 100.0 || (percentage > 0.0 && rand::rng().random::<f64>() * 100.0 < percentage)
}

impl<S> Service<Request<Body>> for Fault<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The inner service is readied after the delay, not held ready during it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let delay = self
            .config
            .delay
            .as_ref()
            .filter(|d| roll(d.percentage))
            .map(|d| d.fixed_delay);
        let abort = self
            .config
            .abort
            .as_ref()
            .filter(|a| roll(a.percentage))
            .map(|a| a.http_status);
        let grpc = mesh_core::is_grpc(&req);
        // The inner call is built now but only runs (readiness included) after the delay.
        let call = match abort {
            Some(status) => Err(status),
            None => Ok(crate::policy::oneshot(self.inner.clone(), req)),
        };
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            match call {
                Ok(fut) => fut.await,
                Err(status) => Ok(MeshError::FaultAbort { status }.to_response(grpc)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{FaultAbort, FaultDelay};
    use std::time::Duration;
    use tower::ServiceExt;

    fn ok_service() -> tower::util::BoxCloneService<Request<Body>, Response<Body>, BoxError> {
        tower::util::BoxCloneService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, BoxError>(Response::new(mesh_core::body::empty()))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn delays_then_aborts_with_the_status() {
        let cfg = FaultConfig {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_secs(2),
                percentage: 100.0,
            }),
            abort: Some(FaultAbort {
                http_status: 503,
                percentage: 100.0,
            }),
        };
        let svc = FaultLayer::new(cfg).layer(ok_service());
        let start = tokio::time::Instant::now();
        let resp = svc
            .oneshot(Request::new(mesh_core::body::empty()))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-mesh-error"], "fault_abort");
    }

    #[tokio::test(start_paused = true)]
    async fn aborts_about_the_configured_share() {
        let cfg = FaultConfig {
            delay: None,
            abort: Some(FaultAbort {
                http_status: 418,
                percentage: 30.0,
            }),
        };
        let svc = FaultLayer::new(cfg).layer(ok_service());
        let mut aborted = 0;
        for _ in 0..2000 {
            let resp = svc
                .clone()
                .oneshot(Request::new(mesh_core::body::empty()))
                .await
                .unwrap();
            aborted += u32::from(resp.status() == 418);
        }
        // 30% of 2000 = 600; the standard deviation is ~20, so ±100 is five sigma.
        assert!((500..=700).contains(&aborted), "{aborted}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_percent_never_fires() {
        let cfg = FaultConfig {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_secs(5),
                percentage: 0.0,
            }),
            abort: Some(FaultAbort {
                http_status: 500,
                percentage: 0.0,
            }),
        };
        let svc = FaultLayer::new(cfg).layer(ok_service());
        let start = tokio::time::Instant::now();
        for _ in 0..100 {
            let resp = svc
                .clone()
                .oneshot(Request::new(mesh_core::body::empty()))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
