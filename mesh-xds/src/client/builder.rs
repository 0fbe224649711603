//! [`XdsClientBuilder`] and the running [`XdsClient`] handle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf as pbw;
use mesh_core::{Locality, RateLimitConfig, Reload};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::driver::{self, DriverConfig, Outputs};
use super::persist;
use super::state::AdsState;
use super::store::{ResourceMap, Sinks, Store, StoredResource};
use super::{AdsMode, XdsStatus};
use crate::tls::XdsTls;

/// Why a client could not start, or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum XdsClientError {
    /// No control-plane address was given.
    #[error("no control-plane address")]
    NoAddress,
    /// A control-plane address is neither an `http://` nor an `https://` URI.
    #[error("control-plane address {0:?} is not an http:// or https:// URI")]
    BadAddress(String),
    /// TLS is configured but an address is `http://` (refused rather than sent in plaintext).
    #[error("TLS is configured but control-plane address {0:?} is http://; use https://")]
    PlaintextWithTls(String),
    /// An address is `https://` but no TLS option names the CA to verify it with.
    #[error("control-plane address {0:?} is https:// but no TLS option gives the CA (XdsClientBuilder::tls)")]
    HttpsWithoutTls(String),
    /// The TLS option could not be used (a file that does not read, a PEM that does not parse).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The first full config did not arrive in time.
    #[error("no full config from the control plane within {0:?}")]
    NotReady(Duration),
    /// The client stopped before it became ready.
    #[error("the xDS client stopped")]
    Stopped,
}

/// Builds an [`XdsClient`]: control planes, node identity, ADS variant, resilience settings and
/// sinks.
pub struct XdsClientBuilder {
    addresses: Vec<String>,
    node: core::Node,
    mode: AdsMode,
    cfg: DriverConfig,
    refresh: Option<Duration>,
    tls: Option<XdsTls>,
    sinks: Sinks,
}

impl Default for XdsClientBuilder {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            node: core::Node {
                user_agent_name: "mesh-xds".into(),
                user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
                    env!("CARGO_PKG_VERSION").into(),
                )),
                ..Default::default()
            },
            mode: AdsMode::Sotw,
            cfg: DriverConfig {
                addresses: Vec::new(),
                user_agent: format!("mesh-xds/{}", env!("CARGO_PKG_VERSION")),
                connect_timeout: Duration::from_secs(5),
                backoff_base: Duration::from_millis(500),
                backoff_max: Duration::from_secs(30),
                persist: None,
                max_message_bytes: 64 * 1024 * 1024,
                tls: None,
            },
            refresh: None,
            tls: None,
            sinks: Sinks::default(),
        }
    }
}

impl XdsClientBuilder {
    /// Adds a control plane (`http://host:port`, or `https://host:port` with [`tls`](Self::tls));
    /// the client fails over along the list.
    pub fn address(mut self, uri: impl Into<String>) -> Self {
        self.addresses.push(uri.into());
        self
    }

