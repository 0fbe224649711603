//! A snapshot: every resource of every type one node (or group of nodes) gets, with versions,
//! and its consistency check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::resource::{combine, Resource, ResourceError};
use crate::ResourceType;

/// The resources of one type in a snapshot, by name, and the type's version.
#[derive(Debug, Clone, Default)]
pub struct TypeSnapshot {
    version: u64,
    items: BTreeMap<String, Arc<Resource>>,
}

impl TypeSnapshot {
    /// The type's version: a hash of every resource's name and content hash, so it changes
    /// exactly when some resource of the type changes.
    pub fn version(&self) -> String {
        format!("{:016x}", self.version)
    }

    /// The version as a number.
    pub fn version_hash(&self) -> u64 {
        self.version
    }

    /// The resources, by name.
    pub fn items(&self) -> &BTreeMap<String, Arc<Resource>> {
        &self.items
    }

    /// One resource.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.items.get(name)
    }

    fn seal(&mut self) {
        self.version = combine(self.items.iter().map(|(n, r)| (n.as_str(), r.hash())));
    }
}

/// Every resource of every type for a node: what [`super::SnapshotCache::set_snapshot`] takes.
///
/// ```
/// use envoy_types::pb::envoy::config::cluster::v3::Cluster;
/// use mesh_xds::server::{Resource, Snapshot};
/// use mesh_xds::ResourceType;
///
/// let cluster = Cluster { name: "orders".into(), ..Cluster::default() };
/// let snap = Snapshot::from_resources([Resource::encode(&cluster).unwrap()]).unwrap();
/// assert!(snap.of(ResourceType::Cluster).get("orders").is_some());
/// snap.check_consistency().unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    types: [TypeSnapshot; ResourceType::ALL.len()],
    /// Set once [`Snapshot::check_consistency`] passed: the resources cannot change after
    /// construction (interning swaps a resource for an equal one), so the check is not run
    /// again, by the cache or on a clone.
    consistent: OnceLock<()>,
}

/// Why a snapshot is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A resource could not be taken.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// Two resources of one type share a name.
    #[error("two {kind} resources are named {name:?}")]
    Duplicate {
        /// The type.
        kind: ResourceType,
        /// The name.
        name: String,
    },
    /// A reference does not resolve.
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(String),
    /// The resources would be refused by a client's validation.
    #[error("invalid {kind} {name:?}: {reason}")]
    Invalid {
        /// The type.
        kind: ResourceType,
        /// The resource.
        name: String,
        /// The validation error.
        reason: String,
    },
}

