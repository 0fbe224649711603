//! The route timeout (whole request, all attempts) and the per-try timeout.

use std::future::Future;
use std::time::Duration;

use http::Response;
use mesh_core::{Body, MeshError};

/// Runs `fut` for at most `limit` (`None`: no limit); on expiry answers 504 (gRPC:
/// DEADLINE_EXCEEDED) through `MeshError::to_response`, since the timeout is the router's own
/// decision. The second value says whether the timeout fired.
pub(crate) async fn within<F, E>(
    limit: Option<Duration>,
    grpc: bool,
    fut: F,
) -> (Result<Response<Body>, E>, bool)
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    let Some(limit) = limit else {
        return (fut.await, false);
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => (result, false),
        Err(_) => (
            Ok(MeshError::UpstreamTimeout { timeout: limit }.to_response(grpc)),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_504_or_deadline_exceeded_when_the_limit_passes() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ()>(Response::new(mesh_core::body::empty()))
        };
        let (r, fired) = within(Some(Duration::from_secs(1)), false, slow).await;
        assert!(fired);
        assert_eq!(r.unwrap().status(), 504);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ()>(Response::new(mesh_core::body::empty()))
        };
        let (r, _) = within(Some(Duration::from_secs(1)), true, slow).await;
        assert_eq!(r.unwrap().headers()["grpc-status"], "4");
        let fast = async { Ok::<_, ()>(Response::new(mesh_core::body::empty())) };
        let (r, fired) = within(Some(Duration::from_secs(1)), false, fast).await;
        assert!(!fired);
        assert_eq!(r.unwrap().status(), 200);
    }
}
