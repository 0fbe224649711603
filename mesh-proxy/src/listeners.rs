//! The set of live listeners, reconciled against config as Envoy does for LDS: a new listener is
//! bound, a removed one stops accepting and drains, one whose address changed is rebound, and
//! one that only changed its routes keeps its socket and swaps its table (an RPC listener's
//! too: its proxy swaps its route table, time-out and limits in place, so its downstream
//! connections and upstream pools stay).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::{AccessLog, Direction, Listener, ReloadError, RouteConfiguration, Validate};
use mesh_lb::ClusterManager;
use mesh_router::LayerRegistry;
use mesh_telemetry::{OtlpTracing, SpanKind};
use tokio::net::TcpSocket;

use crate::access_log::{AccessLogLayer, AccessLogWriters};
use crate::metrics::Metrics;
use crate::stack::ListenerStack;
use crate::tls::{InboundTls, SecretStore};

#[path = "listeners_live.rs"]
mod live;

use live::{bind, Live, BACKLOG};

/// Owns every listener's socket task; dropping it does not stop them, [`ListenerManager::shutdown`]
/// does (and waits for the drain).
#[derive(Clone)]
pub struct ListenerManager {
    live: Arc<Mutex<HashMap<String, Live>>>,
    routes: Arc<Mutex<HashMap<String, RouteConfiguration>>>,
    strict_routes: bool,
    clusters: ClusterManager,
    registry: LayerRegistry,
    metrics: Metrics,
    connections: Arc<crate::limit::ConnectionLimit>,
    drain: Duration,
    tracing: Option<OtlpTracing>,
    access_logs: AccessLogWriters,
    default_access_log: Vec<AccessLog>,
    secrets: Arc<SecretStore>,
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
            routes: Arc::default(),
            strict_routes: true,
            clusters,
            registry,
            metrics,
            connections: Arc::new(crate::limit::ConnectionLimit::new(max_connections)),
            drain,
            tracing: None,
            access_logs: AccessLogWriters::default(),
            default_access_log: Vec::new(),
            secrets: SecretStore::new(),
        }
    }

    /// Listeners with `tls` take their certificates and bundles from `secrets` (at each
    /// handshake: a rotation there needs no listener change).
    #[must_use]
    pub fn with_secrets(mut self, secrets: Arc<SecretStore>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Writes access logs with `writers`; a listener that configures no `access_log` of its own
    /// uses `default` (the sidecar's `--access-log`; empty: none).
    #[must_use]
    pub fn with_access_logs(mut self, writers: AccessLogWriters, default: Vec<AccessLog>) -> Self {
        self.access_logs = writers;
        self.default_access_log = default;
        self
    }

    /// Traces every listener's requests into `tracing`: inbound listeners' spans are SERVER
    /// spans (the hop receives the call for its app), outbound ones CLIENT spans (the hop
    /// makes the call on its app's behalf), as Envoy's tracers mark ingress and egress. Applies
    /// to listeners bound from now on.
    #[must_use]
    pub fn with_tracing(mut self, tracing: Option<OtlpTracing>) -> Self {
        self.tracing = tracing;
        self
    }

    /// Dynamic (xDS) mode: a listener whose route table has not arrived yet serves an empty
    /// table (404) until RDS delivers it, instead of being refused.
    #[must_use]
    pub fn lenient_routes(mut self) -> Self {
        self.strict_routes = false;
        self
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

    /// Makes the live set equal `wanted`, resolving route-config names against the tables given
    /// to [`apply_routes`](Self::apply_routes). Every listener is validated and every new socket
    /// bound before anything changes, so a refused update leaves the old set serving. Must run
    /// inside a tokio runtime (the sockets are registered with it).
    pub fn apply(&self, wanted: Vec<Listener>) -> Result<(), ReloadError> {
        self.apply_reserved(wanted, &mut HashMap::new())
    }

    /// Checks one listener as [`apply`](Self::apply) would (its fields, its filters), without
    /// binding or changing anything: how a warming listener is refused at LDS time.
    pub fn check(&self, l: &Listener) -> Result<(), ReloadError> {
        l.validate().map_err(|e| refuse(l, e))?;
        ListenerStack::build_rbac(l)?;
        crate::xproto::check_listener(l).map_err(|e| refuse(l, e))?;
        crate::filters::build(l, &self.registry).map(drop)
    }

    /// Binds `l`'s address without listening (connections are refused until the listener goes
    /// live), so that an address in use refuses the update that names it, as Envoy binds a
    /// warming listener's socket at once. Hand the socket to [`apply_reserved`](Self::apply_reserved).
    pub fn reserve(l: &Listener) -> Result<TcpSocket, ReloadError> {
        bind(l.address).map_err(|e| refuse(l, format!("bind {}: {e}", l.address)))
    }

    /// [`apply`](Self::apply), taking a listener's socket from `reserved` (by listener name,
    /// bound by [`reserve`](Self::reserve) to the listener's address) instead of binding anew.
    pub fn apply_reserved(
        &self,
        wanted: Vec<Listener>,
        reserved: &mut HashMap<String, TcpSocket>,
    ) -> Result<(), ReloadError> {
        let mut prepared = Vec::new();
        let current: HashMap<String, Listener> = self
            .lock()
            .iter()
            .map(|(n, l)| (n.clone(), l.config.clone()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for l in &wanted {
            l.validate().map_err(|e| refuse(l, e))?;
            crate::xproto::check_listener(l).map_err(|e| refuse(l, e))?;
            if !seen.insert(l.name.as_str()) {
                return Err(refuse(l, "listed twice"));
            }
            let table = match &l.route_config {
                Some(_) => None,
                // Opaque only: no route table.
                None if !l.serves_http() => None,
                None => {
                    let known = self.routes().get(&l.route_config_name).cloned();
                    if known.is_none() && self.strict_routes {
                        return Err(refuse(
                            l,
                            format!("route configuration {:?} is not known", l.route_config_name),
                        ));
                    }
                    known
                }
            };
            match current.get(&l.name) {
                Some(old) if old == l => {}
                Some(old)
                    if old.address == l.address
                        && old.http == l.http
                        && old.tcp_proxy == l.tcp_proxy
                        && old.detection == l.detection
                        && crate::xproto::same_protocol(old, l)
                        && old.tls == l.tls =>
                {
                    prepared.push((l.clone(), table, None));
                }
                _ => {
                    let socket = match reserved.remove(&l.name) {
                        Some(s) => Ok(s),
                        None => bind(l.address),
                    }
                    .and_then(|s| s.listen(BACKLOG))
                    .map_err(|e| refuse(l, format!("bind {}: {e}", l.address)))?;
                    let tls = l
                        .tls
                        .as_ref()
                        .map(|t| InboundTls::new(&l.name, t, Arc::clone(&self.secrets)))
                        .transpose()
                        .map_err(|e| refuse(l, format!("tls: {e}")))?;
                    prepared.push((l.clone(), table, Some((socket, tls))));
                }
            }
        }
        let wanted_names: std::collections::HashSet<&str> =
            wanted.iter().map(|l| l.name.as_str()).collect();
        // Build every new stack before touching the live set.
        let mut stacks = Vec::new();
        for (l, table, socket) in prepared {
            let logs = if l.access_log.is_empty() {
                &self.default_access_log
            } else {
                &l.access_log
            };
            let sinks = self.access_logs.sinks(logs).map_err(|e| refuse(&l, e))?;
            let stack = match (&socket, self.lock().get(&l.name)) {
                (None, Some(live)) => {
                    let s = live.stack.clone();
                    // No table yet (a listener whose initial fetch timed out): an empty one
                    // under the awaited name, so every request gets 404 until RDS brings it.
                    let rc = table
                        .clone()
                        .or_else(|| l.route_config.clone())
                        .unwrap_or_else(|| RouteConfiguration {
                            name: l.route_config_name.clone(),
                            ..RouteConfiguration::default()
                        });
                    // Built first: an unknown filter refuses the update before the routes change.
                    let filters = s.build_filters(&l)?;
                    let rbac = ListenerStack::build_rbac(&l)?;
                    let rpc = match &live.rpc {
                        Some(p)
                            if live.config.xprotocol != l.xprotocol
                                || live.config.rate_limit != l.rate_limit =>
                        {
                            Some(p.prepare_update(&l).map_err(|e| refuse(&l, e))?)
                        }
                        _ => None,
                    };
                    // A listener serving no HTTP (RPC, TCP) has no route table here (its
                    // limits are the RPC proxy's or none).
                    if l.serves_http() {
                        s.reload_routes(&l, rc)?;
                    }
                    if let Some(rpc) = rpc {
                        rpc.install();
                    }
                    s.set_filters(filters);
                    s.set_rbac(rbac);
                    s.set_access_log(sinks);
                    s
                }
                _ => ListenerStack::new(
                    &l,
                    table.as_ref(),
                    self.clusters.clone(),
                    self.registry.clone(),
                )?
                .with_trace(self.tracing.as_ref().map(|t| {
                    t.layer(match l.direction {
                        Direction::Inbound => SpanKind::Server,
                        Direction::Outbound => SpanKind::Client,
                    })
                }))
                .with_access_log(AccessLogLayer::new(sinks)),
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
                    Some((socket, tls)) => {
                        let entry = self.spawn(l, stack, socket, tls);
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

    /// Remembers a route table (RDS) and applies it to every listener that serves it; a table
    /// one listener refuses is refused whole (listeners applied before it keep the new table,
    /// which passed the same validation, so they differ only in rate-limit compilation).
    pub fn apply_routes(&self, routes: &RouteConfiguration) -> Result<(), ReloadError> {
        let stacks: Vec<(Listener, ListenerStack)> = self
            .lock()
            .values()
            .filter(|l| {
                l.config.route_config.is_none() && l.config.route_config_name == routes.name
            })
            .map(|l| (l.config.clone(), l.stack.clone()))
            .collect();
        for (config, stack) in stacks {
            stack.reload_routes(&config, routes.clone())?;
        }
        self.routes().insert(routes.name.clone(), routes.clone());
        Ok(())
    }

    /// Forgets route tables no longer delivered (listeners serving them keep their last table,
    /// as Envoy does until the listener itself changes).
    pub fn retain_routes(&self, names: &std::collections::HashSet<String>) {
        self.routes().retain(|n, _| names.contains(n));
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, RouteConfiguration>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