    /// The node id (Envoy's `--service-node`), the key of the control plane's snapshot.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node.id = id.into();
        self
    }

    /// The node's cluster (Envoy's `--service-cluster`).
    pub fn node_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.node.cluster = cluster.into();
        self
    }

    /// Where the node runs.
    pub fn locality(mut self, l: &Locality) -> Self {
        self.node.locality = Some(core::Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        });
        self
    }

    /// A string entry of the node's metadata.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let value = pbw::Value {
            kind: Some(pbw::value::Kind::StringValue(value.into())),
        };
        self.node
            .metadata
            .get_or_insert_with(Default::default)
            .fields
            .insert(key.into(), value);
        self
    }

    /// The user agent (node `user_agent_name` and the HTTP/2 user agent).
    pub fn user_agent(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.cfg.user_agent = name.clone();
        self.node.user_agent_name = name;
        self
    }

    /// State of the world (default) or delta.
    pub fn mode(mut self, mode: AdsMode) -> Self {
        self.mode = mode;
        self
    }

    /// Reconnect backoff: starts at `base`, doubles per failed attempt, capped at `max`, with
    /// jitter (defaults 500 ms and 30 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.cfg.backoff_base = base;
        self.cfg.backoff_max = max.max(base);
        self
    }

    /// Connect timeout per attempt (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.cfg.connect_timeout = t;
        self
    }

    /// TLS to the control plane: every address must then be `https://` (an `http://` address is
    /// refused at [`start`](Self::start) rather than silently sent in plaintext), and an
    /// `https://` address needs this option (there is no implicit system trust store: name the
    /// CA, as Envoy's `UpstreamTlsContext` on the xDS cluster does). Files are read at `start`.
    pub fn tls(mut self, tls: XdsTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Re-request on this period, counted from each stream's start (the pull beside the push,
    /// to recover from a silently stale stream): SotW asks for the full state again on the
    /// stream; delta re-subscribes on a new stream with the versions held, so the control plane
    /// sends only what differs. See [`Refresh`](super::Refresh).
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        self.refresh = Some(every);
        self
    }

    /// Persist the last accepted config to `path` and start from it (static stability).
    pub fn persist_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.persist = Some(path.into());
        self
    }

    /// Largest message accepted or sent (default 64 MiB).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.cfg.max_message_bytes = n;
        self
    }

    /// A sink fed the whole set of `T` on every change (it sees removals).
    pub fn sink_all<T: StoredResource>(mut self, sink: Arc<dyn Reload<Vec<T>>>) -> Self {
        self.sinks.add_all(sink);
        self
    }

    /// A sink fed each added or changed `T`, and told of each removed one
    /// ([`ReloadEach::remove`](mesh_core::ReloadEach::remove), after every other sink accepted
    /// the update).
    pub fn sink_each<T: StoredResource>(
        mut self,
        sink: Arc<dyn mesh_core::ReloadEach<mesh_core::Checked<T>>>,
    ) -> Self {
        let removal = Arc::clone(&sink);
        self.sinks.add_each(sink);
        self.sinks
            .add_removed::<T>(Arc::new(move |name: &str| removal.remove(name)));
        self
    }

    /// A callback told the name of each removed `T`, besides the [`sink_each`](Self::sink_each)
    /// sinks (which hear of removals through their own contract). Removals are applied after
    /// every other sink accepted the update, and cannot be rolled back.
    pub fn on_removed<T: StoredResource>(
        mut self,
        f: impl Fn(&str) -> Result<(), mesh_core::ReloadError> + Send + Sync + 'static,
    ) -> Self {
        self.sinks.add_removed::<T>(Arc::new(f));
        self
    }

    /// A sink fed the `T` named `name` whenever it changes (e.g. a router and its route table).
    pub fn sink_named<T: StoredResource>(
        mut self,
        name: impl Into<String>,
        sink: Arc<dyn Reload<T>>,
    ) -> Self {
        self.sinks.add_named(name.into(), sink);
        self
    }

    /// A rate-limit sink fed the rules of listener `listener` and its route table
    /// ([`RateLimitConfig::for_listener`]) whenever they change.
    pub fn sink_rate_limits(
        mut self,
        listener: impl Into<String>,
        sink: Arc<dyn Reload<RateLimitConfig>>,
    ) -> Self {
        self.sinks.add_rate_limit(listener.into(), sink);
        self
    }

    /// The protocol state machine with the sinks, for driving a transport of one's own (and for
    /// benchmarks); loads the persisted config when one is set.
    pub fn into_state(self) -> AdsState {
        let (_, state) = self.split();
        state
    }

    fn split(self) -> (DriverConfig, AdsState) {
        let persisted = self.cfg.persist.as_deref().and_then(|p| match persist::load(p) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, path = %p.display(), "ignoring the persisted xDS config");
                None
            }
        });
        let mut store = Store::new(Default::default(), self.sinks);
        if let Some(p) = &persisted {
            store.config = p.config.clone();
            if let Err(e) = store.prime() {
                tracing::warn!(error = %e, "a sink refused the persisted xDS config");
            }
        }
        let mut state = AdsState::new(self.mode, self.node, store);
        state.set_refresh_interval(self.refresh);
        if let Some(p) = &persisted {
            p.restore_versions(&mut state);
        }
        let mut cfg = self.cfg;
        cfg.addresses = self.addresses;
        (cfg, state)
    }

    /// Starts the client on the current tokio runtime.
    pub fn start(self) -> Result<XdsClient, XdsClientError> {
        if self.addresses.is_empty() {
            return Err(XdsClientError::NoAddress);
        }
        for a in &self.addresses {
            match (a.split_once("://").map(|(s, _)| s), &self.tls) {
                (Some("http"), None) | (Some("https"), Some(_)) => {}
                (Some("http"), Some(_)) => return Err(XdsClientError::PlaintextWithTls(a.clone())),
                (Some("https"), None) => return Err(XdsClientError::HttpsWithoutTls(a.clone())),
                _ => return Err(XdsClientError::BadAddress(a.clone())),
            }
        }
        let tls = self.tls.as_ref().map(XdsTls::client_config).transpose()?;
        if let (Some(tls), Some(a)) = (&tls, self.addresses.first()) {
            // tonic parses the PEMs when the endpoint takes the config: fail here, not per connect.
            tonic::transport::Endpoint::from_shared(a.clone())
                .and_then(|e| e.tls_config(tls.clone()))
                .map_err(|e| crate::tls::TlsError(crate::tls::error_chain(&e)))?;
        }
        let (mut cfg, state) = self.split();
        cfg.tls = tls;
        let watches = ConfigWatch::of(&state);
        let status = watch::Sender::new(XdsStatus::default());
        let ready = watch::Sender::new(state.is_ready());
        let (status_rx, ready_rx) = (status.subscribe(), ready.subscribe());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(driver::run(
            state,
            cfg,
            Outputs { status, ready },
            shutdown_rx,
        ));
        Ok(XdsClient {
            status: status_rx,
            ready: ready_rx,
            watches,
            shutdown,
            task: Some(task),
        })
    }
}

