//! Listener and cluster warming, as Envoy does it for LDS and CDS: a resource that arrives
//! before what it depends on is held back ("warming") until its dependencies are in, or until
//! the initial-fetch timeout passes; an updated resource keeps serving its previous version
//! meanwhile. [`WarmingGate`] is the decision, without I/O or clocks of its own: it is told what
//! xDS delivered and the time, and answers which listeners and clusters should be live now.
//! [`crate::warmer`] applies its answers to the listener and cluster managers.
//!
//! - **A cluster** is warm once it is static, or its EDS resource has arrived (Envoy's "initial
//!   service discovery load"). A new EDS cluster is not live before that (a route naming it
//!   finds no cluster); an updated one (say, a new `eds_service_name`) keeps its previous
//!   version live.
//! - **A listener** is warm once its route table has arrived (RDS; an inline table is there at
//!   once; an opaque-only listener has none) and every cluster that table or its TCP proxy
//!   names is live. Envoy waits for the clusters only at
//!   start-up (it initialises CDS and EDS before LDS); we wait on every listener addition, so a
//!   control plane that sends LDS first (as some do) never shows a 404 or 503 from the gap.
//!   A warming listener has its socket bound (a bind error refuses the LDS update, as in Envoy)
//!   but not listening: a connection attempt is refused rather than answered `404 no route`.
//!   (Another `SO_REUSEADDR` socket may still bind the address and listen first; the listener
//!   then fails to go live, which is logged, and is retried.)
//! - **The timeout** (Envoy's `initial_fetch_timeout`, 15 s by default, `None` for none) runs
//!   from when a resource started warming; when it passes, the resource goes live with what it
//!   has: a listener without its table serves an empty one (404), a cluster without EDS has no
//!   endpoint (503), as Envoy does.
//!
//! Not warmed, as in Envoy: a route-table update for a live listener applies at once (a route
//! naming a cluster not yet live answers 503 until it is). Also unlike Envoy, we do not wait
//! for a first active health-check round before a cluster goes live.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use mesh_core::{Cluster, Discovery, Listener, RouteConfiguration};
use tokio::time::Instant;

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// A resource xDS asked for, and since when it has been waiting.
#[derive(Debug, Clone)]
struct Wanted<T> {
    config: T,
    since: Instant,
}

/// What is warming, for `/ready`, the config dump and the gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WarmingStatus {
    /// Warming listeners by name, each with what it waits for.
    pub listeners: BTreeMap<String, String>,
    /// Warming clusters by name, each with what it waits for.
    pub clusters: BTreeMap<String, String>,
}

impl WarmingStatus {
    /// Whether nothing is warming.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.clusters.is_empty()
    }
}

/// The warming decision: what xDS wants, what is live, and what the wanted resources wait for.
#[derive(Debug, Clone)]
pub struct WarmingGate {
    timeout: Option<Duration>,
    listeners: BTreeMap<String, Wanted<Listener>>,
    clusters: BTreeMap<String, Wanted<Cluster>>,
    /// The clusters each known route table names, by table name.
    tables: BTreeMap<String, BTreeSet<String>>,
    /// EDS names whose first assignment has arrived.
    eds: HashSet<String>,
    /// What was last made live (the managers hold exactly these).
    live_listeners: BTreeMap<String, Listener>,
    live_clusters: BTreeMap<String, Cluster>,
}

