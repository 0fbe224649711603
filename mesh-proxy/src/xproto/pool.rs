//! The shared upstream connections of one RPC proxy, by endpoint, found without a lock.
//!
//! The map from endpoint address to its [`Pool`] is an immutable `HashMap` behind an
//! `ArcSwap`: a request loads it (one arc-swap load, no lock, no reference count touched) and
//! looks its endpoint up. Only adding a pool (an endpoint's first request) copies the map
//! under a writers' mutex and swaps the copy in; that copy leaves out pools whose endpoint has
//! left its cluster and closed, so the map holds no more than the endpoints in use. A pool is
//! a fixed row of connection slots used round robin; a slot's connection is loaded the same
//! lock-free way, and only dialling a new one into an empty or dead slot takes that slot's
//! mutex (so two requests never dial the same slot twice).
//!
//! Why not a concurrent map crate: lookups vastly outnumber insertions (one per endpoint), and
//! arc-swap (already a workspace dependency) gives a read path with no lock and no shard
//! contention, the same pattern the clusters' endpoint sets use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::{ArcSwap, ArcSwapOption};
use mesh_lb::EndpointState;

use super::upstream::{Dispatch, UpstreamConn};

/// What a pool holds: a handle on one upstream connection (generic so that the pool's logic is
/// tested without sockets).
pub(crate) trait Connection {
    /// Whether it takes no more requests (ended, or told to stop): the pool replaces it.
    fn is_closed(&self) -> bool;
    /// Queues a request; gives it back when the connection has ended.
    fn send(&self, d: Dispatch) -> Result<(), Box<Dispatch>>;
}

impl Connection for UpstreamConn {
    fn is_closed(&self) -> bool {
        UpstreamConn::is_closed(self)
    }

    fn send(&self, d: Dispatch) -> Result<(), Box<Dispatch>> {
        UpstreamConn::send(self, d)
    }
}

type PoolMap<C> = HashMap<SocketAddr, Arc<Pool<C>>, foldhash::fast::RandomState>;

/// Every endpoint's pool of one proxy.
pub(crate) struct Pools<C = UpstreamConn> {
    map: ArcSwap<PoolMap<C>>,
    /// Serialises writers of `map` (copy, insert, swap); readers never take it.
    write: Mutex<()>,
}

impl<C> Default for Pools<C> {
    fn default() -> Self {
        Self {
            map: ArcSwap::default(),
            write: Mutex::default(),
        }
    }
}

/// The shared connections to one endpoint, used round robin.
pub(crate) struct Pool<C> {
    /// The endpoint the pool serves: a pool is only used for this very state, so an endpoint
    /// removed and later re-added (a new state at the same address) gets a fresh pool.
    endpoint: Arc<EndpointState>,
    slots: Box<[Slot<C>]>,
    next: AtomicUsize,
}

struct Slot<C> {
    conn: ArcSwapOption<C>,
    /// Held while a new connection is put in the slot (cold path only).
    dial: Mutex<()>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self {
            conn: ArcSwapOption::empty(),
            dial: Mutex::default(),
        }
    }
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // Guards no data: a poisoned lock is as good as a clean one.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<C: Connection> Pools<C> {
    /// Sends `d` on one of `endpoint`'s connections: the next slot's live connection, or a new
    /// one made by `dial` when that slot is empty or its connection has ended. A new endpoint
    /// gets a pool of `max_conns` slots. Gives the request back when the connection ended
    /// between the look-up and the send.
    pub(crate) fn send(
        &self,
        endpoint: &Arc<EndpointState>,
        max_conns: usize,
        dial: &dyn Fn() -> C,
        d: Dispatch,
    ) -> Result<(), Box<Dispatch>> {
        {
            let map = self.map.load();
            if let Some(pool) = map.get(&endpoint.address()) {
                if Arc::ptr_eq(&pool.endpoint, endpoint) {
                    return pool.send(dial, d);
                }
            }
        }
        self.add(endpoint, max_conns).send(dial, d)
    }

    /// The pool of `endpoint`, added if it has none (copy-on-write of the map).
    fn add(&self, endpoint: &Arc<EndpointState>, max_conns: usize) -> Arc<Pool<C>> {
        let _writer = lock(&self.write);
        let current = self.map.load_full();
        let addr = endpoint.address();
        if let Some(pool) = current.get(&addr) {
            if Arc::ptr_eq(&pool.endpoint, endpoint) {
                return Arc::clone(pool);
            }
        }
        let mut next: PoolMap<C> = current
            .iter()
            .filter(|(a, p)| **a != addr && !p.endpoint.is_closed())
            .map(|(a, p)| (*a, Arc::clone(p)))
            .collect();
        let pool = Arc::new(Pool {
            endpoint: Arc::clone(endpoint),
            slots: (0..max_conns.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        });
        next.insert(addr, Arc::clone(&pool));
        self.map.store(Arc::new(next));
        pool
    }

    /// Lets go of every pool: their connections end once their last response is in, and new
    /// requests dial anew (with the settings of the moment).
    pub(crate) fn clear(&self) {
        let _writer = lock(&self.write);
        self.map.store(Arc::default());
    }

    /// How many endpoints have a pool.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }
}

