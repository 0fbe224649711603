//! proto ↔ mesh-core conversion, in one place.
//!
//! The client decodes xDS resources with [`decode`] (type check, protobuf decode, conversion,
//! validation), and the control plane encodes mesh-core's model with [`encode`]; round-trip tests
//! (mesh-core → proto → mesh-core) run the very code both sides use.
//!
//! Rust's orphan rule forbids `impl TryFrom<envoy proto> for mesh_core::X` here (both types are
//! foreign to this crate), so the two directions are the [`XdsResource`] trait's
//! [`from_proto`](XdsResource::from_proto) and [`to_proto`](XdsResource::to_proto).
//!
//! Policy on fields: a proto field that would change behaviour and that mesh-core cannot express
//! is refused with a [`ConvertError`] naming its path (the client NACKs it), rather than silently
//! dropped; purely informative fields (stat prefixes, metadata...) are ignored. Access logs
//! are converted where they map (`access_log`) and refused by path where they do not. The few
//! settings of ours that Envoy has no field for (a wait-mode rate limit, a per-descriptor
//! bucket, a request body cap, a route-level retry budget) travel in the resource's metadata under
//! the `io.mesh` filter-metadata key, which Envoy ignores.
//!
//! ```
//! use mesh_xds::convert::{decode, encode};
//! use mesh_core::{Cluster, LbPolicy};
//!
//! let mut cluster = Cluster::new("reviews");
//! cluster.lb_policy = LbPolicy::Maglev { table_size: 65537 };
//! let any = encode(&cluster);
//! assert_eq!(any.type_url, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
//! let back: Cluster = decode(&any).unwrap();
//! assert_eq!(back, cluster);
//! ```

use std::fmt;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf as pbw;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::{Checked, Validate, ValidationError};
use prost::Message;

mod access_log;
mod cluster;
mod cluster_policy;
mod custom;
mod endpoint;
mod filters;
mod hcm_matching;
mod listener;
mod matchers;
mod rbac;
mod route;
mod route_action;
mod route_policy;
mod tcp_proxy;
mod tls;
mod xprotocol;
mod xprotocol_match;
mod xprotocol_routes;

pub use access_log::FILE_ACCESS_LOG;
pub use custom::{UDPA_TYPED_STRUCT, XDS_TYPED_STRUCT};
pub use listener::{FAULT_FILTER, HCM_FILTER, LOCAL_RATELIMIT_FILTER, ROUTER_FILTER};
pub use rbac::RBAC_FILTER;
pub use tcp_proxy::{HTTP_INSPECTOR, TCP_PROXY_FILTER};
#[cfg(feature = "control-plane")]
pub(crate) use tls::check_certificates;
pub use tls::{TLS_INSPECTOR, TLS_TRANSPORT_SOCKET};
pub use xprotocol::{
    BOLT_CODEC, BOLT_CODEC_TYPE, DUBBO_CODEC, GENERIC_PROXY_FILTER, GENERIC_ROUTER_FILTER,
};
pub use xprotocol_routes::{ROUTE_ACTION, RPC_REQUEST_INPUT, RPC_ROUTE_MATCH};

/// The filter-metadata key under which settings Envoy has no field for travel.
pub const MESH_METADATA_KEY: &str = "io.mesh";

/// Why a resource could not be converted, and where: the path starts at the resource, e.g.
/// `cluster[reviews].load_assignment.endpoints[0].lb_endpoints[2].endpoint.address`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConvertError {
    /// Field path from the resource root.
    pub path: String,
    /// What is wrong or unsupported.
    pub reason: String,
}

impl ConvertError {
    /// An invalid value at `path`.
    pub fn new(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// A field that would change behaviour but that the mesh does not support.
    pub fn unsupported(path: impl Into<String>, what: impl fmt::Display) -> Self {
        Self::new(path, format!("unsupported: {what}"))
    }

    /// Prefixes the path with the enclosing field.
    #[must_use]
    pub fn within(self, parent: impl fmt::Display) -> Self {
        let v = ValidationError::new(self.path, self.reason).within(parent);
        Self {
            path: v.path,
            reason: v.reason,
        }
    }
}

impl From<ValidationError> for ConvertError {
    fn from(e: ValidationError) -> Self {
        Self::new(e.path, e.reason)
    }
}

/// A mesh-core config type that is also an xDS resource type.
pub trait XdsResource: Validate + Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// The Envoy v3 message.
    type Proto: Message + prost::Name + Default;
    /// Its xDS type.
    const TYPE: crate::ResourceType;
    /// The type URL on the wire (what [`crate::ResourceType::type_url`] answers for
    /// [`XdsResource::TYPE`]).
    const TYPE_URL: &'static str;
    /// The resource kind as errors and [`mesh_core::ReloadError`] name it.
    const KIND: &'static str;

    /// The resource's name (what subscriptions and removals refer to).
    fn resource_name(&self) -> &str;

    /// Converts and validates an Envoy message; errors carry the path from the resource root.
    fn from_proto(proto: Self::Proto) -> Result<Self, ConvertError>;

    /// Translates to the Envoy message real Envoy accepts (used by the control plane).
    fn to_proto(&self) -> Self::Proto;

    /// The name of an undecoded message, for error paths before conversion succeeded.
    fn proto_name(proto: &Self::Proto) -> &str;
}

/// Decodes an `Any` into a validated mesh-core resource.
pub fn decode<T: XdsResource>(any: &Any) -> Result<T, ConvertError> {
    decode_checked(any).map(Checked::into_inner)
}

