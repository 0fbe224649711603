//! One cluster at run time: its config, endpoint states, precomputed endpoint set, breakers,
//! pooled clients and the background tasks it owns.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use http::Request;
use mesh_core::{Body, Cluster, ClusterLoadAssignment, HealthStatus, Locality, Shared};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::circuit_breaker::CircuitBreaker;
use crate::connector::EndpointMap;
use crate::endpoint::EndpointState;
use crate::health::HealthTarget;
use crate::health_check;
use crate::outlier::{self, Outcome, OutlierDetector, Outliers};
use crate::pool::UpstreamClients;
use crate::set::{BuildOptions, EndpointSet};
use crate::tls::ClusterTls;

/// How long a removed endpoint may take to finish its in-flight requests before its
/// connections are closed anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// A cluster's run-time state. Obtained from [`crate::ClusterManager::get`].
///
/// Its background tasks (outlier sweeps, health checks, drains) end when the last handle is
/// dropped: the state owns a cancellation token that its `Drop` fires.
// `repr(C)`: the fields a request reads come first, so they share the cache lines right after
// the Arc's counts instead of being spread through the config by the compiler's layout.
#[repr(C)]
pub struct ClusterState {
    /// The current endpoint set, in this struct rather than behind a `Shared` handle: the data
    /// path reaches it with one pointer less (it is never shared apart from its cluster).
    set: ArcSwap<EndpointSet>,
    breaker: Arc<CircuitBreaker>,
    /// `config.outlier_detection.is_some()`, beside the other hot fields: a response's outcome
    /// is recorded only then.
    detects_outliers: bool,
    name: Arc<str>,
    config: Cluster,
    endpoints: Shared<EndpointMap>,
    /// The current assignment and the draining endpoints; the lock also serialises rebuilds
    /// and drain decisions (config path only).
    assignment: Mutex<Assignment>,
    local: Option<Locality>,
    upstream: UpstreamClients,
    outliers: OutlierDetector,
    /// Wakes the maintenance task to rebuild after a health change.
    rebuild_needed: Arc<Notify>,
    has_maintenance: bool,
    tasks: CancellationToken,
}

/// What the config-path lock guards.
#[derive(Default)]
struct Assignment {
    current: Arc<ClusterLoadAssignment>,
    /// Removed endpoints whose connections are not closed yet; an endpoint re-added meanwhile
    /// is revived from here, so it keeps its pooled connections (the pool is keyed by address).
    draining: EndpointMap,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState")
            .field("name", &self.name)
            .field("endpoints", &self.set.load().len())
            .finish_non_exhaustive()
    }
}

impl Drop for ClusterState {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}

impl ClusterState {
    /// Builds a cluster over `assignment`, reusing the endpoint states in `carried` (from the
    /// previous version of this cluster), and starts its background tasks when a tokio runtime
    /// is available.
    pub(crate) fn new(
        config: Cluster,
        local: Option<Locality>,
        carried: Option<Arc<EndpointMap>>,
        assignment: Arc<ClusterLoadAssignment>,
        tls: Option<ClusterTls>,
    ) -> Arc<Self> {
        let name: Arc<str> = config.name.as_str().into();
        let breaker = Arc::new(CircuitBreaker::new(config.circuit_breakers.clone()));
        let carried = carried.unwrap_or_default();
        let outliers = OutlierDetector::new(config.outlier_detection.clone(), &carried);
        let endpoints = Shared::from_arc(carried);
        let upstream = UpstreamClients::new(
            &config,
            name.clone(),
            breaker.clone(),
            endpoints.clone(),
            tls,
        );
        let runtime = tokio::runtime::Handle::try_current().ok();
        let cluster = Arc::new(Self {
            name,
            has_maintenance: runtime.is_some() && config.outlier_detection.is_some(),
            detects_outliers: config.outlier_detection.is_some(),
            config,
            set: ArcSwap::from_pointee(EndpointSet::default()),
            endpoints,
            assignment: Mutex::new(Assignment::default()),
            local,
            breaker,
            upstream,
            outliers,
            rebuild_needed: Arc::new(Notify::new()),
            tasks: CancellationToken::new(),
        });
        cluster.update_assignment(assignment);
        if let Some(rt) = runtime {
            if let Some(od) = &cluster.config.outlier_detection {
                rt.spawn(outlier::maintain(
                    Arc::downgrade(&cluster),
                    cluster.tasks.clone(),
                    cluster.rebuild_needed.clone(),
                    od.interval,
                ));
            }
            if let Some(hc) = &cluster.config.health_check {
                rt.spawn(health_check::run(
                    Arc::downgrade(&cluster),
                    cluster.tasks.clone(),
                    hc.clone(),
                    cluster.config.protocol,
                    cluster.name.clone(),
                ));
            }
        }
        cluster
    }

