//! The sidecar's Prometheus metrics (prometheus-client), shared by every listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use mesh_core::Shared;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod cluster;
mod runtime;
pub use cluster::ClusterCollector;
pub use runtime::RuntimeCollector;

/// Labels of a finished request. The listener name is shared and the status class static, so
/// that building the labels on every request allocates only the route and cluster names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The listener that accepted it.
    pub listener: Arc<String>,
    /// The matched route (empty when none matched).
    pub route: String,
    /// The target cluster (empty when none was chosen).
    pub cluster: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status_class: &'static str,
}

/// Labels keyed by listener only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener.
    pub listener: String,
}

/// Labels of a request the mesh answered itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The listener.
    pub listener: String,
    /// `MeshError::code()`, e.g. `rate_limited`, `no_route`.
    pub code: String,
}

/// Labels of a request the listener's authorization policy refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RbacDeniedLabels {
    /// The listener.
    pub listener: String,
    /// The DENY policy that matched, or `no_policy_matched` when no ALLOW policy did.
    pub policy: String,
}

/// Every metric the data path records. Cheap to clone (an `Arc`).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: Family<RequestLabels, Counter>,
    latency: Family<ListenerLabels, Histogram>,
    active_requests: Family<ListenerLabels, Gauge>,
    active_connections: Family<ListenerLabels, Gauge>,
    mesh_errors: Family<ErrorLabels, Counter>,
    rbac_allowed: Family<ListenerLabels, Counter>,
    rbac_denied: Family<RbacDeniedLabels, Counter>,
    l4: crate::metrics_l4::L4Metrics,
    rpc: crate::metrics_rpc::RpcMetrics,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under the `mesh` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let inner = Inner {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                // 100 µs .. ~26 s.
                Histogram::new(exponential_buckets(0.0001, 2.0, 19))
            }),
            active_requests: Family::default(),
            active_connections: Family::default(),
            mesh_errors: Family::default(),
            rbac_allowed: Family::default(),
            rbac_denied: Family::default(),
            l4: Default::default(),
            rpc: Default::default(),
        };
        let reg = registry.sub_registry_with_prefix("mesh");
        reg.register(
            "requests",
            "Requests by listener, route, cluster and status class",
            inner.requests.clone(),
        );
        reg.register(
            "request_duration_seconds",
            "Request latency, from headers received to response headers sent",
            inner.latency.clone(),
        );
        reg.register(
            "active_requests",
            "Requests in flight",
            inner.active_requests.clone(),
        );
        reg.register(
            "downstream_connections",
            "Open downstream connections",
            inner.active_connections.clone(),
        );
        reg.register(
            "local_replies",
            "Requests the mesh answered itself, by reason (rate_limited, no_route, ...)",
            inner.mesh_errors.clone(),
        );
        reg.register(
            "rbac_allowed",
            "Requests the listener's authorization policy allowed",
            inner.rbac_allowed.clone(),
        );
        reg.register(
            "rbac_denied",
            "Requests the listener's authorization policy denied, by deciding policy \
             (no_policy_matched: no ALLOW policy matched)",
            inner.rbac_denied.clone(),
        );
        let inner = Inner {
            l4: crate::metrics_l4::L4Metrics::register(reg),
            rpc: crate::metrics_rpc::RpcMetrics::register(reg),
            ..inner
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Detection and opaque-TCP counters.
    pub fn l4(&self) -> &crate::metrics_l4::L4Metrics {
        &self.inner.l4
    }

    /// RPC (xprotocol) gauges and counters.
    pub fn rpc(&self) -> &crate::metrics_rpc::RpcMetrics {
        &self.inner.rpc
    }

    /// Records a finished request.
    pub fn record_request(&self, labels: RequestLabels, elapsed: Duration) {
        self.inner
            .latency
            .get_or_create(&ListenerLabels {
                listener: labels.listener.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        self.inner.requests.get_or_create(&labels).inc();
    }

    /// A listener's own metrics, looked up once so that the data path does not build labels and
    /// search the families for them on every request.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.into(),
        };
        ListenerMetrics {
            active_requests: self.inner.active_requests.get_or_create_owned(&labels),
            latency: self.inner.latency.get_or_create_owned(&labels),
            name: Arc::new(labels.listener),
            metrics: self.clone(),
            counts: Arc::new(CountCache::default()),
        }
    }
    /// Records a local reply.
    pub fn record_mesh_error(&self, listener: &str, code: &str) {
        self.inner
            .mesh_errors
            .get_or_create(&ErrorLabels {
                listener: listener.into(),
                code: code.into(),
            })
            .inc();
    }

    /// Records an authorization decision: allowed, or denied by `policy`.
    pub fn record_rbac(&self, listener: &str, denied_by: Option<&str>) {
        match denied_by {
            None => self
                .inner
                .rbac_allowed
                .get_or_create(&ListenerLabels {
                    listener: listener.into(),
                })
                .inc(),
            Some(policy) => self
                .inner
                .rbac_denied
                .get_or_create(&RbacDeniedLabels {
                    listener: listener.into(),
                    policy: policy.into(),
                })
                .inc(),
        };
    }

    /// The in-flight request gauge of a listener.
    pub fn active_requests(&self, listener: &str) -> Gauge {
        self.inner
            .active_requests
            .get_or_create(&ListenerLabels {
                listener: listener.into(),
            })
            .clone()
    }

    /// The open-connection gauge of a listener.
    pub fn active_connections(&self, listener: &str) -> Gauge {
        self.inner
            .active_connections
            .get_or_create(&ListenerLabels {
                listener: listener.into(),
            })
            .clone()
    }
}

