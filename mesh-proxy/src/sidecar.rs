//! The sidecar process: clusters, listeners and the admin endpoint, started from a bootstrap
//! and stopped with a drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::{AccessLog, Reload, ReloadError};
use mesh_lb::ClusterManager;
use mesh_router::LayerRegistry;
use mesh_telemetry::{OtlpTracing, TracingOptions};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use mesh_xds::client::{AdsMode, XdsClient, XdsStatus, XdsTls};
use mesh_xds::config_dump::ConfigDump;

use crate::access_log::AccessLogWriters;
use crate::admin::{Admin, SecurityNote};
use crate::bootstrap::Bootstrap;
use crate::dynamic;
use crate::listeners::ListenerManager;
use crate::metrics::{ClusterCollector, Metrics, RuntimeCollector};
#[cfg(feature = "etcd")]
use crate::registration::Registrar;
use crate::tls::SecretStore;
use crate::warmer::Warmer;
use crate::warming::WarmingStatus;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A piece of config was refused.
    #[error(transparent)]
    Config(#[from] ReloadError),
    /// The registry could not be reached.
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Registry(#[from] crate::registration::RegistryError),
    /// A registry was asked for, but this build has no registry client.
    #[error(
        "registry {url}: this mesh-proxy was built without the `etcd` feature \
         (rebuild with `--features etcd`, which needs protoc)"
    )]
    RegistryUnsupported {
        /// The registry URL asked for.
        url: String,
    },
    /// The xDS client could not start.
    #[error("xDS client: {0}")]
    Xds(#[from] mesh_xds::client::XdsClientError),
    /// Tracing was asked for with options that cannot work.
    #[error(transparent)]
    Tracing(#[from] mesh_telemetry::TelemetryError),
    /// The admin endpoint could not bind.
    #[error("admin endpoint {addr}: {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
}

/// How a dynamic (xDS-fed) sidecar finds its control plane.
#[derive(Debug, Clone)]
pub struct DynamicOptions {
    /// Control-plane addresses (`http://host:port`, or `https://host:port` with
    /// [`xds_tls`](Self::xds_tls)), tried in order on failure.
    pub xds: Vec<String>,
    /// This node's id.
    pub node_id: String,
    /// This node's cluster (service) name.
    pub node_cluster: Option<String>,
    /// State of the world or delta.
    pub mode: AdsMode,
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Open downstream connections at most, across all listeners.
    pub max_connections: usize,
    /// Where to persist the last accepted config (served at once after a restart).
    pub persist: Option<PathBuf>,
    /// The registry the registration API writes to (`/pub`, `/unpub`, `/sub`, `/unsub`).
    pub registry: Option<RegistryOptions>,
    /// TLS to the control plane (the CA, optionally a client certificate for mTLS); the `xds`
    /// addresses are then `https://`.
    pub xds_tls: Option<XdsTls>,
    /// The filter factories listener-level (`http_filters`) and per-route (`filters`) configs
    /// name; register your own on top of [`LayerRegistry::default`] (which holds `fault`).
    pub filters: LayerRegistry,
    /// Tracing: every listener's spans exported over OTLP/gRPC (off when `None`).
    pub tracing: Option<TracingOptions>,
    /// Access logs of every listener whose config (LDS `access_log`) names none; empty (the
    /// default): none.
    pub access_log: Vec<AccessLog>,
    /// How long a new or updated listener or cluster waits for what it depends on (route
    /// table, clusters, endpoints) before it goes live with what it has: Envoy's
    /// `initial_fetch_timeout`, 15 s by default; `None` waits for ever (Envoy's `0s`).
    pub initial_fetch_timeout: Option<Duration>,
}

/// Where the registration API publishes.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// etcd client URL (`http://127.0.0.1:2379`).
    pub url: String,
    /// Key prefix, the control plane's `--prefix` (`/mesh`).
    pub prefix: String,
    /// Lease TTL: how long a dead sidecar's publications outlive it.
    pub ttl: Duration,
}

impl DynamicOptions {
    /// Options with the defaults: admin 127.0.0.1:15000, SotW, 15 s drain.
    pub fn new(xds: Vec<String>, node_id: impl Into<String>) -> Self {
        Self {
            xds,
            node_id: node_id.into(),
            node_cluster: None,
            mode: AdsMode::Sotw,
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            drain_timeout: Duration::from_secs(15),
            max_connections: 10_000,
            persist: None,
            registry: None,
            xds_tls: None,
            filters: LayerRegistry::default(),
            tracing: None,
            access_log: Vec::new(),
            initial_fetch_timeout: Some(crate::warming::DEFAULT_INITIAL_FETCH_TIMEOUT),
        }
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    listeners: ListenerManager,
    clusters: ClusterManager,
    admin_addr: SocketAddr,
    stop: CancellationToken,
    admin_task: JoinHandle<()>,
    xds: Option<XdsClient>,
    status_task: Option<JoinHandle<()>>,
    tracing: Option<OtlpTracing>,
    access_logs: AccessLogWriters,
    warmer: Option<Warmer>,
    warming_task: Option<JoinHandle<()>>,
    secrets: Arc<SecretStore>,
}

impl Sidecar {
    /// Starts a sidecar with a static bootstrap: clusters and endpoints first, then the
    /// listeners, then the admin endpoint (ready at once, since the config is complete).
    pub async fn start_static(boot: Bootstrap) -> Result<Self, SidecarError> {
        Self::start_static_with(boot, LayerRegistry::default()).await
    }

