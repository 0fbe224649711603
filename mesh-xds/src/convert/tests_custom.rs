//! Custom filters through xDS: listener-level (HCM `http_filters`) and per route, lossless both
//! ways, with `is_optional` carried.

#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_core::*;

use super::*;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    mesh_core::yaml::from_str(s).unwrap()
}

fn listener() -> Listener {
    yaml(
        r#"
name: outbound
address: "127.0.0.1:8082"
direction: outbound
route_config_name: main
rate_limit:
  token_bucket: { max_tokens: 100, tokens_per_fill: 10, fill_interval: 1s }
http_filters:
  - custom: { name: require-header, config: { header: x-tenant } }
  - custom: { name: audit, config: {}, optional: true }
"#,
    )
}

fn manager(p: &lpb::Listener) -> hcm::HttpConnectionManager {
    let f = &p.filter_chains[0].filters[0];
    let Some(lpb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config")
    };
    unpack(any, "hcm").unwrap()
}

#[test]
fn listener_filters_round_trip_between_the_builtins_and_the_router() {
    let l = listener();
    l.validate().unwrap();
    let p = l.to_proto();
    let m = manager(&p);
    let names: Vec<(&str, bool)> = m
        .http_filters
        .iter()
        .map(|f| (f.name.as_str(), f.is_optional))
        .collect();
    assert_eq!(
        names,
        vec![
            (LOCAL_RATELIMIT_FILTER, false),
            (FAULT_FILTER, false),
            ("require-header", false),
            ("audit", true),
            (ROUTER_FILTER, false),
        ]
    );
    let back: Listener = decode(&encode(&l)).unwrap();
    assert_eq!(back, l);
}

#[test]
fn typed_struct_listener_filters_of_other_control_planes_become_custom() {
    let l = listener();
    let mut p = l.to_proto();
    let mut m = manager(&p);
    // Re-encode the first custom filter as another control plane would: a udpa TypedStruct.
    let s = m.http_filters[2].clone();
    let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = s.config_type else {
        panic!()
    };
    #[derive(Clone, PartialEq, prost::Message)]
    struct Ts {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(message, optional, tag = "2")]
        value: Option<envoy_types::pb::google::protobuf::Struct>,
    }
    let inner: envoy_types::pb::google::protobuf::Struct = unpack(&any, "x").unwrap();
    let ts = Ts {
        type_url: "type.googleapis.com/acme.RequireHeader".into(),
        value: Some(inner),
    };
    m.http_filters[2].config_type = Some(hcm::http_filter::ConfigType::TypedConfig(
        envoy_types::pb::google::protobuf::Any {
            type_url: UDPA_TYPED_STRUCT.into(),
            value: prost::Message::encode_to_vec(&ts),
        },
    ));
    p.filter_chains[0].filters[0].config_type =
        Some(lpb::filter::ConfigType::TypedConfig(pack(&m)));
    assert_eq!(Listener::from_proto(p).unwrap(), l);
}

#[test]
fn unknown_filter_types_are_refused_unless_optional() {
    let mut p = listener().to_proto();
    let mut m = manager(&p);
    m.http_filters[2].config_type = Some(hcm::http_filter::ConfigType::TypedConfig(pack(
        &envoy_types::pb::google::protobuf::Duration::default(),
    )));
    p.filter_chains[0].filters[0].config_type =
        Some(lpb::filter::ConfigType::TypedConfig(pack(&m)));
    let err = Listener::from_proto(p.clone()).unwrap_err();
    assert!(err.path.contains("http_filters[2]"), "{err}");
    m.http_filters[2].is_optional = true;
    p.filter_chains[0].filters[0].config_type =
        Some(lpb::filter::ConfigType::TypedConfig(pack(&m)));
    let back = Listener::from_proto(p).unwrap();
    assert_eq!(
        back.http_filters.len(),
        1,
        "the unknown optional one is skipped"
    );
}

#[test]
fn listener_wide_faults_are_refused_by_validation() {
    let mut l = listener();
    l.http_filters
        .push(FilterConfig::Fault(FaultConfig::default()));
    let err = l.validate().unwrap_err();
    assert_eq!(err.path, "http_filters[2]");
}

#[test]
fn route_filters_keep_their_optional_flag() {
    let rc: RouteConfiguration = yaml(
        r#"
name: main
virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
      - match: { prefix: / }
        route: { cluster: c }
        filters:
          - custom: { name: a, config: { k: v } }
          - custom: { name: b, optional: true }
"#,
    );
    rc.validate().unwrap();
    let back: RouteConfiguration = decode(&encode(&rc)).unwrap();
    assert_eq!(back, rc);
}
