//! The Tokio runtime's own gauges, read when scraped.

/// Gauges of the Tokio runtime the admin endpoint is served from, read at scrape time (nothing
/// on the data path): `mesh_runtime_alive_tasks` (spawned tasks not yet finished: connection
/// tasks, upstream connection drivers, the xDS client, timers' owners) and
/// `mesh_runtime_workers`. A task count that keeps growing under steady load is a leak; the soak
/// (`scripts/soak`) samples it. Tokio's stable metrics give these two without `tokio_unstable`.
#[derive(Debug, Default)]
pub struct RuntimeCollector;

impl prometheus_client::collector::Collector for RuntimeCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        // Scrapes run on the runtime (the admin endpoint's task); outside one there is nothing
        // to report.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let metrics = handle.metrics();
        let gauges = [
            (
                "mesh_runtime_alive_tasks",
                "Tokio tasks spawned and not yet finished",
                metrics.num_alive_tasks(),
            ),
            (
                "mesh_runtime_workers",
                "Tokio worker threads",
                metrics.num_workers(),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    fn alive(text: &str) -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix("mesh_runtime_alive_tasks "))
            .unwrap_or_else(|| panic!("no alive-task gauge in {text}"))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn alive_tasks_follow_spawned_tasks() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RuntimeCollector));
        let before = alive(&scrape(&registry));
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move { stop.cancelled().await })
            })
            .collect();
        assert_eq!(alive(&scrape(&registry)), before + 3);
        stop.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(alive(&scrape(&registry)), before);
        assert!(scrape(&registry).contains("mesh_runtime_workers 1"));
    }

    #[test]
    fn outside_a_runtime_nothing_is_reported() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RuntimeCollector));
        assert!(!scrape(&registry).contains("mesh_runtime"));
    }
}
