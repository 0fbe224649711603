//! Per-cluster circuit breakers: counters with limits, refused at once when over (never queued).
//!
//! - `max_requests`: requests in flight to the cluster (until the response body ends);
//! - `max_retries`: of those, requests carrying [`mesh_core::extensions::RetryAttempt`];
//! - `max_connections`: open upstream connections (counted by our connector);
//! - `max_pending_requests`: requests waiting for a new connection to be established. We never
//!   queue requests ourselves, so "pending" is the number of connects in progress (each serves a
//!   request that found no idle pooled connection).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use mesh_core::CircuitBreakers;

/// A cluster's breakers: live counters against the configured limits.
#[derive(Debug)]
pub struct CircuitBreaker {
    limits: CircuitBreakers,
    requests: AtomicU32,
    retries: AtomicU32,
    connections: AtomicU32,
    pending: AtomicU32,
    overflows: [AtomicU64; 4],
}

/// A snapshot of a cluster's breaker counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BreakerStats {
    /// Requests in flight.
    pub requests: u32,
    /// Retries in flight.
    pub retries: u32,
    /// Open upstream connections.
    pub connections: u32,
    /// Connects in progress.
    pub pending: u32,
    /// Requests refused by `max_requests`.
    pub requests_overflow: u64,
    /// Requests refused by `max_retries`.
    pub retries_overflow: u64,
    /// Connects refused by `max_connections`.
    pub connections_overflow: u64,
    /// Connects refused by `max_pending_requests`.
    pub pending_overflow: u64,
}

const REQ: usize = 0;
const RETRY: usize = 1;
const CONN: usize = 2;
const PENDING: usize = 3;

/// Adds one to `counter` unless it is at `max`.
fn try_inc(counter: &AtomicU32, max: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            (v < max).then_some(v + 1)
        })
        .is_ok()
}

impl CircuitBreaker {
    /// Breakers with these limits, all counters at zero.
    pub fn new(limits: CircuitBreakers) -> Self {
        Self {
            limits,
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            overflows: Default::default(),
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> &CircuitBreakers {
        &self.limits
    }

    fn overflow(&self, which: usize, limit: &'static str) -> &'static str {
        self.overflows[which].fetch_add(1, Ordering::Relaxed);
        limit
    }

    /// Admits one request (a retry when `retry`), or names the limit that refuses it. An
    /// admitted request must be given back with [`release`](Self::release) (with the same
    /// `retry`) when it ends: its owner does so on drop, without an `Arc` of its own to the
    /// breaker (the data path's admitted request holds its cluster, which holds the breaker).
    pub fn try_admit(&self, retry: bool) -> Result<(), &'static str> {
        if !try_inc(&self.requests, self.limits.max_requests) {
            return Err(self.overflow(REQ, "max_requests"));
        }
        if retry && !try_inc(&self.retries, self.limits.max_retries) {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(self.overflow(RETRY, "max_retries"));
        }
        Ok(())
    }

    /// Gives back a request admitted by [`try_admit`](Self::try_admit).
    pub fn release(&self, retry: bool) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
        if retry {
            self.retries.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Admits one connect attempt, or names the limit that refuses it.
    pub(crate) fn try_connect(self: &Arc<Self>) -> Result<PendingPermit, &'static str> {
        let open = self.connections.load(Ordering::Acquire);
        let pending = self.pending.load(Ordering::Acquire);
        if open.saturating_add(pending) >= self.limits.max_connections {
            return Err(self.overflow(CONN, "max_connections"));
        }
        if !try_inc(&self.pending, self.limits.max_pending_requests) {
            return Err(self.overflow(PENDING, "max_pending_requests"));
        }
        Ok(PendingPermit(Some(self.clone())))
    }

    /// The current counters.
    pub fn stats(&self) -> BreakerStats {
        let o = |i: usize| self.overflows[i].load(Ordering::Relaxed);
        BreakerStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            requests_overflow: o(REQ),
            retries_overflow: o(RETRY),
            connections_overflow: o(CONN),
            pending_overflow: o(PENDING),
        }
    }
}

/// A connect in progress; released on drop, or turned into an open connection.
#[derive(Debug)]
pub(crate) struct PendingPermit(Option<Arc<CircuitBreaker>>);

impl PendingPermit {
    /// The connect succeeded: it now counts as an open connection.
    pub(crate) fn connected(mut self) -> ConnectionPermit {
        let cb = self.0.take();
        if let Some(cb) = &cb {
            cb.pending.fetch_sub(1, Ordering::AcqRel);
            cb.connections.fetch_add(1, Ordering::AcqRel);
        }
        ConnectionPermit(cb)
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        if let Some(cb) = &self.0 {
            cb.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An open connection; released when the connection is dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit(Option<Arc<CircuitBreaker>>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(cb) = &self.0 {
            cb.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cb(req: u32, retries: u32, conns: u32, pending: u32) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(CircuitBreakers {
            max_connections: conns,
            max_pending_requests: pending,
            max_requests: req,
            max_retries: retries,
        }))
    }

    #[test]
    fn requests_and_retries_are_limited_and_released() {
        let cb = cb(2, 1, 10, 10);
        cb.try_admit(true).unwrap();
        assert_eq!(cb.try_admit(true).unwrap_err(), "max_retries");
        cb.try_admit(false).unwrap();
        assert_eq!(cb.try_admit(false).unwrap_err(), "max_requests");
        cb.release(true);
        cb.try_admit(true).unwrap();
        let s = cb.stats();
        assert_eq!((s.requests, s.retries), (2, 1));
        assert_eq!((s.requests_overflow, s.retries_overflow), (1, 1));
        cb.release(true);
        cb.release(false);
        let s = cb.stats();
        assert_eq!((s.requests, s.retries), (0, 0));
    }

    #[test]
    fn connections_and_pending_are_limited() {
        let cb = cb(10, 3, 2, 1);
        let p = cb.try_connect().unwrap();
        assert_eq!(cb.try_connect().unwrap_err(), "max_pending_requests");
        let c1 = p.connected();
        let c2 = cb.try_connect().unwrap().connected();
        assert_eq!(cb.try_connect().unwrap_err(), "max_connections");
        assert_eq!(cb.stats().connections, 2);
        drop((c1, c2));
        let s = cb.stats();
        assert_eq!((s.connections, s.pending), (0, 0));
        assert_eq!((s.connections_overflow, s.pending_overflow), (1, 1));
    }
}
