//! The `mesh.yaml` schema: services, their endpoints, routes and policies, and the nodes
//! (sidecars and proxyless gRPC clients) that consume them. See `MESH_YAML.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_core::{
    AccessLog, CircuitBreakers, FilterConfig, HealthCheck, LbPolicy, LocalRateLimit, MtlsMode,
    OutlierDetection, RetryPolicy, Route, RpcProtocol, SpiffeId, UpstreamProtocol,
};
use serde::{Deserialize, Serialize};

use super::hop::MeshProtocol;

/// A whole `mesh.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSpec {
    /// Listener addresses of nodes that do not set their own.
    #[serde(default)]
    pub listeners: ListenerAddrs,
    /// The services of the mesh.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Nodes with settings of their own; any other node gets the defaults.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Custom HTTP filters of every sidecar's listeners (a node's own `http_filters` override
    /// them, list by list).
    #[serde(default, skip_serializing_if = "ListenerFilters::is_empty")]
    pub http_filters: ListenerFilters,
    /// Access logs of every sidecar node's two listeners (Envoy's file access log on their
    /// connection managers; a node's own `access_log` overrides it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
    /// Workload identity and mTLS between sidecars: the mesh CA, the trust domain and
    /// per-service modes. Absent: the mesh is plaintext (as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecuritySpec>,
}

/// The `security:` section: the control plane is the mesh CA and every sidecar node gets a
/// certificate for its service's SPIFFE identity over SDS, inbound listeners require mTLS and
/// calls to services run by sidecars originate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// The trust domain of identities (`spiffe://<trust_domain>/ns/<namespace>/sa/<service>`).
    pub trust_domain: String,
    /// The namespace of identities (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The CA that signs workload certificates.
    pub ca: CaSpec,
    /// More CA certificate files (PEM) trusted besides the CA: the old CA during a CA rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_roots: Vec<PathBuf>,
    /// Lifetime of workload certificates (default 24h); each is renewed at 2/3 of it.
    #[serde(default = "default_cert_ttl", with = "humantime_serde")]
    pub workload_cert_ttl: Duration,
    /// mTLS mode of each service's inbound listeners by service name (default `strict`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub modes: BTreeMap<String, MtlsMode>,
}

/// Where the mesh CA comes from: a certificate and key (PEM files), or generated at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSpec {
    /// The CA certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The CA's private key, PEM (PKCS#8 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// A development CA made at start, held in memory only (a restart makes a new one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generate: bool,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_cert_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl SecuritySpec {
    /// The identity of `service`'s workloads.
    pub fn identity(&self, service: &str) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, &self.namespace, service)
    }

    /// The mTLS mode of `service`'s inbound listeners.
    pub fn mode(&self, service: &str) -> MtlsMode {
        self.modes.get(service).copied().unwrap_or_default()
    }
}

/// Listener-level custom HTTP filters, per listener. Each list run in order on every request of
/// its listener, after the listener's rate limit and before routing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFilters {
    /// The outbound listener's filters (calls of the local app out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Vec<FilterConfig>>,
    /// The inbound listener's filters (calls in to the local app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Vec<FilterConfig>>,
}

impl ListenerFilters {
    /// Whether neither list is given.
    pub fn is_empty(&self) -> bool {
        self.outbound.is_none() && self.inbound.is_none()
    }

    /// These lists over `defaults`: a list given here replaces the default one (`[]` removes
    /// it), a missing one keeps it.
    pub fn over(&self, defaults: &ListenerFilters) -> ListenerFilters {
        ListenerFilters {
            outbound: self.outbound.clone().or_else(|| defaults.outbound.clone()),
            inbound: self.inbound.clone().or_else(|| defaults.inbound.clone()),
        }
    }
}

/// Where a sidecar listens and where its local app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerAddrs {
    /// The listener taking the local app's calls out (default 127.0.0.1:8082).
    pub outbound: SocketAddr,
    /// The listener taking calls in to the local app (default 127.0.0.1:8083).
    pub inbound: SocketAddr,
    /// The local app (default 127.0.0.1:6060).
    pub local_app: SocketAddr,
    /// The outbound RPC listener of `protocol: bolt` services (default 127.0.0.1:12220; only
    /// when the mesh has such a service).
    pub outbound_bolt: SocketAddr,
    /// The outbound RPC listener of `protocol: dubbo` services (default 127.0.0.1:20882; only
    /// when the mesh has such a service).
    pub outbound_dubbo: SocketAddr,
}

