//! The warming gate at work: the xDS sinks of a dynamic sidecar go through a [`Warmer`], which
//! tells the [`WarmingGate`] what arrived, makes live what the gate says is warm (cluster
//! manager first, then listeners), and runs the initial-fetch timer. See [`crate::warming`] for
//! the semantics and where they differ from Envoy's.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mesh_core::{
    Checked, Cluster, ClusterLoadAssignment, Listener, Reload, ReloadEach, ReloadError,
    RouteConfiguration, Validate,
};
use mesh_lb::ClusterManager;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::listeners::ListenerManager;
use crate::warming::{WarmingGate, WarmingStatus};

/// How long the timer waits before retrying a resource that timed out but could not be made
/// live (a listen error): no tight loop on a deadline in the past.
const RETRY: Duration = Duration::from_secs(1);

/// The gate and the sockets bound for warming listeners.
struct State {
    gate: WarmingGate,
    /// Warming listeners' sockets, bound but not listening, by name, with the config address
    /// they were bound for.
    reserved: HashMap<String, (SocketAddr, TcpSocket)>,
}

struct Inner {
    state: Mutex<State>,
    listeners: ListenerManager,
    clusters: ClusterManager,
    /// Wakes the timer when a deadline may have moved.
    wake: Notify,
    warming_listeners: Gauge,
    warming_clusters: Gauge,
}

/// Feeds the listener and cluster managers through the warming gate. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Warmer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Warmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmer")
            .field("warming", &self.status())
            .finish_non_exhaustive()
    }
}