/// Receivers of the per-type watch channels: what the client holds, readable from anywhere
/// (e.g. an admin endpoint's config dump) without a handle on the client.
#[derive(Clone)]
pub struct ConfigWatch {
    listeners: watch::Receiver<ResourceMap<mesh_core::Listener>>,
    routes: watch::Receiver<ResourceMap<mesh_core::RouteConfiguration>>,
    clusters: watch::Receiver<ResourceMap<mesh_core::Cluster>>,
    endpoints: watch::Receiver<ResourceMap<mesh_core::ClusterLoadAssignment>>,
    secrets: watch::Receiver<ResourceMap<mesh_core::Secret>>,
}

impl std::fmt::Debug for ConfigWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatch").finish_non_exhaustive()
    }
}

impl ConfigWatch {
    /// Everything the client holds now; cheap, the maps are shared.
    pub fn get(&self) -> super::XdsConfig {
        super::XdsConfig {
            listeners: self.listeners.borrow().clone(),
            routes: self.routes.borrow().clone(),
            clusters: self.clusters.borrow().clone(),
            endpoints: self.endpoints.borrow().clone(),
            secrets: self.secrets.borrow().clone(),
        }
    }

    fn of(state: &AdsState) -> Self {
        let s = &state.store.sinks;
        Self {
            listeners: s.watch(),
            routes: s.watch(),
            clusters: s.watch(),
            endpoints: s.watch(),
            secrets: s.watch(),
        }
    }

    fn typed<T: StoredResource>(&self) -> watch::Receiver<ResourceMap<T>> {
        let any: &dyn std::any::Any = match T::TYPE {
            super::ResourceType::Listener => &self.listeners,
            super::ResourceType::Route => &self.routes,
            super::ResourceType::Cluster => &self.clusters,
            super::ResourceType::Endpoint => &self.endpoints,
            super::ResourceType::Secret => &self.secrets,
            super::ResourceType::Runtime => return watch::channel(Arc::default()).1,
        };
        match any.downcast_ref::<watch::Receiver<ResourceMap<T>>>() {
            Some(rx) => rx.clone(),
            // Unreachable: T::TYPE names T's own channel. A closed, empty channel is the
            // harmless answer should it ever be reached.
            None => watch::channel(Arc::default()).1,
        }
    }
}

/// A running ADS client. Dropping it stops the client.
pub struct XdsClient {
    status: watch::Receiver<XdsStatus>,
    ready: watch::Receiver<bool>,
    watches: ConfigWatch,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl XdsClient {
    /// A builder with the defaults (SotW, 500 ms → 30 s backoff, no refresh, no persistence).
    pub fn builder() -> XdsClientBuilder {
        XdsClientBuilder::default()
    }

    /// The current status snapshot, for the admin endpoint.
    pub fn status(&self) -> XdsStatus {
        self.status.borrow().clone()
    }

    /// A receiver of the status snapshots.
    pub fn status_watch(&self) -> watch::Receiver<XdsStatus> {
        self.status.clone()
    }

    /// The current resources of type `T`, on a watch channel updated on every accepted change.
    pub fn watch<T: StoredResource>(&self) -> watch::Receiver<ResourceMap<T>> {
        self.watches.typed::<T>()
    }

    /// Everything the client holds now (for a config dump); cheap, the maps are shared.
    pub fn config(&self) -> super::XdsConfig {
        self.watches.get()
    }

    /// A handle reading what the client holds, for whoever outlives a borrow of the client.
    pub fn config_watch(&self) -> ConfigWatch {
        self.watches.clone()
    }

    /// Whether the first full config has arrived (or a persisted one was loaded).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the first full config has arrived, at most `timeout`, so that a sidecar does
    /// not take traffic with an empty table.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), XdsClientError> {
        let mut ready = self.ready.clone();
        let waited =
            tokio::time::timeout(
                timeout,
                async move { ready.wait_for(|r| *r).await.map(|_| ()) },
            )
            .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(XdsClientError::Stopped),
            Err(_) => Err(XdsClientError::NotReady(timeout)),
        }
    }

    /// Stops the client and waits for its task to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}
