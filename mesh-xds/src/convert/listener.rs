//! `Listener` (LDS) with its `HttpConnectionManager` ↔ [`mesh_core::Listener`].

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_core::{Direction, FilterConfig, HttpProtocolOptions, Listener, RouteConfiguration};
use prost::Name;

use super::access_log::AccessLogs;
use super::custom;
use super::endpoint::{socket_addr_from, socket_addr_to};
use super::filters::{fault_from, fault_to, rate_limit_from, rate_limit_to, RateLimitExtras};
use super::hcm_matching::HcmMatching;
use super::rbac::{rbac_from, rbac_to, RBAC_FILTER};
use super::tcp_proxy::{chains_from, chains_to, tcp_proxy_from};
use super::xprotocol::{xprotocol_from, xprotocol_to, XProtocolExtras};
use super::{
    ads_config_source, check_ads_source, duration_to, mesh_meta_get, mesh_meta_set, opt_duration,
    pack, u32_from, u32_to, unpack, ConvertError, XdsResource,
};

/// Network filter name of the HTTP connection manager.
pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// HTTP filter name of the router (always last).
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// HTTP filter name of the local rate limiter (also the `typed_per_filter_config` key).
pub const LOCAL_RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
/// HTTP filter name of fault injection (also the `typed_per_filter_config` key).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// Listener listening filters that only inspect (they change no behaviour the mesh models).
const HARMLESS_LISTENER_FILTERS: [&str; 2] = [
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
];

impl XdsResource for Listener {
    type Proto = lpb::Listener;
    const TYPE: crate::ResourceType = crate::ResourceType::Listener;
    const TYPE_URL: &'static str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    const KIND: &'static str = "listener";

    fn resource_name(&self) -> &str {
        &self.name
    }

    fn proto_name(proto: &Self::Proto) -> &str {
        &proto.name
    }

    fn from_proto(p: Self::Proto) -> Result<Self, ConvertError> {
        if p.api_listener.is_some() {
            return Err(ConvertError::unsupported("api_listener", "API listeners"));
        }
        if p.use_original_dst.is_some_and(|b| b.value) {
            return Err(ConvertError::unsupported(
                "use_original_dst",
                "original destination",
            ));
        }
        if let Some((i, f)) = p
            .listener_filters
            .iter()
            .enumerate()
            .find(|(_, f)| !HARMLESS_LISTENER_FILTERS.contains(&f.name.as_str()))
        {
            return Err(ConvertError::unsupported(
                format!("listener_filters[{i}]"),
                format!("listener filter {:?}", f.name),
            ));
        }
        let address = socket_addr_from(p.address.as_ref(), "address")?;
        let direction = match core::TrafficDirection::try_from(p.traffic_direction) {
            Ok(core::TrafficDirection::Inbound) => Direction::Inbound,
            // Unspecified is what most control planes send for an egress listener.
            _ => Direction::Outbound,
        };
        let (tls, plain) = super::tls::split_tls(&p)?;
        let chains = chains_from(plain.as_ref().unwrap_or(&p))?;
        let extras: Option<RateLimitExtras> = mesh_meta_get(p.metadata.as_ref(), "rate_limit")?;
        let max_request_bytes: Option<u64> =
            mesh_meta_get(p.metadata.as_ref(), "max_request_bytes")?;
        let mut l = match chains.http {
            Some((at, manager)) => hcm_from(manager, extras).map_err(|e| e.within(at))?,
            None => opaque_listener(),
        };
        if let Some((at, proxy)) = &chains.tcp {
            l.tcp_proxy = Some(tcp_proxy_from(proxy, at)?);
        }
        if let Some((at, proxy)) = &chains.rpc {
            let extras: Option<XProtocolExtras> = mesh_meta_get(p.metadata.as_ref(), "xprotocol")?;
            l.xprotocol = Some(xprotocol_from(proxy, at, extras.as_ref())?);
        }
        if let Some(t) = opt_duration(
            p.listener_filters_timeout.as_ref(),
            "listener_filters_timeout",
        )? {
            // Envoy: 0 disables the timeout; ours is always bounded, so the default stays.
            if !t.is_zero() {
                l.detection.timeout = t;
            }
        }
        l.detection.opaque_on_timeout = p.continue_on_listener_filters_timeout;
        l.tls = tls;
        l.name = p.name;
        l.address = address;
        l.direction = direction;
        if let Some(max) = max_request_bytes {
            l.http.max_request_bytes = max;
        }
        Ok(l)
    }

