//! Outlier detection (passive health): consecutive 5xx / gateway failures eject an endpoint for
//! a time that grows with each ejection, never more than `max_ejection_percent` of the cluster
//! at once; a periodic sweep returns endpoints whose time is up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::StatusCode;
use mesh_core::{BoxError, MeshError, OutlierDetection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::connector::EndpointMap;
use crate::endpoint::EndpointState;
use crate::health::HealthTarget;

/// What one request told us about its endpoint, for outlier detection: recorded with
/// [`ClusterState::record`](crate::ClusterState::record), the one entry both the HTTP load
/// balancer and other data paths (the RPC proxy) use.
///
/// As Envoy's `consecutive_5xx` and `consecutive_gateway_failure` (with
/// `split_external_local_origin_errors` off): every failure counts towards the first, gateway
/// failures (502/503/504, and locally seen ones: connect failure, timeout, reset) towards
/// both; a success resets both streaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A non-5xx answer.
    Success,
    /// A 5xx answer, or a failure to reach it; `gateway` for 502/503/504 and connect failures.
    Failure {
        /// Whether it counts as a gateway failure too.
        gateway: bool,
    },
    /// Nothing about the endpoint (e.g. refused locally by a breaker).
    Neutral,
}

impl Outcome {
    /// A failure seen locally rather than answered by the endpoint: connect failure or
    /// timeout, time-out waiting for the answer, connection reset. Counts as a gateway
    /// failure, as Envoy counts locally originated errors when they are not split out.
    pub const LOCAL_ORIGIN_FAILURE: Self = Self::Failure { gateway: true };

    /// The outcome of an answer with HTTP status `s`: a failure for 5xx (a gateway failure for
    /// 502, 503 and 504), a success otherwise (a 4xx is the client's fault, not the endpoint's).
    pub fn of_status(s: StatusCode) -> Self {
        if s.is_server_error() {
            Self::Failure {
                gateway: matches!(s.as_u16(), 502..=504),
            }
        } else {
            Self::Success
        }
    }

    pub(crate) fn of_error(e: &BoxError) -> Self {
        match e.downcast_ref::<MeshError>() {
            Some(MeshError::UpstreamConnect { .. } | MeshError::Upstream { .. }) | None => {
                Self::Failure { gateway: true }
            }
            Some(_) => Self::Neutral,
        }
    }
}

/// How long the `n`-th ejection (n ≥ 1) lasts: base × n, capped at the max (but never under
/// the base).
pub(crate) fn ejection_time(od: &OutlierDetection, n: u32) -> Duration {
    let cap = od.max_ejection_time.max(od.base_ejection_time);
    od.base_ejection_time.saturating_mul(n.max(1)).min(cap)
}

/// A cluster's ejection bookkeeping: its outlier-detection config, how many of its endpoints
/// are ejected (the maximum share is checked against it) and time zero for ejection deadlines.
pub(crate) struct OutlierDetector {
    config: Option<OutlierDetection>,
    epoch: tokio::time::Instant,
    ejected: AtomicU32,
}