    /// The cluster's name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's config.
    pub fn config(&self) -> &Cluster {
        &self.config
    }

    /// The current endpoint set (one atomic load).
    pub fn endpoint_set(&self) -> Arc<EndpointSet> {
        self.set.load_full()
    }

    /// The live state of every endpoint, by address.
    pub fn endpoints(&self) -> Arc<EndpointMap> {
        self.endpoints.load_full()
    }

    /// The cluster's circuit breakers.
    #[inline]
    pub fn circuit_breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Picks an endpoint as the data path does (for tests, benchmarks and custom data paths).
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<EndpointState>> {
        self.set.load().pick(hash).cloned()
    }

    /// The current endpoint set, borrowed for the data path's pick (one arc-swap load, as
    /// [`endpoint_set`](Self::endpoint_set) without the owned `Arc`).
    #[inline]
    pub(crate) fn current_set(&self) -> Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    /// The name as one shared string (cloned into the manager's map, not copied).
    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether outlier detection is on (so outcomes are worth recording).
    #[inline]
    pub fn detects_outliers(&self) -> bool {
        self.detects_outliers
    }

    /// Records a request's outcome against its endpoint (one picked from this cluster), for
    /// outlier detection: past the configured streak of failures the endpoint is ejected. A
    /// no-op when the cluster does not detect outliers. The HTTP load balancer records every
    /// response here; other data paths (the RPC proxy) call it the same way.
    #[inline]
    pub fn record(&self, ep: &Arc<EndpointState>, outcome: Outcome) {
        if self.detects_outliers {
            self.outliers.record(self, ep, outcome);
        }
    }

    /// Sends `req` (URI already pointed at `endpoint`) over the cluster's pooled client of its
    /// protocol.
    #[inline]
    pub(crate) fn send(
        &self,
        req: Request<Body>,
        endpoint: SocketAddr,
    ) -> crate::upstream::UpstreamFuture {
        self.upstream.send(req, endpoint)
    }