impl Default for ListenerAddrs {
    fn default() -> Self {
        Self {
            outbound: SocketAddr::from(([127, 0, 0, 1], 8082)),
            inbound: SocketAddr::from(([127, 0, 0, 1], 8083)),
            local_app: SocketAddr::from(([127, 0, 0, 1], 6060)),
            // SOFARPC serves on 12200 and dubbo on 20880: the sidecar's ports sit near them.
            outbound_bolt: SocketAddr::from(([127, 0, 0, 1], 12220)),
            outbound_dubbo: SocketAddr::from(([127, 0, 0, 1], 20882)),
        }
    }
}

/// One service: a cluster of endpoints reached by name through every sidecar's outbound
/// listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The name callers use (the `Host`/authority, and the cluster name).
    pub name: String,
    /// The service port: `name:port` is served as a domain too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// More domains served by this service's virtual host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The protocol its endpoints speak (`http1`, `http2` for gRPC, `use_downstream`,
    /// `tcp`: opaque bytes, proxied at layer 4 on a port of its own, or the RPC protocols
    /// `bolt` and `dubbo`, see [`ServiceProtocol`]).
    #[serde(default)]
    pub protocol: ServiceProtocol,
    /// The RPC interfaces (service names in the RPC header: bolt's `service`, such as
    /// `com.example.Hello:1.0`, dubbo's interface path) a `bolt`/`dubbo` service provides;
    /// default: its name. Each is routed to this service by the outbound RPC listener unless
    /// `routes` says otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// What other sidecars speak to this service's endpoints when they are sidecars' inbound
    /// listeners: HTTP/2 by default (one multiplexed connection per pair of sidecars), or
    /// `http1` to keep `protocol` on that hop too; see [`MeshProtocol`]. The hop from the
    /// inbound sidecar to the app speaks `protocol` either way.
    #[serde(default, skip_serializing_if = "MeshProtocol::is_default")]
    pub mesh_protocol: MeshProtocol,
    /// Endpoints listed here (etcd registrations are added to these).
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Load-balancing policy.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Connect timeout (default 5 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// Circuit breakers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Timeout of the default route (default 15 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Retries of the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// A local rate limit on calls into this service (on its nodes' inbound listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<LocalRateLimit>,
    /// Who may call this service, on which paths and methods (its nodes' inbound listener
    /// enforces it: our sidecar's RBAC layer, Envoy's RBAC filter). None: anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz: Option<super::authz::AuthzSpec>,
    /// Routes of this service's virtual host, in order, with every matcher and policy the router
    /// supports; when absent, one route sends everything (`prefix: /`) to the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// What a service's endpoints speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (gRPC).
    Http2,
    /// Whatever the caller spoke.
    UseDownstream,
    /// Opaque TCP: every sidecar gets an opaque listener for it on the service's `port` (at
    /// its outbound listener's IP, or where the node's `tcp_listeners` says), proxying to the
    /// service's endpoints; the inbound listener of the service's own nodes is opaque too (no
    /// protocol detection, so server-first protocols work).
    Tcp,
    /// SOFA bolt RPC: every sidecar gets the outbound bolt listener routing the service's
    /// `interfaces`; the inbound listener of the service's own nodes is a bolt proxy to its app.
    Bolt,
    /// Dubbo RPC, as `bolt`.
    Dubbo,
}

impl ServiceProtocol {
    /// The protocol of the service's cluster (a TCP service's cluster is never spoken HTTP to
    /// by the mesh; HTTP/1.1 is the model's default).
    pub fn upstream(self) -> UpstreamProtocol {
        match self {
            Self::Http1 | Self::Tcp | Self::Bolt | Self::Dubbo => UpstreamProtocol::Http1,
            Self::Http2 => UpstreamProtocol::Http2,
            Self::UseDownstream => UpstreamProtocol::UseDownstream,
        }
    }