impl Snapshot {
    /// A snapshot of these resources; refuses duplicates.
    pub fn from_resources(
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<Self, SnapshotError> {
        let mut snap = Snapshot::default();
        for r in resources {
            let slot = &mut snap.types[r.kind().index()].items;
            if slot.contains_key(r.name()) {
                return Err(SnapshotError::Duplicate {
                    kind: r.kind(),
                    name: r.name().to_owned(),
                });
            }
            slot.insert(r.name().to_owned(), Arc::new(r));
        }
        snap.seal();
        Ok(snap)
    }

    /// A snapshot of packed resources (names read from the messages).
    pub fn from_anys(anys: impl IntoIterator<Item = Any>) -> Result<Self, SnapshotError> {
        let resources = anys
            .into_iter()
            .map(Resource::from_any)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_resources(resources)
    }

    /// The resources of one type.
    pub fn of(&self, kind: ResourceType) -> &TypeSnapshot {
        &self.types[kind.index()]
    }

    /// A version over all types.
    pub fn version(&self) -> String {
        format!(
            "{:016x}",
            combine(ResourceType::ALL.map(|t| ("", self.of(t).version)))
        )
    }

    /// Number of resources over all types.
    pub fn len(&self) -> usize {
        self.types.iter().map(|t| t.items.len()).sum()
    }

    /// Whether the snapshot holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces each resource with `f`'s answer, which must be equal to it (interning).
    pub(crate) fn map_items(&mut self, mut f: impl FnMut(Arc<Resource>) -> Arc<Resource>) {
        for t in &mut self.types {
            for v in t.items.values_mut() {
                *v = f(v.clone());
            }
        }
    }

    fn seal(&mut self) {
        for t in &mut self.types {
            t.seal();
        }
    }

    /// Checks references: every EDS cluster has its endpoints, and every route configuration a
    /// listener names (by RDS, on a socket or an API listener) exists. A snapshot that passed
    /// once (or a clone of it) is not checked again.
    pub fn check_consistency(&self) -> Result<(), SnapshotError> {
        if self.consistent.get().is_some() {
            return Ok(());
        }
        self.find_inconsistency()?;
        let _ = self.consistent.set(());
        Ok(())
    }

    fn find_inconsistency(&self) -> Result<(), SnapshotError> {
        let endpoints = self.of(ResourceType::Endpoint);
        let mut missing_eds = BTreeSet::new();
        for r in self.of(ResourceType::Cluster).items.values() {
            let c = decode::<Cluster>(r)?;
            let is_eds = matches!(
                c.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
            );
            if !is_eds {
                continue;
            }
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            if endpoints.get(service).is_none() {
                missing_eds.insert(format!("cluster {:?} needs endpoints {service:?}", c.name));
            }
        }
        if let Some(first) = missing_eds.into_iter().next() {
            return Err(SnapshotError::Inconsistent(first));
        }
        let routes = self.of(ResourceType::Route);
        for r in self.of(ResourceType::Listener).items.values() {
            for name in rds_names(&decode::<Listener>(r)?) {
                if routes.get(&name).is_none() {
                    return Err(SnapshotError::Inconsistent(format!(
                        "listener {:?} references route configuration {name:?}, which is not in \
                         the snapshot",
                        r.name()
                    )));
                }
            }
        }
        Ok(())
    }
}

fn decode<M: Message + Default>(r: &Resource) -> Result<M, SnapshotError> {
    M::decode(r.any().value.as_slice()).map_err(|e| {
        SnapshotError::Resource(ResourceError::Decode {
            type_url: r.any().type_url.clone(),
            reason: e.to_string(),
        })
    })
}

/// The RDS names a listener's HTTP connection managers subscribe to.
pub(crate) fn rds_names(l: &Listener) -> Vec<String> {
    let hcm_url = HttpConnectionManager::type_url();
    let filters = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .flat_map(|fc| &fc.filters)
        .filter_map(|f| match &f.config_type {
            Some(
                envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a),
            ) => Some(a),
            _ => None,
        });
    let api = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref());
    filters
        .chain(api)
        .filter(|a| a.type_url == hcm_url)
        .filter_map(|a| HttpConnectionManager::decode(a.value.as_slice()).ok())
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain};
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;

    pub(crate) fn eds_cluster(name: &str) -> Resource {
        Resource::encode(&Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Cluster::default()
        })
        .unwrap()
    }

    pub(crate) fn endpoints(name: &str, port: u32) -> Resource {
        use envoy_types::pb::envoy::config::core::v3::{
            address, socket_address, Address, SocketAddress,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            endpoint, lb_endpoint, Endpoint, LbEndpoint, LocalityLbEndpoints,
        };
        let addr = Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        };
        let _ = endpoint::HealthCheckConfig::default();
        Resource::encode(&ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(addr),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                }],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        })
        .unwrap()
    }

    pub(crate) fn rds_listener(name: &str, route: &str) -> Resource {
        let hcm = HttpConnectionManager {
            stat_prefix: name.into(),
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                ..Rds::default()
            })),
            ..HttpConnectionManager::default()
        };
        Resource::encode(&Listener {
            name: name.into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: HttpConnectionManager::type_url(),
                        value: hcm.encode_to_vec(),
                    })),
                }],
                ..FilterChain::default()
            }],
            ..Listener::default()
        })
        .unwrap()
    }

    pub(crate) fn route(name: &str) -> Resource {
        Resource::encode(&RouteConfiguration {
            name: name.into(),
            ..RouteConfiguration::default()
        })
        .unwrap()
    }

    #[test]
    fn a_consistent_snapshot_passes() {
        let snap = Snapshot::from_resources([
            eds_cluster("a"),
            endpoints("a", 1),
            rds_listener("out", "r"),
            route("r"),
        ])
        .unwrap();
        snap.check_consistency().unwrap();
        assert_eq!(snap.len(), 4);
    }

    #[test]
    fn missing_endpoints_and_routes_are_named() {
        let snap = Snapshot::from_resources([eds_cluster("a")]).unwrap();
        let err = snap.check_consistency().unwrap_err().to_string();
        assert!(err.contains("cluster \"a\" needs endpoints \"a\""), "{err}");
        let snap = Snapshot::from_resources([rds_listener("out", "r")]).unwrap();
        let err = snap.check_consistency().unwrap_err().to_string();
        assert!(
            err.contains("listener \"out\" references route configuration \"r\""),
            "{err}"
        );
    }

    #[test]
    fn duplicates_are_refused_and_versions_follow_content() {
        let err = Snapshot::from_resources([route("r"), route("r")]).unwrap_err();
        assert!(matches!(err, SnapshotError::Duplicate { .. }));
        let a = Snapshot::from_resources([route("r"), eds_cluster("a")]).unwrap();
        let b = Snapshot::from_resources([eds_cluster("a"), route("r")]).unwrap();
        assert_eq!(a.version(), b.version());
        assert_eq!(
            a.of(ResourceType::Route).version(),
            b.of(ResourceType::Route).version()
        );
        let c = Snapshot::from_resources([route("r"), eds_cluster("b")]).unwrap();
        assert_eq!(
            a.of(ResourceType::Route).version(),
            c.of(ResourceType::Route).version(),
            "an unchanged type keeps its version"
        );
        assert_ne!(
            a.of(ResourceType::Cluster).version(),
            c.of(ResourceType::Cluster).version()
        );
    }
}
