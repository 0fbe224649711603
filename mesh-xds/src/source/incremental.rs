//! Per-service translations kept across rebuilds, so a change to one service (an etcd watch
//! event, an edit of one entry) re-translates that service alone.
//!
//! A service's cluster and endpoints depend on nothing but its own spec, and they are the same
//! for every node: they are translated, validated and encoded once per change of that spec and
//! shared by all nodes' snapshots. The outbound route table is one resource holding every
//! service's virtual host: it is kept while no virtual host changes (a change of endpoints leaves
//! them as they are), and otherwise reassembled from the kept virtual hosts and checked across
//! services. Each node's own listeners and inbound side are per node anyway.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mesh_core::{
    Cluster, RouteConfiguration, UpstreamProtocol, UpstreamTls, Validate, VirtualHost,
};

use super::hop::{cluster_protocol, SidecarInbounds};
use super::pki::{MeshCa, ROOT_SECRET, WORKLOAD_SECRET};
use super::proxyless::grpc_lb_policy;
use super::spec::{MeshSpec, NodeKind, SecuritySpec, ServiceSpec};
use super::translate::{service_config, TranslateError, LOCAL_APP, OUTBOUND};
use crate::server::Resource;

/// Translations of services by name, each reused while the service's spec stays equal.
///
/// ```
/// use mesh_xds::source::{MeshSpec, TranslationCache};
///
/// let mut cache = TranslationCache::default();
/// let spec = MeshSpec::from_yaml("services: [{ name: a }, { name: b }]").unwrap();
/// spec.snapshots_with(&mut cache).unwrap();
/// let edited = MeshSpec::from_yaml("services: [{ name: a }, { name: b, timeout: 2s }]").unwrap();
/// edited.snapshots_with(&mut cache).unwrap();
/// assert_eq!(cache.translated(), 3); // a, b, then b again
/// ```
#[derive(Debug, Default)]
pub struct TranslationCache {
    services: HashMap<String, Arc<ServiceTranslation>>,
    translated: u64,
    /// The last outbound table and the virtual hosts it was built from: reused while every
    /// service keeps its virtual host (an endpoint change does not touch it).
    outbound: Option<(Vec<Arc<VirtualHost>>, Resource)>,
    /// Outbound route tables built so far.
    tables: u64,
    /// The mesh CA and the `security:` section it was loaded from (kept across reloads so the
    /// CA and the certificates it issued stay the same while the section does).
    ca: Option<(SecuritySpec, Arc<MeshCa>)>,
}

/// One service, translated: its validated cluster and endpoints as encoded resources, and its
/// validated virtual host for the outbound route table.
#[derive(Debug)]
pub(super) struct ServiceTranslation {
    spec: ServiceSpec,
    /// The TLS its callers originate (a service run by sidecars, under `security:`).
    tls: Option<UpstreamTls>,
    /// The cluster's protocol, which depends on the nodes too (see `hop`).
    protocol: UpstreamProtocol,
    pub(super) cluster: Resource,
    /// The cluster as proxyless gRPC clients get it, when it differs (see `proxyless::grpc_lb_policy`).
    grpc_cluster: Option<Resource>,
    pub(super) endpoints: Resource,
    virtual_host: Arc<VirtualHost>,
}