    fn to_proto(&self) -> Self::Proto {
        let mut metadata = None;
        if let Some(x) = self.rate_limit.as_ref().and_then(RateLimitExtras::of) {
            mesh_meta_set(&mut metadata, "rate_limit", &x);
        }
        if self.http.max_request_bytes != HttpProtocolOptions::default().max_request_bytes {
            mesh_meta_set(
                &mut metadata,
                "max_request_bytes",
                &self.http.max_request_bytes,
            );
        }
        if let Some(x) = &self.xprotocol {
            mesh_meta_set(&mut metadata, "xprotocol", &XProtocolExtras::of(x));
        }
        let (mut filter_chains, mut default_filter_chain, mut listener_filters) = chains_to(
            self,
            self.serves_http().then(|| hcm_to(self)),
            self.xprotocol.as_ref().map(|x| xprotocol_to(x, &self.name)),
        );
        if let Some(tls) = &self.tls {
            super::tls::join_tls(
                tls,
                &mut filter_chains,
                &mut default_filter_chain,
                &mut listener_filters,
            );
        }
        lpb::Listener {
            name: self.name.clone(),
            address: Some(socket_addr_to(self.address)),
            traffic_direction: match self.direction {
                Direction::Inbound => core::TrafficDirection::Inbound,
                Direction::Outbound => core::TrafficDirection::Outbound,
            } as i32,
            filter_chains,
            default_filter_chain,
            listener_filters,
            listener_filters_timeout: Some(duration_to(self.detection.timeout)),
            continue_on_listener_filters_timeout: self.detection.opaque_on_timeout,
            metadata,
            ..Default::default()
        }
    }
}

/// A listener with no HTTP side (its TCP proxy is filled in by the caller).
fn opaque_listener() -> Listener {
    Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: String::new(),
        address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        direction: Direction::Outbound,
        route_config_name: String::new(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        // The access log is the HTTP connection manager's; the TCP relay counts bytes instead.
        access_log: Vec::new(),
    }
}

fn hcm_from(
    m: hcm::HttpConnectionManager,
    extras: Option<RateLimitExtras>,
) -> Result<Listener, ConvertError> {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    let mut http = HttpProtocolOptions {
        strip_host_port: HcmMatching::try_from(&m)?.strip_host_port,
        upgrades: upgrades_from(&m.upgrade_configs)?,
        ..HttpProtocolOptions::default()
    };
    (http.http1, http.http2) = match CodecType::try_from(m.codec_type) {
        Ok(CodecType::Auto) => (true, true),
        Ok(CodecType::Http1) => (true, false),
        Ok(CodecType::Http2) => (false, true),
        _ => return Err(ConvertError::unsupported("codec_type", "HTTP/3")),
    };
    if let Some(kb) = u32_from(m.max_request_headers_kb) {
        http.max_request_headers_kb = kb;
    }
    if let Some(t) = opt_duration(
        m.request_headers_timeout.as_ref(),
        "request_headers_timeout",
    )? {
        http.request_headers_timeout = t;
    }
    if let Some(common) = &m.common_http_protocol_options {
        let path = "common_http_protocol_options.idle_timeout";
        if let Some(t) = opt_duration(common.idle_timeout.as_ref(), path)? {
            http.idle_timeout = t;
        }
    }
    if let Some(h2) = &m.http2_protocol_options {
        if let Some(n) = u32_from(h2.max_concurrent_streams) {
            http.max_concurrent_streams = n;
        }
    }
    let (route_config_name, route_config) = match m.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            check_ads_source(rds.config_source.as_ref(), "rds")?;
            (rds.route_config_name, None)
        }
        Some(RouteSpecifier::RouteConfig(rc)) => (
            String::new(),
            Some(RouteConfiguration::from_proto(rc).map_err(|e| e.within("route_config"))?),
        ),
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(ConvertError::unsupported("scoped_routes", "scoped routes"))
        }
        None => {
            return Err(ConvertError::new(
                "route_specifier",
                "missing (rds or route_config)",
            ))
        }
    };
    let (rate_limit, http_filters, rbac) = http_filters_from(&m.http_filters, extras)?;
    let access_log = AccessLogs::try_from(m.access_log.as_slice())?.0;
    Ok(Listener {
        tls: None,
        rbac,
        xprotocol: None,
        name: String::new(),
        address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        direction: Direction::Outbound,
        route_config_name,
        route_config,
        http,
        rate_limit,
        http_filters,
        tcp_proxy: None,
        detection: Default::default(),
        access_log,
    })
}

