//! RPC protocols besides HTTP on a listener ("xprotocol", as MOSN calls them): SOFA bolt and
//! dubbo requests decoded as far as routing needs, routed by their own route table, and
//! multiplexed by request id over a few shared connections per upstream endpoint.
//!
//! The route table is an ordinary [`RouteConfiguration`]: each RPC is matched as if it were an
//! HTTP request `POST /{service}/{method}` with no authority (so a `*` virtual host takes it)
//! whose headers are the RPC's header fields and attachments (bolt's header map, dubbo's
//! attachments such as `version` and `group`). A path prefix `/{service}/` routes a service;
//! header matchers route on anything else.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError};
use crate::RouteConfiguration;

/// An RPC protocol a listener can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcProtocol {
    /// SOFA bolt v1.
    Bolt,
    /// Dubbo 2.
    Dubbo,
}

impl RpcProtocol {
    /// The name in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bolt => "bolt",
            Self::Dubbo => "dubbo",
        }
    }
}

/// A listener's RPC proxy (MOSN's `proxy` filter with `downstream_protocol`; Envoy's
/// `generic_proxy` network filter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XProtocolProxy {
    /// The protocol spoken by clients and upstreams.
    pub protocol: RpcProtocol,
    /// Where RPCs go (see the module docs for what a route matches on).
    pub route_config: RouteConfiguration,
    /// The largest frame accepted, as declared by its header; a larger one closes the
    /// connection that sent it.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: u32,
    /// How long a request waits for its response before the mesh answers with the protocol's
    /// timeout error.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Shared connections per upstream endpoint that requests are multiplexed over.
    #[serde(default = "default_connections")]
    pub max_upstream_connections: u32,
    /// Requests in flight at once on one upstream connection; beyond, requests are refused
    /// with the protocol's overload error.
    #[serde(default = "default_in_flight")]
    pub max_requests_per_connection: u32,
}

impl XProtocolProxy {
    /// A proxy for `protocol` with `routes` and the defaults.
    pub fn new(protocol: RpcProtocol, route_config: RouteConfiguration) -> Self {
        Self {
            protocol,
            route_config,
            max_frame_bytes: default_max_frame(),
            request_timeout: default_timeout(),
            max_upstream_connections: default_connections(),
            max_requests_per_connection: default_in_flight(),
        }
    }
}

fn default_max_frame() -> u32 {
    // 16 MiB: SOFA's and dubbo's own payload limits are 8–16 MiB.
    16 << 20
}

fn default_timeout() -> Duration {
    // SOFARPC's default invoke timeout.
    Duration::from_secs(3)
}

fn default_connections() -> u32 {
    // MOSN keeps about one connection per upstream host; two spread a busy host's load over
    // two event loops at the cost of one more socket.
    2
}

fn default_in_flight() -> u32 {
    10_000
}

impl Validate for XProtocolProxy {
    fn validate(&self) -> Result<(), ValidationError> {
        self.route_config
            .validate()
            .map_err(|e| e.within("route_config"))?;
        if self.max_frame_bytes < 64 {
            return Err(ValidationError::new(
                "max_frame_bytes",
                "must be at least 64 (a frame's fixed header)",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ValidationError::new(
                "request_timeout",
                "must be above zero",
            ));
        }
        if !(1..=64).contains(&self.max_upstream_connections) {
            return Err(ValidationError::new(
                "max_upstream_connections",
                "must be between 1 and 64",
            ));
        }
        if self.max_requests_per_connection == 0 {
            return Err(ValidationError::new(
                "max_requests_per_connection",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_defaults_and_validation_paths() {
        let p: XProtocolProxy = serde_yaml::from_str(
            "protocol: bolt\nroute_config: { name: rpc, virtual_hosts: [] }\n",
        )
        .unwrap();
        assert_eq!(p.protocol, RpcProtocol::Bolt);
        assert_eq!(p.max_upstream_connections, 2);
        assert_eq!(p.request_timeout, Duration::from_secs(3));
        p.validate().unwrap();
        let bad = XProtocolProxy {
            max_upstream_connections: 0,
            ..p.clone()
        };
        assert_eq!(bad.validate().unwrap_err().path, "max_upstream_connections");
        let bad = XProtocolProxy {
            max_frame_bytes: 1,
            ..p
        };
        assert_eq!(bad.validate().unwrap_err().path, "max_frame_bytes");
    }
}
