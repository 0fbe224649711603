//! Clusters: a named group of endpoints and the policy for reaching them (Envoy's CDS).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{non_empty, Validate, ValidationError};
use crate::{ClusterLoadAssignment, UpstreamTls};

/// An upstream cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Where its endpoints come from.
    #[serde(default)]
    pub discovery: Discovery,
    /// For EDS clusters, the name to subscribe under (the cluster name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eds_service_name: Option<String>,
    /// How an endpoint is picked.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Upper bound on establishing a connection (Envoy's default 5 s).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Limits beyond which requests are refused at once.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    /// Active HTTP health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive health: ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Below this percentage of healthy endpoints, balance across all (Envoy's default 50).
    #[serde(default = "fifty")]
    pub healthy_panic_threshold: f64,
    /// Weight localities by their `load_balancing_weight` (Envoy's locality-weighted LB).
    #[serde(default)]
    pub locality_weighted: bool,
    /// Endpoints of a static cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_assignment: Option<ClusterLoadAssignment>,
    /// TLS (mTLS to mesh sidecars) on connections to the endpoints; none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

impl Cluster {
    /// A static cluster with the defaults and no endpoints.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            discovery: Discovery::Static,
            eds_service_name: None,
            lb_policy: LbPolicy::RoundRobin,
            connect_timeout: default_connect_timeout(),
            protocol: UpstreamProtocol::Http1,
            circuit_breakers: CircuitBreakers::default(),
            health_check: None,
            outlier_detection: None,
            healthy_panic_threshold: fifty(),
            locality_weighted: false,
            load_assignment: None,
            tls: None,
        }
    }

    /// The name EDS resources for this cluster are published under.
    pub fn eds_name(&self) -> &str {
        self.eds_service_name.as_deref().unwrap_or(&self.name)
    }
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// Listed in the cluster's `load_assignment`.
    #[default]
    Static,
    /// Delivered by EDS.
    Eds,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Least outstanding requests among `choice_count` random picks (P2C by default).
    LeastRequest {
        /// How many endpoints are sampled (Envoy's default 2).
        #[serde(default = "two")]
        choice_count: u32,
    },
    /// Ketama-style consistent hashing on a ring.
    RingHash {
        /// Minimum ring size (Envoy's default 1024).
        #[serde(default = "ring_min")]
        minimum_ring_size: u64,
        /// Maximum ring size (Envoy's default 8M).
        #[serde(default = "ring_max")]
        maximum_ring_size: u64,
    },
    /// Maglev consistent hashing.
    Maglev {
        /// Lookup table size, a prime (Envoy's default 65537).
        #[serde(default = "maglev_size")]
        table_size: u64,
    },
}

/// The protocol a cluster's endpoints speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), needed for gRPC.
    Http2,
    /// The same protocol the downstream request used.
    UseDownstream,
}

/// Per-cluster limits (Envoy's default priority thresholds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakers {
    /// Connections to all endpoints together.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Active HTTP health checking of every endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested.
    pub path: String,
    /// Time between checks.
    #[serde(default = "hc_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Time a check may take.
    #[serde(default = "hc_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that mark an endpoint healthy.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark an endpoint unhealthy.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
    /// Host header sent (the cluster name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Outlier detection: eject endpoints that keep failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Consecutive 5xx (and connect failures) before ejection (Envoy's default 5).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 or connect failures before ejection (Envoy's default 5).
    pub consecutive_gateway_failure: u32,
    /// Time between sweeps that return ejected endpoints (Envoy's default 10 s).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Ejection time, multiplied by the number of times the endpoint was ejected.
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// Cap on the ejection time (Envoy's default 300 s).
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// At most this percentage of the cluster is ejected at once (Envoy's default 10).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn fifty() -> f64 {
    50.0
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn ring_min() -> u64 {
    1024
}
fn ring_max() -> u64 {
    8 * 1024 * 1024
}
fn maglev_size() -> u64 {
    65537
}
fn hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn hc_timeout() -> Duration {
    Duration::from_secs(1)
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

impl Validate for Cluster {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("name", &self.name)?;
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| e.within("tls"))?;
        }
        if self.connect_timeout.is_zero() {
            return Err(ValidationError::new(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        match &self.lb_policy {
            LbPolicy::LeastRequest { choice_count } if *choice_count < 2 => {
                return Err(ValidationError::new(
                    "lb_policy.least_request.choice_count",
                    "must be at least 2",
                ));
            }
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } if *minimum_ring_size == 0 || minimum_ring_size > maximum_ring_size => {
                return Err(ValidationError::new(
                    "lb_policy.ring_hash",
                    "minimum_ring_size must be within 1..=maximum_ring_size",
                ));
            }
            LbPolicy::Maglev { table_size } if !is_prime(*table_size) => {
                return Err(ValidationError::new(
                    "lb_policy.maglev.table_size",
                    format!("{table_size} is not a prime"),
                ));
            }
            _ => {}
        }
        if let Some(hc) = &self.health_check {
            if !hc.path.starts_with('/') {
                return Err(ValidationError::new(
                    "health_check.path",
                    "must start with '/'",
                ));
            }
            if hc.interval.is_zero() || hc.timeout.is_zero() {
                return Err(ValidationError::new(
                    "health_check",
                    "interval and timeout must be greater than zero",
                ));
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                return Err(ValidationError::new(
                    "health_check",
                    "thresholds must be at least 1",
                ));
            }
        }
        if let Some(od) = &self.outlier_detection {
            if od.max_ejection_percent > 100 {
                return Err(ValidationError::new(
                    "outlier_detection.max_ejection_percent",
                    "must be within 0–100",
                ));
            }
            if od.base_ejection_time.is_zero() || od.interval.is_zero() {
                return Err(ValidationError::new(
                    "outlier_detection",
                    "interval and base_ejection_time must be greater than zero",
                ));
            }
        }
        if !(0.0..=100.0).contains(&self.healthy_panic_threshold) {
            return Err(ValidationError::new(
                "healthy_panic_threshold",
                "must be within 0–100",
            ));
        }
        match (&self.discovery, &self.load_assignment) {
            (Discovery::Eds, Some(_)) => Err(ValidationError::new(
                "load_assignment",
                "an EDS cluster gets its endpoints from EDS, not inline",
            )),
            (_, Some(la)) => {
                la.validate().map_err(|e| e.within("load_assignment"))?;
                if !la.cluster_name.is_empty() && la.cluster_name != self.name {
                    return Err(ValidationError::new(
                        "load_assignment.cluster_name",
                        format!("{:?} differs from the cluster name", la.cluster_name),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
