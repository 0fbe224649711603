//! `MeshConfig`: a whole static config (what a sidecar bootstrap file holds), validated with its
//! cross references.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::validate::{unique_names, Validate, ValidationError};
use crate::{
    Cluster, ClusterLoadAssignment, Discovery, Listener, RouteConfiguration, Secret, SecretKind,
};

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
    /// Certificates and trust bundles listeners' and clusters' `tls` name (what SDS delivers
    /// to a sidecar with a control plane): mTLS without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
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

impl MeshConfig {
    /// That every listener's and cluster's `tls` names secrets of this config, of the right
    /// kind. [`validate`](Validate::validate) checks it when the config carries secrets; a
    /// config whose secrets come over SDS carries none, so a static sidecar's loader calls it
    /// itself (it has no other source of secrets).
    pub fn check_secret_refs(&self) -> Result<(), ValidationError> {
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(tls) = &l.tls {
                let at = format!("listeners[{i}]");
                self.check_secret(&at, "certificate", &tls.certificate, true)?;
                self.check_secret(&at, "validation", &tls.validation, false)?;
            }
        }
        for (i, c) in self.clusters.iter().enumerate() {
            if let Some(tls) = &c.tls {
                let at = format!("clusters[{i}]");
                self.check_secret(&at, "certificate", &tls.certificate, true)?;
                self.check_secret(&at, "validation", &tls.validation, false)?;
            }
        }
        Ok(())
    }

    /// That `at.tls.field` names a secret of the right kind (a certificate, or a bundle).
    fn check_secret(
        &self,
        at: &str,
        field: &str,
        name: &str,
        certificate: bool,
    ) -> Result<(), ValidationError> {
        let path = format!("{at}.tls.{field}");
        match self
            .secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.kind)
        {
            None => Err(ValidationError::new(
                path,
                format!("unknown secret {name:?}"),
            )),
            Some(SecretKind::TlsCertificate(_)) if certificate => Ok(()),
            Some(SecretKind::ValidationContext(_)) if !certificate => Ok(()),
            Some(_) => Err(ValidationError::new(
                path,
                format!(
                    "secret {name:?} is not a {}",
                    if certificate {
                        "tls_certificate"
                    } else {
                        "validation_context"
                    }
                ),
            )),
        }
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
        unique_names("secrets", self.secrets.iter().map(|s| s.name.as_str()))?;
        for (i, s) in self.secrets.iter().enumerate() {
            s.validate()
                .map_err(|e| e.within(format!("secrets[{i}]")))?;
        }
        if !self.secrets.is_empty() {
            self.check_secret_refs()?;
        }
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
            let at = format!("clusters[{i}]");
            c.validate().map_err(|e| e.within(&at))?;
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
