//! Authorization: `RbacLayer`, the `Rbac<S>` service and its `ResponseFuture`.
//!
//! The listener's [`mesh_core::Rbac`] is compiled once ([`RbacEngine`]) and evaluated per
//! request with Envoy's semantics (see [`RbacEngine`]). A denied request never reaches the inner
//! service: it is answered with [`MeshError::RbacDenied`] through the one mapping (HTTP 403
//! `RBAC: access denied`, gRPC `PERMISSION_DENIED`), which also rides in the response's
//! extensions so the sidecar counts it by policy. An allowed response carries [`RbacAllowed`].
//!
//! A layer without a policy costs one atomic load per request. Reloading swaps the compiled
//! policy with one atomic store; a policy that does not compile is refused and the old one keeps
//! serving.

mod engine;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use mesh_core::{
    is_grpc, Body, MeshError, Rbac as RbacConfig, Reload, ReloadError, Shared, ValidationError,
};
use tower::{Layer, Service};

pub use engine::{RbacEngine, Verdict, NO_POLICY_MATCHED};

/// Marks a response whose request the listener's policy allowed (absent when the listener has
/// no policy), so the sidecar can count allowed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RbacAllowed;

/// The authorization layer, and the handle its policy is reloaded through. Clones share the
/// policy.
#[derive(Clone, Debug)]
pub struct RbacLayer {
    engine: Shared<Option<RbacEngine>>,
}

impl RbacLayer {
    /// A layer enforcing `rbac` (`None`: every request passes).
    pub fn new(rbac: Option<&RbacConfig>) -> Result<Self, ValidationError> {
        Ok(Self {
            engine: Shared::new(Self::compile(rbac)?),
        })
    }

    /// A layer enforcing an already compiled policy (`None`: every request passes).
    pub fn from_engine(engine: Option<RbacEngine>) -> Self {
        Self {
            engine: Shared::new(engine),
        }
    }

    /// Compiles a policy without applying it (so a refusal changes nothing); apply the result
    /// with [`set`](Self::set).
    pub fn compile(rbac: Option<&RbacConfig>) -> Result<Option<RbacEngine>, ValidationError> {
        rbac.map(RbacEngine::compile).transpose()
    }

    /// Swaps in a compiled policy; requests in flight were decided already.
    pub fn set(&self, engine: Option<RbacEngine>) {
        self.engine.store(engine);
    }

    /// Whether a policy is enforced now.
    pub fn is_enforcing(&self) -> bool {
        self.engine.load().is_some()
    }
}

impl Reload<Option<RbacConfig>> for RbacLayer {
    /// Compiles `update` and swaps it in, or refuses it naming the field path.
    fn reload(&self, update: Option<RbacConfig>) -> Result<(), ReloadError> {
        let engine =
            Self::compile(update.as_ref()).map_err(|e| ReloadError::invalid("rbac", "", e))?;
        self.set(engine);
        Ok(())
    }
}

impl<S> Layer<S> for RbacLayer {
    type Service = Rbac<S>;

    fn layer(&self, inner: S) -> Rbac<S> {
        Rbac {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// Evaluates the listener's policy and calls the inner service only for allowed requests.
#[derive(Clone, Debug)]
pub struct Rbac<S> {
    inner: S,
    engine: Shared<Option<RbacEngine>>,
}

impl<S, ReqB> Service<Request<ReqB>> for Rbac<S>
where
    S: Service<Request<ReqB>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let guard = self.engine.load();
        let Some(engine) = guard.as_ref() else {
            return ResponseFuture::pass(self.inner.call(req), false);
        };
        match engine.evaluate(&req) {
            Verdict::Allowed => ResponseFuture::pass(self.inner.call(req), true),
            Verdict::Denied(policy) => {
                let err = MeshError::RbacDenied {
                    policy: policy.to_owned(),
                };
                tracing::debug!(path = %req.uri().path(), %policy, "rbac: access denied");
                ResponseFuture::denied(err.to_response(is_grpc(&req)))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Rbac`]: the inner call, or the denial answered at once.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = Proj]
    enum State<F> {
        // Allowed (or no policy): the inner service answers; `mark`: tag it RbacAllowed.
        Pass { #[pin] inner: F, mark: bool },
        // Denied: the 403 (or gRPC PERMISSION_DENIED) answer, taken when polled.
        Denied { response: Option<Response<Body>> },
    }
}

impl<F> ResponseFuture<F> {
    fn pass(inner: F, mark: bool) -> Self {
        Self {
            state: State::Pass { inner, mark },
        }
    }

    fn denied(response: Response<Body>) -> Self {
        Self {
            state: State::Denied {
                response: Some(response),
            },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Pass { inner, mark } => {
                let mut resp = ready!(inner.poll(cx))?;
                if *mark {
                    resp.extensions_mut().insert(RbacAllowed);
                }
                Poll::Ready(Ok(resp))
            }
            Proj::Denied { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled after completion: a contract breach by the caller; stay pending
                // rather than panic on the data path.
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use mesh_core::{body, BoxError};
    use tower::ServiceExt;

    use super::*;

    fn policy(yaml: &str) -> RbacConfig {
        mesh_core::yaml::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn denied_requests_never_reach_the_inner_service_and_reload_swaps_in_place() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let layer = RbacLayer::new(Some(&policy(
            "policies:\n  api:\n    principals: [{ any: true }]\n    permissions: [{ url_path: { prefix: /api } }]\n",
        )))
        .unwrap();
        let svc = layer.layer(tower::service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Response::new(body::empty())) }
        }));
        let get = |uri: &str| Request::get(uri).body(body::empty()).unwrap();
        let ok = svc.clone().oneshot(get("/api/x")).await.unwrap();
        assert_eq!(ok.status(), 200);
        assert!(ok.extensions().get::<RbacAllowed>().is_some());
        let denied = svc.clone().oneshot(get("/other")).await.unwrap();
        assert_eq!(denied.status(), 403);
        assert_eq!(
            denied.extensions().get::<MeshError>(),
            Some(&MeshError::RbacDenied {
                policy: NO_POLICY_MATCHED.into()
            })
        );
        let grpc = Request::post("/pkg.Svc/M")
            .header("content-type", "application/grpc")
            .body(body::empty())
            .unwrap();
        let denied = svc.clone().oneshot(grpc).await.unwrap();
        assert_eq!(denied.headers()["grpc-status"], "7");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A bad policy is refused and the old one keeps serving.
        let bad = policy(
            "policies:\n  p:\n    principals: [{ any: true }]\n    permissions: [{ url_path: { regex: \"([\" } }]\n",
        );
        let err = layer.reload(Some(bad)).unwrap_err().to_string();
        assert!(err.contains("policies[p].permissions[0].url_path"), "{err}");
        assert_eq!(
            svc.clone().oneshot(get("/other")).await.unwrap().status(),
            403
        );
        // No policy: everything passes, unmarked.
        layer.reload(None).unwrap();
        let resp = svc.clone().oneshot(get("/other")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.extensions().get::<RbacAllowed>().is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
