//! Retries: when (retry-on conditions), how often (max retries, backoff with full jitter), and
//! how many at once (the retry budget), only for requests whose body can be replayed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use mesh_core::extensions::RetryAttempt;
use mesh_core::{Body, BoxError, MeshError, RetryOn};
use rand::Rng;
use tower::Service;

use super::timeout;

/// Bodies up to this size are buffered so an attempt can be replayed; larger or unsized
/// (streaming) bodies get one attempt only.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// A compiled retry policy with its budget's live counters.
#[derive(Debug)]
pub(crate) struct Retry {
    on: RetryOn,
    max: u32,
    per_try: Option<Duration>,
    codes: Vec<u16>,
    base: Duration,
    cap: Duration,
    budget: Option<Budget>,
}

impl Retry {
    pub(crate) fn compile(p: &mesh_core::RetryPolicy) -> Self {
        Self {
            on: p.retry_on,
            max: p.num_retries,
            per_try: p.per_try_timeout.filter(|d| !d.is_zero()),
            codes: p.retriable_status_codes.clone(),
            base: p.backoff.base_interval,
            cap: p.backoff.max_interval,
            budget: p
                .budget
                .as_ref()
                .map(|b| Budget::new(b.budget_percent, b.min_retry_concurrency)),
        }
    }

    /// The budget, if the policy has one.
    pub(crate) fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// Whether this outcome of an attempt is worth another.
    fn should_retry(&self, outcome: &Result<Response<Body>, BoxError>, timed_out: bool) -> bool {
        let on = &self.on;
        match outcome {
            // A per-try timeout counts as a gateway error, as in Envoy.
            Ok(_) if timed_out => on.server_error || on.gateway_error || on.grpc_deadline_exceeded,
            Ok(resp) => {
                let s = resp.status().as_u16();
                let grpc = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u8>().ok());
                (on.server_error && s >= 500)
                    || (on.gateway_error && matches!(s, 502..=504))
                    || (on.retriable_status_codes && self.codes.contains(&s))
                    || match grpc {
                        Some(1) => on.grpc_cancelled,
                        Some(4) => on.grpc_deadline_exceeded,
                        Some(8) => on.grpc_resource_exhausted,
                        Some(14) => on.grpc_unavailable,
                        _ => false,
                    }
            }
            Err(err) => match err.downcast_ref::<MeshError>() {
                Some(MeshError::UpstreamConnect { .. }) => {
                    on.connect_failure || on.server_error || on.gateway_error
                }
                Some(MeshError::Upstream { .. }) => on.reset || on.server_error,
                Some(_) => false,
                // A foreign error from the upstream service is a reset-like failure.
                None => on.reset || on.server_error,
            },
        }
    }

    /// The wait before retry `n` (1-based): full jitter over `base * 2^(n-1)`, capped.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
            .min(self.cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Envoy's retry budget: retries in flight may be at most `percent` of the requests in flight
/// on the route, but `min` are always allowed.
#[derive(Debug)]
pub(crate) struct Budget {
    percent: f64,
    min: u32,
    active: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
}

/// Counts one request (or retry) in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Budget {
    fn new(percent: f64, min: u32) -> Self {
        Self {
            percent,
            min,
            active: Arc::default(),
            retries: Arc::default(),
        }
    }

    /// Registers a request in flight.
    pub(crate) fn request(&self) -> InFlight {
        self.active.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(&self.active))
    }

    /// Takes a retry slot if the budget allows one.
    pub(crate) fn try_retry(&self) -> Option<InFlight> {
        let active = f64::from(self.active.load(Ordering::Acquire));
        // Truncation is the intent: a fraction of a retry is not a retry.
        let allowed = ((active * self.percent / 100.0) as u32).max(self.min);
        let mut current = self.retries.load(Ordering::Acquire);
        loop {
            if current >= allowed {
                return None;
            }
            match self.retries.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(InFlight(Arc::clone(&self.retries))),
                Err(now) => current = now,
            }
        }
    }
}

/// A request split so that it can be sent again: its head and its buffered body.
struct Replayable {
    head: Request<()>,
    body: Bytes,
}

impl Replayable {
    fn attempt(&self) -> Request<Body> {
        let mut req = Request::new(mesh_core::body::full(self.body.clone()));
        *req.method_mut() = self.head.method().clone();
        *req.uri_mut() = self.head.uri().clone();
        *req.version_mut() = self.head.version();
        *req.headers_mut() = self.head.headers().clone();
        *req.extensions_mut() = self.head.extensions().clone();
        req
    }
}