/// Checks the HTTP filter chain (router last) and returns the listener-wide rate limit it
/// configures, its custom filters and its authorization policy (the RBAC filter): any other filter whose config is a (Typed)Struct. Whether
/// the sidecar has a factory for a custom filter is its own business (it refuses a required one
/// it lacks); a filter of any other type is refused here unless optional.
fn http_filters_from(
    filters: &[hcm::HttpFilter],
    extras: Option<RateLimitExtras>,
) -> Result<FilterParts, ConvertError> {
    use hcm::http_filter::ConfigType;
    let mut rate_limit = None;
    let mut custom = Vec::new();
    let mut authz = None;
    let mut saw_router = false;
    for (i, f) in filters.iter().enumerate() {
        let at = format!("http_filters[{i}]");
        if saw_router {
            return Err(ConvertError::new(at, "filters after the router never run"));
        }
        if f.disabled {
            continue;
        }
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(ConvertError::unsupported(
                    at,
                    "filter config discovery (ECDS)",
                ))
            }
            None => return Err(ConvertError::new(format!("{at}.typed_config"), "missing")),
        };
        let at = format!("{at}.typed_config");
        if any.type_url == router::Router::type_url() {
            saw_router = true;
        } else if any.type_url == lrl::LocalRateLimit::type_url() {
            let cfg: lrl::LocalRateLimit = unpack(any, &at)?;
            rate_limit = rate_limit_from(&cfg, extras.clone(), &at)?;
        } else if any.type_url == fault::HttpFault::type_url() {
            let cfg: fault::HttpFault = unpack(any, &at)?;
            let f = fault_from(&cfg, &at)?;
            if f.delay.is_some() || f.abort.is_some() {
                return Err(ConvertError::unsupported(
                    at,
                    "listener-wide faults (configure faults per route)",
                ));
            }
        } else if any.type_url == rbac::Rbac::type_url() {
            if authz.is_some() {
                return Err(ConvertError::unsupported(at, "a second RBAC filter"));
            }
            authz = rbac_from(&unpack(any, &at)?, &at)?;
        } else if custom::is_custom(any) {
            custom.push(custom::custom_from(&f.name, any, f.is_optional, &at)?);
        } else if !f.is_optional {
            return Err(ConvertError::unsupported(
                at,
                format!("HTTP filter {:?} ({})", f.name, any.type_url),
            ));
        }
    }
    if !saw_router {
        return Err(ConvertError::new(
            "http_filters",
            format!("the last filter must be {ROUTER_FILTER}"),
        ));
    }
    Ok((rate_limit, custom, authz))
}

/// What the HCM's filter chain configures: the listener-wide rate limit, custom filters and
/// the authorization policy.
type FilterParts = (
    Option<mesh_core::LocalRateLimit>,
    Vec<FilterConfig>,
    Option<mesh_core::Rbac>,
);

