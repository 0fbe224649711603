//! Listeners: an address the proxy accepts on, the route table it serves and, for opaque TCP,
//! where it relays bytes (Envoy's LDS).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{non_empty, Validate, ValidationError};
use crate::{
    AccessLog, Detection, DownstreamTls, FilterConfig, LocalRateLimit, Rbac, RouteConfiguration,
    TcpProxy, XProtocolProxy,
};

/// A listener of the sidecar.
///
/// Three shapes: HTTP only (a route table, no `tcp_proxy`: what is not HTTP is closed), HTTP
/// with an opaque-TCP fallback (a route table and a `tcp_proxy`: each connection's first bytes
/// decide, see [`Detection`]), and opaque only (a `tcp_proxy` and no route table: no detection,
/// every connection relayed from its first moment, as server-first protocols need).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// The socket address accepted on.
    pub address: SocketAddr,
    /// Whether it takes the local app's calls out, or calls in to the local app.
    pub direction: Direction,
    /// The route configuration it serves (fetched by RDS, or one of the static ones); empty on
    /// an opaque-only listener.
    #[serde(default)]
    pub route_config_name: String,
    /// A route configuration carried inline instead of by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<RouteConfiguration>,
    /// HTTP protocol options and protections.
    #[serde(default)]
    pub http: HttpProtocolOptions,
    /// A rate limit for every request on the listener (Envoy's `local_ratelimit` filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<LocalRateLimit>,
    /// Custom HTTP filters run on every request of the listener, in order: after the
    /// listener-wide rate limit, before routing (so they see requests that match no route too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_filters: Vec<FilterConfig>,
    /// Where connections that are not HTTP go (Envoy's `tcp_proxy` filter chain); without it
    /// they are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_proxy: Option<TcpProxy>,
    /// How the protocol of a connection is told (when the listener serves HTTP).
    #[serde(default)]
    pub detection: Detection,
    /// Access logs: each request is written to every one of them (none: no access log). A
    /// sidecar started with a process-wide access log (`--access-log`) uses that one for the
    /// listeners that configure none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
    /// TLS (mTLS between sidecars) on accepted connections; none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DownstreamTls>,
    /// Authorization of every request (Envoy's RBAC HTTP filter), run before routing; none:
    /// every caller is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<Rbac>,
    /// An RPC proxy (bolt or dubbo) for connections of that protocol: on a listener that also
    /// serves HTTP, detection sends connections starting with the protocol's magic to it; on
    /// one without a route table every connection is decoded with the protocol's codec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xprotocol: Option<XProtocolProxy>,
}

impl Listener {
    /// Whether the listener serves HTTP (has a route table); an opaque-only listener does not.
    pub fn serves_http(&self) -> bool {
        self.route_config.is_some() || !self.route_config_name.is_empty()
    }

    /// The name of the route configuration this listener serves.
    pub fn route_name(&self) -> &str {
        match &self.route_config {
            Some(rc) => &rc.name,
            None => &self.route_config_name,
        }
    }
}

/// Which way a listener's traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Calls from other sidecars to the local app.
    Inbound,
    /// Calls from the local app to other services.
    Outbound,
}

/// HTTP options of a listener: which protocols, and the protections against abuse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpProtocolOptions {
    /// Accept HTTP/1.1.
    pub http1: bool,
    /// Accept HTTP/2 with prior knowledge (h2c, gRPC).
    pub http2: bool,
    /// Largest request body accepted (413 beyond).
    pub max_request_bytes: u64,
    /// Largest request header block in KiB (431 beyond; Envoy's default 60).
    pub max_request_headers_kb: u32,
    /// Time to receive a request's headers (slowloris protection).
    #[serde(with = "humantime_serde")]
    pub request_headers_timeout: Duration,
    /// Idle time after which a downstream connection is closed (Envoy's default 1 h).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Whether the port of the request's `Host`/authority is removed before routing (and so
    /// also towards the upstream), as Envoy's connection manager does when told to.
    pub strip_host_port: StripHostPort,
    /// Protocol upgrades relayed end to end after the upstream agrees (Envoy's
    /// `upgrade_configs`): lower-case `Upgrade` tokens such as `websocket`, or `CONNECT` for the
    /// CONNECT method. Any other upgrade request is forwarded as a plain request, its
    /// `Upgrade` header removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<String>,
    /// At most this many open connections from one source IP address on this listener (a new
    /// one beyond is closed at once); no cap when `None` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
}

impl HttpProtocolOptions {
    /// Whether an `Upgrade` token (any case) or `CONNECT` is allowed.
    pub fn allows_upgrade(&self, kind: &str) -> bool {
        self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(kind))
    }
}

/// Envoy's `strip_matching_host_port` / `strip_any_host_port` of the connection manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StripHostPort {
    /// Keep the authority as sent (Envoy's default): `api:8080` only matches the domain
    /// `api:8080` (or a wildcard).
    #[default]
    None,
    /// Remove the port when it is the listener's own port (`strip_matching_host_port`).
    Matching,
    /// Remove any port (`strip_any_host_port`).
    Any,
}

