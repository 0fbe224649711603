//! # mesh-core
//!
//! The mesh's own model and contracts, shared by every other crate of the family. It holds no
//! protobuf, no socket and no runtime: mesh-xds converts xDS resources into these types, the
//! sidecar reads them from YAML, and the layers (router, load balancer, rate limiter) consume them.
//!
//! - The config model: [`Listener`], [`RouteConfiguration`] → [`VirtualHost`] → [`Route`],
//!   [`Cluster`], [`ClusterLoadAssignment`] → [`LocalityEndpoints`] → [`Endpoint`], and the local
//!   rate-limit rules ([`RateLimitConfig`]), workload identity and TLS ([`SpiffeId`], [`Secret`],
//!   [`DownstreamTls`], [`UpstreamTls`]) and authorization ([`Rbac`]). Each type validates itself ([`Validate`]), and
//!   [`MeshConfig`] validates a whole static config including cross references.
//! - The [`Reload`] contract every layer implements (validate, then swap atomically, or refuse
//!   with a [`ReloadError`] naming the resource and keep the old state), and [`Shared`], the
//!   arc-swap cell the data path reads with one atomic load.
//! - [`MeshError`], the one error type of the request path, and its one mapping to an HTTP (or
//!   gRPC-status) response.
//! - The request [`extensions`] the layers hand each other, so an inner layer never re-derives
//!   what an outer one decided.
//! - [`exposition`]: the Prometheus text both admin endpoints serve (classic text or
//!   OpenMetrics, by the scraper's `Accept`).
//!
//! ```
//! use mesh_core::{Reload, ReloadError, RouteConfiguration, Shared, Validate};
//!
//! /// A toy sink: keeps the last valid route table.
//! struct Table(Shared<RouteConfiguration>);
//!
//! impl Reload<RouteConfiguration> for Table {
//!     fn reload(&self, update: RouteConfiguration) -> Result<(), ReloadError> {
//!         update.validate().map_err(|e| ReloadError::invalid("route_configuration", &update.name, e))?;
//!         self.0.store(update);
//!         Ok(())
//!     }
//! }
//!
//! let table = Table(Shared::new(RouteConfiguration::default()));
//! let bad: RouteConfiguration = mesh_core::yaml::from_str(r#"
//! name: main
//! virtual_hosts:
//!   - name: vh
//!     domains: ["*"]
//!     routes:
//!       - match: { regex: "([" }
//!         route: { cluster: backend }
//! "#).unwrap();
//! let err = table.reload(bad).unwrap_err();
//! assert!(err.to_string().contains("regex"), "{err}");
//! assert_eq!(table.0.load().name, "", "the old table keeps serving");
//! ```

mod access_log;
pub mod body;
mod cluster;
mod config;
mod endpoint;
mod error;
pub mod exposition;
pub mod extensions;
mod listener;
mod ratelimit;
mod rbac;
mod registration;
mod reload;
mod route;
mod tcp_proxy;
mod tls;
mod validate;
mod xprotocol;
pub mod yaml;

pub use access_log::{
    AccessLog, AccessLogFormat, ACCESS_LOG_ENVOY_DEFAULT_FORMAT, ACCESS_LOG_JSON_FIELDS,
    ACCESS_LOG_STDOUT,
};
pub use body::{Body, BoxError};
pub use cluster::{
    CircuitBreakers, Cluster, Discovery, HealthCheck, LbPolicy, OutlierDetection, UpstreamProtocol,
};
pub use config::MeshConfig;
pub use endpoint::{ClusterLoadAssignment, Endpoint, HealthStatus, Locality, LocalityEndpoints};
pub use error::{is_grpc, GrpcCode, MeshError, RBAC_DENIED_BODY};
pub use listener::{port_start, Direction, HttpProtocolOptions, Listener, StripHostPort};
pub use ratelimit::{
    DescriptorSource, LocalRateLimit, RateLimitConfig, RateLimitMode, RateLimitRule,
    RateLimitScope, TokenBucketConfig,
};
pub use rbac::{Permission, Principal, Rbac, RbacAction, RbacPolicy};
pub use registration::Registration;
pub use reload::{Reload, ReloadEach, ReloadError, Shared};
pub use route::{
    ClusterSpecifier, ConnectConfig, FaultAbort, FaultConfig, FaultDelay, FilterConfig, HashPolicy,
    HeaderMatcher, HeaderValueOption, PathMatch, QueryParamMatcher, RetryBackoff, RetryBudget,
    RetryOn, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, RouteUpgrade,
    StringMatch, VirtualHost, WeightedCluster,
};
pub use tcp_proxy::{Detection, TcpDestination, TcpProxy};
pub use tls::{
    DownstreamTls, MtlsMode, Secret, SecretKind, SpiffeId, SpiffeIdError, TlsCertificate,
    UpstreamTls, ValidationContext,
};
pub use validate::{Checked, Validate, ValidationError};
pub use xprotocol::{RpcProtocol, XProtocolProxy};