impl OutlierDetector {
    /// A detector for `config`; endpoints carried from a previous version of the cluster that
    /// are ejected count as ejected.
    pub(crate) fn new(config: Option<OutlierDetection>, carried: &EndpointMap) -> Self {
        let already_ejected = carried.values().filter(|e| e.is_ejected()).count() as u32;
        Self {
            config,
            epoch: tokio::time::Instant::now(),
            ejected: AtomicU32::new(already_ejected),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records a request's outcome against its endpoint of `cluster`; ejects it past the
    /// thresholds.
    #[inline]
    pub(crate) fn record(
        &self,
        cluster: &impl HealthTarget,
        ep: &Arc<EndpointState>,
        outcome: Outcome,
    ) {
        let Some(od) = &self.config else {
            return;
        };
        match outcome {
            Outcome::Neutral => {}
            Outcome::Success => {
                // Plain stores only when needed, so the success path stays read-mostly.
                if ep.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                    ep.consecutive_5xx.store(0, Ordering::Relaxed);
                }
                if ep.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                    ep.consecutive_gateway.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure { gateway } => {
                let c5 = ep.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let cg = if gateway {
                    ep.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    ep.consecutive_gateway.store(0, Ordering::Relaxed);
                    0
                };
                let over = |n: u32, limit: u32| limit > 0 && n >= limit;
                if over(c5, od.consecutive_5xx) || over(cg, od.consecutive_gateway_failure) {
                    self.eject(cluster, ep, od);
                }
            }
        }
    }

    fn eject(&self, cluster: &impl HealthTarget, ep: &Arc<EndpointState>, od: &OutlierDetection) {
        let total = cluster.endpoint_map().load().len().max(1) as u64;
        let ejected = u64::from(self.ejected.load(Ordering::Acquire));
        // As Envoy: refuse once the ejected share has reached the maximum.
        if ejected * 100 / total >= u64::from(od.max_ejection_percent) {
            return;
        }
        if ep.ejected.swap(true, Ordering::AcqRel) {
            return;
        }
        self.ejected.fetch_add(1, Ordering::AcqRel);
        let n = ep.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let until = self.now_ms() + ejection_time(od, n).as_millis() as u64;
        ep.ejected_until_ms.store(until, Ordering::Relaxed);
        ep.consecutive_5xx.store(0, Ordering::Relaxed);
        ep.consecutive_gateway.store(0, Ordering::Relaxed);
        tracing::info!(cluster = %cluster.cluster_name(), endpoint = %ep.address(), ejections = n, "outlier ejected");
        cluster.request_rebuild();
    }

    /// Returns `cluster`'s endpoints whose ejection time is up; true when any came back.
    pub(crate) fn sweep(&self, cluster: &impl HealthTarget) -> bool {
        let now = self.now_ms();
        let mut changed = false;
        for ep in cluster.endpoint_map().load().values() {
            if ep.ejected.load(Ordering::Acquire)
                && ep.ejected_until_ms.load(Ordering::Relaxed) <= now
                && ep.ejected.swap(false, Ordering::AcqRel)
            {
                self.ejected.fetch_sub(1, Ordering::AcqRel);
                tracing::info!(cluster = %cluster.cluster_name(), endpoint = %ep.address(), "outlier returned");
                changed = true;
            }
        }
        changed
    }

    /// An endpoint leaves the cluster: it is no longer ejected, nor counted as such (re-added
    /// later, it comes back in service).
    pub(crate) fn forget(&self, ep: &EndpointState) {
        if ep.ejected.swap(false, Ordering::AcqRel) {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A cluster with an outlier detector, as its maintenance task sees it.
pub(crate) trait Outliers: HealthTarget {
    /// The cluster's detector.
    fn outliers(&self) -> &OutlierDetector;
}

/// The cluster's maintenance task: rebuilds after ejections and sweeps every `interval`.
/// Ends when the cluster is dropped (its token fires) or can no longer be upgraded.
pub(crate) async fn maintain<C: Outliers>(
    cluster: Weak<C>,
    token: CancellationToken,
    rebuild: Arc<Notify>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sweep = tokio::select! {
            _ = token.cancelled() => return,
            _ = rebuild.notified() => false,
            _ = tick.tick() => true,
        };
        let Some(c) = cluster.upgrade() else { return };
        if !sweep || c.outliers().sweep(&*c) {
            c.rebuild();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let od = OutlierDetection {
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            ..OutlierDetection::default()
        };
        let t: Vec<u64> = (1..=5).map(|n| ejection_time(&od, n).as_secs()).collect();
        assert_eq!(t, [30, 60, 90, 100, 100]);
    }

    #[test]
    fn outcomes_classify_statuses_and_errors() {
        assert_eq!(Outcome::of_status(StatusCode::OK), Outcome::Success);
        assert_eq!(Outcome::of_status(StatusCode::NOT_FOUND), Outcome::Success);
        assert_eq!(
            Outcome::of_status(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Failure { gateway: false }
        );
        assert_eq!(
            Outcome::of_status(StatusCode::BAD_GATEWAY),
            Outcome::Failure { gateway: true }
        );
        let connect: BoxError = Box::new(MeshError::UpstreamConnect {
            endpoint: "127.0.0.1:1".parse().unwrap(),
            reason: "refused".into(),
        });
        assert_eq!(
            Outcome::of_error(&connect),
            Outcome::Failure { gateway: true }
        );
        let breaker: BoxError = Box::new(MeshError::CircuitOpen {
            cluster: "c".into(),
            limit: "max_connections",
        });
        assert_eq!(Outcome::of_error(&breaker), Outcome::Neutral);
    }
}
