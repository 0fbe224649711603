//! Per-endpoint run-time state that survives reloads: in-flight count, health flags, outlier
//! counters. All atomics, so the data path reads and updates them without a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use std::sync::{Arc, Mutex, PoisonError, Weak};

use futures_util::task::AtomicWaker;
use http::uri::Authority;

/// The live state of one endpoint, keyed by address in its cluster.
///
/// An endpoint that stays across an EDS update keeps this same value (so its in-flight count,
/// health-check streak and outlier state carry over); a removed one is drained and then its
/// pooled connections are closed through [`EndpointState::is_closed`]'s token.
#[derive(Debug)]
// `repr(C)`: what every request touches (the counts, the authority, the address) comes first,
// in the cache line of the Arc's own counts.
#[repr(C)]
pub struct EndpointState {
    pub(crate) in_flight: AtomicU32,
    pub(crate) requests: AtomicU64,
    /// `ip:port` as a URI authority, built once: every request sent here carries it, and
    /// formatting and parsing it per request showed in the chain benchmark's profile.
    authority: Option<Authority>,
    address: SocketAddr,
    /// Health as EDS reported it (`HealthStatus::is_healthy`).
    pub(crate) eds_healthy: AtomicBool,
    /// EDS reported it degraded: it takes traffic only when no healthy endpoint is left.
    pub(crate) eds_degraded: AtomicBool,
    /// Health as active health checking sees it (true until checks say otherwise).
    pub(crate) hc_healthy: AtomicBool,
    /// Ejected by outlier detection.
    pub(crate) ejected: AtomicBool,
    /// Set while the endpoint is out of its cluster (draining).
    pub(crate) removed: AtomicBool,
    pub(crate) hc_successes: AtomicU32,
    pub(crate) hc_failures: AtomicU32,
    /// How many times it was ejected (the ejection time grows with it).
    pub(crate) ejections: AtomicU32,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    /// When the ejection ends, in milliseconds since the cluster's epoch.
    pub(crate) ejected_until_ms: AtomicU64,
    /// Fired when the endpoint left its cluster and drained: its connections close.
    pub(crate) closer: Closer,
}

impl EndpointState {
    /// A fresh, healthy endpoint.
    pub(crate) fn new(address: SocketAddr) -> Self {
        Self {
            address,
            authority: Authority::try_from(address.to_string()).ok(),
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
            closer: Closer::default(),
        }
    }

    /// The endpoint's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address as a URI authority (`ip:port`, `[v6]:port`); `None` only for an address
    /// the URI grammar refuses.
    pub fn authority(&self) -> Option<&Authority> {
        self.authority.as_ref()
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
        self.closer.is_closed()
    }

    /// Resolves once the endpoint has left its cluster and drained
    /// ([`is_closed`](Self::is_closed)): how a connection held outside this crate (the RPC
    /// proxy's) learns to close. Create it once per connection and poll it pinned (each
    /// creation registers a waker slot; polling is one waker registration and one atomic load).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + '_ {
        let slot = self.closer.watch();
        std::future::poll_fn(move |cx| {
            slot.register(cx.waker());
            if self.closer.is_closed() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// Closes an endpoint's pooled connections once it has left its cluster and drained.
///
/// Each connection checks the flag on every read (one atomic load) and leaves its task's waker
/// here, woken once when the flag is set, so that an idle pooled connection closes at once. A
/// cancellation token served before, but polling its future on every read took two mutexes
/// (the token's and its `Notify`'s, shared by all the endpoint's connections).
#[derive(Debug, Default)]
pub(crate) struct Closer {
    closed: AtomicBool,
    wakers: Mutex<Vec<Weak<AtomicWaker>>>,
}

impl Closer {
    /// Closes every connection, present and future.
    pub(crate) fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let wakers = std::mem::take(&mut *self.lock());
            for w in wakers.iter().filter_map(Weak::upgrade) {
                w.wake();
            }
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A new connection's waker slot: register the task's waker in it before each check of
    /// [`is_closed`](Self::is_closed).
    pub(crate) fn watch(&self) -> Arc<AtomicWaker> {
        let slot = Arc::new(AtomicWaker::new());
        let mut wakers = self.lock();
        // Connections that are gone leave dead entries: drop them here, so the list stays as
        // long as the open connections.
        wakers.retain(|w| w.strong_count() > 0);
        wakers.push(Arc::downgrade(&slot));
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<AtomicWaker>>> {
        // Only pushes and takes under the lock: a poisoned list is still a valid list.
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts one request against an endpoint until dropped (the response body's end): what the
/// least-request policy balances on and what a removed endpoint's drain waits for. The HTTP
/// load balancer holds one per request; other data paths (the RPC proxy) hold one the same way.
#[derive(Debug)]
pub struct InFlightGuard(pub(crate) Arc<EndpointState>);

impl InFlightGuard {
    /// Counts a request sent to `ep` (in flight, and in its total).
    pub fn new(ep: Arc<EndpointState>) -> Self {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        ep.requests.fetch_add(1, Ordering::Relaxed);
        Self(ep)
    }
}

impl InFlightGuard {
    /// The endpoint counted.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
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

    #[tokio::test]
    async fn closing_wakes_watching_connections_and_closes_later_ones() {
        let closer = Arc::new(Closer::default());
        let (idle, gone) = (closer.watch(), closer.watch());
        drop(gone);
        // An idle connection parked on its read: registered, not closed.
        let task = tokio::spawn({
            let closer = closer.clone();
            std::future::poll_fn(move |cx| {
                idle.register(cx.waker());
                if closer.is_closed() {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
        });
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        let late = closer.watch();
        assert_eq!(closer.lock().len(), 2, "the dead entry was dropped");
        closer.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the parked connection was woken")
            .unwrap();
        assert!(closer.is_closed() && closer.lock().is_empty());
        drop(late);
        closer.close();
    }

    #[tokio::test]
    async fn closed_resolves_when_the_endpoint_closes() {
        let ep = Arc::new(EndpointState::new("127.0.0.1:1".parse().unwrap()));
        let waiter = tokio::spawn({
            let ep = ep.clone();
            async move { ep.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "open: still waiting");
        ep.closer.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by the close")
            .unwrap();
        // Created after the close: ready at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), ep.closed())
            .await
            .unwrap();
    }

    #[test]
    fn authority_is_the_address() {
        for a in ["127.0.0.1:8080", "[::1]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            let ep = EndpointState::new(addr);
            let authority = ep.authority().unwrap();
            assert_eq!(authority.as_str(), addr.to_string());
            assert_eq!(authority.port_u16(), Some(addr.port()));
        }
    }
}