/// Sends `req` through `inner`, retrying as `retry` says; the last outcome is returned.
pub(crate) async fn run<S>(
    retry: &Retry,
    inner: S,
    req: Request<Body>,
    grpc: bool,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let replayable = req.body().is_end_stream()
        || req
            .body()
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_REPLAY_BODY);
    if !replayable || retry.max == 0 {
        return attempt(retry, inner, req, grpc).await.0;
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let replay = Replayable {
        head: Request::from_parts(parts, ()),
        body,
    };
    let _in_flight = retry.budget().map(Budget::request);
    let mut n = 0u32;
    // A retry holds its budget slot from the decision to retry until its attempt is answered.
    let mut slot: Option<InFlight> = None;
    loop {
        let mut req = replay.attempt();
        if n > 0 {
            req.extensions_mut().insert(RetryAttempt(n));
        }
        let (outcome, timed_out) = attempt(retry, inner.clone(), req, grpc).await;
        drop(slot.take());
        if n >= retry.max || !retry.should_retry(&outcome, timed_out) {
            return outcome;
        }
        if let Some(budget) = retry.budget() {
            match budget.try_retry() {
                Some(s) => slot = Some(s),
                None => return outcome,
            }
        }
        drop(outcome);
        n += 1;
        tokio::time::sleep(retry.backoff(n)).await;
    }
}

/// One attempt, bounded by the per-try timeout.
async fn attempt<S>(
    retry: &Retry,
    inner: S,
    req: Request<Body>,
    grpc: bool,
) -> (Result<Response<Body>, BoxError>, bool)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    let mut req = req;
    if let Some(limit) = retry.per_try {
        super::set_deadline(&mut req, limit);
    }
    timeout::within(retry.per_try, grpc, super::oneshot(inner, req)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{RetryBackoff, RetryBudget, RetryPolicy};

    fn policy(on: &str, budget: Option<RetryBudget>) -> Retry {
        Retry::compile(&RetryPolicy {
            retry_on: on.parse().unwrap(),
            num_retries: 2,
            per_try_timeout: None,
            retriable_status_codes: vec![409],
            backoff: RetryBackoff {
                base_interval: Duration::from_millis(10),
                max_interval: Duration::from_millis(50),
            },
            budget,
        })
    }

    fn status(code: u16) -> Result<Response<Body>, BoxError> {
        let mut r = Response::new(mesh_core::body::empty());
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
        Ok(r)
    }

    fn grpc(code: &'static str) -> Result<Response<Body>, BoxError> {
        let mut r = Response::new(mesh_core::body::empty());
        r.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(code));
        Ok(r)
    }

    fn connect() -> Result<Response<Body>, BoxError> {
        Err(Box::new(MeshError::UpstreamConnect {
            endpoint: "127.0.0.1:1".parse().unwrap(),
            reason: "refused".into(),
        }))
    }

    #[test]
    fn retry_on_conditions() {
        let p = policy("5xx", None);
        assert!(p.should_retry(&status(500), false));
        assert!(p.should_retry(&connect(), false));
        assert!(!p.should_retry(&status(429), false));
        let p = policy("gateway-error", None);
        assert!(p.should_retry(&status(503), false));
        assert!(!p.should_retry(&status(500), false));
        assert!(p.should_retry(&status(200), true), "a per-try timeout");
        let p = policy("retriable-status-codes", None);
        assert!(p.should_retry(&status(409), false));
        assert!(!p.should_retry(&status(500), false));
        let p = policy("connect-failure", None);
        assert!(p.should_retry(&connect(), false));
        assert!(!p.should_retry(&Err("reset".into()), false));
        let p = policy("unavailable,cancelled", None);
        assert!(p.should_retry(&grpc("14"), false));
        assert!(p.should_retry(&grpc("1"), false));
        assert!(!p.should_retry(&grpc("4"), false));
        assert!(!p.should_retry(&grpc("0"), false));
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap() {
        let p = policy("5xx", None);
        for n in 1..=6 {
            let cap = Duration::from_millis(10 * (1 << (n - 1))).min(Duration::from_millis(50));
            for _ in 0..50 {
                assert!(p.backoff(n) <= cap, "retry {n}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(spread.len() > 10, "jittered, not fixed");
    }

    #[test]
    fn budget_allows_a_share_of_requests_in_flight_but_at_least_the_minimum() {
        let p = policy(
            "5xx",
            Some(RetryBudget {
                budget_percent: 25.0,
                min_retry_concurrency: 1,
            }),
        );
        let b = p.budget().unwrap();
        let requests: Vec<_> = (0..8).map(|_| b.request()).collect();
        let first = b.try_retry().unwrap();
        let second = b.try_retry().unwrap();
        assert!(b.try_retry().is_none(), "25% of 8 is 2");
        drop(first);
        let third = b.try_retry();
        assert!(third.is_some(), "a finished retry frees its slot");
        drop((second, third, requests));
        let only = b.try_retry();
        assert!(only.is_some(), "the minimum holds with nothing in flight");
        assert!(b.try_retry().is_none());
    }
}
