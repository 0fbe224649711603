//! The client's view of the config and the sinks it feeds: every accepted change goes through
//! [`Store::apply`], which hands it to the registered [`Reload`] sinks (rolling back the ones
//! already fed if a later one refuses), then publishes it on the per-type watch channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_core::{
    Checked, Cluster, ClusterLoadAssignment, Listener, RateLimitConfig, Reload, ReloadError,
    RouteConfiguration, Secret,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ResourceType;
use crate::convert::XdsResource;

/// Everything the client holds: the last accepted resource of each name, per type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct XdsConfig {
    /// Listeners (LDS), by name.
    #[serde(default)]
    pub listeners: ResourceMap<Listener>,
    /// Route tables (RDS), by name.
    #[serde(default)]
    pub routes: ResourceMap<RouteConfiguration>,
    /// Clusters (CDS), by name.
    #[serde(default)]
    pub clusters: ResourceMap<Cluster>,
    /// Endpoint sets (EDS), by cluster (or EDS service) name.
    #[serde(default)]
    pub endpoints: ResourceMap<ClusterLoadAssignment>,
    /// TLS secrets (SDS) the listeners and clusters name, by name. Never serialized: a
    /// persisted config or a config dump must not hold private keys (after a restart from a
    /// persisted config the client is ready once the secrets arrived again).
    #[serde(default, skip_serializing)]
    pub secrets: ResourceMap<Secret>,
}

impl XdsConfig {
    /// The route-table names the listeners fetch by RDS.
    pub fn wanted_routes(&self) -> std::collections::BTreeSet<String> {
        self.listeners
            .values()
            // Inline tables need no RDS, opaque-only listeners no table at all.
            .filter(|l| l.route_config.is_none() && l.serves_http())
            .map(|l| l.route_config_name.clone())
            .collect()
    }

    /// The EDS names of the EDS clusters.
    pub fn wanted_endpoints(&self) -> std::collections::BTreeSet<String> {
        self.clusters
            .values()
            .filter(|c| c.discovery == mesh_core::Discovery::Eds)
            .map(|c| c.eds_name().to_string())
            .collect()
    }

    /// The SDS secret names the listeners' and clusters' TLS settings refer to.
    pub fn wanted_secrets(&self) -> std::collections::BTreeSet<String> {
        let listeners = self
            .listeners
            .values()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| [t.certificate.clone(), t.validation.clone()]);
        let clusters = self
            .clusters
            .values()
            .filter_map(|c| c.tls.as_ref())
            .flat_map(|t| [t.certificate.clone(), t.validation.clone()]);
        listeners.chain(clusters).collect()
    }

    /// Whether every listener's route table, every EDS cluster's endpoints and every secret
    /// named by TLS settings are present.
    pub fn is_complete(&self) -> bool {
        self.wanted_routes()
            .iter()
            .all(|r| self.routes.contains_key(r))
            && self
                .wanted_endpoints()
                .iter()
                .all(|e| self.endpoints.contains_key(e))
            && self
                .wanted_secrets()
                .iter()
                .all(|s| self.secrets.contains_key(s))
    }
}

/// The current resources of one type, as published on its watch channel. Each resource is held
/// by `Arc`: a response that changes one resource clones the pointers to the others. Each is
/// [`Checked`]: the conversion validated it, once, and nothing downstream needs to again.
pub type ResourceMap<T> = Arc<BTreeMap<String, Arc<Checked<T>>>>;

/// The resources of one type, by name, each shared.
pub(crate) type Resources<T> = BTreeMap<String, Arc<Checked<T>>>;

/// A mesh-core type the client stores and feeds to sinks (the four xDS resource types).
pub trait StoredResource: XdsResource {
    #[doc(hidden)]
    fn map(config: &XdsConfig) -> &Resources<Self>;
    #[doc(hidden)]
    fn set(config: &mut XdsConfig, map: ResourceMap<Self>);
    #[doc(hidden)]
    fn sinks(sinks: &mut Sinks) -> &mut TypedSinks<Self>;
    #[doc(hidden)]
    fn sinks_ref(sinks: &Sinks) -> &TypedSinks<Self>;
}

macro_rules! stored {
    ($t:ty, $field:ident) => {
        impl StoredResource for $t {
            fn map(config: &XdsConfig) -> &Resources<Self> {
                &config.$field
            }
            fn set(config: &mut XdsConfig, map: ResourceMap<Self>) {
                config.$field = map;
            }
            fn sinks(sinks: &mut Sinks) -> &mut TypedSinks<Self> {
                &mut sinks.$field
            }
            fn sinks_ref(sinks: &Sinks) -> &TypedSinks<Self> {
                &sinks.$field
            }
        }
    };
}
stored!(Listener, listeners);
stored!(RouteConfiguration, routes);
stored!(Cluster, clusters);
stored!(ClusterLoadAssignment, endpoints);
stored!(Secret, secrets);

