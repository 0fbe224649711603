//! Layer 4: a listener's opaque-TCP proxy (Envoy's `tcp_proxy` network filter) and how a
//! listener tells protocols apart (its detection timeout).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{non_empty, Validate, ValidationError};
use crate::WeightedCluster;

/// Relays a connection's bytes both ways to an endpoint of a cluster (Envoy's `tcp_proxy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    /// Where connections go.
    pub destination: TcpDestination,
    /// A connection with no bytes moving either way for this long is closed (Envoy's default
    /// 1 h).
    #[serde(default = "default_tcp_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Upstream connect attempts per downstream connection, each to a freshly picked endpoint
    /// (Envoy's `max_connect_attempts`, default 1).
    #[serde(default = "one")]
    pub max_connect_attempts: u32,
}

impl TcpProxy {
    /// A proxy to one cluster with the defaults.
    pub fn to_cluster(cluster: impl Into<String>) -> Self {
        Self {
            destination: TcpDestination::Cluster(cluster.into()),
            idle_timeout: default_tcp_idle(),
            max_connect_attempts: 1,
        }
    }
}

fn default_tcp_idle() -> Duration {
    Duration::from_secs(3600)
}

fn one() -> u32 {
    1
}

/// The cluster(s) a TCP proxy sends connections to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpDestination {
    /// One cluster.
    Cluster(String),
    /// A split of connections by weight.
    WeightedClusters(Vec<WeightedCluster>),
}

impl TcpDestination {
    /// The cluster names connections can go to.
    pub fn cluster_names(&self) -> Vec<&str> {
        match self {
            Self::Cluster(c) => vec![c.as_str()],
            Self::WeightedClusters(w) => w.iter().map(|w| w.name.as_str()).collect(),
        }
    }

    /// The cluster for a connection, given a number drawn uniformly from `0..u32::MAX`
    /// (weighted clusters split by weight; the caller draws, so this stays deterministic).
    pub fn pick(&self, draw: u32) -> &str {
        match self {
            Self::Cluster(c) => c,
            Self::WeightedClusters(w) => {
                let total: u64 = w.iter().map(|c| u64::from(c.weight)).sum();
                let mut point = u64::from(draw) * total / (u64::from(u32::MAX) + 1);
                for c in w {
                    if point < u64::from(c.weight) {
                        return &c.name;
                    }
                    point -= u64::from(c.weight);
                }
                w.last().map_or("", |c| c.name.as_str())
            }
        }
    }
}

impl Validate for TcpProxy {
    fn validate(&self) -> Result<(), ValidationError> {
        match &self.destination {
            TcpDestination::Cluster(c) => non_empty("destination.cluster", c)?,
            TcpDestination::WeightedClusters(w) => {
                let at = "destination.weighted_clusters";
                if w.is_empty() {
                    return Err(ValidationError::new(at, "must not be empty"));
                }
                for (i, c) in w.iter().enumerate() {
                    non_empty(&format!("{at}[{i}].name"), &c.name)?;
                }
                if w.iter().map(|c| u64::from(c.weight)).sum::<u64>() == 0 {
                    return Err(ValidationError::new(at, "the weights sum to zero"));
                }
            }
        }
        if self.idle_timeout.is_zero() {
            return Err(ValidationError::new("idle_timeout", "must be positive"));
        }
        if self.max_connect_attempts == 0 {
            return Err(ValidationError::new(
                "max_connect_attempts",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// How a listener that serves HTTP tells a connection's protocol from its first bytes.
///
/// A listener that only proxies TCP (no route table) does no detection: its connections are
/// relayed from their first moment, so server-first protocols (the client waits for a
/// greeting: MySQL, SMTP, …) work. Declare such ports opaque, as Linkerd does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detection {
    /// How long to wait for the bytes that decide (Envoy's `listener_filters_timeout`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// At the timeout, relay the connection as opaque TCP when the listener has a TCP proxy
    /// (Envoy's `continue_on_listener_filters_timeout`); otherwise, or without a TCP proxy, it
    /// is closed.
    pub opaque_on_timeout: bool,
}

impl Default for Detection {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            opaque_on_timeout: true,
        }
    }
}

impl Validate for Detection {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(ValidationError::new("timeout", "must be within (0, 60 s]"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_pick_follows_the_weights() {
        let d = TcpDestination::WeightedClusters(vec![
            WeightedCluster {
                name: "a".into(),
                weight: 1,
            },
            WeightedCluster {
                name: "b".into(),
                weight: 3,
            },
        ]);
        assert_eq!(d.pick(0), "a");
        assert_eq!(d.pick(u32::MAX / 4 - 1), "a");
        assert_eq!(d.pick(u32::MAX / 4 + 1), "b");
        assert_eq!(d.pick(u32::MAX), "b");
        assert_eq!(TcpDestination::Cluster("c".into()).pick(7), "c");
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = TcpProxy::to_cluster("");
        assert_eq!(p.validate().unwrap_err().path, "destination.cluster");
        p.destination = TcpDestination::WeightedClusters(vec![WeightedCluster {
            name: "a".into(),
            weight: 0,
        }]);
        assert_eq!(
            p.validate().unwrap_err().path,
            "destination.weighted_clusters"
        );
        p = TcpProxy::to_cluster("a");
        p.max_connect_attempts = 0;
        assert_eq!(p.validate().unwrap_err().path, "max_connect_attempts");
        let yaml: TcpProxy = crate::yaml::from_str(
            "destination: { weighted_clusters: [{ name: a, weight: 1 }] }\nidle_timeout: 5s",
        )
        .unwrap();
        assert_eq!(yaml.idle_timeout, Duration::from_secs(5));
        assert_eq!(yaml.max_connect_attempts, 1);
    }
}