    /// The RPC protocol, for `bolt` and `dubbo`.
    pub fn rpc(self) -> Option<RpcProtocol> {
        match self {
            Self::Bolt => Some(RpcProtocol::Bolt),
            Self::Dubbo => Some(RpcProtocol::Dubbo),
            Self::Http1 | Self::Http2 | Self::UseDownstream | Self::Tcp => None,
        }
    }

    /// Whether the service is spoken to as opaque bytes or RPCs, never as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http1 | Self::Http2 | Self::UseDownstream)
    }
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `ip:port`.
    pub address: SocketAddr,
    /// Relative weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Zone (endpoints are grouped into localities by zone).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A node (by its xDS node id) with settings of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node id the sidecar or gRPC client sends.
    pub id: String,
    /// The service this node runs (its inbound listener applies the service's rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Listener addresses (each defaults to the top-level `listeners`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<PartialAddrs>,
    /// A proxyless gRPC client: gets one API listener per service (so `xds:///SERVICE`
    /// resolves) and no socket listeners.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxyless: bool,
    /// An application embedding the mesh SDK (`mesh_xds::sdk`): gets the outbound listener (its
    /// route table's name and listener-level rate limit; the SDK binds no socket), the outbound
    /// route table, the clusters and endpoints, and nothing of the inbound side.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sdk: bool,
    /// This node's listener-level custom filters, over the top-level `http_filters` (sidecar
    /// nodes only: the SDK and proxyless clients run no listener filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_filters: Option<ListenerFilters>,
    /// Where this node's opaque listeners of `protocol: tcp` services listen, by service name
    /// (default: the outbound listener's IP and the service's `port`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tcp_listeners: BTreeMap<String, SocketAddr>,
    /// This node's access logs instead of the top-level `access_log` (`[]`: none). Sidecar
    /// nodes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<Vec<AccessLog>>,
}

/// What kind of client a node is, which decides the shape of its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum NodeKind {
    /// A sidecar (ours or Envoy): outbound and inbound listeners, the local app's cluster.
    Sidecar,
    /// A proxyless gRPC client: API listeners, gRPC-compatible clusters.
    Proxyless,
    /// An application embedding the SDK: the outbound side only.
    Sdk,
}

impl NodeSpec {
    /// The node's kind (a spec setting both `proxyless` and `sdk` is refused by the check).
    pub(crate) fn kind(&self) -> NodeKind {
        match (self.proxyless, self.sdk) {
            (true, _) => NodeKind::Proxyless,
            (false, true) => NodeKind::Sdk,
            (false, false) => NodeKind::Sidecar,
        }
    }
}

/// Listener addresses of one node, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialAddrs {
    /// Outbound listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<SocketAddr>,
    /// Inbound listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<SocketAddr>,
    /// Local app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_app: Option<SocketAddr>,
    /// Outbound RPC listener of bolt services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_bolt: Option<SocketAddr>,
    /// Outbound RPC listener of dubbo services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_dubbo: Option<SocketAddr>,
}

impl PartialAddrs {
    /// These addresses over `defaults`.
    pub fn over(&self, defaults: ListenerAddrs) -> ListenerAddrs {
        ListenerAddrs {
            outbound: self.outbound.unwrap_or(defaults.outbound),
            inbound: self.inbound.unwrap_or(defaults.inbound),
            local_app: self.local_app.unwrap_or(defaults.local_app),
            outbound_bolt: self.outbound_bolt.unwrap_or(defaults.outbound_bolt),
            outbound_dubbo: self.outbound_dubbo.unwrap_or(defaults.outbound_dubbo),
        }
    }
}

fn one() -> u32 {
    1
}

impl ServiceSpec {
    /// A service with the defaults and no endpoints.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            port: None,
            aliases: Vec::new(),
            protocol: ServiceProtocol::default(),
            interfaces: Vec::new(),
            mesh_protocol: MeshProtocol::default(),
            endpoints: Vec::new(),
            lb_policy: LbPolicy::default(),
            connect_timeout: None,
            circuit_breakers: None,
            outlier_detection: None,
            health_check: None,
            timeout: None,
            retry_policy: None,
            rate_limit: None,
            authz: None,
            routes: Vec::new(),
        }
    }
}

impl MeshSpec {
    /// Parses YAML; errors carry the line and column.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        mesh_core::yaml::from_str(text)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
}
