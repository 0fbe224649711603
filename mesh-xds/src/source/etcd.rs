//! The etcd source: endpoints registered under a key prefix with leases, watched and served.
//!
//! Layout: `<prefix>/services/<service>/<ip:port>` → JSON [`Registration`](mesh_core::Registration), put under a lease the
//! registering instance keeps alive; when the instance dies the lease expires, etcd deletes the
//! key and the endpoint leaves every snapshot. Services' policies and nodes come from an
//! optional base [`MeshSpec`] (the same schema as `mesh.yaml`); a registered service absent from
//! it gets the defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::watch;

use mesh_core::Registration;

use super::file::{apply, SourceError};
use super::incremental::TranslationCache;
use super::spec::{EndpointSpec, MeshSpec, ServiceSpec};
use crate::server::SnapshotCache;

/// Registers `reg` for `service` under `prefix` with a lease of `ttl` seconds; returns the lease
/// id, which the caller keeps alive (`Client::lease_keep_alive`) or revokes to deregister.
pub async fn register(
    client: &mut Client,
    prefix: &str,
    service: &str,
    reg: &Registration,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(ttl, None).await?.id();
    let value = serde_json::to_string(reg).unwrap_or_default();
    client
        .put(
            reg.key(prefix, service),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(lease)
}

/// Progress of the etcd source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdStatus {
    /// The etcd revision last applied.
    pub revision: i64,
    /// Snapshots applied so far.
    pub applied: u64,
    /// Registrations known now.
    pub endpoints: usize,
    /// Service translations made so far: a change that touches one service adds one (the
    /// others' translations are reused).
    pub translated: u64,
    /// The last error (connection or refused config), cleared by the next success.
    pub last_error: Option<String>,
}

/// Watches a prefix of etcd and serves its registrations (plus a base spec) into a cache.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    endpoints: Vec<String>,
    prefix: String,
    base: MeshSpec,
    cache: SnapshotCache,
    status: Arc<watch::Sender<EtcdStatus>>,
}

/// Key → (service, registration).
type Registry = BTreeMap<String, (String, Registration)>;

/// What the source's task keeps across sessions (reconnects).
#[derive(Default)]
struct State {
    registry: Registry,
    /// The etcd revision last applied (0: nothing read yet).
    revision: i64,
    /// Per-service translations reused by the next rebuild.
    translations: TranslationCache,
}

impl EtcdSource {
    /// A source of `prefix` on the etcd cluster at `endpoints` (`host:port` or URLs).
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>, cache: SnapshotCache) -> Self {
        Self {
            endpoints,
            prefix: prefix.into().trim_end_matches('/').to_owned(),
            base: MeshSpec::default(),
            cache,
            status: Arc::new(watch::channel(EtcdStatus::default()).0),
        }
    }

    /// Policies and nodes the registrations are merged into.
    #[must_use]
    pub fn with_base(mut self, base: MeshSpec) -> Self {
        self.base = base;
        self
    }

    /// Watches the source's progress.
    pub fn status(&self) -> watch::Receiver<EtcdStatus> {
        self.status.subscribe()
    }

    /// Runs the source in a task: a full read, then a watch from the next revision; after any
    /// error (etcd down or restarted) it reconnects and resumes the watch from the last
    /// revision it applied (or re-reads everything if that revision was compacted away). The
    /// last snapshots keep serving meanwhile.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut state = State::default();
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.session(&mut state).await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        let revision = state.revision;
                        tracing::warn!(error = %e, revision, "etcd source: reconnecting");
                        self.status
                            .send_modify(|s| s.last_error = Some(e.to_string()));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        })
    }

    async fn session(&self, state: &mut State) -> Result<(), etcd_client::Error> {
        let State {
            registry,
            revision,
            translations,
        } = state;
        let mut client = Client::connect(&self.endpoints, None).await?;
        let root = format!("{}/services/", self.prefix);
        if *revision == 0 {
            self.resync(&mut client, &root, registry, revision, translations)
                .await?;
        }
        let mut stream = client
            .watch(
                root.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(*revision + 1)
                        .with_progress_notify(),
                ),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.compact_revision() > 0 || resp.canceled() {
                // Our revision was compacted away: start over with a full read.
                self.resync(&mut client, &root, registry, revision, translations)
                    .await?;
                return Ok(());
            }
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                changed |= match ev.event_type() {
                    EventType::Put => parse(&root, &key, kv.value())
                        .map(|entry| registry.insert(key, entry.clone()) != Some(entry))
                        .unwrap_or(false),
                    EventType::Delete => registry.remove(&key).is_some(),
                };
                *revision = (*revision).max(kv.mod_revision());
            }
            if let Some(h) = resp.header() {
                *revision = (*revision).max(h.revision());
            }
            if changed {
                self.publish(registry, *revision, translations);
            }
        }
        Ok(())
    }

    async fn resync(
        &self,
        client: &mut Client,
        root: &str,
        registry: &mut Registry,
        revision: &mut i64,
        translations: &mut TranslationCache,
    ) -> Result<(), etcd_client::Error> {
        let resp = client
            .get(root, Some(GetOptions::new().with_prefix()))
            .await?;
        registry.clear();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(entry) = parse(root, &key, kv.value()) {
                registry.insert(key, entry);
            }
        }
        *revision = resp.header().map_or(*revision, |h| h.revision());
        self.publish(registry, *revision, translations);
        Ok(())
    }

    /// Rebuilds the spec and applies it. Only the services whose spec changed (an endpoint
    /// registered or gone) are translated again; the others' resources are reused from
    /// `translations`, and being identical (same content hash, same version) they are not sent
    /// to clients again.
    fn publish(&self, registry: &Registry, revision: i64, translations: &mut TranslationCache) {
        let spec = merge(&self.base, registry);
        let result = spec
            .snapshots_with(translations)
            .map_err(|e| e.to_string())
            .and_then(|snaps| {
                let nodes = self.cache.node_keys().into_iter().collect();
                apply(&self.cache, &snaps, &nodes).map_err(|e| e.to_string())
            });
        self.status.send_modify(|s| {
            s.revision = revision;
            s.endpoints = registry.len();
            s.translated = translations.translated();
            match result {
                Ok(_) => {
                    s.applied += 1;
                    s.last_error = None;
                }
                Err(e) => {
                    let e = SourceError {
                        file: "etcd".into(),
                        line: None,
                        reason: e,
                    };
                    tracing::error!(error = %e, "etcd registrations refused; last good config serves");
                    s.last_error = Some(e.to_string());
                }
            }
        });
    }
}

