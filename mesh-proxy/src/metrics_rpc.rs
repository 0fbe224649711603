//! RPC (xprotocol) metrics besides the request counters RPCs share with HTTP
//! (`mesh_requests`, `mesh_local_replies`): requests in flight, upstream connections (open
//! and opened), and downstream connections closed for a protocol error.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the RPC gauges and counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The listener.
    pub listener: String,
    /// `bolt` or `dubbo`.
    pub protocol: &'static str,
}

/// Labels of a protocol error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcErrorLabels {
    /// The listener.
    pub listener: String,
    /// `bolt` or `dubbo`.
    pub protocol: &'static str,
    /// `malformed` or `too_large`.
    pub reason: &'static str,
}

/// The RPC metric families (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct RpcMetrics {
    in_flight: Family<RpcLabels, Gauge>,
    upstream_open: Family<RpcLabels, Gauge>,
    upstream_opened: Family<RpcLabels, Counter>,
    protocol_errors: Family<RpcErrorLabels, Counter>,
}

/// One listener's RPC metrics, resolved once.
#[derive(Clone, Debug)]
pub(crate) struct ListenerRpcMetrics {
    pub(crate) in_flight: Gauge,
    pub(crate) upstream_open: Gauge,
    pub(crate) upstream_opened: Counter,
    families: RpcMetrics,
    labels: RpcLabels,
}

impl ListenerRpcMetrics {
    /// Counts a downstream connection closed for a frame that could not be decoded.
    pub(crate) fn protocol_error(&self, reason: &'static str) {
        self.families
            .protocol_errors
            .get_or_create(&RpcErrorLabels {
                listener: self.labels.listener.clone(),
                protocol: self.labels.protocol,
                reason,
            })
            .inc();
    }
}

impl RpcMetrics {
    /// Registers the families in `reg` (the `mesh` sub-registry).
    pub(crate) fn register(reg: &mut Registry) -> Self {
        let m = Self::default();
        reg.register(
            "rpc_requests_in_flight",
            "RPC requests waiting for their upstream response",
            m.in_flight.clone(),
        );
        reg.register(
            "rpc_upstream_connections",
            "Open upstream connections RPCs are multiplexed over",
            m.upstream_open.clone(),
        );
        reg.register(
            "rpc_upstream_connections_opened",
            "Upstream connections RPCs were multiplexed over, ever opened",
            m.upstream_opened.clone(),
        );
        reg.register(
            "rpc_protocol_errors",
            "Downstream frames that could not be decoded or were over the limit: each closes its connection but a request with a bad body (reason bad_request), which is answered",
            m.protocol_errors.clone(),
        );
        m
    }

    /// The metrics of one listener's RPC proxy.
    pub(crate) fn listener(&self, listener: &str, protocol: &'static str) -> ListenerRpcMetrics {
        let labels = RpcLabels {
            listener: listener.into(),
            protocol,
        };
        ListenerRpcMetrics {
            in_flight: self.in_flight.get_or_create_owned(&labels),
            upstream_open: self.upstream_open.get_or_create_owned(&labels),
            upstream_opened: self.upstream_opened.get_or_create_owned(&labels),
            families: self.clone(),
            labels,
        }
    }
}