impl StripHostPort {
    /// The authority with its port removed when this mode says so; `listener_port` is the
    /// port the request arrived on. IPv6 literals keep their brackets (`[::1]:80` → `[::1]`).
    pub fn apply<'a>(&self, authority: &'a str, listener_port: u16) -> &'a str {
        let Some(colon) = port_start(authority) else {
            return authority;
        };
        // As Envoy's `stripPortFromHost`: only a numeric port is removed.
        let port = authority[colon + 1..].parse::<u32>().ok();
        let strip = match self {
            Self::None => false,
            Self::Any => port.is_some(),
            Self::Matching => port == Some(u32::from(listener_port)),
        };
        if strip {
            &authority[..colon]
        } else {
            authority
        }
    }
}

/// Where the `:port` of an authority starts (the index of the colon), as Envoy's
/// `HeaderUtility::getPortStart`: the last colon, unless it lies inside an IPv6 literal's
/// brackets. The port is not checked to be numeric here.
pub fn port_start(authority: &str) -> Option<usize> {
    let colon = authority.rfind(':')?;
    match authority.rfind(']') {
        Some(v6_end) if v6_end > colon => None,
        _ => Some(colon),
    }
}

impl Default for HttpProtocolOptions {
    fn default() -> Self {
        Self {
            http1: true,
            http2: true,
            max_request_bytes: 16 * 1024 * 1024,
            max_request_headers_kb: 60,
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_concurrent_streams: 1024,
            strip_host_port: StripHostPort::None,
            upgrades: Vec::new(),
            max_connections_per_ip: None,
        }
    }
}

impl Validate for Listener {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("name", &self.name)?;
        match (&self.route_config, &self.tcp_proxy) {
            (Some(rc), _) => rc.validate().map_err(|e| e.within("route_config"))?,
            // Opaque only: no route table needed.
            (None, Some(_)) => {}
            // RPC only: the RPC proxy has its own routes.
            (None, None) if self.xprotocol.is_some() && self.route_config_name.is_empty() => {}
            (None, None) => non_empty("route_config_name", &self.route_config_name)?,
        }
        if let Some(tcp) = &self.tcp_proxy {
            tcp.validate().map_err(|e| e.within("tcp_proxy"))?;
        }
        self.detection
            .validate()
            .map_err(|e| e.within("detection"))?;
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| e.within("tls"))?;
        }
        if let Some(rbac) = &self.rbac {
            rbac.validate().map_err(|e| e.within("rbac"))?;
        }
        if let Some(x) = &self.xprotocol {
            x.validate().map_err(|e| e.within("xprotocol"))?;
        }
        for (i, u) in self.http.upgrades.iter().enumerate() {
            let token = !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(ValidationError::new(
                    format!("http.upgrades[{i}]"),
                    format!("{u:?} is not an upgrade token"),
                ));
            }
        }
        let h = &self.http;
        if !h.http1 && !h.http2 {
            return Err(ValidationError::new(
                "http",
                "at least one of http1 and http2 must be enabled",
            ));
        }
        if h.max_request_headers_kb == 0 || h.max_request_headers_kb > 8192 {
            return Err(ValidationError::new(
                "http.max_request_headers_kb",
                "must be within 1–8192",
            ));
        }
        if h.max_concurrent_streams == 0 {
            return Err(ValidationError::new(
                "http.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if let Some(rl) = &self.rate_limit {
            rl.validate().map_err(|e| e.within("rate_limit"))?;
        }
        for (i, f) in self.http_filters.iter().enumerate() {
            let at = format!("http_filters[{i}]");
            if let FilterConfig::Fault(_) = f {
                // Envoy's listener-level fault filter only takes per-route settings here (the
                // xDS conversion refuses listener-wide faults), so the model refuses them too.
                return Err(ValidationError::new(
                    at,
                    "listener-wide faults are not supported (configure faults per route)",
                ));
            }
            f.validate().map_err(|e| e.within(at))?;
        }
        for (i, log) in self.access_log.iter().enumerate() {
            log.validate()
                .map_err(|e| e.within(format!("access_log[{i}]")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_host_port_as_envoy() {
        use StripHostPort::*;
        assert_eq!(None.apply("api:8080", 8080), "api:8080");
        assert_eq!(Any.apply("api:8080", 1), "api");
        assert_eq!(Any.apply("api:x", 1), "api:x", "only numeric ports");
        assert_eq!(Any.apply("[::1]:80", 1), "[::1]");
        assert_eq!(Any.apply("[::1]", 1), "[::1]");
        assert_eq!(Matching.apply("api:8080", 8080), "api");
        assert_eq!(Matching.apply("api:9999", 8080), "api:9999");
        assert_eq!(port_start("a:1"), Some(1));
        assert_eq!(port_start("[::1]"), Option::None);
    }
}
