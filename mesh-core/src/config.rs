//! `MeshConfig`: a whole static config (what a sidecar bootstrap file holds), validated with its
//! cross references.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::validate::{unique_names, Validate, ValidationError};
use crate::{Cluster, ClusterLoadAssignment, Discovery, Listener, RouteConfiguration};

/// Listeners, route tables, clusters and endpoint sets that must agree with each other.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Route tables listeners reference by name.
    #[serde(default)]
    pub route_configs: Vec<RouteConfiguration>,
    /// Clusters routes reference.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Endpoint sets of EDS clusters.
    #[serde(default)]
    pub endpoints: Vec<ClusterLoadAssignment>,
}

impl MeshConfig {
    /// The route table named `name`, from the list or a listener's inline one.
    pub fn route_config(&self, name: &str) -> Option<&RouteConfiguration> {
        self.route_configs
            .iter()
            .chain(
                self.listeners
                    .iter()
                    .filter_map(|l| l.route_config.as_ref()),
            )
            .find(|rc| rc.name == name)
    }
}

impl Validate for MeshConfig {
    /// Checks every resource, then that names are unique and every reference resolves: a
    /// listener's route table exists, every cluster a route names exists, every EDS cluster has
    /// its endpoints, and no two listeners share an address.
    fn validate(&self) -> Result<(), ValidationError> {
        unique_names("listeners", self.listeners.iter().map(|l| l.name.as_str()))?;
        unique_names(
            "route_configs",
            self.route_configs.iter().map(|r| r.name.as_str()),
        )?;
        unique_names("clusters", self.clusters.iter().map(|c| c.name.as_str()))?;
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            l.validate().map_err(|e| e.within(&at))?;
            if !addrs.insert(l.address) {
                return Err(ValidationError::new(
                    format!("{at}.address"),
                    format!("{} is used by another listener", l.address),
                ));
            }
            if let Some(tcp) = &l.tcp_proxy {
                for name in tcp.destination.cluster_names() {
                    if !self.clusters.iter().any(|c| c.name == name) {
                        return Err(ValidationError::new(
                            format!("{at}.tcp_proxy.destination"),
                            format!("unknown cluster {name:?}"),
                        ));
                    }
                }
            }
            if l.serves_http() && self.route_config(l.route_name()).is_none() {
                return Err(ValidationError::new(
                    format!("{at}.route_config_name"),
                    format!("no route configuration named {:?}", l.route_name()),
                ));
            }
        }
        for (i, rc) in self.route_configs.iter().enumerate() {
            rc.validate()
                .map_err(|e| e.within(format!("route_configs[{i}]")))?;
        }
        for (i, c) in self.clusters.iter().enumerate() {
            c.validate()
                .map_err(|e| e.within(format!("clusters[{i}]")))?;
        }
        let mut assigned = HashSet::new();
        for (i, la) in self.endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            la.validate().map_err(|e| e.within(&at))?;
            if !assigned.insert(la.cluster_name.as_str()) {
                return Err(ValidationError::new(
                    format!("{at}.cluster_name"),
                    format!("{:?} has two endpoint sets", la.cluster_name),
                ));
            }
        }
        let clusters: HashSet<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
        for (i, c) in self.clusters.iter().enumerate() {
            if c.discovery == Discovery::Eds && !assigned.contains(c.eds_name()) {
                return Err(ValidationError::new(
                    format!("clusters[{i}]"),
                    format!(
                        "EDS cluster {:?} has no endpoint set named {:?}",
                        c.name,
                        c.eds_name()
                    ),
                ));
            }
        }
        let tables = self
            .route_configs
            .iter()
            .map(|rc| (format!("route_configs[{}]", rc.name), rc))
            .chain(self.listeners.iter().filter_map(|l| {
                l.route_config
                    .as_ref()
                    .map(|rc| (format!("listeners[{}].route_config", l.name), rc))
            }));
        for (at, rc) in tables {
            for (v, vh) in rc.virtual_hosts.iter().enumerate() {
                for (r, route) in vh.routes.iter().enumerate() {
                    for name in route.action.destination.cluster_names() {
                        if !clusters.contains(name) {
                            return Err(ValidationError::new(
                                format!("{at}.virtual_hosts[{v}].routes[{r}].route"),
                                format!("unknown cluster {name:?}"),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