impl Warmer {
    /// A warmer in front of `listeners` and `clusters`, with the initial-fetch `timeout`
    /// (`None`: wait for ever); registers the `mesh_warming_listeners` and
    /// `mesh_warming_clusters` gauges in `registry`.
    pub fn new(
        listeners: ListenerManager,
        clusters: ClusterManager,
        timeout: Option<Duration>,
        registry: &mut Registry,
    ) -> Self {
        let (warming_listeners, warming_clusters) = (Gauge::default(), Gauge::default());
        let reg = registry.sub_registry_with_prefix("mesh_warming");
        reg.register(
            "listeners",
            "Listeners received by LDS that wait for their route table, clusters or endpoints",
            warming_listeners.clone(),
        );
        reg.register(
            "clusters",
            "Clusters received by CDS that wait for their endpoints (EDS)",
            warming_clusters.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    gate: WarmingGate::new(timeout),
                    reserved: HashMap::new(),
                }),
                listeners,
                clusters,
                wake: Notify::new(),
                warming_listeners,
                warming_clusters,
            }),
        }
    }

    /// What is warming now, and what each waits for.
    pub fn status(&self) -> WarmingStatus {
        self.lock().gate.status()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below replaces the gate whole once it succeeded: a panic mid-update
        // leaves the previous, consistent state.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the initial-fetch timer until `stop`: when a warming resource's deadline passes,
    /// it goes live with what it has.
    pub fn spawn_timer(&self, stop: CancellationToken) -> JoinHandle<()> {
        let warmer = self.clone();
        tokio::spawn(async move {
            loop {
                let now = Instant::now();
                let deadline = warmer.lock().gate.next_deadline();
                // A deadline already past is one that could not be made live: retry later.
                let deadline = deadline.map(|d| if d <= now { now + RETRY } else { d });
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = warmer.inner.wake.notified() => {}
                    () = sleep => {
                        let mut state = warmer.lock();
                        warmer.settle(&mut state, Instant::now());
                    }
                }
            }
        })
    }

    /// Makes live whatever the gate says is warm now (clusters, then the listeners that may
    /// wait for them). A refusal here is logged, not returned: the update that triggered it was
    /// fine, and the resource stays warming until the next change or its deadline.
    fn settle(&self, state: &mut State, now: Instant) {
        if let Err(e) = self.apply_clusters(&mut state.gate, now) {
            tracing::warn!(error = %e, "a warmed cluster could not go live");
        }
        if let Err(e) = self.apply_listeners(state, now) {
            tracing::warn!(error = %e, "a warmed listener could not go live");
        }
        self.publish(&state.gate);
    }

    fn apply_clusters(&self, gate: &mut WarmingGate, now: Instant) -> Result<(), ReloadError> {
        let plan = gate.plan_clusters(now);
        if gate.clusters_differ(&plan) {
            self.inner.clusters.reload(plan.clone())?;
            gate.clusters_applied(&plan);
        }
        Ok(())
    }

    fn apply_listeners(&self, state: &mut State, now: Instant) -> Result<(), ReloadError> {
        let plan = state.gate.plan_listeners(now);
        if !state.gate.listeners_differ(&plan) {
            return Ok(());
        }
        // The sockets reserved for the addresses the plan makes live (a listener still warming
        // keeps its reservation; a refused apply loses the ones it took, and the listener
        // binds anew when it next goes live).
        let mut sockets: HashMap<String, TcpSocket> = HashMap::new();
        for l in &plan {
            if state
                .reserved
                .get(&l.name)
                .is_some_and(|(a, _)| *a == l.address)
            {
                if let Some((_, s)) = state.reserved.remove(&l.name) {
                    sockets.insert(l.name.clone(), s);
                }
            }
        }
        self.inner
            .listeners
            .apply_reserved(plan.clone(), &mut sockets)?;
        state.gate.listeners_applied(&plan);
        Ok(())
    }

    fn publish(&self, gate: &WarmingGate) {
        let s = gate.status();
        self.inner
            .warming_listeners
            .set(i64::try_from(s.listeners.len()).unwrap_or(i64::MAX));
        self.inner
            .warming_clusters
            .set(i64::try_from(s.clusters.len()).unwrap_or(i64::MAX));
        self.inner.wake.notify_one();
    }

    /// LDS: checks every listener and binds the new addresses of the warming ones (refusing
    /// the update on any failure, with nothing changed), then makes live what is warm.
    fn set_listeners(&self, update: Vec<Listener>) -> Result<(), ReloadError> {
        let now = Instant::now();
        let mut seen = HashSet::new();
        for l in &update {
            self.inner.listeners.check(l)?;
            if !seen.insert(l.name.as_str()) {
                return Err(ReloadError::new("listener", &l.name, "listed twice"));
            }
        }
        let mut state = self.lock();
        let mut gate = state.gate.clone();
        gate.set_listeners(update, now);
        let live = self.inner.listeners.configs();
        let live_addr = |name: &str| live.iter().find(|l| l.name == name).map(|l| l.address);
        let mut reserved = HashMap::new();
        for l in gate.warming_listeners() {
            if live_addr(&l.name) == Some(l.address) {
                continue;
            }
            let kept = state
                .reserved
                .get(&l.name)
                .is_some_and(|(addr, _)| *addr == l.address);
            if !kept {
                reserved.insert(l.name.clone(), (l.address, ListenerManager::reserve(l)?));
            }
        }
        // Reservations of listeners no longer warming (or moved again) are released.
        let warming: HashSet<String> = gate.warming_listeners().map(|l| l.name.clone()).collect();
        state
            .reserved
            .retain(|n, _| warming.contains(n) && !reserved.contains_key(n));
        state.reserved.extend(reserved);
        let previous = std::mem::replace(&mut state.gate, gate);
        if let Err(e) = self.apply_listeners(&mut state, now) {
            state.gate = previous;
            return Err(e);
        }
        self.publish(&state.gate);
        Ok(())
    }

    /// CDS: validates every cluster, makes live the warm ones (an updated cluster still
    /// warming keeps its live version), then the listeners that waited for them.
    fn set_clusters(&self, update: Vec<Cluster>) -> Result<(), ReloadError> {
        let now = Instant::now();
        let mut seen = HashSet::new();
        for c in &update {
            c.validate()
                .map_err(|e| ReloadError::invalid("cluster", &c.name, e))?;
            if !seen.insert(c.name.as_str()) {
                return Err(ReloadError::new("cluster", &c.name, "listed twice"));
            }
        }
        let mut state = self.lock();
        let mut gate = state.gate.clone();
        gate.set_clusters(update, now);
        self.apply_clusters(&mut gate, now)?;
        state.gate = gate;
        self.settle(&mut state, now);
        Ok(())
    }

    /// RDS: the tables go to the listeners serving them (as before warming), and a warming
    /// listener whose table arrived may go live.
    fn set_tables(&self, update: &[RouteConfiguration]) -> Result<(), ReloadError> {
        let mut state = self.lock();
        for rc in update {
            self.inner.listeners.apply_routes(rc)?;
        }
        self.inner
            .listeners
            .retain_routes(&update.iter().map(|rc| rc.name.clone()).collect());
        state.gate.set_tables(update);
        self.settle(&mut state, Instant::now());
        Ok(())
    }

    /// EDS: the assignment goes to the cluster manager (which keeps it for a cluster not live
    /// yet); the first one for a name warms the clusters waiting for it.
    fn set_endpoints(&self, update: Checked<ClusterLoadAssignment>) -> Result<(), ReloadError> {
        let name = update.cluster_name.clone();
        let mut state = self.lock();
        self.inner.clusters.reload(update)?;
        if !state.gate.has_eds(&name) {
            state.gate.eds_arrived(&name);
            self.settle(&mut state, Instant::now());
        }
        Ok(())
    }

    fn remove_endpoints(&self, name: &str) -> Result<(), ReloadError> {
        let mut state = self.lock();
        ReloadEach::<Checked<ClusterLoadAssignment>>::remove(&self.inner.clusters, name)?;
        state.gate.eds_removed(name);
        Ok(())
    }

    /// The LDS sink.
    pub fn listener_sink(&self) -> Arc<dyn Reload<Vec<Listener>>> {
        Arc::new(ListenerSink(self.clone()))
    }

    /// The RDS sink.
    pub fn route_sink(&self) -> Arc<dyn Reload<Vec<RouteConfiguration>>> {
        Arc::new(RouteSink(self.clone()))
    }

    /// The CDS sink.
    pub fn cluster_sink(&self) -> Arc<dyn Reload<Vec<Cluster>>> {
        Arc::new(ClusterSink(self.clone()))
    }

    /// The EDS sink (per resource, told of removals).
    pub fn endpoint_sink(&self) -> Arc<dyn ReloadEach<Checked<ClusterLoadAssignment>>> {
        Arc::new(EndpointSink(self.clone()))
    }
}