/// One listener's pre-resolved metrics (see [`Metrics::listener`]).
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// Requests in flight on the listener.
    pub active_requests: Gauge,
    latency: Histogram,
    name: Arc<String>,
    metrics: Metrics,
    counts: Arc<CountCache>,
}

/// The listener's request counters by route and cluster, resolved once per pair: a request
/// reads them with one atomic load and two string-keyed lookups, where building the family's
/// labels cost two `String`s, SipHash over four fields and the family's lock on every request.
#[derive(Debug, Default)]
struct CountCache {
    by_route: Shared<CountMap>,
    /// Serialises inserts (first request of a route and cluster pair), never held by a hit.
    insert: Mutex<()>,
}

type FastMap<V> = HashMap<String, V, foldhash::fast::RandomState>;
type CountMap = FastMap<FastMap<Arc<RouteCounts>>>;

/// The counters of one route and cluster pair, one per status class, each created on first use
/// (so the exposition lists only classes that happened, as a family lookup would).
#[derive(Debug)]
struct RouteCounts {
    route: String,
    cluster: String,
    by_class: [OnceLock<Counter>; 5],
}

impl ListenerMetrics {
    /// Records a finished request: its latency, and its count by route, cluster and status.
    pub fn record(&self, route: &str, cluster: &str, status: http::StatusCode, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
        let class = status_class(status);
        let map = self.counts.by_route.load();
        match map.get(route).and_then(|m| m.get(cluster)) {
            Some(counts) => self.count(counts, class),
            None => {
                drop(map);
                self.count(&self.insert_counts(route, cluster), class);
            }
        }
    }

    fn count(&self, counts: &RouteCounts, class: &'static str) {
        let slot = match class.as_bytes().first() {
            Some(b'1') => 0,
            Some(b'2') => 1,
            Some(b'3') => 2,
            Some(b'4') => 3,
            _ => 4,
        };
        counts.by_class[slot]
            .get_or_init(|| {
                let labels = RequestLabels {
                    listener: Arc::clone(&self.name),
                    route: counts.route.clone(),
                    cluster: counts.cluster.clone(),
                    status_class: class,
                };
                self.metrics.inner.requests.get_or_create_owned(&labels)
            })
            .inc();
    }

    /// The slow path: the first request of a route and cluster pair on this listener.
    fn insert_counts(&self, route: &str, cluster: &str) -> Arc<RouteCounts> {
        let cache = &self.counts;
        let _serial = cache.insert.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = CountMap::clone(&cache.by_route.load());
        let counts = Arc::clone(
            map.entry(route.to_owned())
                .or_default()
                .entry(cluster.to_owned())
                .or_insert_with(|| {
                    Arc::new(RouteCounts {
                        route: route.to_owned(),
                        cluster: cluster.to_owned(),
                        by_class: Default::default(),
                    })
                }),
        );
        cache.by_route.store(map);
        counts
    }
}

/// `2xx`-style class of a status code.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_requests_show_in_the_text_exposition() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.record_request(
            RequestLabels {
                listener: Arc::new("outbound".into()),
                route: "r".into(),
                cluster: "c".into(),
                status_class: status_class(http::StatusCode::NOT_FOUND),
            },
            Duration::from_millis(3),
        );
        m.record_mesh_error("outbound", "no_route");
        m.record_rbac("inbound", None);
        m.record_rbac("inbound", Some("no_policy_matched"));
        m.active_requests("outbound").inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"mesh_requests_total{listener="outbound",route="r",cluster="c",status_class="4xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mesh_local_replies_total{listener="outbound",code="no_route"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mesh_active_requests{listener="outbound"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mesh_rbac_allowed_total{listener="inbound"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"mesh_rbac_denied_total{listener="inbound",policy="no_policy_matched"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("mesh_request_duration_seconds_count{listener=\"outbound\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn listener_metrics_record_into_the_shared_families() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let inbound = m.listener("inbound");
        inbound.active_requests.inc();
        inbound.record("r", "c", http::StatusCode::OK, Duration::from_millis(1));
        inbound.record("r", "c", http::StatusCode::OK, Duration::from_millis(2));
        // Another pair and class, and the clone shares the cache.
        inbound
            .clone()
            .record("", "", http::StatusCode::NOT_FOUND, Duration::ZERO);
        // The per-request path and the pre-resolved one count into the same series.
        m.record_request(
            RequestLabels {
                listener: Arc::new("inbound".into()),
                route: "r".into(),
                cluster: "c".into(),
                status_class: "2xx",
            },
            Duration::from_millis(3),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"mesh_requests_total{listener="inbound",route="r",cluster="c",status_class="2xx"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mesh_requests_total{listener="inbound",route="",cluster="",status_class="4xx"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"route="r",cluster="c",status_class="4xx""#),
            "classes appear on first use: {text}"
        );
        assert!(
            text.contains("mesh_request_duration_seconds_count{listener=\"inbound\"} 4"),
            "{text}"
        );
        assert!(
            text.contains(r#"mesh_active_requests{listener="inbound"} 1"#),
            "{text}"
        );
    }
}
