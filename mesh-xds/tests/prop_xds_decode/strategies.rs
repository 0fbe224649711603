//! Random, well-formed Envoy messages: mostly valid values, so that conversion succeeds often
//! enough to test the round trip, with invalid ones mixed in.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use mesh_xds::convert::pack;
use proptest::prelude::*;

/// A Cluster message with fields drawn at random (valid and not).
pub fn cluster_proto() -> impl Strategy<Value = cluster::Cluster> {
    // Mostly valid values, so that conversion succeeds often enough to test the round trip.
    let host = prop_oneof![
        4 => Just("127.0.0.1".to_owned()),
        1 => Just("::1".to_owned()),
        1 => "[ -~]{0,12}",
    ];
    let port = prop_oneof![4 => 1u32..=65535, 1 => any::<u32>()];
    (
        prop_oneof![4 => "[a-z][a-z0-9-]{0,8}", 1 => "[ -~]{0,10}"],
        proptest::option::of(prop_oneof![
            4 => (0i64..100, 0i32..1_000_000_000),
            1 => (-5i64..100_000, -5i32..2_000_000_000),
        ]),
        prop_oneof![4 => Just(0i32), 1 => -2i32..12],
        prop_oneof![4 => 0i32..4, 1 => -2i32..8],
        proptest::option::of(0u32..10),
        proptest::collection::vec((host, port, proptest::option::of(0u32..300)), 0..3),
        // Now and then a least-request config under another policy, or a load assignment
        // named after another cluster.
        prop::bool::weighted(0.2),
    )
        .prop_map(|(name, timeout, discovery, lb, choice, endpoints, stray)| {
            cluster::Cluster {
                name: name.clone(),
                connect_timeout: timeout.map(|(seconds, nanos)| PbDuration { seconds, nanos }),
                cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                    discovery,
                )),
                lb_policy: lb,
                lb_config: choice
                    .filter(|_| stray || lb == 1)
                    .map(|c| cluster::cluster::LeastRequestLbConfig {
                        choice_count: Some(UInt32Value { value: c }),
                        ..Default::default()
                    })
                    .map(cluster::cluster::LbConfig::LeastRequestLbConfig),
                load_assignment: Some(endpoint::ClusterLoadAssignment {
                    cluster_name: if stray { "x".into() } else { name },
                    endpoints: vec![endpoint::LocalityLbEndpoints {
                        lb_endpoints: endpoints
                            .into_iter()
                            .map(|(address, port, weight)| endpoint::LbEndpoint {
                                host_identifier: Some(
                                    endpoint::lb_endpoint::HostIdentifier::Endpoint(
                                        endpoint::Endpoint {
                                            address: Some(socket(address, port)),
                                            ..Default::default()
                                        },
                                    ),
                                ),
                                load_balancing_weight: weight.map(|value| UInt32Value { value }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
}

fn socket(address: String, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address,
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A RouteConfiguration message with random domains, matches and actions.
pub fn route_proto() -> impl Strategy<Value = route::RouteConfiguration> {
    let matcher = prop_oneof![
        "[ -~]{0,8}".prop_map(route::route_match::PathSpecifier::Prefix),
        "[ -~]{0,8}".prop_map(route::route_match::PathSpecifier::Path),
        "[ -~]{0,8}".prop_map(|regex| route::route_match::PathSpecifier::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex,
                ..Default::default()
            }
        )),
    ];
    let action = prop_oneof![
        "[ -~]{0,8}".prop_map(route::route_action::ClusterSpecifier::Cluster),
        proptest::collection::vec(("[a-z]{0,4}", proptest::option::of(any::<u32>())), 0..3)
            .prop_map(|w| route::route_action::ClusterSpecifier::WeightedClusters(
                route::WeightedCluster {
                    clusters: w
                        .into_iter()
                        .map(|(name, weight)| route::weighted_cluster::ClusterWeight {
                            name,
                            weight: weight.map(|value| UInt32Value { value }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }
            )),
    ];
    (
        "[ -~]{0,8}",
        proptest::collection::vec(
            (
                proptest::collection::vec("[ -~*]{0,8}", 0..3),
                proptest::option::of(matcher),
                proptest::option::of(action),
                proptest::option::of((-3i64..100, -3i32..1_000_000_000)),
            ),
            0..3,
        ),
    )
        .prop_map(|(name, hosts)| route::RouteConfiguration {
            name,
            virtual_hosts: hosts
                .into_iter()
                .enumerate()
                .map(|(i, (domains, m, a, timeout))| route::VirtualHost {
                    name: format!("vh{i}"),
                    domains,
                    routes: vec![route::Route {
                        r#match: Some(route::RouteMatch {
                            path_specifier: m,
                            ..Default::default()
                        }),
                        action: Some(route::route::Action::Route(route::RouteAction {
                            cluster_specifier: a,
                            timeout: timeout.map(|(seconds, nanos)| PbDuration { seconds, nanos }),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
}

/// A Listener message: a random address and a filter chain whose filter is an
/// HttpConnectionManager (RDS or inline routes, random filters) or something else.
pub fn listener_proto() -> impl Strategy<Value = listener::Listener> {
    let http_filter = prop_oneof![
        Just("envoy.filters.http.router".to_owned()),
        Just("envoy.filters.http.local_ratelimit".to_owned()),
        "[a-z.]{0,12}",
    ];
    let manager = (
        "[ -~]{0,8}",
        prop_oneof![
            "[ -~]{0,8}".prop_map(|name| hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    route_config_name: name,
                    config_source: Some(core::ConfigSource {
                        config_source_specifier: Some(
                            core::config_source::ConfigSourceSpecifier::Ads(Default::default())
                        ),
                        ..Default::default()
                    }),
                }
            )),
            route_proto().prop_map(hcm::http_connection_manager::RouteSpecifier::RouteConfig),
        ],
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec((http_filter, prop::bool::ANY), 1..3),
        ],
        // Mostly the router last, as a connection manager must end.
        prop::bool::weighted(0.8),
    )
        .prop_map(|(stat_prefix, routes, filters, router)| {
            let mut http_filters: Vec<hcm::HttpFilter> = filters
                .into_iter()
                .map(|(name, optional)| hcm::HttpFilter {
                    name,
                    is_optional: optional,
                    ..Default::default()
                })
                .collect();
            if router {
                http_filters.push(hcm::HttpFilter {
                    name: "envoy.filters.http.router".into(),
                    config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
                        &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
                    ))),
                    ..Default::default()
                });
            }
            pack(&hcm::HttpConnectionManager {
                stat_prefix,
                route_specifier: Some(routes),
                http_filters,
                ..Default::default()
            })
        });
    let typed = prop_oneof![
        4 => manager,
        1 => ("[a-z./]{0,30}", proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(type_url, value)| Any { type_url, value }),
    ];
    (
        prop_oneof![4 => "[a-z][a-z0-9-]{0,8}", 1 => "[ -~]{0,10}"],
        prop_oneof![4 => Just("127.0.0.1".to_owned()), 1 => "[ -~]{0,12}"],
        prop_oneof![4 => 1u32..=65535, 1 => any::<u32>()],
        prop_oneof![
            4 => proptest::collection::vec(("[ -~]{0,12}", typed.clone()), 1..=1),
            1 => proptest::collection::vec(("[ -~]{0,12}", typed), 0..3),
        ],
    )
        .prop_map(|(name, host, port, filters)| listener::Listener {
            name,
            address: Some(socket(host, port)),
            filter_chains: vec![listener::FilterChain {
                filters: filters
                    .into_iter()
                    .map(|(name, any)| listener::Filter {
                        name,
                        config_type: Some(listener::filter::ConfigType::TypedConfig(any)),
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
}
