//! The process-wide downstream connection limit, shared by every listener, and what happens at
//! it: the connection idle longest (no request in flight; a client that never sent a request
//! counts as idle since it connected) is closed to admit the new one, as Envoy's overload
//! manager sheds idle connections before refusing. Only when nothing is idle is the new
//! connection refused.
//!
//! Listeners register their connection registries here; the registries are only walked on the
//! at-limit path (under a lock), never per request and never on an accept below the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::conn::Connections;

/// How long an accept at the limit waits for a shed connection to give its permit back (its
/// task is woken at once and drops it; this only bounds a slow wake-up).
const SHED_WAIT: Duration = Duration::from_millis(200);

/// Permits for open downstream connections, and the listeners whose idle connections may be
/// shed for them.
#[derive(Debug)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    listeners: Mutex<Vec<Weak<Connections>>>,
}

/// How a new connection was admitted (or not).
#[derive(Debug)]
pub(crate) enum Admission {
    /// Below the limit.
    Admitted(OwnedSemaphorePermit),
    /// At the limit; an idle connection was closed to make room.
    Shed(OwnedSemaphorePermit),
    /// At the limit with nothing idle to shed.
    Refused,
}

impl ConnectionLimit {
    /// A limit of `max` open connections.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            listeners: Mutex::default(),
        }
    }

    /// Permits not taken (for tests and the admin).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Makes a listener's connections candidates for shedding (dropped listeners fall out).
    pub(crate) fn register(&self, connections: &Arc<Connections>) {
        let mut l = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        l.retain(|w| w.strong_count() > 0);
        l.push(Arc::downgrade(connections));
    }

    /// A permit for a new connection: at once below the limit; at the limit, after closing the
    /// connection idle longest across every listener.
    pub(crate) async fn admit(&self) -> Admission {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Admission::Admitted(p);
        }
        let oldest = {
            let l = self
                .listeners
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            l.iter()
                .filter_map(Weak::upgrade)
                .filter_map(|c| c.oldest_idle())
                .max_by_key(|(idle, _)| *idle)
        };
        let Some((_, victim)) = oldest else {
            return Admission::Refused;
        };
        victim.close_now();
        match tokio::time::timeout(SHED_WAIT, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(p)) => Admission::Shed(p),
            _ => Admission::Refused,
        }
    }
}

/// Open connections per source IP address of one listener, under an optional cap. Touched on
/// accept and close only when the cap is set.
#[derive(Debug)]
pub(crate) struct PerIp {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's place in its source address's count, given back when dropped.
#[derive(Debug)]
pub(crate) struct PerIpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A cap of `max` open connections per source address.
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::default(),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when `ip` has the maximum open.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            owner: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_capped_and_given_back() {
        let per_ip = PerIp::new(2);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = per_ip.take(a).unwrap();
        let _second = per_ip.take(a).unwrap();
        assert!(per_ip.take(a).is_none(), "a third from the same address");
        assert!(per_ip.take(b).is_some(), "other addresses are not affected");
        drop(first);
        assert!(
            per_ip.take(a).is_some(),
            "a closed connection frees its slot"
        );
    }
}
