#![allow(clippy::unwrap_used)]
//! Listener shapes of layer 4: opaque TCP, HTTP with a TCP fallback, upgrades.

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use mesh_core::*;

use super::*;

fn listener(yaml: &str) -> Listener {
    let l: Listener = mesh_core::yaml::from_str(yaml).unwrap();
    l.validate().unwrap();
    l
}

fn round_trip(l: &Listener) -> Listener {
    decode::<Listener>(&encode(l)).unwrap()
}

fn detecting() -> Listener {
    listener(
        r#"
name: in
address: 127.0.0.1:8083
direction: inbound
route_config_name: inbound
http: { upgrades: [websocket, CONNECT] }
tcp_proxy:
  destination: { cluster: local_app }
  idle_timeout: 30s
  max_connect_attempts: 3
detection: { timeout: 250ms, opaque_on_timeout: true }
"#,
    )
}

#[test]
fn every_shape_round_trips() {
    let both = detecting();
    assert_eq!(round_trip(&both), both);
    let opaque = listener(
        r#"
name: redis
address: 127.0.0.1:16379
direction: outbound
tcp_proxy:
  destination: { weighted_clusters: [{ name: a, weight: 1 }, { name: b, weight: 3 }] }
"#,
    );
    assert!(!opaque.serves_http());
    assert_eq!(round_trip(&opaque), opaque);
    let mut http_only = both.clone();
    http_only.tcp_proxy = None;
    http_only.detection.opaque_on_timeout = false;
    assert_eq!(round_trip(&http_only), http_only);
}

#[test]
fn detection_is_the_http_inspector_with_a_tcp_fallback_chain() {
    let p = detecting().to_proto();
    assert_eq!(p.listener_filters.len(), 1);
    assert_eq!(p.listener_filters[0].name, HTTP_INSPECTOR);
    assert_eq!(
        p.listener_filters_timeout,
        Some(duration_to(std::time::Duration::from_millis(250)))
    );
    assert!(p.continue_on_listener_filters_timeout);
    let [http] = p.filter_chains.as_slice() else {
        panic!("one matched HTTP chain")
    };
    let m = http.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.application_protocols, ["http/1.1", "http/1.0", "h2c"]);
    let fallback = p.default_filter_chain.as_ref().unwrap();
    assert_eq!(fallback.filters[0].name, TCP_PROXY_FILTER);
    let Some(lpb::filter::ConfigType::TypedConfig(any)) = &fallback.filters[0].config_type else {
        panic!("no typed_config")
    };
    let t: tcp::TcpProxy = unpack(any, "").unwrap();
    assert_eq!(t.stat_prefix, "in", "Envoy requires a stat prefix");
    assert_eq!(
        t.cluster_specifier,
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            "local_app".into()
        ))
    );
    let Some(lpb::filter::ConfigType::TypedConfig(any)) = &http.filters[0].config_type else {
        panic!("no typed_config")
    };
    let m: hcm::HttpConnectionManager = unpack(any, "").unwrap();
    let kinds: Vec<&str> = m
        .upgrade_configs
        .iter()
        .map(|u| u.upgrade_type.as_str())
        .collect();
    assert_eq!(kinds, ["websocket", "CONNECT"]);
}

/// An Envoy listener as another control plane (Istio's inbound shape) writes it: the TCP chain
/// as a second, unmatched filter chain, upgrade types in any case, one disabled.
#[test]
fn foreign_shapes_are_accepted() {
    let mut p = detecting().to_proto();
    let fallback = p.default_filter_chain.take().unwrap();
    p.filter_chains.push(fallback);
    p.continue_on_listener_filters_timeout = false;
    let Some(lpb::filter::ConfigType::TypedConfig(any)) =
        &mut p.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let mut m: hcm::HttpConnectionManager = unpack(any, "").unwrap();
    m.upgrade_configs = vec![
        hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "WebSocket".into(),
            ..Default::default()
        },
        hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "h2c".into(),
            enabled: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        },
    ];
    *any = pack(&m);
    let l = Listener::from_proto(p).unwrap();
    assert_eq!(l.http.upgrades, ["websocket"]);
    assert!(l.tcp_proxy.is_some());
    assert!(
        !l.detection.opaque_on_timeout,
        "Envoy's default: close at the timeout"
    );
}

/// What the mesh cannot serve is refused with the field's path (the client NACKs it and the
/// previous listener keeps serving).
#[test]
fn unsupported_l4_shapes_name_the_field() {
    let base = detecting().to_proto();
    let err = |p: lpb::Listener| Listener::from_proto(p).unwrap_err().path;

    let mut p = base.clone();
    p.default_filter_chain.as_mut().unwrap().filter_chain_match = Some(lpb::FilterChainMatch {
        application_protocols: vec!["h2c".into()],
        ..Default::default()
    });
    assert_eq!(err(p), "default_filter_chain.filter_chain_match");

    let mut p = base.clone();
    p.filter_chains[0]
        .filter_chain_match
        .as_mut()
        .unwrap()
        .application_protocols
        .push("redis".into());
    assert_eq!(
        err(p),
        "filter_chains[0].filter_chain_match.application_protocols[3]"
    );

    let mut p = base.clone();
    let mut t = tcp_proxy_to_for_test();
    t.tunneling_config = Some(Default::default());
    p.default_filter_chain.as_mut().unwrap().filters[0].config_type =
        Some(lpb::filter::ConfigType::TypedConfig(pack(&t)));
    assert_eq!(
        err(p),
        "default_filter_chain.filters[0].typed_config.tunneling_config"
    );

    let mut p = base.clone();
    let mut t = tcp_proxy_to_for_test();
    t.cluster_specifier = None;
    p.default_filter_chain.as_mut().unwrap().filters[0].config_type =
        Some(lpb::filter::ConfigType::TypedConfig(pack(&t)));
    assert_eq!(
        err(p),
        "default_filter_chain.filters[0].typed_config.cluster_specifier"
    );

    // Two HTTP chains, and an HTTP and a TCP chain nothing tells apart.
    let mut p = base.clone();
    p.filter_chains.push(p.filter_chains[0].clone());
    assert_eq!(err(p), "filter_chains[1]");
    let mut p = base.clone();
    p.filter_chains[0].filter_chain_match = None;
    p.filter_chains.push(p.default_filter_chain.take().unwrap());
    assert_eq!(err(p), "filter_chains");

    // Per-upgrade filters.
    let mut p = base;
    let Some(lpb::filter::ConfigType::TypedConfig(any)) =
        &mut p.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let mut m: hcm::HttpConnectionManager = unpack(any, "").unwrap();
    m.upgrade_configs[0].filters = vec![Default::default()];
    *any = pack(&m);
    assert_eq!(
        err(p),
        "filter_chains[0].filters[0].typed_config.upgrade_configs[0].filters"
    );
}

fn tcp_proxy_to_for_test() -> tcp::TcpProxy {
    tcp::TcpProxy {
        stat_prefix: "t".into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster("c".into())),
        ..Default::default()
    }
}