/// `<root><service>/<addr>` → (service, registration); malformed entries are logged and skipped.
fn parse(root: &str, key: &str, value: &[u8]) -> Option<(String, Registration)> {
    let service = key.strip_prefix(root)?.split('/').next()?.to_owned();
    match serde_json::from_slice::<Registration>(value) {
        Ok(reg) if !service.is_empty() => Some((service, reg)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(key, error = %e, "etcd: malformed registration skipped");
            None
        }
    }
}

/// The base spec with the registrations added as endpoints (services created as needed).
fn merge(base: &MeshSpec, registry: &Registry) -> MeshSpec {
    let mut spec = base.clone();
    for (service, reg) in registry.values() {
        let idx = match spec.services.iter().position(|s| &s.name == service) {
            Some(i) => i,
            None => {
                spec.services.push(ServiceSpec::named(service));
                spec.services.len() - 1
            }
        };
        let addr = SocketAddr::new(reg.address, reg.port);
        let eps = &mut spec.services[idx].endpoints;
        if eps.iter().all(|e| e.address != addr) {
            eps.push(EndpointSpec {
                address: addr,
                weight: reg.weight,
                zone: reg.zone.clone(),
                metadata: reg.metadata.clone(),
            });
        }
    }
    spec
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_merge_into_the_base() {
        let reg = Registration::new("127.0.0.1:9001".parse().unwrap());
        let key = reg.key("/mesh/", "orders");
        assert_eq!(key, "/mesh/services/orders/127.0.0.1:9001");
        let value = serde_json::to_vec(&reg).unwrap();
        let (svc, parsed) = parse("/mesh/services/", &key, &value).unwrap();
        assert_eq!((svc.as_str(), &parsed), ("orders", &reg));
        assert!(parse("/mesh/services/", &key, b"{oops").is_none());

        let base = MeshSpec::from_yaml("services:\n  - name: orders\n    timeout: 2s\n").unwrap();
        let mut registry = Registry::new();
        registry.insert(key, ("orders".into(), reg));
        let mut other = Registration::new("127.0.0.1:9002".parse().unwrap());
        other.zone = "z".into();
        registry.insert(other.key("/mesh", "new"), ("new".into(), other));
        let spec = merge(&base, &registry);
        assert_eq!(spec.services.len(), 2);
        assert_eq!(spec.services[0].endpoints.len(), 1);
        assert_eq!(spec.services[0].timeout, Some(Duration::from_secs(2)));
        assert_eq!(spec.services[1].endpoints[0].zone, "z");
    }
}