fn hcm_to(l: &Listener) -> hcm::HttpConnectionManager {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    let codec = match (l.http.http1, l.http.http2) {
        (true, false) => CodecType::Http1,
        (false, true) => CodecType::Http2,
        _ => CodecType::Auto,
    };
    let route_specifier = match &l.route_config {
        Some(rc) => RouteSpecifier::RouteConfig(rc.to_proto()),
        None => RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads_config_source()),
            route_config_name: l.route_config_name.clone(),
        }),
    };
    let filter = |name: &str, any| hcm::HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    };
    // Rate limiting first (reject before spending a fault delay), then faults, then the router.
    // Both are always present so that per-route typed_per_filter_config takes effect.
    // Custom filters run after both and before the router, as in the sidecar's stack.
    let mut http_filters = vec![filter(
        LOCAL_RATELIMIT_FILTER,
        pack(&rate_limit_to(l.rate_limit.as_ref(), &l.name)),
    )];
    // Authorization after the listener's rate limit and before everything else, as in the
    // sidecar's stack.
    if let Some(r) = &l.rbac {
        http_filters.push(filter(RBAC_FILTER, pack(&rbac_to(r))));
    }
    http_filters.push(filter(FAULT_FILTER, pack(&fault_to(&Default::default()))));
    for f in &l.http_filters {
        // Listener validation refuses faults here; only custom filters reach this.
        if let FilterConfig::Custom {
            name,
            config,
            optional,
        } = f
        {
            http_filters.push(hcm::HttpFilter {
                is_optional: *optional,
                ..filter(name, custom::custom_to(config))
            });
        }
    }
    http_filters.push(filter(ROUTER_FILTER, pack(&router::Router::default())));
    let mut m = hcm::HttpConnectionManager {
        upgrade_configs: l
            .http
            .upgrades
            .iter()
            .map(|u| hcm::http_connection_manager::UpgradeConfig {
                upgrade_type: u.clone(),
                ..Default::default()
            })
            .collect(),
        codec_type: codec as i32,
        stat_prefix: l.name.clone(),
        route_specifier: Some(route_specifier),
        http_filters,
        access_log: AccessLogs(l.access_log.clone()).to_proto(),
        max_request_headers_kb: u32_to(l.http.max_request_headers_kb),
        request_headers_timeout: Some(duration_to(l.http.request_headers_timeout)),
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(duration_to(l.http.idle_timeout)),
            ..Default::default()
        }),
        http2_protocol_options: Some(core::Http2ProtocolOptions {
            max_concurrent_streams: u32_to(l.http.max_concurrent_streams),
            ..Default::default()
        }),
        ..Default::default()
    };
    HcmMatching {
        strip_host_port: l.http.strip_host_port,
    }
    .apply_to(&mut m);
    m
}

/// The upgrades a connection manager allows: each `upgrade_configs` entry not disabled. Their
/// own filter chains are refused (an upgraded stream runs the listener's filters).
fn upgrades_from(
    configs: &[hcm::http_connection_manager::UpgradeConfig],
) -> Result<Vec<String>, ConvertError> {
    let mut out = Vec::new();
    for (i, u) in configs.iter().enumerate() {
        let at = format!("upgrade_configs[{i}]");
        if !u.filters.is_empty() {
            return Err(ConvertError::unsupported(
                format!("{at}.filters"),
                "per-upgrade HTTP filters",
            ));
        }
        if u.upgrade_type.is_empty() {
            return Err(ConvertError::new(format!("{at}.upgrade_type"), "missing"));
        }
        if u.enabled.is_some_and(|e| !e.value) {
            continue;
        }
        // Upgrade tokens are case-insensitive; CONNECT is a method, kept as written.
        out.push(if u.upgrade_type.eq_ignore_ascii_case("CONNECT") {
            "CONNECT".to_owned()
        } else {
            u.upgrade_type.to_ascii_lowercase()
        });
    }
    Ok(out)
}
