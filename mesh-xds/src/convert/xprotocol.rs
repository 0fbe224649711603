//! Envoy's `generic_proxy` network filter ↔ [`mesh_core::XProtocolProxy`] (an RPC listener).
//!
//! We follow Envoy's `generic_proxy` rather than MOSN's `proxy` filter with
//! `downstream_protocol`: real Envoy is the oracle for anything arriving over xDS, and it has a
//! dubbo codec (`envoy.generic_proxy.codecs.dubbo`), so a dubbo listener we emit is one real
//! Envoy accepts and routes the same way. The shape:
//!
//! - one network filter `envoy.filters.network.generic_proxy` whose `codec_config` is Envoy's
//!   `DubboCodecConfig` for dubbo, or, for bolt (Envoy has no bolt codec), an
//!   `xds.type.v3.TypedStruct` with type_url [`BOLT_CODEC_TYPE`]: real Envoy refuses that, so
//!   bolt listeners are for our sidecars only;
//! - its `filters` are exactly one router (`envoy.filters.generic.router`); tracing, access
//!   logs, other filters, other codecs and generic RDS are refused with the field path;
//! - the routes travel inline as `route_config` (see `xprotocol_routes` for the matcher form);
//! - our knobs Envoy has no field for (`max_frame_bytes`, `request_timeout`,
//!   `max_upstream_connections`, `max_requests_per_connection`) travel as JSON in the
//!   listener's `metadata.filter_metadata["io.mesh"].xprotocol`, which Envoy ignores.
//!
//! A listener serving HTTP and an RPC protocol on one port (the sidecar tells them apart by
//! the RPC protocol's magic bytes) has the RPC chain matched by `application_protocols:
//! ["bolt"]` (or `["dubbo"]`) next to the HTTP chain matched by the HTTP inspector's protocols.
//! Real Envoy accepts that form but no listener filter of its sets those values, so there the
//! RPC chain never matches; only our sidecars serve it.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::codecs::dubbo::v3 as dubbo;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::router::v3 as gp_router;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::v3 as gp;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::{RpcProtocol, XProtocolProxy};
use prost::Name;
use serde::{Deserialize, Serialize};

use super::custom::{typed_struct_from, typed_struct_to};
use super::xprotocol_routes::{routes_from, routes_to};
use super::{pack, unpack, ConvertError};

/// Network filter name of Envoy's generic proxy.
pub const GENERIC_PROXY_FILTER: &str = "envoy.filters.network.generic_proxy";
/// Name of the generic proxy's router filter (the only filter accepted).
pub const GENERIC_ROUTER_FILTER: &str = "envoy.filters.generic.router";
/// Envoy's dubbo codec for the generic proxy.
pub const DUBBO_CODEC: &str = "envoy.generic_proxy.codecs.dubbo";
/// Our bolt codec's extension name (Envoy has none).
pub const BOLT_CODEC: &str = "mesh.generic_proxy.codecs.bolt";
/// The inner type_url of the `TypedStruct` that selects the bolt codec.
pub const BOLT_CODEC_TYPE: &str = "type.googleapis.com/mesh.xprotocol.v1.BoltCodec";

/// The RPC proxy settings Envoy has no field for, carried in listener metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XProtocolExtras {
    max_frame_bytes: u32,
    request_timeout_ms: u64,
    max_upstream_connections: u32,
    max_requests_per_connection: u32,
}

impl XProtocolExtras {
    /// The extras of `x`.
    pub(super) fn of(x: &XProtocolProxy) -> Self {
        Self {
            max_frame_bytes: x.max_frame_bytes,
            request_timeout_ms: u64::try_from(x.request_timeout.as_millis()).unwrap_or(u64::MAX),
            max_upstream_connections: x.max_upstream_connections,
            max_requests_per_connection: x.max_requests_per_connection,
        }
    }

    fn apply(&self, x: &mut XProtocolProxy) {
        x.max_frame_bytes = self.max_frame_bytes;
        x.request_timeout = Duration::from_millis(self.request_timeout_ms);
        x.max_upstream_connections = self.max_upstream_connections;
        x.max_requests_per_connection = self.max_requests_per_connection;
    }
}

/// The value an RPC chain's `filter_chain_match.application_protocols` lists on a listener
/// that also serves HTTP.
pub(super) fn chain_protocol(p: RpcProtocol) -> &'static str {
    p.as_str()
}