    fn lock(&self) -> MutexGuard<'_, Assignment> {
        // A panic while holding the lock leaves a consistent assignment behind (it is only
        // replaced whole), so a poisoned lock is still usable.
        self.assignment.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps in a new endpoint assignment: endpoints that stay keep their state, new ones start
    /// healthy, removed ones drain and then close their connections.
    pub(crate) fn update_assignment(self: &Arc<Self>, cla: Arc<ClusterLoadAssignment>) {
        let mut guard = self.lock();
        let old = self.endpoints.load_full();
        // The EDS health of the hosts that stay, in the same pass that finds whether the hosts
        // are the same ones (the general path below stores the same values for them).
        let mut kept = Vec::with_capacity(old.len());
        for (_, e) in cla.iter() {
            if let Some(st) = old.get(&e.address) {
                store_eds_health(st, e.health);
                kept.push(st);
            }
        }
        // A validated assignment lists each address once: as many found as held means the
        // same set.
        if kept.len() == old.len() && kept.len() == cla.len() {
            // The common EDS update (weights, health, localities change; the hosts do not):
            // the live states and their map stay as they are, only the set is rebuilt, from the
            // states just looked up (in the assignment's order, as the build walks it).
            let mut states = kept.into_iter();
            let set = EndpointSet::build_with(&cla, |_| states.next(), self.options());
            self.set.store(Arc::new(set));
            guard.current = cla;
            return;
        }
        let mut map = EndpointMap::with_capacity_and_hasher(cla.len(), Default::default());
        for (_, e) in cla.iter() {
            let st = match old.get(&e.address) {
                Some(st) => st.clone(),
                None => match guard.draining.remove(&e.address) {
                    Some(st) => {
                        st.removed.store(false, Ordering::Release);
                        st
                    }
                    None => Arc::new(EndpointState::new(e.address)),
                },
            };
            store_eds_health(&st, e.health);
            map.insert(e.address, st);
        }
        let set = EndpointSet::build(&cla, &map, self.options());
        let mut removed = Vec::new();
        for (addr, st) in old.iter() {
            if !map.contains_key(addr) {
                self.outliers.forget(st);
                st.removed.store(true, Ordering::Release);
                guard.draining.insert(*addr, st.clone());
                removed.push(st.clone());
            }
        }
        self.endpoints.store(map);
        self.set.store(Arc::new(set));
        guard.current = cla;
        // Draining takes the lock itself (at once when there is no runtime).
        drop(guard);
        for st in removed {
            self.drain(st);
        }
    }

    fn options(&self) -> BuildOptions<'_> {
        BuildOptions {
            policy: &self.config.lb_policy,
            panic_threshold: self.config.healthy_panic_threshold,
            locality_weighted: self.config.locality_weighted,
            local: self.local.as_ref(),
        }
    }

    /// Closes a removed endpoint's connections once its in-flight requests are done, unless it
    /// was re-added meanwhile.
    fn drain(self: &Arc<Self>, st: Arc<EndpointState>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime, so no request in flight either.
            self.close_if_removed(&st);
            return;
        };
        let (owner, cluster) = (self.tasks.clone(), Arc::downgrade(self));
        rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
            loop {
                // The first wait is a grace period for a request that picked the endpoint from
                // the previous set and is about to count itself in flight.
                tokio::select! {
                    _ = owner.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                if st.in_flight() == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            match cluster.upgrade() {
                Some(c) => c.close_if_removed(&st),
                None => st.closer.close(),
            }
        });
    }

    fn close_if_removed(&self, st: &Arc<EndpointState>) {
        let mut guard = self.lock();
        if st.removed.load(Ordering::Acquire) {
            st.closer.close();
            if guard
                .draining
                .get(&st.address())
                .is_some_and(|d| Arc::ptr_eq(d, st))
            {
                guard.draining.remove(&st.address());
            }
        }
    }
}

impl HealthTarget for ClusterState {
    fn cluster_name(&self) -> &str {
        &self.name
    }

    fn endpoint_map(&self) -> &Shared<EndpointMap> {
        &self.endpoints
    }

    fn rebuild(&self) {
        let guard = self.lock();
        let map = self.endpoints.load_full();
        let set = EndpointSet::build(&guard.current, &map, self.options());
        self.set.store(Arc::new(set));
    }

    fn request_rebuild(&self) {
        if self.has_maintenance {
            self.rebuild_needed.notify_one();
        } else {
            self.rebuild();
        }
    }
}

impl Outliers for ClusterState {
    fn outliers(&self) -> &OutlierDetector {
        &self.outliers
    }
}

/// Records the health the control plane reports for an endpoint.
fn store_eds_health(st: &EndpointState, health: HealthStatus) {
    st.eds_healthy.store(health.is_healthy(), Ordering::Relaxed);
    st.eds_degraded
        .store(health == HealthStatus::Degraded, Ordering::Relaxed);
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