impl ServiceTranslation {
    /// Translates `s`; keeps `previous`'s virtual host when it is unchanged, so the outbound
    /// table can be reused.
    fn new(
        s: &ServiceSpec,
        tls: Option<UpstreamTls>,
        protocol: UpstreamProtocol,
        previous: Option<&Self>,
    ) -> Result<Self, TranslateError> {
        let (cluster, la, virtual_host) = service_config(s, tls.clone(), protocol)?;
        let virtual_host = match previous {
            Some(p) if *p.virtual_host == virtual_host => Arc::clone(&p.virtual_host),
            _ => Arc::new(virtual_host),
        };
        // Proxyless gRPC clients take TLS from certificate providers, not SDS: their clusters
        // stay plaintext.
        let grpc_lb = grpc_lb_policy(&cluster.lb_policy);
        let grpc_cluster = match (grpc_lb, &cluster.tls) {
            (None, None) => None,
            (lb_policy, _) => {
                let grpc = Cluster {
                    lb_policy: lb_policy.unwrap_or_else(|| cluster.lb_policy.clone()),
                    tls: None,
                    ..cluster.clone()
                };
                grpc.validate().map_err(|e| {
                    TranslateError::new(format!("services[{}]", s.name), Some(&s.name), e)
                })?;
                Some(Resource::from_validated(&grpc))
            }
        };
        Ok(Self {
            spec: s.clone(),
            tls,
            protocol,
            cluster: Resource::from_validated(&cluster),
            grpc_cluster,
            endpoints: Resource::from_validated(&la),
            virtual_host,
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the service has a virtual host in the outbound HTTP table (an RPC service's
    /// routes are its RPC listener's instead).
    fn in_http_table(&self) -> bool {
        self.spec.protocol.rpc().is_none()
    }

    /// The cluster resource for a proxyless gRPC client.
    pub(super) fn grpc_cluster(&self) -> &Resource {
        self.grpc_cluster.as_ref().unwrap_or(&self.cluster)
    }
}

/// What every node's snapshot shares: the services (in spec order) and the outbound table.
pub(super) struct SharedResources {
    pub(super) services: Vec<Arc<ServiceTranslation>>,
    pub(super) outbound: Resource,
    /// The mesh CA, under `security:` (set by the translation).
    pub(super) ca: Option<Arc<MeshCa>>,
}

impl TranslationCache {
    /// How many service translations were made so far (a reused one does not count).
    pub fn translated(&self) -> u64 {
        self.translated
    }

    /// How many outbound route tables were built so far (one is reused while every service
    /// keeps its routes, e.g. across endpoint changes).
    pub fn tables_built(&self) -> u64 {
        self.tables
    }

    /// Number of services held.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service is held.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The services of `spec` (names already checked unique), reusing the unchanged ones, and
    /// the outbound table checked across services. Services no longer in `spec` are dropped;
    /// on error the cache keeps what it held.
    pub(super) fn translate(&mut self, spec: &MeshSpec) -> Result<SharedResources, TranslateError> {
        let mut services = Vec::with_capacity(spec.services.len());
        let mut fresh = 0;
        let sidecars = SidecarInbounds::of(spec);
        for s in &spec.services {
            let previous = self.services.get(&s.name);
            let protocol = cluster_protocol(s, &sidecars);
            let tls = upstream_tls(spec, s, protocol);
            let t = match previous {
                Some(t) if t.spec == *s && t.tls == tls && t.protocol == protocol => Arc::clone(t),
                _ => {
                    fresh += 1;
                    Arc::new(ServiceTranslation::new(
                        s,
                        tls,
                        protocol,
                        previous.map(|p| &**p),
                    )?)
                }
            };
            services.push(t);
        }
        let hosts: Vec<Arc<VirtualHost>> = services
            .iter()
            .filter(|t| t.in_http_table())
            .map(|t| Arc::clone(&t.virtual_host))
            .collect();
        let outbound = match &self.outbound {
            // The same virtual hosts (hence the same services, in the same order): the table
            // and its checks are unchanged.
            Some((old, table))
                if old.len() == hosts.len()
                    && old.iter().zip(&hosts).all(|(a, b)| Arc::ptr_eq(a, b)) =>
            {
                table.clone()
            }
            _ => {
                let table = outbound_table(&services)?;
                self.tables += 1;
                self.outbound = Some((hosts, table.clone()));
                table
            }
        };
        self.translated += fresh;
        self.services = services
            .iter()
            .map(|t| (t.spec.name.clone(), Arc::clone(t)))
            .collect();
        Ok(SharedResources {
            services,
            outbound,
            ca: None,
        })
    }

    /// The mesh CA of `security`, loaded once and kept while the section stays the same.
    pub(super) fn ca(&mut self, security: &SecuritySpec) -> Result<Arc<MeshCa>, TranslateError> {
        if let Some((held, ca)) = &self.ca {
            if held == security {
                return Ok(Arc::clone(ca));
            }
        }
        let ca = Arc::new(
            MeshCa::load(security).map_err(|e| TranslateError::new("security.ca", None, e))?,
        );
        self.ca = Some((security.clone(), Arc::clone(&ca)));
        Ok(ca)
    }

    /// Whether a workload certificate is due for renewal (the source then translates again,
    /// which re-issues it).
    pub fn renewal_due(&self) -> bool {
        self.ca
            .as_ref()
            .and_then(|(_, ca)| ca.next_renewal())
            .is_some_and(|at| at <= tokio::time::Instant::now())
    }

    /// When the next workload certificate is due for renewal.
    pub fn next_renewal(&self) -> Option<tokio::time::Instant> {
        self.ca.as_ref().and_then(|(_, ca)| ca.next_renewal())
    }

    #[cfg(test)]
    fn get(&self, name: &str) -> Option<&Arc<ServiceTranslation>> {
        self.services.get(name)
    }
}

/// The TLS callers originate to `s`: under `security:`, for a service some sidecar node runs
/// (its endpoints are sidecars' inbound listeners), verifying the service's identity.
fn upstream_tls(
    spec: &MeshSpec,
    s: &ServiceSpec,
    protocol: UpstreamProtocol,
) -> Option<UpstreamTls> {
    let security = spec.security.as_ref()?;
    let by_sidecars = spec
        .nodes
        .iter()
        .any(|n| n.kind() == NodeKind::Sidecar && n.service.as_deref() == Some(&s.name));
    by_sidecars.then(|| UpstreamTls {
        certificate: WORKLOAD_SECRET.into(),
        validation: ROOT_SECRET.into(),
        match_uri_sans: vec![security.identity(&s.name).to_string()],
        sni: None,
        // ALPN follows the cluster's protocol, which is HTTP/2 between sidecars (`hop`) even
        // for an HTTP/1.1 service. `use_downstream` gets no list: each connection offers the
        // protocol its caller spoke (Envoy's ALPN fallback per connection pool; our
        // `ClusterTls::for_protocol`); offering both lets the server pick h2 under an HTTP/1.1
        // codec, and Envoy resets the request.
        alpn: match (s.protocol, protocol) {
            (p, _) if !p.is_http() => Vec::new(),
            (_, UpstreamProtocol::UseDownstream) => Vec::new(),
            (_, UpstreamProtocol::Http1) => vec!["http/1.1".into()],
            (_, UpstreamProtocol::Http2) => vec!["h2".into()],
        },
    })
}

/// The outbound route table: every service's virtual host, checked as a whole (domains and
/// route names unique across services, every cluster a route names is a service or the local
/// app), encoded once for all nodes.
fn outbound_table(services: &[Arc<ServiceTranslation>]) -> Result<Resource, TranslateError> {
    let known: HashSet<&str> = services
        .iter()
        .map(|t| t.name())
        .chain([LOCAL_APP])
        .collect();
    for t in services.iter().filter(|t| t.in_http_table()) {
        for (r, route) in t.virtual_host.routes.iter().enumerate() {
            for name in route.action.destination.cluster_names() {
                if !known.contains(name) {
                    return Err(TranslateError::new(
                        format!("services[{}]", t.name()),
                        Some(t.name()),
                        format!("routes[{r}].route: unknown cluster {name:?}"),
                    ));
                }
            }
        }
    }
    let table = RouteConfiguration {
        name: OUTBOUND.into(),
        virtual_hosts: services
            .iter()
            .filter(|t| t.in_http_table())
            .map(|t| VirtualHost::clone(&t.virtual_host))
            .collect(),
        ignore_port_in_host_matching: false,
    };
    let at = format!("route_configs[{OUTBOUND}]");
    table
        .validate()
        .map_err(|e| TranslateError::new(&at, None, e))?;
    Ok(Resource::from_validated(&table))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::source::{NodeSpec, Snapshots};
    use crate::ResourceType;

    fn spec(orders_port: u16) -> MeshSpec {
        MeshSpec::from_yaml(&format!(
            r#"
services:
  - name: orders
    protocol: http2
    endpoints: [{{ address: "127.0.0.1:{orders_port}" }}]
  - name: payments
    timeout: 2s
    endpoints: [{{ address: "127.0.0.1:9002", zone: z1 }}, {{ address: "127.0.0.1:9003" }}]
    routes:
      - match: {{ prefix: /refunds }}
        route: {{ cluster: orders }}
      - match: {{ prefix: / }}
        route: {{ cluster: payments }}
  - name: users
    endpoints: [{{ address: "127.0.0.1:9004" }}]
nodes:
  - {{ id: orders-1, service: orders }}
  - {{ id: grpc-1, proxyless: true }}
  - {{ id: app-1, sdk: true }}
"#
        ))
        .unwrap()
    }

    /// Every node's and the fallback's resources, type by type, equal (content and version).
    fn assert_same(a: &Snapshots, b: &Snapshots) {
        let pairs = std::iter::once((&a.fallback, &b.fallback)).chain(
            a.nodes
                .iter()
                .map(|(id, s)| (s, b.nodes.get(id).expect("same nodes"))),
        );
        assert_eq!(a.nodes.len(), b.nodes.len());
        for (x, y) in pairs {
            assert_eq!(x.version(), y.version());
            for t in ResourceType::ALL {
                assert_eq!(x.of(t).items(), y.of(t).items(), "{t}");
            }
        }
    }

    #[test]
    fn an_edit_of_one_service_retranslates_it_alone_and_equals_a_full_translation() {
        let mut cache = TranslationCache::default();
        let first = spec(9001);
        assert_same(
            &first.snapshots_with(&mut cache).unwrap(),
            &first.snapshots().unwrap(),
        );
        assert_eq!(cache.translated(), 3);
        let payments = Arc::clone(cache.get("payments").unwrap());
        let users = Arc::clone(cache.get("users").unwrap());
        let orders = Arc::clone(cache.get("orders").unwrap());

        // The same spec again: nothing is translated.
        first.snapshots_with(&mut cache).unwrap();
        assert_eq!(cache.translated(), 3);

        // One endpoint of `orders` changes (what an etcd registration does).
        let second = spec(9011);
        let incremental = second.snapshots_with(&mut cache).unwrap();
        assert_eq!(cache.translated(), 4, "only orders is translated again");
        assert_eq!(
            cache.tables_built(),
            1,
            "an endpoint change keeps the outbound table"
        );
        assert!(Arc::ptr_eq(cache.get("payments").unwrap(), &payments));
        assert!(Arc::ptr_eq(cache.get("users").unwrap(), &users));
        assert!(!Arc::ptr_eq(cache.get("orders").unwrap(), &orders));
        assert_same(&incremental, &second.snapshots().unwrap());
        // And the change did reach the snapshots.
        let eds = |s: &Snapshots| {
            s.fallback
                .of(ResourceType::Endpoint)
                .get("orders")
                .unwrap()
                .version()
        };
        assert_ne!(eds(&incremental), eds(&first.snapshots().unwrap()));

        // A route change rebuilds the table, and still equals a full translation.
        let mut third = spec(9011);
        third.services[2].aliases = vec!["people".into()];
        assert_same(
            &third.snapshots_with(&mut cache).unwrap(),
            &third.snapshots().unwrap(),
        );
        assert_eq!((cache.translated(), cache.tables_built()), (5, 2));
    }

    #[test]
    fn removed_services_are_dropped_and_errors_keep_the_cache() {
        let mut cache = TranslationCache::default();
        spec(9001).snapshots_with(&mut cache).unwrap();
        let mut fewer = spec(9001);
        fewer.services.retain(|s| s.name != "users");
        assert_same(
            &fewer.snapshots_with(&mut cache).unwrap(),
            &fewer.snapshots().unwrap(),
        );
        assert_eq!((cache.len(), cache.translated()), (2, 3));

        // A route to a service that is gone is refused, naming the service with the route.
        let mut broken = spec(9001);
        broken.services.retain(|s| s.name != "orders");
        broken.nodes.retain(|n| n.service.is_none());
        let err = broken.snapshots_with(&mut cache).unwrap_err();
        assert_eq!(err.name.as_deref(), Some("payments"), "{err}");
        assert!(err.reason.contains("unknown cluster \"orders\""), "{err}");
        assert_eq!(cache.len(), 2, "a refused spec leaves the cache as it was");

        // An invalid edit of a service is refused by name; its last good translation stays.
        spec(9001).snapshots_with(&mut cache).unwrap();
        let users = Arc::clone(cache.get("users").unwrap());
        let mut invalid = spec(9001);
        invalid.services[2].endpoints[0].address = "0.0.0.0:1".parse().unwrap();
        let err = invalid.snapshots_with(&mut cache).unwrap_err();
        assert_eq!(err.name.as_deref(), Some("users"), "{err}");
        assert!(Arc::ptr_eq(cache.get("users").unwrap(), &users));
    }

    #[test]
    fn nodes_alike_share_one_snapshot() {
        let mut s = spec(9001);
        s.nodes.push(NodeSpec {
            id: "orders-2".into(),
            ..s.nodes[0].clone()
        });
        let snaps = s.snapshots().unwrap();
        let (a, b) = (&snaps.nodes["orders-1"], &snaps.nodes["orders-2"]);
        for t in ResourceType::ALL {
            for (name, r) in a.of(t).items() {
                assert!(Arc::ptr_eq(r, &b.of(t).items()[name]), "{t} {name}");
            }
        }
        assert_eq!(a.len(), b.len());
        // Nodes that differ do not share.
        assert_ne!(snaps.nodes["grpc-1"].version(), a.version());
        assert_ne!(snaps.fallback.version(), a.version());
    }

    #[test]
    fn domains_clashing_across_services_are_refused() {
        let mut s = spec(9001);
        s.services[2].aliases = vec!["orders".into()];
        let err = s.snapshots().unwrap_err();
        assert!(err.reason.contains("served by two virtual hosts"), "{err}");
    }

    /// An SDK node gets the outbound side only: the outbound listener (which names its route
    /// table), the outbound table, every service's cluster and endpoints; no inbound listener,
    /// inbound table or local-app cluster. A node cannot be both proxyless and SDK.
    #[test]
    fn an_sdk_node_gets_the_outbound_side_only() {
        let snaps = spec(9001).snapshots().unwrap();
        let names = |id: &str, t: ResourceType| -> Vec<String> {
            snaps.nodes[id].of(t).items().keys().cloned().collect()
        };
        assert_eq!(names("app-1", ResourceType::Listener), ["outbound"]);
        assert_eq!(names("app-1", ResourceType::Route), ["outbound"]);
        assert_eq!(
            names("app-1", ResourceType::Cluster),
            ["orders", "payments", "users"]
        );
        assert_eq!(
            names("app-1", ResourceType::Endpoint),
            ["orders", "payments", "users"]
        );
        // A sidecar on the same spec gets the inbound side too.
        assert_eq!(
            names("orders-1", ResourceType::Listener),
            ["inbound", "outbound"]
        );
        assert!(names("orders-1", ResourceType::Cluster).contains(&"local_app".to_string()));

        let mut both = spec(9001);
        both.nodes[1].sdk = true;
        let err = both.snapshots().unwrap_err();
        assert!(err.reason.contains("not both"), "{err}");
    }
}