/// The generic proxy config for `x`; `stat_prefix` is required by Envoy.
pub(super) fn xprotocol_to(x: &XProtocolProxy, stat_prefix: &str) -> gp::GenericProxy {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    let codec = match x.protocol {
        RpcProtocol::Dubbo => TypedExtensionConfig {
            name: DUBBO_CODEC.to_owned(),
            typed_config: Some(pack(&dubbo::DubboCodecConfig::default())),
        },
        RpcProtocol::Bolt => TypedExtensionConfig {
            name: BOLT_CODEC.to_owned(),
            typed_config: Some(typed_struct_to(BOLT_CODEC_TYPE, Default::default())),
        },
    };
    gp::GenericProxy {
        stat_prefix: stat_prefix.to_owned(),
        codec_config: Some(codec),
        filters: vec![TypedExtensionConfig {
            name: GENERIC_ROUTER_FILTER.to_owned(),
            typed_config: Some(pack(&gp_router::Router::default())),
        }],
        route_specifier: Some(gp::generic_proxy::RouteSpecifier::RouteConfig(routes_to(
            &x.route_config,
        ))),
        ..Default::default()
    }
}

/// Converts a generic proxy config at `at`, with the listener's `extras`.
pub(super) fn xprotocol_from(
    g: &gp::GenericProxy,
    at: &str,
    extras: Option<&XProtocolExtras>,
) -> Result<XProtocolProxy, ConvertError> {
    use gp::generic_proxy::RouteSpecifier;
    if g.tracing.is_some() {
        return Err(ConvertError::unsupported(
            format!("{at}.tracing"),
            "tracing of RPCs",
        ));
    }
    if !g.access_log.is_empty() {
        return Err(ConvertError::unsupported(
            format!("{at}.access_log"),
            "access logs of RPCs",
        ));
    }
    let protocol = codec_from(g.codec_config.as_ref(), &format!("{at}.codec_config"))?;
    router_only(&g.filters, &format!("{at}.filters"))?;
    let route_config = match &g.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => {
            routes_from(rc).map_err(|e| e.within(format!("{at}.route_config")))?
        }
        Some(RouteSpecifier::GenericRds(_)) => {
            return Err(ConvertError::unsupported(
                format!("{at}.generic_rds"),
                "generic RDS (send the routes inline as route_config)",
            ))
        }
        None => {
            return Err(ConvertError::new(
                format!("{at}.route_specifier"),
                "missing (route_config)",
            ))
        }
    };
    let mut x = XProtocolProxy::new(protocol, route_config);
    if let Some(e) = extras {
        e.apply(&mut x);
    }
    Ok(x)
}

fn codec_from(
    c: Option<&core::TypedExtensionConfig>,
    at: &str,
) -> Result<RpcProtocol, ConvertError> {
    let any: &Any = c
        .and_then(|c| c.typed_config.as_ref())
        .ok_or_else(|| ConvertError::new(format!("{at}.typed_config"), "missing"))?;
    let at = format!("{at}.typed_config");
    if any.type_url == dubbo::DubboCodecConfig::type_url() {
        let _: dubbo::DubboCodecConfig = unpack(any, &at)?;
        return Ok(RpcProtocol::Dubbo);
    }
    if let Some((inner, _)) = typed_struct_from(any, &at)? {
        if inner == BOLT_CODEC_TYPE {
            return Ok(RpcProtocol::Bolt);
        }
        return Err(ConvertError::unsupported(
            format!("{at}.type_url"),
            format!("codec {inner:?} (only dubbo and {BOLT_CODEC_TYPE})"),
        ));
    }
    Err(ConvertError::unsupported(
        at,
        format!("codec {} (only dubbo and bolt)", any.type_url),
    ))
}

fn router_only(filters: &[core::TypedExtensionConfig], at: &str) -> Result<(), ConvertError> {
    let [router] = filters else {
        let at = if filters.is_empty() {
            at.to_owned()
        } else {
            format!("{at}[0]")
        };
        return Err(ConvertError::unsupported(
            at,
            format!("filters other than exactly one {GENERIC_ROUTER_FILTER}"),
        ));
    };
    let at = format!("{at}[0].typed_config");
    let any = router
        .typed_config
        .as_ref()
        .ok_or_else(|| ConvertError::new(&at, "missing"))?;
    if any.type_url != gp_router::Router::type_url() {
        return Err(ConvertError::unsupported(
            at,
            format!("generic proxy filter {} (only the router)", any.type_url),
        ));
    }
    let r: gp_router::Router = unpack(any, &at)?;
    if r.bind_upstream_connection {
        return Err(ConvertError::unsupported(
            format!("{at}.bind_upstream_connection"),
            "binding upstream connections to downstream ones (RPCs are multiplexed)",
        ));
    }
    Ok(())
}

/// Whether `any` is a generic proxy config.
pub(super) fn is_generic_proxy(any: &Any) -> bool {
    any.type_url == gp::GenericProxy::type_url()
}
