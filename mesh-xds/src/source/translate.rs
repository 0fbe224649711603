//! From a [`MeshSpec`] to what each node needs: mesh-core's model (validated as clients will),
//! then Envoy resources through [`crate::convert`].

use std::collections::BTreeMap;

use mesh_core::{
    Cluster, ClusterLoadAssignment, Direction, Discovery, DownstreamTls, Endpoint,
    HttpProtocolOptions, Listener, Locality, LocalityEndpoints, MeshConfig, Route, RouteAction,
    RouteConfiguration, UpstreamProtocol, UpstreamTls, Validate, VirtualHost,
};

use super::incremental::{SharedResources, TranslationCache};
use super::opaque::{make_opaque, tcp_listeners};
use super::pki::{ROOT_SECRET, WORKLOAD_SECRET};
use super::proxyless::{api_listener, api_manager};
use super::rpc::{check_rpc, make_rpc, node_rpc, rpc_listeners};
use super::spec::{
    ListenerAddrs, ListenerFilters, MeshSpec, NodeKind, NodeSpec, ServiceProtocol, ServiceSpec,
};
use crate::server::{Resource, Snapshot, SnapshotError};

/// Name of the outbound listener and its route configuration.
pub const OUTBOUND: &str = "outbound";
/// Name of the inbound listener and its route configuration.
pub const INBOUND: &str = "inbound";
/// Name of the cluster of the local app.
pub const LOCAL_APP: &str = "local_app";
/// The HTTP upgrades every sidecar listener relays (as Istio's default).
const UPGRADES: [&str; 1] = ["websocket"];

/// Why a spec does not translate; `service`/`node` say which entry, for the line lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct TranslateError {
    /// `services[orders]`, `nodes[sidecar-1]` or a resource path.
    pub at: String,
    /// The entry's name, to find its line in the file.
    pub name: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl TranslateError {
    pub(super) fn new(at: impl Into<String>, name: Option<&str>, reason: impl ToString) -> Self {
        Self {
            at: at.into(),
            name: name.map(str::to_owned),
            reason: reason.to_string(),
        }
    }
}

/// The snapshots a spec produces: one per listed node, and the fallback for any other node.
#[derive(Debug, Clone, Default)]
pub struct Snapshots {
    /// Per node id.
    pub nodes: BTreeMap<String, Snapshot>,
    /// For nodes the spec does not list.
    pub fallback: Snapshot,
}

impl MeshSpec {
    /// Checks the spec and translates it, per node.
    pub fn snapshots(&self) -> Result<Snapshots, TranslateError> {
        self.snapshots_with(&mut TranslationCache::default())
    }

    /// [`MeshSpec::snapshots`], re-translating only the services whose spec differs from the
    /// one `cache` translated last time (the etcd source keeps one across watch events, so an
    /// event that touches one service re-translates that service alone). The result is the
    /// same as a fresh translation's.
    pub fn snapshots_with(
        &self,
        cache: &mut TranslationCache,
    ) -> Result<Snapshots, TranslateError> {
        self.check()?;
        let shared = cache.translate(self)?;
        let ca = match &self.security {
            Some(security) => Some(cache.ca(security)?),
            None => None,
        };
        let shared = SharedResources { ca, ..shared };
        let fallback = self.node_snapshot(&shared, None, self.listeners, NodeKind::Sidecar)?;
        let mut nodes = BTreeMap::new();
        // A node's snapshot depends only on its service, addresses and kind: replicas of one
        // service on default addresses share one (its resources by `Arc`).
        let mut built = BTreeMap::new();
        for n in &self.nodes {
            let addrs = n.listeners.unwrap_or_default().over(self.listeners);
            let key = (
                n.service.as_deref(),
                addrs.outbound,
                addrs.inbound,
                addrs.local_app,
                addrs.outbound_bolt,
                addrs.outbound_dubbo,
                n.kind(),
            );
            let snap = match built.get(&key) {
                // A node with filters or TCP listener addresses of its own gets a snapshot of
                // its own.
                Some(snap) if n.http_filters.is_none() && n.tcp_listeners.is_empty() => {
                    Snapshot::clone(snap)
                }
                _ if n.http_filters.is_some() || !n.tcp_listeners.is_empty() => {
                    self.node_snapshot(&shared, Some(n), addrs, n.kind())?
                }
                _ => {
                    let snap = self.node_snapshot(&shared, Some(n), addrs, n.kind())?;
                    built.insert(key, snap.clone());
                    snap
                }
            };
            nodes.insert(n.id.clone(), snap);
        }
        Ok(Snapshots { nodes, fallback })
    }