impl WarmingGate {
    /// A gate with nothing wanted yet; `timeout` is the initial-fetch timeout (`None`: wait
    /// for ever, Envoy's `0s`).
    pub fn new(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            listeners: BTreeMap::new(),
            clusters: BTreeMap::new(),
            tables: BTreeMap::new(),
            eds: HashSet::new(),
            live_listeners: BTreeMap::new(),
            live_clusters: BTreeMap::new(),
        }
    }

    /// LDS delivered `wanted` (the whole set). A listener whose config did not change keeps its
    /// warming clock.
    pub fn set_listeners(&mut self, wanted: Vec<Listener>, now: Instant) {
        self.listeners = replace(&mut self.listeners, wanted, |l| l.name.clone(), now);
    }

    /// CDS delivered `wanted` (the whole set).
    pub fn set_clusters(&mut self, wanted: Vec<Cluster>, now: Instant) {
        self.clusters = replace(&mut self.clusters, wanted, |c| c.name.clone(), now);
    }

    /// RDS delivered these tables (the whole set).
    pub fn set_tables<'a>(&mut self, tables: impl IntoIterator<Item = &'a RouteConfiguration>) {
        self.tables = tables
            .into_iter()
            .map(|rc| (rc.name.clone(), table_clusters(rc)))
            .collect();
    }

    /// The first (or a new) assignment for `eds_name` arrived.
    pub fn eds_arrived(&mut self, eds_name: &str) {
        self.eds.insert(eds_name.to_owned());
    }

    /// The assignment for `eds_name` was removed: a cluster added later under it warms again.
    pub fn eds_removed(&mut self, eds_name: &str) {
        self.eds.remove(eds_name);
    }

    /// Whether the gate holds an assignment for `eds_name` already.
    pub fn has_eds(&self, eds_name: &str) -> bool {
        self.eds.contains(eds_name)
    }

    /// The clusters to make live now: each wanted cluster that is warm or timed out; for one
    /// still warming, its previous live version if it has one.
    pub fn plan_clusters(&self, now: Instant) -> Vec<Cluster> {
        self.clusters
            .iter()
            .filter_map(|(name, w)| {
                if self.cluster_waits_for(&w.config).is_none() || self.expired(w, now) {
                    Some(w.config.clone())
                } else {
                    self.live_clusters.get(name).cloned()
                }
            })
            .collect()
    }

    /// Records that `live` is what the cluster manager now holds.
    pub fn clusters_applied(&mut self, live: &[Cluster]) {
        self.live_clusters = live.iter().map(|c| (c.name.clone(), c.clone())).collect();
    }

    /// The listeners to make live now (see [`plan_clusters`](Self::plan_clusters)); judged
    /// against the clusters recorded live by [`clusters_applied`](Self::clusters_applied).
    pub fn plan_listeners(&self, now: Instant) -> Vec<Listener> {
        self.listeners
            .iter()
            .filter_map(|(name, w)| {
                if self.listener_waits_for(&w.config).is_none() || self.expired(w, now) {
                    Some(w.config.clone())
                } else {
                    self.live_listeners.get(name).cloned()
                }
            })
            .collect()
    }

    /// Records that `live` is what the listener manager now holds.
    pub fn listeners_applied(&mut self, live: &[Listener]) {
        self.live_listeners = live.iter().map(|l| (l.name.clone(), l.clone())).collect();
    }

    /// Whether `plan` differs from what is live (so applying it would change something).
    pub fn clusters_differ(&self, plan: &[Cluster]) -> bool {
        differs(&self.live_clusters, plan, |c| &c.name)
    }

    /// Whether `plan` differs from the live listeners.
    pub fn listeners_differ(&self, plan: &[Listener]) -> bool {
        differs(&self.live_listeners, plan, |l| &l.name)
    }

    /// The wanted listeners that are not live as wanted yet (new or updated, still warming).
    pub fn warming_listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners
            .iter()
            .filter(|(n, w)| self.live_listeners.get(*n) != Some(&w.config))
            .map(|(_, w)| &w.config)
    }

    /// What is warming and what each waits for.
    pub fn status(&self) -> WarmingStatus {
        let listeners = self
            .warming_listeners()
            .map(|l| {
                let why = self
                    .listener_waits_for(l)
                    .unwrap_or_else(|| "activation".into());
                (l.name.clone(), why)
            })
            .collect();
        let clusters = self
            .clusters
            .iter()
            .filter(|(n, w)| self.live_clusters.get(*n) != Some(&w.config))
            .map(|(n, w)| {
                let why = self
                    .cluster_waits_for(&w.config)
                    .unwrap_or_else(|| "activation".into());
                (n.clone(), why)
            })
            .collect();
        WarmingStatus {
            listeners,
            clusters,
        }
    }

    /// When the next warming resource times out, if any does.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.timeout?;
        let listeners = self
            .listeners
            .iter()
            .filter(|(n, w)| self.live_listeners.get(*n) != Some(&w.config))
            .map(|(_, w)| w.since);
        let clusters = self
            .clusters
            .iter()
            .filter(|(n, w)| self.live_clusters.get(*n) != Some(&w.config))
            .map(|(_, w)| w.since);
        listeners.chain(clusters).min().map(|since| since + timeout)
    }

    fn expired<T>(&self, w: &Wanted<T>, now: Instant) -> bool {
        self.timeout.is_some_and(|t| now >= w.since + t)
    }

    /// What `c` still waits for, or `None` when it is warm.
    fn cluster_waits_for(&self, c: &Cluster) -> Option<String> {
        (c.discovery == Discovery::Eds && !self.eds.contains(c.eds_name()))
            .then(|| format!("endpoints (EDS) {:?}", c.eds_name()))
    }

    /// What `l` still waits for, or `None` when it is warm.
    fn listener_waits_for(&self, l: &Listener) -> Option<String> {
        let mut clusters: BTreeSet<String> = match &l.route_config {
            Some(rc) => table_clusters(rc),
            // An opaque-only listener (a TCP proxy, no route table) needs no RDS.
            None if !l.serves_http() => BTreeSet::new(),
            None => match self.tables.get(&l.route_config_name) {
                Some(c) => c.clone(),
                None => return Some(format!("route table (RDS) {:?}", l.route_config_name)),
            },
        };
        if let Some(tcp) = &l.tcp_proxy {
            clusters.extend(
                tcp.destination
                    .cluster_names()
                    .into_iter()
                    .map(str::to_owned),
            );
        }
        let missing: Vec<&str> = clusters
            .iter()
            .filter(|c| !self.live_clusters.contains_key(*c))
            .map(String::as_str)
            .collect();
        (!missing.is_empty()).then(|| format!("clusters {missing:?}"))
    }
}

/// The new wanted map: unchanged entries keep their clock, changed and new ones start now.
fn replace<T: PartialEq>(
    old: &mut BTreeMap<String, Wanted<T>>,
    wanted: Vec<T>,
    name: impl Fn(&T) -> String,
    now: Instant,
) -> BTreeMap<String, Wanted<T>> {
    wanted
        .into_iter()
        .map(|config| {
            let n = name(&config);
            let since = match old.remove(&n) {
                Some(w) if w.config == config => w.since,
                _ => now,
            };
            (n, Wanted { config, since })
        })
        .collect()
}

fn differs<T: PartialEq>(
    live: &BTreeMap<String, T>,
    plan: &[T],
    name: impl Fn(&T) -> &String,
) -> bool {
    live.len() != plan.len() || plan.iter().any(|p| live.get(name(p)) != Some(p))
}

/// The clusters a route table can send to (a `cluster_header` route names none in advance).
pub fn table_clusters(rc: &RouteConfiguration) -> BTreeSet<String> {
    rc.virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .flat_map(|r| r.action.destination.cluster_names())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
#[path = "warming_tests.rs"]
mod tests;
