//! The set of live listeners, reconciled against config as Envoy does for LDS: a new listener is
//! bound, a removed one stops accepting and drains, one whose address changed is rebound, and
//! one that only changed its routes keeps its socket and swaps its table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::{Listener, ReloadError, RouteConfiguration, Validate};
use mesh_lb::ClusterManager;
use mesh_router::LayerRegistry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::server::{serve, ListenerSettings};
use crate::stack::ListenerStack;

/// One bound listener.
struct Live {
    config: Listener,
    stack: ListenerStack,
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Owns every listener's socket task; dropping it does not stop them, [`ListenerManager::shutdown`]
/// does (and waits for the drain).
#[derive(Clone)]
pub struct ListenerManager {
    live: Arc<Mutex<HashMap<String, Live>>>,
    clusters: ClusterManager,
    registry: LayerRegistry,
    metrics: Metrics,
    max_connections: usize,
    drain: Duration,
}

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerManager")
            .field("listeners", &self.addresses())
            .finish_non_exhaustive()
    }
}

fn refuse(l: &Listener, reason: impl std::fmt::Display) -> ReloadError {
    ReloadError::new("listener", &l.name, reason)
}

impl ListenerManager {
    /// A manager with no listener yet.
    pub fn new(
        clusters: ClusterManager,
        registry: LayerRegistry,
        metrics: Metrics,
        max_connections: usize,
        drain: Duration,
    ) -> Self {
        Self {
            live: Arc::default(),
            clusters,
            registry,
            metrics,
            max_connections,
            drain,
        }
    }

    /// The bound addresses by listener name (the real port when the config said 0).
    pub fn addresses(&self) -> HashMap<String, SocketAddr> {
        self.lock()
            .iter()
            .map(|(n, l)| (n.clone(), l.local_addr))
            .collect()
    }

    /// The live listener configs.
    pub fn configs(&self) -> Vec<Listener> {
        self.lock().values().map(|l| l.config.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // The map is touched only on config changes; a poisoned lock means a panic mid-update,
        // and the map itself is still consistent (entries are inserted whole).
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the live set equal `wanted`. `routes` resolves route-config names. Every listener
    /// is validated and every new socket bound before anything changes, so a refused update
    /// leaves the old set serving.
    pub async fn apply(
        &self,
        wanted: Vec<Listener>,
        routes: &HashMap<String, RouteConfiguration>,
    ) -> Result<(), ReloadError> {
        let mut prepared = Vec::new();
        let current: HashMap<String, (Listener, SocketAddr)> = self
            .lock()
            .iter()
            .map(|(n, l)| (n.clone(), (l.config.clone(), l.local_addr)))
            .collect();
        for l in &wanted {
            l.validate().map_err(|e| refuse(l, e))?;
            let table = match &l.route_config {
                Some(_) => None,
                None => Some(routes.get(&l.route_config_name).ok_or_else(|| {
                    refuse(
                        l,
                        format!("route configuration {:?} is not known", l.route_config_name),
                    )
                })?),
            };
            match current.get(&l.name) {
                Some((old, _)) if old == l => {}
                Some((old, _)) if old.address == l.address && old.http == l.http => {
                    prepared.push((l.clone(), table.cloned(), None));
                }
                _ => {
                    let socket = TcpListener::bind(l.address)
                        .await
                        .map_err(|e| refuse(l, format!("bind {}: {e}", l.address)))?;
                    prepared.push((l.clone(), table.cloned(), Some(socket)));
                }
            }
        }
        let wanted_names: std::collections::HashSet<&str> =
            wanted.iter().map(|l| l.name.as_str()).collect();
        // Build every new stack before touching the live set.
        let mut stacks = Vec::new();
        for (l, table, socket) in prepared {
            let stack = match (&socket, self.lock().get(&l.name)) {
                (None, Some(live)) => {
                    let s = live.stack.clone();
                    let rc = table
                        .clone()
                        .or_else(|| l.route_config.clone())
                        .unwrap_or_default();
                    s.reload_routes(&l, rc)?;
                    s
                }
                _ => ListenerStack::new(
                    &l,
                    table.as_ref(),
                    self.clusters.clone(),
                    self.registry.clone(),
                )?,
            };
            stacks.push((l, stack, socket));
        }
        let mut removed = Vec::new();
        {
            let mut live = self.lock();
            for (l, stack, socket) in stacks {
                match socket {
                    None => {
                        if let Some(entry) = live.get_mut(&l.name) {
                            entry.config = l;
                        }
                    }
                    Some(socket) => {
                        let entry = self.spawn(l, stack, socket);
                        if let Some(old) = live.insert(entry.config.name.clone(), entry) {
                            removed.push(old);
                        }
                    }
                }
            }
            let gone: Vec<String> = live
                .keys()
                .filter(|n| !wanted_names.contains(n.as_str()))
                .cloned()
                .collect();
            for n in gone {
                removed.extend(live.remove(&n));
            }
        }
        for old in removed {
            tracing::info!(listener = %old.config.name, "listener removed or rebound: draining");
            old.stop.cancel();
            // The drain runs on the old task; it owns the old socket until then.
            tokio::spawn(async move {
                let _ = old.task.await;
            });
        }
        Ok(())
    }

    /// Applies a route table (RDS) to every listener that serves it.
    pub fn apply_routes(&self, routes: &RouteConfiguration) -> Result<(), ReloadError> {
        let live = self.lock();
        for l in live.values().filter(|l| {
            l.config.route_config.is_none() && l.config.route_config_name == routes.name
        }) {
            l.stack.reload_routes(&l.config, routes.clone())?;
        }
        Ok(())
    }

    fn spawn(&self, config: Listener, stack: ListenerStack, socket: TcpListener) -> Live {
        let local_addr = socket.local_addr().unwrap_or(config.address);
        let stop = CancellationToken::new();
        let settings = ListenerSettings {
            name: Arc::from(config.name.as_str()),
            http: config.http.clone(),
            max_connections: self.max_connections,
        };
        tracing::info!(listener = %config.name, %local_addr, "listening");
        let task = tokio::spawn(serve(
            socket,
            settings,
            stack.service(),
            self.metrics.clone(),
            stop.clone(),
            self.drain,
        ));
        Live {
            config,
            stack,
            local_addr,
            stop,
            task,
        }
    }

    /// Stops accepting on every listener and waits until each has drained (or hit the drain
    /// deadline).
    pub async fn shutdown(&self) {
        let all: Vec<Live> = self.lock().drain().map(|(_, l)| l).collect();
        for l in &all {
            l.stop.cancel();
        }
        for l in all {
            let _ = l.task.await;
        }
    }
}