impl<C: Connection> Pool<C> {
    fn send(&self, dial: &dyn Fn() -> C, d: Dispatch) -> Result<(), Box<Dispatch>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        let d = match &*slot.conn.load() {
            Some(c) if !c.is_closed() => match c.send(d) {
                Ok(()) => return Ok(()),
                Err(d) => *d,
            },
            _ => d,
        };
        let _dialling = lock(&slot.dial);
        let current = slot.conn.load();
        if let Some(c) = &*current {
            if !c.is_closed() {
                return c.send(d);
            }
        }
        let conn = Arc::new(dial());
        slot.conn.store(Some(Arc::clone(&conn)));
        conn.send(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use mesh_core::{Cluster, ClusterLoadAssignment, Reload};
    use mesh_lb::ClusterManager;
    use mesh_xprotocol::bolt::{self, BoltRequest};
    use mesh_xprotocol::{BoltCodec, XCodec};

    /// A connection with no task or socket: closed when its receiver is dropped.
    struct TestConn(tokio::sync::mpsc::UnboundedSender<Dispatch>);

    impl Connection for TestConn {
        fn is_closed(&self) -> bool {
            self.0.is_closed()
        }

        fn send(&self, d: Dispatch) -> Result<(), Box<Dispatch>> {
            self.0.send(d).map_err(|e| Box::new(e.0))
        }
    }

    fn conn() -> (TestConn, tokio::sync::mpsc::UnboundedReceiver<Dispatch>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (TestConn(tx), rx)
    }

    fn dispatch() -> Dispatch {
        let raw = bolt::request(&BoltRequest {
            id: 1,
            codec: bolt::CODEC_HESSIAN2,
            timeout_ms: 1000,
            oneway: true,
            class: "x",
            headers: &[("service", "s"), ("sofa_head_method_name", "m")],
            content: b"",
        });
        let frame = BoltCodec
            .decode(&mut bytes::BytesMut::from(&raw[..]), 1 << 20)
            .unwrap()
            .unwrap();
        Dispatch {
            frame,
            reply: None,
            deadline: std::time::Instant::now(),
        }
    }

    /// The live state of `127.0.0.1:port` in a cluster of its own (a fresh state each call).
    fn endpoint(port: u16) -> Arc<EndpointState> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let m = ClusterManager::new();
        let mut c = Cluster::new("c");
        c.load_assignment = Some(ClusterLoadAssignment::from_addrs("c", [addr]));
        m.reload(vec![c]).unwrap();
        m.get("c").unwrap().endpoints()[&addr].clone()
    }

    #[test]
    fn slots_fill_up_to_the_maximum_then_round_robin() {
        let pools = Pools::<TestConn>::default();
        let ep = endpoint(1);
        let receivers = Mutex::new(Vec::new());
        let dial = || {
            let (c, rx) = conn();
            receivers.lock().unwrap().push(rx);
            c
        };
        for _ in 0..10 {
            assert!(pools.send(&ep, 3, &dial, dispatch()).is_ok());
        }
        let mut rxs = receivers.into_inner().unwrap();
        assert_eq!(rxs.len(), 3, "three slots, three connections");
        let per_conn: Vec<usize> = rxs
            .iter_mut()
            .map(|rx| std::iter::from_fn(|| rx.try_recv().ok()).count())
            .collect();
        assert_eq!(per_conn, [4, 3, 3]);
        assert_eq!(pools.len(), 1);
    }

    #[test]
    fn a_dead_connection_is_replaced_and_a_new_endpoint_state_gets_a_new_pool() {
        let pools = Pools::<TestConn>::default();
        let ep = endpoint(1);
        let dialled = AtomicUsize::new(0);
        let kept = Mutex::new(Vec::new());
        let dial = || {
            dialled.fetch_add(1, Ordering::Relaxed);
            let (c, rx) = conn();
            kept.lock().unwrap().push(rx);
            c
        };
        assert!(pools.send(&ep, 1, &dial, dispatch()).is_ok());
        assert!(pools.send(&ep, 1, &dial, dispatch()).is_ok());
        assert_eq!(dialled.load(Ordering::Relaxed), 1);
        // The connection's task ended: the next request dials again.
        kept.lock().unwrap().clear();
        assert!(pools.send(&ep, 1, &dial, dispatch()).is_ok());
        assert_eq!(dialled.load(Ordering::Relaxed), 2);
        // Same address, another endpoint state (removed, closed and re-added): a fresh pool
        // replaces the old one.
        let again = endpoint(1);
        assert!(pools.send(&again, 1, &dial, dispatch()).is_ok());
        assert_eq!(dialled.load(Ordering::Relaxed), 3);
        assert_eq!(pools.len(), 1);
        assert!(pools.send(&endpoint(2), 1, &dial, dispatch()).is_ok());
        assert_eq!(pools.len(), 2);
        pools.clear();
        assert_eq!(pools.len(), 0);
    }
}
