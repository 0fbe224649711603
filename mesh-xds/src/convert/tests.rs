#![allow(clippy::unwrap_used)]

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_core::*;

use super::*;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml::from_str(s).unwrap()
}

/// A route table using every matcher, action and per-route filter mesh-core models (shared
/// with the test that serves it to real Envoy).
pub(crate) fn rich_routes() -> RouteConfiguration {
    yaml(include_str!("../../tests/client_data/routes.yaml"))
}

pub(crate) fn rich_cluster() -> Cluster {
    yaml(include_str!("../../tests/client_data/cluster.yaml"))
}

fn round_trip<T: XdsResource + Validate>(v: &T) -> T {
    v.validate().unwrap();
    let any = encode(v);
    assert_eq!(any.type_url, T::TYPE_URL);
    decode::<T>(&any).unwrap()
}

#[test]
fn route_configuration_round_trips() {
    let rc = rich_routes();
    assert_eq!(round_trip(&rc), rc);
}

#[test]
fn clusters_round_trip_for_every_policy_and_protocol() {
    let mut c = rich_cluster();
    assert_eq!(round_trip(&c), c);
    let policies = [
        LbPolicy::RoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest { choice_count: 3 },
        LbPolicy::Maglev { table_size: 131 },
    ];
    for (p, proto) in policies.into_iter().zip([
        UpstreamProtocol::Http1,
        UpstreamProtocol::UseDownstream,
        UpstreamProtocol::Http2,
        UpstreamProtocol::Http1,
    ]) {
        c.lb_policy = p;
        c.protocol = proto;
        assert_eq!(round_trip(&c), c);
    }
    let mut eds = Cluster::new("ratings");
    eds.discovery = Discovery::Eds;
    eds.eds_service_name = Some("ratings-v1".into());
    assert_eq!(round_trip(&eds), eds);
    eds.outlier_detection = Some(OutlierDetection {
        consecutive_gateway_failure: u32::MAX,
        ..Default::default()
    });
    assert_eq!(round_trip(&eds), eds);
}

#[test]
fn endpoints_round_trip() {
    let la = rich_cluster().load_assignment.unwrap();
    assert_eq!(round_trip(&la), la);
}

#[test]
fn listeners_round_trip_with_rds_or_inline_routes() {
    let l: Listener = yaml(
        r#"
name: outbound
address: "127.0.0.1:8082"
direction: outbound
route_config_name: main
http: { http1: true, http2: false, max_request_bytes: 1024, max_request_headers_kb: 32,
        request_headers_timeout: 3s, idle_timeout: 60s, max_concurrent_streams: 50 }
rate_limit:
  token_bucket: { max_tokens: 100, tokens_per_fill: 10, fill_interval: 1s }
  descriptor: client_address
access_log: [ { path: "-" }, { path: /var/log/mesh.json, format: json } ]
"#,
    );
    assert_eq!(l.access_log.len(), 2);
    assert_eq!(round_trip(&l), l);
    let mut inline = l.clone();
    inline.direction = Direction::Inbound;
    inline.route_config_name = String::new();
    inline.route_config = Some(rich_routes());
    inline.rate_limit = None;
    inline.http = HttpProtocolOptions::default();
    assert_eq!(round_trip(&inline), inline);
    for strip in [StripHostPort::Matching, StripHostPort::Any] {
        inline.http.strip_host_port = strip;
        assert_eq!(round_trip(&inline), inline);
    }
}

/// An access log the sidecar cannot write is NACKed with the path from the listener's root.
#[test]
fn an_unsupported_access_log_is_refused_by_path() {
    use envoy_types::pb::envoy::config::accesslog::v3 as alpb;
    use envoy_types::pb::envoy::config::listener::v3 as lpb;
    let mut l: Listener = yaml(
        "{ name: out, address: '127.0.0.1:1', direction: outbound, route_config_name: main, \
           access_log: [ { format: json } ] }",
    );
    let mut p = l.to_proto();
    let Some(lpb::filter::ConfigType::TypedConfig(any)) =
        &mut p.filter_chains[0].filters[0].config_type
    else {
        panic!("no typed_config")
    };
    let mut m: hcm::HttpConnectionManager = unpack(any, "").unwrap();
    m.access_log[0].filter = Some(alpb::AccessLogFilter::default());
    *any = pack(&m);
    let e = Listener::from_proto(p).unwrap_err();
    assert_eq!(
        e.path,
        "filter_chains[0].filters[0].typed_config.access_log[0].filter"
    );
    l.access_log.clear();
    assert_eq!(round_trip(&l), l);
}