/// Decodes an `Any` into a mesh-core resource that carries its validation ([`Checked`]): what
/// the client stores and hands to sinks that need not check again.
pub fn decode_checked<T: XdsResource>(any: &Any) -> Result<Checked<T>, ConvertError> {
    if any.type_url != T::TYPE_URL {
        return Err(ConvertError::new(
            format!("{}[]", T::KIND),
            format!(
                "type_url {:?} where {} was expected",
                any.type_url,
                T::TYPE_URL
            ),
        ));
    }
    let proto = T::Proto::decode(any.value.as_slice())
        .map_err(|e| ConvertError::new(format!("{}[]", T::KIND), format!("bad protobuf: {e}")))?;
    checked_from_proto::<T>(proto)
}

/// Converts an already decoded message, validating the result, with the resource-rooted path.
pub fn from_proto_checked<T: XdsResource>(proto: T::Proto) -> Result<T, ConvertError> {
    checked_from_proto(proto).map(Checked::into_inner)
}

/// The one validation of a received resource: conversion, then [`Checked::new`].
fn checked_from_proto<T: XdsResource>(proto: T::Proto) -> Result<Checked<T>, ConvertError> {
    let at = format!("{}[{}]", T::KIND, T::proto_name(&proto));
    let res = T::from_proto(proto).map_err(|e| e.within(&at))?;
    Checked::new(res).map_err(|e| ConvertError::from(e).within(&at))
}

/// Encodes a mesh-core resource as an `Any` with its type URL.
pub fn encode<T: XdsResource>(res: &T) -> Any {
    Any {
        type_url: T::TYPE_URL.to_string(),
        value: res.to_proto().encode_to_vec(),
    }
}

/// Packs any named message into an `Any` (filter configs, protocol options).
pub fn pack<M: Message + prost::Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Unpacks an `Any` holding an `M`, checking its type URL.
pub fn unpack<M: Message + prost::Name + Default>(
    any: &Any,
    path: &str,
) -> Result<M, ConvertError> {
    if any.type_url != M::type_url() {
        return Err(ConvertError::unsupported(
            path,
            format!("type {:?} (expected {})", any.type_url, M::type_url()),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| ConvertError::new(path, format!("bad protobuf: {e}")))
}

// ---- small shared helpers -------------------------------------------------------------------

pub(crate) fn duration_to(d: Duration) -> pbw::Duration {
    pbw::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn duration_from(d: &pbw::Duration, path: &str) -> Result<Duration, ConvertError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(ConvertError::new(path, "negative or malformed duration"));
    }
    Ok(Duration::new(
        d.seconds.unsigned_abs(),
        d.nanos.unsigned_abs(),
    ))
}

pub(crate) fn opt_duration(
    d: Option<&pbw::Duration>,
    path: &str,
) -> Result<Option<Duration>, ConvertError> {
    d.map(|d| duration_from(d, path)).transpose()
}

pub(crate) fn u32_to(v: u32) -> Option<pbw::UInt32Value> {
    Some(pbw::UInt32Value { value: v })
}

pub(crate) fn u32_from(v: Option<pbw::UInt32Value>) -> Option<u32> {
    v.map(|v| v.value)
}

/// Reads a JSON-encoded mesh setting from `metadata.filter_metadata["io.mesh"][key]`.
pub(crate) fn mesh_meta_get<T: serde::de::DeserializeOwned>(
    meta: Option<&core::Metadata>,
    key: &str,
) -> Result<Option<T>, ConvertError> {
    let path = format!("metadata.filter_metadata[{MESH_METADATA_KEY}].{key}");
    let Some(value) = meta
        .and_then(|m| m.filter_metadata.get(MESH_METADATA_KEY))
        .and_then(|s| s.fields.get(key))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(pbw::value::Kind::StringValue(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| ConvertError::new(path, e)),
        _ => Err(ConvertError::new(path, "expected a JSON string")),
    }
}

/// Stores a JSON-encoded mesh setting under `metadata.filter_metadata["io.mesh"][key]`.
pub(crate) fn mesh_meta_set<T: serde::Serialize>(
    meta: &mut Option<core::Metadata>,
    key: &str,
    value: &T,
) {
    let Ok(json) = serde_json::to_string(value) else {
        return;
    };
    meta.get_or_insert_with(Default::default)
        .filter_metadata
        .entry(MESH_METADATA_KEY.to_string())
        .or_default()
        .fields
        .insert(
            key.to_string(),
            pbw::Value {
                kind: Some(pbw::value::Kind::StringValue(json)),
            },
        );
}

/// `config_source { ads {} resource_api_version: V3 }`, what real Envoy needs for RDS/EDS over ADS.
pub(crate) fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Accepts ADS (or an unset source, meaning "the same stream"); refuses path/API sources.
pub(crate) fn check_ads_source(
    src: Option<&core::ConfigSource>,
    path: &str,
) -> Result<(), ConvertError> {
    use core::config_source::ConfigSourceSpecifier as S;
    match src.and_then(|s| s.config_source_specifier.as_ref()) {
        None | Some(S::Ads(_)) | Some(S::Self_(_)) => Ok(()),
        Some(_) => Err(ConvertError::unsupported(
            format!("{path}.config_source"),
            "only ADS config sources (the client subscribes on its one ADS stream)",
        )),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_connect;
#[cfg(test)]
mod tests_custom;
#[cfg(test)]
mod tests_l4;
#[cfg(test)]
mod tests_xprotocol;
