//! Endpoints of a cluster, grouped by locality and priority (Envoy's EDS).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::validate::{non_empty, Validate, ValidationError};

/// The endpoints of one cluster: what EDS delivers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    /// The cluster (or EDS service name) these endpoints belong to.
    #[serde(default)]
    pub cluster_name: String,
    /// Endpoints grouped by locality and priority.
    #[serde(default)]
    pub endpoints: Vec<LocalityEndpoints>,
    /// Envoy's overprovisioning factor in percent (default 140): how much spare capacity a
    /// priority is assumed to have before traffic spills to the next one.
    #[serde(default = "default_overprovisioning")]
    pub overprovisioning_factor: u32,
}

impl ClusterLoadAssignment {
    /// An assignment of these addresses, all healthy-unknown, weight 1, one locality.
    pub fn from_addrs(
        cluster: impl Into<String>,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        Self {
            cluster_name: cluster.into(),
            endpoints: vec![LocalityEndpoints {
                lb_endpoints: addrs.into_iter().map(Endpoint::new).collect(),
                ..LocalityEndpoints::default()
            }],
            overprovisioning_factor: default_overprovisioning(),
        }
    }

    /// Every endpoint with its locality group.
    pub fn iter(&self) -> impl Iterator<Item = (&LocalityEndpoints, &Endpoint)> {
        self.endpoints
            .iter()
            .flat_map(|g| g.lb_endpoints.iter().map(move |e| (g, e)))
    }

    /// Number of endpoints across all localities.
    pub fn len(&self) -> usize {
        self.endpoints.iter().map(|g| g.lb_endpoints.len()).sum()
    }

    /// Whether there is no endpoint at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The endpoints of one locality at one priority.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityEndpoints {
    /// Where they run.
    #[serde(default)]
    pub locality: Locality,
    /// 0 is the highest priority; lower priorities take traffic when higher ones are unhealthy.
    #[serde(default)]
    pub priority: u32,
    /// The locality's weight when the cluster is locality-weighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
    /// The endpoints.
    #[serde(default, rename = "endpoints")]
    pub lb_endpoints: Vec<Endpoint>,
}

/// Region / zone / sub-zone, as in Envoy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Socket address.
    pub address: SocketAddr,
    /// Relative weight, at least 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Health as the control plane reports it.
    #[serde(default)]
    pub health: HealthStatus,
    /// Host name, informative (and used as the health-check host when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Free-form metadata (version, canary flag, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint at `address` with weight 1 and unknown (routable) health.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            weight: 1,
            health: HealthStatus::Unknown,
            hostname: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// Health status from the control plane (Envoy's `HealthStatus`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Not known: treated as healthy, as Envoy does.
    #[default]
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy: takes no traffic (unless in panic mode).
    Unhealthy,
    /// Draining: takes no new traffic.
    Draining,
    /// Health check timed out: treated as unhealthy.
    Timeout,
    /// Degraded: takes traffic only when no healthy endpoint is left.
    Degraded,
}

impl HealthStatus {
    /// Whether an endpoint with this status takes traffic normally.
    pub fn is_healthy(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy)
    }
}

fn one() -> u32 {
    1
}
fn default_overprovisioning() -> u32 {
    140
}

impl Validate for ClusterLoadAssignment {
    fn validate(&self) -> Result<(), ValidationError> {
        // foldhash rather than SipHash: addresses come from the control plane, and SipHash of
        // 10,000s of them was a tenth of an EDS update's cost.
        let mut seen =
            HashSet::with_capacity_and_hasher(self.len(), foldhash::fast::RandomState::default());
        for (i, group) in self.endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            if group.load_balancing_weight == Some(0) {
                return Err(ValidationError::new(
                    format!("{at}.load_balancing_weight"),
                    "must be at least 1",
                ));
            }
            for (j, e) in group.lb_endpoints.iter().enumerate() {
                // The path is formatted only on error: this loop runs once per endpoint of an
                // EDS update (10,000s), where an allocation each is a measurable share.
                let at = || format!("{at}.endpoints[{j}]");
                e.validate().map_err(|err| err.within(at()))?;
                if !seen.insert(e.address) {
                    return Err(ValidationError::new(
                        format!("{}.address", at()),
                        format!("{} is listed twice", e.address),
                    ));
                }
            }
        }
        if self.overprovisioning_factor == 0 {
            return Err(ValidationError::new(
                "overprovisioning_factor",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl Validate for Endpoint {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.address.port() == 0 {
            return Err(ValidationError::new(
                "address",
                format!("{}: port 0 is not an endpoint", self.address),
            ));
        }
        if self.address.ip().is_unspecified() || self.address.ip().is_multicast() {
            return Err(ValidationError::new(
                "address",
                format!("{}: not a unicast address", self.address),
            ));
        }
        if self.weight == 0 {
            return Err(ValidationError::new("weight", "must be at least 1"));
        }
        if let Some(h) = &self.hostname {
            non_empty("hostname", h)?;
        }
        Ok(())
    }
}
