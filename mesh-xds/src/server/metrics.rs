//! Prometheus metrics of the discovery server, as [`Callbacks`].

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::callbacks::{Callbacks, StreamId, StreamKind};
use crate::ResourceType;

type Labels = [(&'static str, &'static str); 1];

/// Streams open, requests, pushes, ACKs and NACKs per type, and convergence latency (from a
/// snapshot being set to the node ACKing it).
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    streams_open: Gauge,
    streams_total: Counter,
    requests: Family<Labels, Counter>,
    pushes: Family<Labels, Counter>,
    acks: Family<Labels, Counter>,
    nacks: Family<Labels, Counter>,
    convergence: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(kind: ResourceType) -> Labels {
    [(
        "type",
        match kind {
            ResourceType::Secret => "secret",
            ResourceType::Runtime => "runtime",
            ResourceType::Cluster => "cluster",
            ResourceType::Endpoint => "endpoint",
            ResourceType::Listener => "listener",
            ResourceType::Route => "route",
        },
    )]
}

impl Metrics {
    /// Fresh metrics in their own registry (prefix `xds`).
    pub fn new() -> Self {
        let mut reg = Registry::with_prefix("xds");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            streams_open: Gauge::default(),
            streams_total: Counter::default(),
            requests: Family::default(),
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        reg.register(
            "streams_open",
            "Discovery streams open",
            m.streams_open.clone(),
        );
        reg.register(
            "streams",
            "Discovery streams opened",
            m.streams_total.clone(),
        );
        reg.register(
            "requests",
            "Discovery requests (incl. ACKs/NACKs)",
            m.requests.clone(),
        );
        reg.register("pushes", "Discovery responses sent", m.pushes.clone());
        reg.register("acks", "ACKs received", m.acks.clone());
        reg.register("nacks", "NACKs received", m.nacks.clone());
        reg.register(
            "convergence_seconds",
            "Time from a snapshot being set to the node ACKing it",
            m.convergence.clone(),
        );
        reg.register_collector(Box::new(RuntimeTasks));
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = reg;
        m
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }

    /// Streams open now.
    pub fn streams_open(&self) -> i64 {
        self.streams_open.get()
    }

    /// NACKs received for `kind`.
    pub fn nacks(&self, kind: ResourceType) -> u64 {
        self.nacks.get_or_create(&label(kind)).get()
    }
}

impl Callbacks for Metrics {
    fn stream_opened(&self, _id: StreamId, _kind: StreamKind) {
        self.streams_open.inc();
        self.streams_total.inc();
    }
    fn stream_closed(&self, _id: StreamId) {
        self.streams_open.dec();
    }
    fn request(&self, _id: StreamId, _node: &str, kind: ResourceType) {
        self.requests.get_or_create(&label(kind)).inc();
    }
    fn response(&self, _id: StreamId, _node: &str, kind: ResourceType, _v: &str, _n: usize) {
        self.pushes.get_or_create(&label(kind)).inc();
    }
    fn ack(&self, _node: &str, kind: ResourceType, _version: &str, since_set: Duration) {
        self.acks.get_or_create(&label(kind)).inc();
        self.convergence.observe(since_set.as_secs_f64());
    }
    fn nack(&self, _node: &str, kind: ResourceType, _version: &str, _error: &str) {
        self.nacks.get_or_create(&label(kind)).inc();
    }
}

/// `xds_runtime_alive_tasks`: Tokio tasks spawned and not yet finished in the runtime the
/// scrape runs on (the admin endpoint's), read at scrape time from Tokio's stable metrics. A count
/// that keeps growing while the streams open stay the same is a leak; the soak
/// (`scripts/soak`) samples it.
#[derive(Debug)]
struct RuntimeTasks;

impl prometheus_client::collector::Collector for RuntimeTasks {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        // Outside a runtime (a unit test's plain thread) there is nothing to report.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let alive = i64::try_from(handle.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
        ConstGauge::new(alive).encode(encoder.encode_descriptor(
            "runtime_alive_tasks",
            "Tokio tasks spawned and not yet finished",
            None,
            MetricType::Gauge,
        )?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_show_in_the_exposition() {
        let m = Metrics::new();
        m.stream_opened(1, StreamKind::Ads);
        m.response(1, "n", ResourceType::Cluster, "v", 3);
        m.nack("n", ResourceType::Cluster, "v", "bad");
        m.ack("n", ResourceType::Cluster, "v", Duration::from_millis(5));
        let text = m.encode();
        assert!(text.contains("xds_streams_open 1"), "{text}");
        assert!(
            text.contains("xds_pushes_total{type=\"cluster\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("xds_nacks_total{type=\"cluster\"} 1"),
            "{text}"
        );
        assert!(text.contains("xds_convergence_seconds_count 1"), "{text}");
        assert_eq!(m.nacks(ResourceType::Cluster), 1);
        m.stream_closed(1);
        assert_eq!(m.streams_open(), 0);
    }

    #[tokio::test]
    async fn alive_tasks_show_in_the_exposition() {
        let alive = |m: &Metrics| -> i64 {
            let text = m.encode();
            text.lines()
                .find_map(|l| l.strip_prefix("xds_runtime_alive_tasks "))
                .unwrap_or_else(|| panic!("no task gauge in {text}"))
                .parse()
                .unwrap()
        };
        let m = Metrics::new();
        let before = alive(&m);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move { rx.await.ok() });
        assert_eq!(alive(&m), before + 1);
        drop(tx);
        task.await.unwrap();
        assert_eq!(alive(&m), before);
    }
}
