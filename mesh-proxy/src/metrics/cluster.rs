//! The per-cluster families, read from the cluster manager when scraped.

/// Per-cluster gauges read from the cluster manager at scrape time (no work on the data path):
/// upstream connections and requests in flight, healthy endpoints (gauges), circuit-breaker
/// overflows (counters).
#[derive(Debug)]
pub struct ClusterCollector(pub mesh_lb::ClusterManager);

impl prometheus_client::collector::Collector for ClusterCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        let mut names = self.0.names();
        names.sort();
        let clusters: Vec<_> = names
            .iter()
            .filter_map(|n| self.0.get(n).map(|c| (n.clone(), c)))
            .collect();
        type Read = fn(&mesh_lb::ClusterState) -> i64;
        type Count = fn(&mesh_lb::ClusterState) -> u64;
        let gauges: [(&str, &str, Read); 4] = [
            (
                "mesh_upstream_connections",
                "Open upstream connections",
                |c| i64::from(c.circuit_breaker().stats().connections),
            ),
            (
                "mesh_upstream_requests_active",
                "Upstream requests in flight",
                |c| i64::from(c.circuit_breaker().stats().requests),
            ),
            (
                "mesh_upstream_healthy_endpoints",
                "Endpoints taking traffic",
                |c| i64::try_from(c.endpoint_set().healthy()).unwrap_or(i64::MAX),
            ),
            ("mesh_upstream_endpoints", "Endpoints known", |c| {
                i64::try_from(c.endpoint_set().len()).unwrap_or(i64::MAX)
            }),
        ];
        // Overflows only grow: counters (exposed with `_total`), read from the breaker's totals.
        let counters: [(&str, &str, Count); 4] = [
            (
                "mesh_upstream_connections_overflow",
                "Connections refused by the max_connections breaker",
                |c| c.circuit_breaker().stats().connections_overflow,
            ),
            (
                "mesh_upstream_retries_overflow",
                "Retries refused by the max_retries breaker",
                |c| c.circuit_breaker().stats().retries_overflow,
            ),
            (
                "mesh_upstream_requests_overflow",
                "Requests refused by the max_requests breaker",
                |c| c.circuit_breaker().stats().requests_overflow,
            ),
            (
                "mesh_upstream_pending_overflow",
                "Requests refused by the max_pending_requests breaker",
                |c| c.circuit_breaker().stats().pending_overflow,
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (cluster, state) in &clusters {
                let labels = [("cluster", cluster.as_str())];
                ConstGauge::new(read(state)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (cluster, state) in &clusters {
                let labels = [("cluster", cluster.as_str())];
                ConstCounter::new(read(state)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