    fn check(&self) -> Result<(), TranslateError> {
        let mut seen = BTreeMap::new();
        for s in &self.services {
            if s.name.trim().is_empty() {
                return Err(TranslateError::new(
                    "services",
                    None,
                    "a service has no name",
                ));
            }
            if s.name == LOCAL_APP {
                return Err(TranslateError::new(
                    format!("services[{}]", s.name),
                    Some(&s.name),
                    format!("{LOCAL_APP:?} is reserved (the cluster of each node's local app)"),
                ));
            }
            if s.protocol == ServiceProtocol::Tcp && s.port.is_none() {
                return Err(TranslateError::new(
                    format!("services[{}].port", s.name),
                    Some(&s.name),
                    "a `protocol: tcp` service needs a port (its opaque listener's)",
                ));
            }
            check_rpc(self, s)?;
            if let Some(a) = &s.authz {
                if s.protocol == ServiceProtocol::Tcp {
                    return Err(TranslateError::new(
                        format!("services[{}].authz", s.name),
                        Some(&s.name),
                        "a `protocol: tcp` service has no HTTP requests to authorize",
                    ));
                }
                a.check(|n| self.service(n).is_some())
                    .map_err(|(at, why)| {
                        TranslateError::new(
                            format!("services[{}].{at}", s.name),
                            Some(&s.name),
                            why,
                        )
                    })?;
            }
            if seen.insert(s.name.as_str(), ()).is_some() {
                return Err(TranslateError::new(
                    format!("services[{}]", s.name),
                    Some(&s.name),
                    "duplicate service name",
                ));
            }
        }
        let mut ids = BTreeMap::new();
        for n in &self.nodes {
            if ids.insert(n.id.as_str(), ()).is_some() {
                return Err(TranslateError::new(
                    format!("nodes[{}]", n.id),
                    Some(&n.id),
                    "duplicate node id",
                ));
            }
            if n.proxyless && n.sdk {
                return Err(TranslateError::new(
                    format!("nodes[{}]", n.id),
                    Some(&n.id),
                    "a node is `proxyless` or `sdk`, not both",
                ));
            }
            if let Some(svc) = &n.service {
                if self.service(svc).is_none() {
                    return Err(TranslateError::new(
                        format!("nodes[{}].service", n.id),
                        Some(&n.id),
                        format!("no service named {svc:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What a node has of its own: its two listeners, the inbound route table and the local
    /// app's cluster (not validated).
    fn node_part(&self, node: Option<&NodeSpec>, addrs: ListenerAddrs, kind: NodeKind) -> NodePart {
        let filters = match (kind, node.and_then(|n| n.http_filters.as_ref())) {
            // The SDK and proxyless clients have no listener filter chain of ours to run them.
            (NodeKind::Sdk | NodeKind::Proxyless, _) => ListenerFilters::default(),
            (NodeKind::Sidecar, Some(own)) => own.over(&self.http_filters),
            (NodeKind::Sidecar, None) => self.http_filters.clone(),
        };
        // Access logs are the sidecar's (and Envoy's): the SDK and proxyless clients write none.
        let access_log = match (kind, node.and_then(|n| n.access_log.as_ref())) {
            (NodeKind::Sdk | NodeKind::Proxyless, _) => Vec::new(),
            (NodeKind::Sidecar, Some(own)) => own.clone(),
            (NodeKind::Sidecar, None) => self.access_log.clone(),
        };
        let listener =
            |name: &str, address, direction, rate_limit, http_filters: Option<Vec<_>>| Listener {
                tls: None,
                rbac: None,
                xprotocol: None,
                name: name.into(),
                address,
                direction,
                route_config_name: name.into(),
                route_config: None,
                http: HttpProtocolOptions {
                    upgrades: UPGRADES.iter().map(|u| (*u).to_owned()).collect(),
                    ..HttpProtocolOptions::default()
                },
                rate_limit,
                http_filters: http_filters.unwrap_or_default(),
                tcp_proxy: None,
                detection: Default::default(),
                access_log: access_log.clone(),
            };
        let service = node
            .and_then(|n| n.service.as_deref())
            .and_then(|s| self.service(s));
        let mut local_app = Cluster::new(LOCAL_APP);
        local_app.load_assignment = Some(ClusterLoadAssignment::from_addrs(
            LOCAL_APP,
            [addrs.local_app],
        ));
        if let Some(s) = service {
            local_app.protocol = s.protocol.upstream();
        }
        let mut to_app = RouteAction::to_cluster(LOCAL_APP);
        if let Some(t) = service.and_then(|s| s.timeout) {
            to_app.timeout = t;
        }
        let inbound = RouteConfiguration {
            name: INBOUND.into(),
            virtual_hosts: vec![VirtualHost {
                name: INBOUND.into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    name: INBOUND.into(),
                    action: to_app,
                    ..Route::default()
                }],
            }],
            ignore_port_in_host_matching: false,
        };
        let rate_limit = service.and_then(|s| s.rate_limit.clone());
        let mut inbound_listener = listener(
            INBOUND,
            addrs.inbound,
            Direction::Inbound,
            rate_limit,
            filters.inbound,
        );
        inbound_listener.rbac = service
            .and_then(|s| s.authz.as_ref())
            .map(|a| a.to_rbac(self.security.as_ref()));
        if service.is_some_and(|s| s.protocol == ServiceProtocol::Tcp) {
            make_opaque(&mut inbound_listener, LOCAL_APP);
        }
        if let Some((s, protocol)) = node_rpc(self, node) {
            make_rpc(&mut inbound_listener, s, protocol);
        }
        // Under `security:`, a sidecar running a service serves its inbound side over mTLS
        // with the service's certificate; the local app's side stays plaintext.
        if let (Some(security), Some(s), NodeKind::Sidecar) = (&self.security, service, kind) {
            inbound_listener.tls = Some(DownstreamTls {
                certificate: WORKLOAD_SECRET.into(),
                validation: ROOT_SECRET.into(),
                mode: security.mode(&s.name),
                alpn: match s.protocol {
                    ServiceProtocol::Tcp => Vec::new(),
                    _ => vec!["h2".into(), "http/1.1".into()],
                },
            });
        }
        let tcp_listeners = match kind {
            NodeKind::Sidecar => {
                let mut l = tcp_listeners(self, node, addrs);
                l.extend(rpc_listeners(self, addrs));
                l
            }
            NodeKind::Sdk | NodeKind::Proxyless => Vec::new(),
        };
        NodePart {
            listeners: vec![
                listener(
                    OUTBOUND,
                    addrs.outbound,
                    Direction::Outbound,
                    None,
                    filters.outbound,
                ),
                inbound_listener,
            ],
            tcp_listeners,
            inbound,
            local_app,
        }
    }

    /// One node's snapshot: the services' shared resources (translated and validated once for
    /// all nodes) plus the node's own part, validated here.
    fn node_snapshot(
        &self,
        shared: &SharedResources,
        node: Option<&NodeSpec>,
        addrs: ListenerAddrs,
        kind: NodeKind,
    ) -> Result<Snapshot, TranslateError> {
        let own = self.node_part(node, addrs, kind);
        // The node's part against a stand-in of the outbound table (checked in `shared`): the
        // same checks as a whole-config validation, without the services again.
        let check = MeshConfig {
            listeners: own.listeners.clone(),
            route_configs: vec![
                RouteConfiguration {
                    name: OUTBOUND.into(),
                    virtual_hosts: Vec::new(),
                    ignore_port_in_host_matching: false,
                },
                own.inbound.clone(),
            ],
            clusters: vec![own.local_app.clone()],
            endpoints: Vec::new(),
            secrets: Vec::new(),
        };
        check.validate().map_err(|e| node_error(node, e))?;
        // The opaque listeners name service clusters (checked in `shared`): checked alone, and
        // for addresses against the node's other listeners.
        for l in &own.tcp_listeners {
            l.validate()
                .map_err(|e| node_error(node, e.within(&l.name)))?;
            if own.listeners.iter().any(|o| o.address == l.address) {
                return Err(node_error(
                    node,
                    format!("{}: {} is used by another listener", l.name, l.address),
                ));
            }
        }

        let err = |e: SnapshotError| node_error(node, e);
        let mut resources = Vec::with_capacity(2 * shared.services.len() + 8);
        for t in &shared.services {
            let cluster = if kind == NodeKind::Proxyless {
                t.grpc_cluster()
            } else {
                &t.cluster
            };
            resources.push(cluster.clone());
            resources.push(t.endpoints.clone());
        }
        resources.push(shared.outbound.clone());
        // The node's part was validated above: encoded as is.
        if kind != NodeKind::Sdk {
            resources.push(Resource::from_validated(&own.local_app));
        }
        if kind == NodeKind::Proxyless {
            // API listeners instead of socket listeners, and no inbound side.
            if let Some(out) = own.listeners.iter().find(|l| l.name == OUTBOUND) {
                let manager = api_manager(out);
                for t in &shared.services {
                    let any = api_listener(t.name(), &manager);
                    resources.push(Resource::from_any(any).map_err(|e| err(e.into()))?);
                }
            }
        } else if kind == NodeKind::Sdk {
            // The outbound listener only: it names the route table the SDK subscribes to and
            // carries the listener-level rate limit. Nothing of the inbound side.
            for l in own.listeners.iter().filter(|l| l.name == OUTBOUND) {
                resources.push(Resource::from_validated(l));
            }
        } else {
            resources.push(Resource::from_validated(&own.inbound));
            for l in own.listeners.iter().chain(&own.tcp_listeners) {
                resources.push(Resource::from_validated(l));
            }
        }
        // The workload certificate and trust bundle of the node's service (SDS).
        let service = node.and_then(|n| n.service.as_deref());
        if let (Some(ca), Some(security), Some(service), NodeKind::Sidecar | NodeKind::Sdk) =
            (&shared.ca, &self.security, service, kind)
        {
            let secrets = ca
                .secrets(&security.identity(service))
                .map_err(|e| TranslateError::new("security.ca", None, e))?;
            for s in &secrets {
                resources.push(Resource::from_validated(s));
            }
        }
        let snap = Snapshot::from_resources(resources).map_err(err)?;
        snap.check_consistency().map_err(err)?;
        Ok(snap)
    }
}

/// See [`MeshSpec::node_part`].
struct NodePart {
    listeners: Vec<Listener>,
    /// Opaque listeners of `protocol: tcp` services and the outbound RPC listeners (sidecars
    /// only).
    tcp_listeners: Vec<Listener>,
    inbound: RouteConfiguration,
    local_app: Cluster,
}

fn node_error(node: Option<&NodeSpec>, e: impl ToString) -> TranslateError {
    let at = node.map_or("listeners".to_owned(), |n| format!("nodes[{}]", n.id));
    TranslateError::new(at, node.map(|n| n.id.as_str()), e)
}

/// A service's cluster, endpoints and virtual host, each validated alone (so an error names
/// the service rather than a list index).
/// `protocol` is the cluster's: the service's own, or HTTP/2 between sidecars (`hop`).
pub(super) fn service_config(
    s: &ServiceSpec,
    tls: Option<UpstreamTls>,
    protocol: UpstreamProtocol,
) -> Result<(Cluster, ClusterLoadAssignment, VirtualHost), TranslateError> {
    let at = format!("services[{}]", s.name);
    let err = |e: mesh_core::ValidationError| TranslateError::new(&at, Some(&s.name), e);
    let (mut c, la, vh) = (cluster(s, protocol), assignment(s), virtual_host(s));
    c.tls = tls;
    c.validate().map_err(err)?;
    la.validate().map_err(|e| err(e.within("endpoints")))?;
    vh.validate().map_err(|e| err(e.within("routes")))?;
    Ok((c, la, vh))
}

fn cluster(s: &ServiceSpec, protocol: UpstreamProtocol) -> Cluster {
    let mut c = Cluster::new(&s.name);
    c.discovery = Discovery::Eds;
    c.lb_policy = s.lb_policy.clone();
    if let Some(t) = s.connect_timeout {
        c.connect_timeout = t;
    }
    c.protocol = protocol;
    if let Some(cb) = &s.circuit_breakers {
        c.circuit_breakers = cb.clone();
    }
    c.outlier_detection = s.outlier_detection.clone();
    c.health_check = s.health_check.clone();
    c
}

/// The service's endpoints, one locality per zone (in zone order, so the content and hence
/// the version do not depend on listing order).
///
/// Each locality carries a `load_balancing_weight`: the sum of its endpoints' weights (their
/// count if the sums would overflow `u32` together). Envoy and our sidecar use locality weights
/// only when the cluster asks for locality-weighted LB, but gRPC's xDS client always does and
/// drops a locality without a weight (`EDS resource contains no localities`).
pub(crate) fn assignment(s: &ServiceSpec) -> ClusterLoadAssignment {
    let mut zones: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
    for e in &s.endpoints {
        let mut ep = Endpoint::new(e.address);
        ep.weight = e.weight;
        ep.metadata = e.metadata.clone();
        zones.entry(e.zone.as_str()).or_default().push(ep);
    }
    let total: u64 = s.endpoints.iter().map(|e| u64::from(e.weight)).sum();
    let by_sum = total <= u64::from(u32::MAX);
    ClusterLoadAssignment {
        endpoints: zones
            .into_iter()
            .map(|(zone, mut lb_endpoints)| {
                lb_endpoints.sort_by_key(|e| e.address);
                let weight = if by_sum {
                    lb_endpoints.iter().map(|e| e.weight).sum::<u32>()
                } else {
                    u32::try_from(lb_endpoints.len()).unwrap_or(u32::MAX)
                };
                LocalityEndpoints {
                    load_balancing_weight: Some(weight.max(1)),
                    locality: Locality {
                        zone: zone.to_owned(),
                        ..Locality::default()
                    },
                    lb_endpoints,
                    ..LocalityEndpoints::default()
                }
            })
            .collect(),
        // from_addrs for the model's defaults (e.g. the overprovisioning factor).
        ..ClusterLoadAssignment::from_addrs(&s.name, [])
    }
}

fn virtual_host(s: &ServiceSpec) -> VirtualHost {
    let mut domains = vec![s.name.clone()];
    if let Some(p) = s.port {
        domains.push(format!("{}:{p}", s.name));
    }
    domains.extend(s.aliases.iter().cloned());
    let routes = if s.routes.is_empty() {
        let mut action = RouteAction::to_cluster(&s.name);
        if let Some(t) = s.timeout {
            action.timeout = t;
        }
        action.retry_policy = s.retry_policy.clone();
        vec![Route {
            name: s.name.clone(),
            action,
            ..Route::default()
        }]
    } else {
        s.routes.clone()
    };
    VirtualHost {
        name: s.name.clone(),
        domains,
        routes,
    }
}
