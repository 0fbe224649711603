//! Property tests on the parsers that face input (issue #18 item 6): mesh.yaml loading and the
//! xDS client's decode path. Whatever arrives, nothing panics: a load is Ok or an error with a
//! reason, and an xDS response is ACKed or NACKed with an `error_detail` naming what was wrong.
//!
//! Cases per run (proptest, stable toolchain): 1,000 arbitrary texts and 1,000 mesh.yaml-shaped
//! documents; 2,000 random byte strings and 2,000 mutated valid resources through the client's
//! state machine; 1,000 random Listener, 1,000 Cluster and 1,000 RouteConfiguration messages
//! through the conversion (a sixth to a third of each converts, and then round-trips). 9,000 in
//! all, a few seconds; a failure prints its minimal case.
#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use mesh_core::{Cluster, ClusterLoadAssignment, Listener, MeshConfig, RouteConfiguration};
use mesh_xds::client::{AdsState, Outbound, XdsClient};
use mesh_xds::convert::{decode, encode, pack, XdsResource};
use mesh_xds::server::{mesh_core_validator, SnapshotCache};
use mesh_xds::source::MeshSpec;
use mesh_xds::ResourceType;
use proptest::prelude::*;

// ---------------------------------------------------------------- mesh.yaml

/// Pieces of a mesh.yaml, valid and not: names, addresses, durations, policies.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}",
        Just(String::new()),
        "[ -~]{0,12}",
        Just("a b".to_owned()),
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u16..=65535).prop_map(|p| format!("127.0.0.1:{p}")),
        Just("127.0.0.1:0".to_owned()),
        Just("[::1]:80".to_owned()),
        Just("nowhere".to_owned()),
        Just("10.0.0.1:99999".to_owned()),
        "[ -~]{0,16}",
    ]
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..100_000).prop_map(|n| format!("{n}ms")),
        Just("0s".to_owned()),
        Just("-1s".to_owned()),
        Just("forever".to_owned()),
        Just("99999999999999999999s".to_owned()),
    ]
}

fn lb_policy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("round_robin".to_owned()),
        Just("{ least_request: { choice_count: 2 } }".to_owned()),
        Just("{ least_request: { choice_count: 0 } }".to_owned()),
        Just("{ ring_hash: {} }".to_owned()),
        Just("random".to_owned()),
        Just("sideways".to_owned()),
        Just("{ maglev: { table_size: 4 } }".to_owned()),
    ]
}

fn service_yaml() -> impl Strategy<Value = String> {
    (
        name(),
        proptest::option::of(0u32..70_000),
        proptest::collection::vec((address(), 0u32..5, "[a-z0-9-]{0,4}"), 0..4),
        lb_policy(),
        proptest::option::of(duration()),
        proptest::option::of((0u32..5, duration())),
        proptest::option::of((0u32..200, 0u32..200, duration())),
    )
        .prop_map(|(name, port, endpoints, lb, timeout, retry, limit)| {
            let mut y = format!("  - name: {name:?}\n    lb_policy: {lb}\n");
            if let Some(p) = port {
                y += &format!("    port: {p}\n");
            }
            y += "    endpoints:\n";
            for (addr, weight, zone) in endpoints {
                y += &format!("      - {{ address: {addr:?}, weight: {weight}, zone: {zone:?} }}\n");
            }
            if endpoints_is_empty(&y) {
                y += "      []\n";
            }
            if let Some(t) = timeout {
                y += &format!("    timeout: {t}\n");
            }
            if let Some((n, t)) = retry {
                y += &format!(
                    "    retry_policy: {{ retry_on: \"5xx\", num_retries: {n}, per_try_timeout: {t} }}\n"
                );
            }
            if let Some((max, fill, every)) = limit {
                y += &format!(
                    "    rate_limit: {{ token_bucket: {{ max_tokens: {max}, tokens_per_fill: {fill}, fill_interval: {every} }} }}\n"
                );
            }
            y
        })
}

fn endpoints_is_empty(y: &str) -> bool {
    y.ends_with("    endpoints:\n")
}

