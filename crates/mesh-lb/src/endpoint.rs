//! Per-endpoint run-time state that survives reloads: in-flight count, health flags, outlier
//! counters. All atomics, so the data path reads and updates them without a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

/// The live state of one endpoint, keyed by address in its cluster.
///
/// An endpoint that stays across an EDS update keeps this same value (so its in-flight count,
/// health-check streak and outlier state carry over); a removed one is drained and then its
/// pooled connections are closed through [`EndpointState::is_closed`]'s token.
#[derive(Debug)]
pub struct EndpointState {
    address: SocketAddr,
    pub(crate) in_flight: AtomicU32,
    pub(crate) requests: AtomicU64,
    /// Health as EDS reported it (`HealthStatus::is_healthy`).
    pub(crate) eds_healthy: AtomicBool,
    /// EDS reported it degraded: it takes traffic only when no healthy endpoint is left.
    pub(crate) eds_degraded: AtomicBool,
    /// Health as active health checking sees it (true until checks say otherwise).
    pub(crate) hc_healthy: AtomicBool,
    pub(crate) hc_successes: AtomicU32,
    pub(crate) hc_failures: AtomicU32,
    /// Ejected by outlier detection.
    pub(crate) ejected: AtomicBool,
    /// When the ejection ends, in milliseconds since the cluster's epoch.
    pub(crate) ejected_until_ms: AtomicU64,
    /// How many times it was ejected (the ejection time grows with it).
    pub(crate) ejections: AtomicU32,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    /// Set while the endpoint is out of its cluster (draining).
    pub(crate) removed: AtomicBool,
    /// Cancelled when the endpoint left its cluster and drained: its connections close.
    pub(crate) close: CancellationToken,
}

impl EndpointState {
    /// A fresh, healthy endpoint.
    pub(crate) fn new(address: SocketAddr) -> Self {
        Self {
            address,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            eds_healthy: AtomicBool::new(true),
            eds_degraded: AtomicBool::new(false),
            hc_healthy: AtomicBool::new(true),
            hc_successes: AtomicU32::new(0),
            hc_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            removed: AtomicBool::new(false),
            close: CancellationToken::new(),
        }
    }

    /// The endpoint's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Requests sent to it and not yet finished (response body included).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to it since it joined the cluster.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether it takes traffic normally: EDS health, active health checks and outlier
    /// detection all agree.
    pub fn is_healthy(&self) -> bool {
        self.eds_healthy.load(Ordering::Relaxed)
            && self.hc_healthy.load(Ordering::Relaxed)
            && !self.ejected.load(Ordering::Relaxed)
    }

    /// Whether it is degraded (by EDS) but otherwise fine: usable when nothing healthy is left.
    pub fn is_degraded_usable(&self) -> bool {
        self.eds_degraded.load(Ordering::Relaxed)
            && self.hc_healthy.load(Ordering::Relaxed)
            && !self.ejected.load(Ordering::Relaxed)
    }

    /// Whether active health checking currently considers it healthy.
    pub fn is_health_check_ok(&self) -> bool {
        self.hc_healthy.load(Ordering::Relaxed)
    }

    /// Whether outlier detection has ejected it.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// How many times outlier detection has ejected it.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Whether it left the cluster and its connections were closed.
    pub fn is_closed(&self) -> bool {
        self.close.is_cancelled()
    }
}

/// Counts one request against an endpoint until dropped (the response body's end).
#[derive(Debug)]
pub(crate) struct InFlightGuard(pub(crate) std::sync::Arc<EndpointState>);

impl InFlightGuard {
    pub(crate) fn new(ep: std::sync::Arc<EndpointState>) -> Self {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        ep.requests.fetch_add(1, Ordering::Relaxed);
        Self(ep)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn guard_counts_in_flight_until_dropped() {
        let ep = Arc::new(EndpointState::new("127.0.0.1:1".parse().unwrap()));
        let g1 = InFlightGuard::new(ep.clone());
        let g2 = InFlightGuard::new(ep.clone());
        assert_eq!(ep.in_flight(), 2);
        drop(g1);
        assert_eq!(ep.in_flight(), 1);
        drop(g2);
        assert_eq!((ep.in_flight(), ep.requests()), (0, 2));
        assert!(ep.is_healthy());
        ep.ejected.store(true, Ordering::Relaxed);
        assert!(!ep.is_healthy());
    }
}