/// The shape real Envoy requires of what the control plane serves.
#[test]
fn listener_proto_is_what_envoy_expects() {
    let mut l = Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: "out".into(),
        address: "0.0.0.0:8082".parse().unwrap(),
        direction: Direction::Outbound,
        route_config_name: "main".into(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    };
    let p = l.to_proto();
    let f = &p.filter_chains[0].filters[0];
    assert_eq!(f.name, HCM_FILTER);
    let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &f.config_type
    else {
        panic!("no typed_config")
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let m: hcm::HttpConnectionManager = unpack(any, "").unwrap();
    assert_eq!(m.stat_prefix, "out");
    let last = m.http_filters.last().unwrap();
    assert_eq!(last.name, ROUTER_FILTER);
    let Some(hcm::http_filter::ConfigType::TypedConfig(router)) = &last.config_type else {
        panic!("router without typed_config")
    };
    assert_eq!(
        router.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    );
    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = &m.route_specifier else {
        panic!("not rds")
    };
    assert_eq!(rds.route_config_name, "main");
    let src = rds.config_source.as_ref().unwrap();
    assert_eq!(src.resource_api_version, core::ApiVersion::V3 as i32);
    assert!(matches!(
        src.config_source_specifier,
        Some(core::config_source::ConfigSourceSpecifier::Ads(_))
    ));
    l.route_config_name.clear();
    l.route_config = Some(rich_routes());
    assert!(
        l.to_proto().metadata.is_none(),
        "no io.mesh metadata needed"
    );
}

#[test]
fn eds_cluster_proto_uses_ads_v3() {
    let mut c = Cluster::new("ratings");
    c.discovery = Discovery::Eds;
    let p = c.to_proto();
    assert_eq!(
        p.cluster_discovery_type,
        Some(cpb::cluster::ClusterDiscoveryType::Type(
            cpb::cluster::DiscoveryType::Eds as i32
        ))
    );
    let src = p.eds_cluster_config.unwrap().eds_config.unwrap();
    assert_eq!(src.resource_api_version, core::ApiVersion::V3 as i32);
    assert!(p.load_assignment.is_none());
    let mut h2 = Cluster::new("grpc");
    h2.protocol = UpstreamProtocol::Http2;
    let opts = &h2.to_proto().typed_extension_protocol_options;
    assert_eq!(
        opts[cluster::HTTP_PROTOCOL_OPTIONS_KEY].type_url,
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    );
}

#[test]
fn errors_carry_the_field_path() {
    let mut la = rich_cluster().load_assignment.unwrap().to_proto();
    la.endpoints[1].lb_endpoints[0] = epb::LbEndpoint {
        host_identifier: Some(epb::lb_endpoint::HostIdentifier::Endpoint(epb::Endpoint {
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address: "reviews.svc".into(),
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(80)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut c = rich_cluster().to_proto();
    c.load_assignment = Some(la);
    let err = from_proto_checked::<Cluster>(c).unwrap_err();
    assert_eq!(
        err.path,
        "cluster[reviews].load_assignment.endpoints[1].lb_endpoints[0].endpoint.address.socket_address.address"
    );
    assert!(err.reason.contains("not an IP literal"), "{err}");
}

#[test]
fn behaviour_changing_unsupported_fields_are_refused() {
    let mut c = Cluster::new("dns").to_proto();
    c.cluster_discovery_type = Some(cpb::cluster::ClusterDiscoveryType::Type(
        cpb::cluster::DiscoveryType::StrictDns as i32,
    ));
    let err = from_proto_checked::<Cluster>(c).unwrap_err();
    assert_eq!(err.path, "cluster[dns].type");
    assert!(err.reason.contains("unsupported: STRICT_DNS"), "{err}");

    let mut rc = rich_routes().to_proto();
    rc.virtual_hosts[0].routes[0].action = Some(rpb::route::Action::Redirect(Default::default()));
    let err = from_proto_checked::<RouteConfiguration>(rc).unwrap_err();
    assert_eq!(
        err.path,
        "route_configuration[main].virtual_hosts[0].routes[0].action"
    );

    let mut rc = rich_routes().to_proto();
    rc.virtual_hosts[0].routes[1]
        .typed_per_filter_config
        .insert(
            "envoy.filters.http.cors".into(),
            pack(&rpb::CorsPolicy::default()),
        );
    let err = from_proto_checked::<RouteConfiguration>(rc).unwrap_err();
    assert!(
        err.path
            .ends_with("routes[1].typed_per_filter_config[envoy.filters.http.cors]"),
        "{err}"
    );
}

#[test]
fn informative_fields_are_ignored_and_validation_runs() {
    let mut c = rich_cluster().to_proto();
    c.alt_stat_name = "stats".into();
    c.metadata = Some(Default::default());
    assert_eq!(from_proto_checked::<Cluster>(c).unwrap(), rich_cluster());

    let mut bad = rich_cluster();
    bad.lb_policy = LbPolicy::Maglev { table_size: 100 };
    let err = decode::<Cluster>(&encode(&bad)).unwrap_err();
    assert_eq!(err.path, "cluster[reviews].lb_policy.maglev.table_size");
}

#[test]
fn decode_checks_the_type_url() {
    let mut any = encode(&Cluster::new("a"));
    any.type_url = crate::ResourceType::Listener.type_url().into();
    let err = decode::<Listener>(&any).unwrap_err();
    assert!(err.reason.contains("bad protobuf"), "{err}");
    let err = decode::<RouteConfiguration>(&encode(&Cluster::new("a"))).unwrap_err();
    assert!(err.reason.contains("expected"), "{err}");
}

#[test]
fn envoy_defaults_apply_to_sparse_protos() {
    let c = from_proto_checked::<Cluster>(cpb::Cluster {
        name: "bare".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c, Cluster::new("bare"));
    let r = from_proto_checked::<RouteConfiguration>(rpb::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![rpb::VirtualHost {
            name: "v".into(),
            domains: vec!["*".into()],
            routes: vec![rpb::Route {
                r#match: Some(rpb::RouteMatch {
                    path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(rpb::route::Action::Route(rpb::RouteAction {
                    cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster(
                        "c".into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap();
    let route = &r.virtual_hosts[0].routes[0];
    assert_eq!(route.matcher, RouteMatch::default());
    assert_eq!(route.action.timeout, Duration::from_secs(15));
}