/// The sinks of one resource type.
#[doc(hidden)]
pub struct TypedSinks<T> {
    /// Fed the whole set on any change.
    all: Vec<Arc<dyn Reload<Vec<T>>>>,
    /// Fed each added or changed resource, as validated by the conversion.
    each: Vec<Arc<dyn Reload<Checked<T>>>>,
    /// Fed the resource of one name when it changes.
    named: Vec<(String, Arc<dyn Reload<T>>)>,
    /// Told the name of each removed resource.
    removed: Vec<RemovalSink>,
    tx: watch::Sender<ResourceMap<T>>,
}

/// A callback told the name of each removed resource (for sinks fed per resource).
pub(crate) type RemovalSink = Arc<dyn Fn(&str) -> Result<(), ReloadError> + Send + Sync>;

impl<T> Default for TypedSinks<T> {
    fn default() -> Self {
        Self {
            all: Vec::new(),
            each: Vec::new(),
            named: Vec::new(),
            removed: Vec::new(),
            tx: watch::Sender::new(Arc::new(BTreeMap::new())),
        }
    }
}

/// A rate-limit sink fed the rules one listener (and its route table) imply.
struct RateLimitSink {
    listener: String,
    sink: Arc<dyn Reload<RateLimitConfig>>,
    last: Option<RateLimitConfig>,
}

/// All registered sinks.
#[doc(hidden)]
#[derive(Default)]
pub struct Sinks {
    listeners: TypedSinks<Listener>,
    routes: TypedSinks<RouteConfiguration>,
    clusters: TypedSinks<Cluster>,
    endpoints: TypedSinks<ClusterLoadAssignment>,
    secrets: TypedSinks<Secret>,
    rate_limits: Vec<RateLimitSink>,
}

impl Sinks {
    /// Registers a sink fed the whole set of `T` on every change (handles removals).
    pub(crate) fn add_all<T: StoredResource>(&mut self, sink: Arc<dyn Reload<Vec<T>>>) {
        T::sinks(self).all.push(sink);
    }

    /// Registers a sink fed every added or changed `T`.
    pub(crate) fn add_each<T: StoredResource>(&mut self, sink: Arc<dyn Reload<Checked<T>>>) {
        T::sinks(self).each.push(sink);
    }

    /// Registers a sink fed the `T` named `name` whenever it changes.
    pub(crate) fn add_named<T: StoredResource>(&mut self, name: String, sink: Arc<dyn Reload<T>>) {
        T::sinks(self).named.push((name, sink));
    }

    /// Registers a callback told the name of each removed `T`.
    pub(crate) fn add_removed<T: StoredResource>(&mut self, f: RemovalSink) {
        T::sinks(self).removed.push(f);
    }

    /// Registers a sink fed the rate-limit rules of `listener`.
    pub(crate) fn add_rate_limit(
        &mut self,
        listener: String,
        sink: Arc<dyn Reload<RateLimitConfig>>,
    ) {
        self.rate_limits.push(RateLimitSink {
            listener,
            sink,
            last: None,
        });
    }

    pub(crate) fn watch<T: StoredResource>(&self) -> watch::Receiver<ResourceMap<T>> {
        T::sinks_ref(self).tx.subscribe()
    }
}

/// The config plus its sinks.
#[derive(Default)]
pub(crate) struct Store {
    pub(crate) config: XdsConfig,
    pub(crate) sinks: Sinks,
}

impl Store {
    pub(crate) fn new(config: XdsConfig, sinks: Sinks) -> Self {
        Self { config, sinks }
    }

    /// Feeds every sink the whole current config (at start-up, from a persisted config).
    pub(crate) fn prime(&mut self) -> Result<(), ReloadError> {
        let config = std::mem::take(&mut self.config);
        // Secrets first: the listeners and clusters that name them find them present.
        self.apply(Arc::unwrap_or_clone(config.secrets))?;
        self.apply(Arc::unwrap_or_clone(config.clusters))?;
        self.apply(Arc::unwrap_or_clone(config.endpoints))?;
        self.apply(Arc::unwrap_or_clone(config.routes))?;
        self.apply(Arc::unwrap_or_clone(config.listeners))?;
        Ok(())
    }

