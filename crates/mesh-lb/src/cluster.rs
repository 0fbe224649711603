//! One cluster at run time: its config, endpoint states, precomputed endpoint set, breakers,
//! pooled clients and the background tasks it owns.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh_core::{Cluster, ClusterLoadAssignment, Locality, Shared};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::circuit_breaker::CircuitBreaker;
use crate::connector::EndpointMap;
use crate::endpoint::EndpointState;
use crate::set::{BuildOptions, EndpointSet};
use crate::upstream::UpstreamClients;

/// How long a removed endpoint may take to finish its in-flight requests before its
/// connections are closed anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// A cluster's run-time state. Obtained from [`crate::ClusterManager::get`].
///
/// Its background tasks (outlier sweeps, health checks, drains) end when the last handle is
/// dropped: the state owns a cancellation token that its `Drop` fires.
pub struct ClusterState {
    pub(crate) name: Arc<str>,
    pub(crate) config: Cluster,
    pub(crate) set: Shared<EndpointSet>,
    pub(crate) endpoints: Shared<EndpointMap>,
    /// The current assignment; the lock also serialises rebuilds (config path only).
    assignment: Mutex<ClusterLoadAssignment>,
    local: Option<Locality>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) upstream: UpstreamClients,
    /// Time zero for ejection deadlines.
    pub(crate) epoch: tokio::time::Instant,
    pub(crate) ejected: AtomicU32,
    /// Wakes the maintenance task to rebuild after a health change.
    pub(crate) rebuild_needed: Arc<Notify>,
    has_maintenance: bool,
    pub(crate) tasks: CancellationToken,
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
        assignment: ClusterLoadAssignment,
    ) -> Arc<Self> {
        let name: Arc<str> = config.name.as_str().into();
        let breaker = Arc::new(CircuitBreaker::new(config.circuit_breakers.clone()));
        let endpoints = Shared::from_arc(carried.unwrap_or_default());
        let upstream =
            UpstreamClients::new(&config, name.clone(), breaker.clone(), endpoints.clone());
        let runtime = tokio::runtime::Handle::try_current().ok();
        let cluster = Arc::new(Self {
            name,
            has_maintenance: runtime.is_some() && config.outlier_detection.is_some(),
            config,
            set: Shared::new(EndpointSet::default()),
            endpoints,
            assignment: Mutex::new(ClusterLoadAssignment::default()),
            local,
            breaker,
            upstream,
            epoch: tokio::time::Instant::now(),
            ejected: AtomicU32::new(0),
            rebuild_needed: Arc::new(Notify::new()),
            tasks: CancellationToken::new(),
        });
        cluster.update_assignment(assignment);
        if let Some(rt) = runtime {
            if let Some(od) = &cluster.config.outlier_detection {
                rt.spawn(crate::outlier::maintain(
                    Arc::downgrade(&cluster),
                    cluster.tasks.clone(),
                    cluster.rebuild_needed.clone(),
                    od.interval,
                ));
            }
            if let Some(hc) = &cluster.config.health_check {
                rt.spawn(crate::health_check::run(
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
    pub fn circuit_breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Picks an endpoint as the data path does (for tests, benchmarks and custom data paths).
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<EndpointState>> {
        self.set.load().pick(hash).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, ClusterLoadAssignment> {
        // A panic while holding the lock leaves a consistent assignment behind (it is only
        // replaced whole), so a poisoned lock is still usable.
        self.assignment.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps in a new endpoint assignment: endpoints that stay keep their state, new ones start
    /// healthy, removed ones drain and then close their connections.
    pub(crate) fn update_assignment(&self, cla: ClusterLoadAssignment) {
        let mut current = self.lock();
        let old = self.endpoints.load_full();
        let mut map = EndpointMap::with_capacity(cla.len());
        for (_, e) in cla.iter() {
            let st = old
                .get(&e.address)
                .cloned()
                .unwrap_or_else(|| Arc::new(EndpointState::new(e.address)));
            st.eds_healthy
                .store(e.health.is_healthy(), Ordering::Relaxed);
            map.insert(e.address, st);
        }
        let set = EndpointSet::build(&cla, &map, self.options());
        self.endpoints.store(map);
        self.set.store(set);
        *current = cla;
        drop(current);
        let now = self.endpoints.load();
        for (addr, st) in old.iter() {
            if !now.contains_key(addr) {
                if st.ejected.swap(false, Ordering::AcqRel) {
                    self.ejected.fetch_sub(1, Ordering::AcqRel);
                }
                self.drain(st.clone());
            }
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

    /// Recomputes the endpoint set from the current assignment and health (off the data path).
    pub(crate) fn rebuild(&self) {
        let current = self.lock();
        let map = self.endpoints.load_full();
        self.set
            .store(EndpointSet::build(&current, &map, self.options()));
    }

    /// Asks for a rebuild after a health change seen on the data path: the maintenance task
    /// does it when there is one, otherwise it happens here.
    pub(crate) fn request_rebuild(&self) {
        if self.has_maintenance {
            self.rebuild_needed.notify_one();
        } else {
            self.rebuild();
        }
    }

    /// Closes a removed endpoint's connections once its in-flight requests are done.
    fn drain(&self, st: Arc<EndpointState>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            st.close.cancel();
            return;
        };
        let owner = self.tasks.clone();
        rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
            while st.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    _ = owner.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            st.close.cancel();
        });
    }
}
