//! Dynamic mode: the sidecar's config comes from an xDS control plane. The mesh-xds client
//! feeds listeners (LDS) and route tables (RDS) to the listener manager, clusters (CDS) and
//! endpoint sets (EDS) to the cluster manager, each through the warming gate; its status
//! becomes Prometheus metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mesh_core::{
    Checked, Cluster, ClusterLoadAssignment, Listener, ReloadEach, RouteConfiguration, Secret,
};
use mesh_xds::client::{XdsClientBuilder, XdsStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::warmer::Warmer;

/// Wires the client's sinks to the sidecar's managers, through the warming gate: a listener
/// goes live once its route table and that table's clusters and endpoints are in, a cluster
/// once its endpoints are (see [`crate::warming`]).
/// Secrets (SDS) go straight to the sidecar's secret store: the client subscribes to them ahead
/// of the listeners and clusters naming them and is not ready until they are in.
pub fn wire(
    builder: XdsClientBuilder,
    warmer: &Warmer,
    secrets: Arc<dyn ReloadEach<Checked<Secret>>>,
) -> XdsClientBuilder {
    builder
        .sink_each::<Secret>(secrets)
        .sink_all::<Cluster>(warmer.cluster_sink())
        .sink_each::<ClusterLoadAssignment>(warmer.endpoint_sink())
        .sink_all::<Listener>(warmer.listener_sink())
        .sink_all::<RouteConfiguration>(warmer.route_sink())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    type_url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    type_url: String,
    version: String,
}

/// Mirrors the client's status into Prometheus gauges and the admin readiness flag, until
/// `stop` is cancelled.
pub fn export_status(
    registry: &mut Registry,
    mut status: watch::Receiver<XdsStatus>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // Counters (exposed as `mesh_xds_acks_total`, `mesh_xds_nacks_total`): they only grow.
    let acks = Family::<TypeLabels, Counter>::default();
    let nacks = Family::<TypeLabels, Counter>::default();
    let version = Family::<VersionLabels, Gauge>::default();
    let connected = Gauge::<i64>::default();
    let reg = registry.sub_registry_with_prefix("mesh_xds");
    reg.register("acks", "xDS updates accepted, by type", acks.clone());
    reg.register("nacks", "xDS updates rejected, by type", nacks.clone());
    // An info-style gauge (value 1, the version in a label), named `_info` by convention.
    reg.register(
        "version_info",
        "The accepted version per type, as a label (value 1)",
        version.clone(),
    );
    reg.register(
        "connected",
        "1 while the ADS stream is open",
        connected.clone(),
    );
    tokio::spawn(async move {
        loop {
            {
                let s = status.borrow_and_update().clone();
                ready.store(s.ready, Ordering::Release);
                let up = matches!(
                    s.connection,
                    mesh_xds::client::ConnectionState::Connected(_)
                );
                connected.set(i64::from(up));
                version.clear();
                for (type_url, t) in &s.types {
                    let labels = TypeLabels {
                        type_url: type_url.clone(),
                    };
                    // The client's totals only grow; each counter catches up to its own.
                    for (family, total) in [(&acks, t.acks), (&nacks, t.nacks)] {
                        let counter = family.get_or_create(&labels);
                        counter.inc_by(total.saturating_sub(counter.get()));
                    }
                    version
                        .get_or_create(&VersionLabels {
                            type_url: type_url.clone(),
                            version: t.version.clone(),
                        })
                        .set(1);
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return },
            }
        }
    })
}
