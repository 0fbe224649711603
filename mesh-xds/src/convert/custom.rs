//! Custom (mesh-registry) filters ↔ their xDS encoding, one for both places they appear: a
//! listener's HCM `http_filters` and a route's `typed_per_filter_config`.
//!
//! The config travels as a `google.protobuf.Struct` of string values. On the way in, the
//! `TypedStruct` wrappers other control planes use for extension configs
//! (`xds.type.v3.TypedStruct`, `udpa.type.v1.TypedStruct`) are accepted too; their inner
//! `type_url` only names the extension for Envoy, the mesh goes by the filter's name.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf as pbw;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::FilterConfig;
use prost::{Message, Name};

use super::{unpack, ConvertError};

/// Type URL of `xds.type.v3.TypedStruct`.
pub const XDS_TYPED_STRUCT: &str = "type.googleapis.com/xds.type.v3.TypedStruct";
/// Type URL of the older `udpa.type.v1.TypedStruct` (same fields).
pub const UDPA_TYPED_STRUCT: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";

/// `xds.type.v3.TypedStruct` / `udpa.type.v1.TypedStruct` (envoy-types generates neither; both
/// have these two fields with these tags).
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStruct {
    /// The extension's own config type, for Envoy.
    #[prost(string, tag = "1")]
    type_url: String,
    /// The config, as JSON-like data.
    #[prost(message, optional, tag = "2")]
    value: Option<pbw::Struct>,
}

/// Whether `any` is one of the encodings a custom filter's config may have.
pub(crate) fn is_custom(any: &Any) -> bool {
    any.type_url == pbw::Struct::type_url()
        || any.type_url == XDS_TYPED_STRUCT
        || any.type_url == UDPA_TYPED_STRUCT
}

/// The custom filter `name` configured by `any` (see [`is_custom`]). String, number and bool
/// values become the config map's strings; nested values are refused rather than dropped.
pub(crate) fn custom_from(
    name: &str,
    any: &Any,
    optional: bool,
    at: &str,
) -> Result<FilterConfig, ConvertError> {
    let s: pbw::Struct = if any.type_url == pbw::Struct::type_url() {
        unpack(any, at)?
    } else {
        // Two type URLs for one message shape: decoded directly, `unpack` checks one URL.
        let ts = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| ConvertError::new(at, format!("bad protobuf: {e}")))?;
        ts.value.unwrap_or_default()
    };
    let mut config = BTreeMap::new();
    for (k, v) in s.fields {
        use pbw::value::Kind;
        let value = match v.kind {
            Some(Kind::StringValue(s)) => s,
            Some(Kind::NumberValue(n)) => n.to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            Some(Kind::NullValue(_)) | None => continue,
            Some(Kind::StructValue(_) | Kind::ListValue(_)) => {
                return Err(ConvertError::unsupported(
                    format!("{at}.{k}"),
                    "nested values in a custom filter config (strings only)",
                ))
            }
        };
        config.insert(k, value);
    }
    Ok(FilterConfig::Custom {
        name: name.to_string(),
        config,
        optional,
    })
}

/// A custom filter's config map as the `Struct` it travels in.
pub(crate) fn custom_to(config: &BTreeMap<String, String>) -> Any {
    let fields = config
        .iter()
        .map(|(k, v)| {
            let value = pbw::Value {
                kind: Some(pbw::value::Kind::StringValue(v.clone())),
            };
            (k.clone(), value)
        })
        .collect();
    super::pack(&pbw::Struct { fields })
}

/// An `xds.type.v3.TypedStruct` naming the extension type `inner_type_url` with `value`: how
/// the mesh's own extension configs (the bolt codec, RPC route matches) travel.
pub(crate) fn typed_struct_to(inner_type_url: &str, value: pbw::Struct) -> Any {
    Any {
        type_url: XDS_TYPED_STRUCT.to_owned(),
        value: TypedStruct {
            type_url: inner_type_url.to_owned(),
            value: Some(value),
        }
        .encode_to_vec(),
    }
}

/// The inner type URL and value of `any` when it is a `TypedStruct` (either package); `None`
/// when it is something else.
pub(crate) fn typed_struct_from(
    any: &Any,
    at: &str,
) -> Result<Option<(String, pbw::Struct)>, ConvertError> {
    if any.type_url != XDS_TYPED_STRUCT && any.type_url != UDPA_TYPED_STRUCT {
        return Ok(None);
    }
    let ts = TypedStruct::decode(any.value.as_slice())
        .map_err(|e| ConvertError::new(at, format!("bad protobuf: {e}")))?;
    Ok(Some((ts.type_url, ts.value.unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(url: &str) -> Any {
        let mut fields = BTreeMap::new();
        fields.insert(
            "header".to_string(),
            pbw::Value {
                kind: Some(pbw::value::Kind::StringValue("x-tenant".into())),
            },
        );
        fields.insert(
            "max".to_string(),
            pbw::Value {
                kind: Some(pbw::value::Kind::NumberValue(3.0)),
            },
        );
        let ts = TypedStruct {
            type_url: "type.googleapis.com/acme.RequireHeader".into(),
            value: Some(pbw::Struct {
                fields: fields.into_iter().collect(),
            }),
        };
        Any {
            type_url: url.into(),
            value: ts.encode_to_vec(),
        }
    }

    #[test]
    fn typed_structs_of_both_packages_decode_to_strings() {
        for url in [XDS_TYPED_STRUCT, UDPA_TYPED_STRUCT] {
            let any = typed(url);
            assert!(is_custom(&any));
            let f = custom_from("require-header", &any, true, "f").unwrap();
            let FilterConfig::Custom {
                name,
                config,
                optional,
            } = f
            else {
                panic!("not custom")
            };
            assert_eq!(name, "require-header");
            assert!(optional);
            assert_eq!(config["header"], "x-tenant");
            assert_eq!(config["max"], "3");
        }
    }

    #[test]
    fn struct_encoding_round_trips() {
        let config = BTreeMap::from([("header".to_string(), "x-tenant".to_string())]);
        let any = custom_to(&config);
        let back = custom_from("f", &any, false, "at").unwrap();
        assert_eq!(
            back,
            FilterConfig::Custom {
                name: "f".into(),
                config,
                optional: false
            }
        );
    }
}