    /// [`start_static`](Self::start_static) with your own filter factories: listener-level
    /// (`http_filters`) and per-route (`filters`) configs are built from `filters`.
    pub async fn start_static_with(
        boot: Bootstrap,
        filters: LayerRegistry,
    ) -> Result<Self, SidecarError> {
        let tracing = boot.tracing.as_ref().map(OtlpTracing::start).transpose()?;
        let (registry, clusters, listeners, access_logs, secrets) = managers(
            boot.max_connections,
            boot.drain_timeout,
            filters,
            tracing.clone(),
            boot.access_log.clone(),
        );
        for secret in &boot.mesh.secrets {
            secrets.reload(secret.clone())?;
        }
        clusters.reload(boot.mesh.clusters.clone())?;
        for cla in &boot.mesh.endpoints {
            clusters.reload(cla.clone())?;
        }
        for rc in &boot.mesh.route_configs {
            listeners.apply_routes(rc)?;
        }
        listeners.apply(boot.mesh.listeners.clone())?;

        // The bootstrap never changes: its dump is built once.
        let dump = ConfigDump::from_static(&boot.mesh, SystemTime::now());
        let note = plaintext_note(&listeners, &clusters);
        if let Some(line) = note() {
            tracing::warn!("{line}");
        }
        let admin = Admin::new(registry, Arc::new(move || dump.clone())).with_security_note(note);
        admin.ready_flag().store(true, Ordering::Release);
        let stop = CancellationToken::new();
        let (admin_addr, admin_task) = serve_admin(admin, boot.admin, &stop).await?;
        Ok(Self {
            listeners,
            clusters,
            admin_addr,
            stop,
            admin_task,
            xds: None,
            status_task: None,
            tracing,
            access_logs,
            warmer: None,
            warming_task: None,
            secrets,
        })
    }

    /// Starts a sidecar fed by an xDS control plane: listeners from LDS (bound when added,
    /// drained when removed), routes from RDS, clusters from CDS/EDS. `/ready` answers 200 once
    /// the first full config has arrived.
    pub async fn start_dynamic(opts: DynamicOptions) -> Result<Self, SidecarError> {
        let tracing = opts.tracing.as_ref().map(OtlpTracing::start).transpose()?;
        let (mut registry, clusters, listeners, access_logs, secrets) = managers(
            opts.max_connections,
            opts.drain_timeout,
            opts.filters.clone(),
            tracing.clone(),
            opts.access_log.clone(),
        );
        let listeners = listeners.lenient_routes();
        let mut builder = XdsClient::builder()
            .node_id(&opts.node_id)
            .mode(opts.mode)
            .user_agent("mesh-sidecar");
        for a in &opts.xds {
            builder = builder.address(a);
        }
        if let Some(c) = &opts.node_cluster {
            builder = builder.node_cluster(c);
        }
        if let Some(p) = &opts.persist {
            builder = builder.persist_to(p);
        }
        if let Some(tls) = &opts.xds_tls {
            builder = builder.tls(tls.clone());
        }
        let warmer = Warmer::new(
            listeners.clone(),
            clusters.clone(),
            opts.initial_fetch_timeout,
            &mut registry,
        );
        let stop = CancellationToken::new();
        // Started before the client: a persisted config is applied inside `start`.
        let warming_task = warmer.spawn_timer(stop.clone());
        let xds = match dynamic::wire(builder, &warmer, secrets.clone()).start() {
            Ok(xds) => xds,
            Err(e) => {
                stop.cancel();
                let _ = warming_task.await;
                return Err(e.into());
            }
        };
        let dump_status = xds.status_watch();
        let dump_config = xds.config_watch();
        let dump_warming = warmer.clone();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let status_task = dynamic::export_status(
            &mut registry,
            xds.status_watch(),
            Arc::clone(&ready),
            stop.clone(),
        );
        let status_json = xds.status_watch();
        let admin = Admin::new(
            registry,
            Arc::new(move || {
                let mut dump = ConfigDump::from_xds(&dump_config.get(), &dump_status.borrow());
                let warming = dump_warming.status();
                dump.mark_warming(
                    &warming.listeners.into_keys().collect(),
                    &warming.clusters.into_keys().collect(),
                );
                dump
            }),
        )
        .with_route("/xds", xds_status_route(status_json))
        .with_security_note(plaintext_note(&listeners, &clusters))
        .with_ready_flag(ready)
        .with_warming({
            let warmer = warmer.clone();
            Arc::new(move || warmer.status())
        });
        let admin = match &opts.registry {
            #[cfg(feature = "etcd")]
            Some(r) => {
                let registrar =
                    Registrar::connect(&r.url, &r.prefix, r.ttl, clusters.clone(), stop.clone())
                        .await?;
                registrar.install(admin)
            }
            #[cfg(not(feature = "etcd"))]
            Some(r) => return Err(SidecarError::RegistryUnsupported { url: r.url.clone() }),
            None => admin,
        };
        let (admin_addr, admin_task) = serve_admin(admin, opts.admin, &stop).await?;
        Ok(Self {
            listeners,
            clusters,
            admin_addr,
            stop,
            admin_task,
            xds: Some(xds),
            status_task: Some(status_task),
            tracing,
            access_logs,
            warmer: Some(warmer),
            warming_task: Some(warming_task),
            secrets,
        })
    }