fn mesh_yaml() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(service_yaml(), 0..4),
        proptest::collection::vec((name(), name(), address(), address()), 0..3),
    )
        .prop_map(|(services, nodes)| {
            let mut y = String::from("services:\n");
            if services.is_empty() {
                y += "  []\n";
            }
            for s in services {
                y += &s;
            }
            y += "nodes:\n";
            if nodes.is_empty() {
                y += "  []\n";
            }
            for (id, service, outbound, inbound) in nodes {
                y += &format!(
                    "  - id: {id:?}\n    service: {service:?}\n    listeners: {{ outbound: {outbound:?}, inbound: {inbound:?}, local_app: 127.0.0.1:6060 }}\n"
                );
            }
            y
        })
}

/// Loads `text` as the control plane does (parse, translate, then the cache's validator):
/// never a panic, and every error has a reason.
fn load_like_the_control_plane(text: &str) -> Result<usize, String> {
    let (_, snaps) = MeshSpec::load_str("mesh.yaml", text).map_err(|e| e.to_string())?;
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let mut served = 0;
    for snap in snaps.nodes.into_values().chain([snaps.fallback]) {
        cache.check(snap).map_err(|e| e.to_string())?;
        served += 1;
    }
    Ok(served)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Arbitrary text: the YAML parser and the model's serde never panic.
    #[test]
    fn arbitrary_text_loads_or_is_refused_with_a_reason(text in "(?s).{0,300}") {
        if let Err(e) = load_like_the_control_plane(&text) {
            prop_assert!(e.starts_with("mesh.yaml"), "the error names the file: {e}");
        }
        if let Err(e) = mesh_core::yaml::from_str::<MeshConfig>(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Shaped like a mesh.yaml, with valid and invalid values mixed: Ok, or an error naming
    /// the file and a reason; a load that passes gives every node a snapshot the client's own
    /// validation accepts.
    #[test]
    fn mesh_yaml_shaped_input_loads_or_is_refused_with_a_reason(text in mesh_yaml()) {
        match load_like_the_control_plane(&text) {
            Ok(served) => prop_assert!(served >= 1),
            Err(e) => {
                prop_assert!(e.starts_with("mesh.yaml") || e.contains("invalid"), "{e}");
                prop_assert!(e.len() > "mesh.yaml: ".len(), "a reason: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------- xDS decode path

/// A SotW response of `ty` carrying `resources`.
fn response(ty: ResourceType, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: "v1".into(),
        resources,
        type_url: ty.type_url().into(),
        nonce: "n1".into(),
        ..Default::default()
    }
}

/// Feeds `resp` to a fresh client state machine; returns the NACK's message, or `None` for an
/// ACK.
fn ack_or_nack(resp: DiscoveryResponse) -> Option<String> {
    let mut state: AdsState = XdsClient::builder().into_state();
    state.on_connect();
    let out = state.on_response(resp);
    match &out.first().map(|o| &o.request) {
        Some(Outbound::Sotw(req)) => req.error_detail.as_ref().map(|e| e.message.clone()),
        other => panic!("no SotW answer: {other:?}"),
    }
}

fn type_and_kind() -> impl Strategy<Value = (ResourceType, &'static str)> {
    prop_oneof![
        Just((ResourceType::Listener, Listener::KIND)),
        Just((ResourceType::Route, RouteConfiguration::KIND)),
        Just((ResourceType::Cluster, Cluster::KIND)),
        Just((ResourceType::Endpoint, ClusterLoadAssignment::KIND)),
    ]
}

/// Valid resources of each type, to mutate (translated once).
fn seeds() -> &'static [(ResourceType, Any)] {
    static SEEDS: std::sync::OnceLock<Vec<(ResourceType, Any)>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(translate_seeds)
}

fn translate_seeds() -> Vec<(ResourceType, Any)> {
    let yaml = "services:\n  - name: hello\n    endpoints: [ { address: 127.0.0.1:9001 } ]\n    \
                rate_limit: { token_bucket: { max_tokens: 5, tokens_per_fill: 5, fill_interval: 1s } }\n\
                nodes:\n  - id: n1\n    service: hello\n    listeners: { outbound: 127.0.0.1:8082, inbound: 127.0.0.1:8083, local_app: 127.0.0.1:6060 }\n";
    let (_, snaps) = MeshSpec::load_str("seed.yaml", yaml).unwrap();
    let snap = &snaps.nodes["n1"];
    let mut out = Vec::new();
    for ty in ResourceType::CLIENT {
        for r in snap.of(ty).items().values() {
            out.push((ty, r.any().clone()));
        }
    }
    assert!(out.len() >= 4, "seeds of every type");
    out
}

/// A byte-level mutation: flip, truncate, insert or overwrite.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Set(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize| i % bytes.len();
    match m {
        Mutation::Flip(i, b) => {
            let i = at(*i);
            bytes[i] ^= b;
        }
        Mutation::Truncate(i) => bytes.truncate(at(*i)),
        Mutation::Insert(i, b) => {
            let i = at(*i);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Set(i, b) => {
            let i = at(*i);
            bytes[i] = *b;
        }
    }
}

/// A Cluster message with fields drawn at random (valid and not).
fn cluster_proto() -> impl Strategy<Value = cluster::Cluster> {
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
fn route_proto() -> impl Strategy<Value = route::RouteConfiguration> {
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
fn listener_proto() -> impl Strategy<Value = listener::Listener> {
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

/// Checks the client's answer: an ACK, or a NACK whose message names the resource kind.
fn assert_ack_or_detailed_nack(kind: &str, nack: Option<String>) -> Result<(), TestCaseError> {
    if let Some(msg) = nack {
        prop_assert!(msg.contains(kind), "the NACK names the {kind}: {msg}");
        prop_assert!(msg.len() > kind.len() + 4, "and a reason: {msg}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes under each type URL: decoded or refused, never a panic; the client NACKs
    /// with the kind and the reason.
    #[test]
    fn random_bytes_are_acked_or_nacked_with_detail(
        (ty, kind) in type_and_kind(),
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let any = Any { type_url: ty.type_url().into(), value: bytes };
        assert_ack_or_detailed_nack(kind, ack_or_nack(response(ty, vec![any])))?;
    }

    /// Valid resources with their bytes mutated (flipped, cut, spliced): mostly still
    /// well-formed protobuf with odd values.
    #[test]
    fn mutated_resources_are_acked_or_nacked_with_detail(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seeds();
        let (ty, mut any) = seeds[seed.index(seeds.len())].clone();
        for m in &mutations {
            mutate(&mut any.value, m);
        }
        let kind = match ty {
            ResourceType::Listener => Listener::KIND,
            ResourceType::Route => RouteConfiguration::KIND,
            ResourceType::Cluster => Cluster::KIND,
            _ => ClusterLoadAssignment::KIND,
        };
        assert_ack_or_detailed_nack(kind, ack_or_nack(response(ty, vec![any])))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Well-formed Cluster messages with random values: converted (and then round-trips
    /// through our encoder) or refused with the field path.
    #[test]
    fn random_cluster_protos_convert_or_name_the_field(proto in cluster_proto()) {
        let any = pack(&proto);
        match decode::<Cluster>(&any) {
            Ok(c) => prop_assert_eq!(decode::<Cluster>(&encode(&c)).unwrap(), c),
            Err(e) => prop_assert!(e.to_string().starts_with("cluster["), "{e}"),
        }
        assert_ack_or_detailed_nack(Cluster::KIND, ack_or_nack(response(ResourceType::Cluster, vec![any])))?;
    }

    /// Well-formed Listener messages: random addresses and filter chains, the connection
    /// manager's routes inline or by RDS, known and unknown HTTP filters.
    #[test]
    fn random_listener_protos_convert_or_name_the_field(proto in listener_proto()) {
        let any = pack(&proto);
        match decode::<Listener>(&any) {
            Ok(l) => prop_assert_eq!(decode::<Listener>(&encode(&l)).unwrap(), l),
            Err(e) => prop_assert!(e.to_string().starts_with("listener["), "{e}"),
        }
        assert_ack_or_detailed_nack(Listener::KIND, ack_or_nack(response(ResourceType::Listener, vec![any])))?;
    }

    /// Well-formed RouteConfiguration messages with random matches, actions and timeouts.
    #[test]
    fn random_route_protos_convert_or_name_the_field(proto in route_proto()) {
        let any = pack(&proto);
        match decode::<RouteConfiguration>(&any) {
            Ok(r) => prop_assert_eq!(decode::<RouteConfiguration>(&encode(&r)).unwrap(), r),
            Err(e) => prop_assert!(e.to_string().contains(RouteConfiguration::KIND), "{e}"),
        }
    }
}