struct ListenerSink(Warmer);

impl Reload<Vec<Listener>> for ListenerSink {
    fn reload(&self, update: Vec<Listener>) -> Result<(), ReloadError> {
        self.0.set_listeners(update)
    }
}

struct RouteSink(Warmer);

impl Reload<Vec<RouteConfiguration>> for RouteSink {
    fn reload(&self, update: Vec<RouteConfiguration>) -> Result<(), ReloadError> {
        self.0.set_tables(&update)
    }
}

struct ClusterSink(Warmer);

impl Reload<Vec<Cluster>> for ClusterSink {
    fn reload(&self, update: Vec<Cluster>) -> Result<(), ReloadError> {
        self.0.set_clusters(update)
    }
}

struct EndpointSink(Warmer);

impl Reload<Checked<ClusterLoadAssignment>> for EndpointSink {
    fn reload(&self, update: Checked<ClusterLoadAssignment>) -> Result<(), ReloadError> {
        self.0.set_endpoints(update)
    }
}

impl ReloadEach<Checked<ClusterLoadAssignment>> for EndpointSink {
    fn remove(&self, name: &str) -> Result<(), ReloadError> {
        self.0.remove_endpoints(name)
    }
}

#[cfg(test)]
#[path = "warmer_tests.rs"]
mod tests;