    /// Replaces the resources of type `T` with `next`, feeding the sinks. On a refusal the sinks
    /// already fed get the previous state back and the store is left unchanged.
    /// Returns the names added or changed, or `None` when nothing changed (not even a removal).
    pub(crate) fn apply<T: StoredResource>(
        &mut self,
        next: Resources<T>,
    ) -> Result<Option<Vec<String>>, ReloadError> {
        let prev = T::map(&self.config);
        let updated: Vec<String> = changed(prev, &next)
            .map(|v| v.resource_name().to_owned())
            .collect();
        if prev.len() == next.len() && updated.is_empty() {
            return Ok(None);
        }
        let sinks = T::sinks_ref(&self.sinks);
        feed(sinks, prev, &next)?;
        // Shared with the watch channel and later snapshots.
        let next = Arc::new(next);
        if matches!(T::TYPE, ResourceType::Listener | ResourceType::Route) {
            let mut after = self.config.clone();
            T::set(&mut after, next.clone());
            if let Err(e) = feed_rate_limits(&mut self.sinks.rate_limits, &after) {
                let sinks = T::sinks_ref(&self.sinks);
                let all = (sinks.each.len(), sinks.named.len(), sinks.all.len());
                undo(sinks, T::map(&self.config), &next, all);
                return Err(e);
            }
        }
        T::set(&mut self.config, next.clone());
        T::sinks_ref(&self.sinks).tx.send_replace(next);
        Ok(Some(updated))
    }
}

/// Whether two held resources are the same: the same `Arc` (what a response that does not
/// touch a resource leaves) or equal content.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// The resources of `next` that are new or differ from `prev`'s.
fn changed<'a, T: XdsResource>(
    prev: &'a Resources<T>,
    next: &'a Resources<T>,
) -> impl Iterator<Item = &'a Arc<Checked<T>>> + 'a {
    next.iter()
        .filter(move |(k, v)| prev.get(*k).is_none_or(|p| !same(p, v)))
        .map(|(_, v)| v)
}

fn feed<T: StoredResource>(
    sinks: &TypedSinks<T>,
    prev: &Resources<T>,
    next: &Resources<T>,
) -> Result<(), ReloadError> {
    let (n_each, n_named) = (sinks.each.len(), sinks.named.len());
    for (i, sink) in sinks.each.iter().enumerate() {
        for v in changed(prev, next) {
            if let Err(e) = sink.reload(Checked::clone(v)) {
                // This sink may hold part of the update: it is rolled back too.
                undo(sinks, prev, next, (i + 1, 0, 0));
                return Err(e);
            }
        }
    }
    for (i, (name, sink)) in sinks.named.iter().enumerate() {
        let Some(v) = next
            .get(name)
            .filter(|v| prev.get(name).is_none_or(|p| !same(p, v)))
        else {
            continue;
        };
        if let Err(e) = sink.reload(T::clone(v)) {
            undo(sinks, prev, next, (n_each, i, 0));
            return Err(e);
        }
    }
    for (i, sink) in sinks.all.iter().enumerate() {
        if let Err(e) = sink.reload(next.values().map(|v| T::clone(v)).collect()) {
            undo(sinks, prev, next, (n_each, n_named, i));
            return Err(e);
        }
    }
    // Removals last: they cannot be undone.
    for name in prev.keys().filter(|k| !next.contains_key(*k)) {
        for f in &sinks.removed {
            if let Err(e) = f(name) {
                undo(sinks, prev, next, (n_each, n_named, sinks.all.len()));
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Gives the first `each`, `named` and `all` sinks the previous state back (best effort: a sink
/// that refuses its previous state keeps what it has).
fn undo<T: StoredResource>(
    sinks: &TypedSinks<T>,
    prev: &Resources<T>,
    next: &Resources<T>,
    (each, named, all): (usize, usize, usize),
) {
    for sink in sinks.each.iter().take(each) {
        for v in changed(prev, next) {
            if let Some(old) = prev.get(v.resource_name()) {
                let _ = sink.reload(Checked::clone(old));
            }
        }
    }
    for (name, sink) in sinks.named.iter().take(named) {
        if let Some(old) = prev
            .get(name)
            .filter(|old| next.get(name).is_none_or(|n| !same(n, old)))
        {
            let _ = sink.reload(T::clone(old));
        }
    }
    for sink in sinks.all.iter().take(all) {
        let _ = sink.reload(prev.values().map(|v| T::clone(v)).collect());
    }
}

fn feed_rate_limits(sinks: &mut [RateLimitSink], config: &XdsConfig) -> Result<(), ReloadError> {
    let mut fed = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        let Some(l) = config.listeners.get(&s.listener) else {
            continue;
        };
        let rules =
            RateLimitConfig::for_listener(l, config.routes.get(l.route_name()).map(|r| &***r));
        if s.last.as_ref() == Some(&rules) {
            continue;
        }
        if let Err(e) = s.sink.reload(rules.clone()) {
            for (j, _) in &fed {
                let prev: &RateLimitSink = &sinks[*j];
                if let Some(last) = &prev.last {
                    let _ = prev.sink.reload(last.clone());
                }
            }
            return Err(e);
        }
        fed.push((i, rules));
    }
    for (i, rules) in fed {
        sinks[i].last = Some(rules);
    }
    Ok(())
}