    /// The certificates and trust bundles listeners and clusters with `tls` use: reload one
    /// here to rotate it (new handshakes use it; established connections go on).
    pub fn secrets(&self) -> &Arc<SecretStore> {
        &self.secrets
    }

    /// The xDS client of a dynamic sidecar.
    pub fn xds(&self) -> Option<&XdsClient> {
        self.xds.as_ref()
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.addresses().get(name).copied()
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The cluster manager (for reloads from outside, e.g. xDS).
    pub fn clusters(&self) -> &ClusterManager {
        &self.clusters
    }

    /// The listener manager.
    pub fn listeners(&self) -> &ListenerManager {
        &self.listeners
    }

    /// What is warming (dynamic mode; a static sidecar starts complete).
    pub fn warming(&self) -> WarmingStatus {
        self.warmer.as_ref().map(Warmer::status).unwrap_or_default()
    }

    /// Stops accepting, drains in-flight requests (up to the drain deadline), stops the admin
    /// endpoint.
    pub async fn shutdown(self) {
        self.listeners.shutdown().await;
        if let Some(xds) = self.xds {
            xds.shutdown().await;
        }
        self.stop.cancel();
        let _ = self.admin_task.await;
        for t in [self.status_task, self.warming_task].into_iter().flatten() {
            let _ = t.await;
        }
        // Last: the drained requests' lines are queued by now.
        self.access_logs.shutdown().await;
        // After the drain: the last requests' spans are queued by now; export them.
        if let Some(tracing) = self.tracing {
            tracing.shutdown().await;
        }
    }
}

/// `/xds`: the client's status as JSON (connection, per type the version, ACK/NACK counts and
/// the last error), what Envoy spreads over its stats and `/config_dump`'s error states.
fn xds_status_route(status: tokio::sync::watch::Receiver<XdsStatus>) -> crate::admin::AdminHandler {
    Arc::new(move |_, _| {
        let json = serde_json::to_string_pretty(&*status.borrow())
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        Box::pin(async move {
            let mut resp = http::Response::new(mesh_core::body::full(json));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        })
    })
}

/// Binds the admin endpoint and serves it until `stop`; returns the bound address.
async fn serve_admin(
    admin: Admin,
    addr: SocketAddr,
    stop: &CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), SidecarError> {
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::AdminBind { addr, source })?;
    let bound = socket.local_addr().unwrap_or(addr);
    Ok((bound, tokio::spawn(admin.serve(socket, stop.clone()))))
}

/// What both modes start from: the metrics registry (with the per-cluster collector), an empty
/// cluster manager, and a listener manager sending to it, building filters from `filters`,
/// tracing into `tracing`, and the access-log writers (`access_log`: the default of listeners
/// that configure none).
fn managers(
    max_connections: usize,
    drain: Duration,
    filters: LayerRegistry,
    tracing: Option<OtlpTracing>,
    access_log: Vec<AccessLog>,
) -> (
    Registry,
    ClusterManager,
    ListenerManager,
    AccessLogWriters,
    Arc<SecretStore>,
) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let access_logs = AccessLogWriters::register(&mut registry);
    let secrets = SecretStore::new();
    secrets.register_metrics(&mut registry);
    let clusters = ClusterManager::new().with_secrets(secrets.clone());
    registry.register_collector(Box::new(ClusterCollector(clusters.clone())));
    registry.register_collector(Box::new(RuntimeCollector));
    let listeners =
        ListenerManager::new(clusters.clone(), filters, metrics, max_connections, drain)
            .with_tracing(tracing)
            .with_access_logs(access_logs.clone(), access_log)
            .with_secrets(Arc::clone(&secrets));
    (registry, clusters, listeners, access_logs, secrets)
}

/// `/ready`'s line, and the start-up warning, when nothing is encrypted: no listener terminates
/// TLS and no cluster originates it.
fn plaintext_note(listeners: &ListenerManager, clusters: &ClusterManager) -> SecurityNote {
    let (listeners, clusters) = (listeners.clone(), clusters.clone());
    Arc::new(move || {
        let tls = listeners.configs().iter().any(|l| l.tls.is_some())
            || clusters
                .names()
                .iter()
                .filter_map(|n| clusters.get(n))
                .any(|c| c.config().tls.is_some());
        (!tls).then(|| {
            "PLAINTEXT: no listener or cluster has TLS configured; traffic between sidecars is \
             neither encrypted nor authenticated"
                .to_owned()
        })
    })
}
