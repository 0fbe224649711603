//! Layer-4 metrics: what detection decided and how opaque TCP fared (Envoy's `tcp_proxy`
//! counters: connections, connect failures, bytes each way).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a detection outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    /// The listener.
    pub listener: String,
    /// What the first bytes were (`http1`, `http2`, `tls`, `bolt`, `dubbo`, `opaque`), or
    /// `timeout` when they did not come in time.
    pub protocol: &'static str,
    /// What the listener did: `http`, `tcp` or `closed`.
    pub action: &'static str,
}

/// Why the listener closed or refused a downstream connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No request head (HTTP/1) or preface and SETTINGS (HTTP/2) within the handshake timeout.
    HandshakeTimeout,
    /// Idle (no request in flight) and the oldest such when the connection limit was reached.
    ShedIdle,
    /// Its source address already had the per-IP maximum of connections open.
    PerIpLimit,
    /// The connection limit was reached and nothing idle could be shed.
    OverLimit,
}

impl CloseReason {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ShedIdle => "shed_idle",
            Self::PerIpLimit => "per_ip_limit",
            Self::OverLimit => "over_limit",
        }
    }
}

/// Labels of the closed-connections counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    listener: String,
    reason: &'static str,
}

/// Labels of a TCP proxy's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// The listener.
    pub listener: String,
    /// The upstream cluster.
    pub cluster: String,
}

/// The layer-4 metric families (cheap to clone: each family is an `Arc`).
#[derive(Clone, Debug, Default)]
pub struct L4Metrics {
    detected: Family<DetectLabels, Counter>,
    closed: Family<ClosedLabels, Counter>,
    tcp_connections: Family<TcpLabels, Counter>,
    tcp_connect_failures: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
}

impl L4Metrics {
    /// Registers the families in `reg` (the `mesh` sub-registry).
    pub(crate) fn register(reg: &mut Registry) -> Self {
        let m = Self::default();
        reg.register(
            "detected_connections",
            "Downstream connections by detected protocol and what the listener did with them",
            m.detected.clone(),
        );
        reg.register(
            "downstream_connections_closed",
            "Downstream connections the listener closed (or refused) to defend itself, by reason",
            m.closed.clone(),
        );
        reg.register(
            "tcp_connections",
            "Opaque TCP connections relayed to an upstream",
            m.tcp_connections.clone(),
        );
        reg.register(
            "tcp_connect_failures",
            "Opaque TCP upstream connect attempts that failed (refused, timed out, no endpoint)",
            m.tcp_connect_failures.clone(),
        );
        reg.register(
            "tcp_sent_bytes",
            "Bytes relayed from downstream to upstream",
            m.tcp_sent.clone(),
        );
        reg.register(
            "tcp_received_bytes",
            "Bytes relayed from upstream to downstream",
            m.tcp_received.clone(),
        );
        m
    }

    /// Counts one connection closed or refused for `reason` (see [`CloseReason`]).
    pub(crate) fn closed(&self, listener: &str, reason: CloseReason) {
        self.closed
            .get_or_create(&ClosedLabels {
                listener: listener.into(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The count of connections closed for `reason` on `listener` (for tests and the admin).
    pub fn closed_for(&self, listener: &str, reason: CloseReason) -> u64 {
        self.closed
            .get(&ClosedLabels {
                listener: listener.into(),
                reason: reason.as_str(),
            })
            .map_or(0, |c| c.get())
    }

    /// Counts one detection outcome.
    pub(crate) fn detected(&self, listener: &str, protocol: &'static str, action: &'static str) {
        self.detected
            .get_or_create(&DetectLabels {
                listener: listener.into(),
                protocol,
                action,
            })
            .inc();
    }

    fn labels(listener: &str, cluster: &str) -> TcpLabels {
        TcpLabels {
            listener: listener.into(),
            cluster: cluster.into(),
        }
    }

    /// Counts a failed upstream connect attempt.
    pub(crate) fn connect_failed(&self, listener: &str, cluster: &str) {
        self.tcp_connect_failures
            .get_or_create(&Self::labels(listener, cluster))
            .inc();
    }

    /// Counts a relayed connection, once it is connected upstream.
    pub(crate) fn connected(&self, listener: &str, cluster: &str) {
        self.tcp_connections
            .get_or_create(&Self::labels(listener, cluster))
            .inc();
    }

    /// Adds a finished relay's bytes.
    pub(crate) fn relayed(&self, listener: &str, cluster: &str, sent: u64, received: u64) {
        let labels = Self::labels(listener, cluster);
        self.tcp_sent.get_or_create(&labels).inc_by(sent);
        self.tcp_received.get_or_create(&labels).inc_by(received);
    }
}

#[cfg(test)]
impl L4Metrics {
    /// A TCP proxy's connect failures so far.
    pub(crate) fn tcp_connect_failures_for(&self, listener: &str, cluster: &str) -> u64 {
        self.tcp_connect_failures
            .get_or_create(&Self::labels(listener, cluster))
            .get()
    }
}
