//! What the conversion module produces from mesh-core (the control plane's direction) is served
//! to real Envoy by a scripted ADS server, and Envoy must ACK every type: the richest listener,
//! route table (every matcher, CONNECT's `connect_matcher` and `connect_config` included, action
//! and per-route filter), static cluster (ring hash, health
//! checks, outlier detection, circuit breakers, HTTP/2, localities and priorities) and EDS
//! cluster mesh-core can express, with both access-log formats, and the layer-4 listener shapes
//! (an opaque `tcp_proxy` listener over weighted clusters; HTTP with upgrades and a TCP fallback
//! behind Envoy's `http_inspector`).
#![allow(clippy::unwrap_used, missing_docs)]

mod client_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use client_support::ScriptedServer;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::*;
use mesh_xds::convert::encode;
use mesh_xds::ResourceType as T;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn resources(ports: (u16, u16, u16)) -> BTreeMap<&'static str, Vec<Any>> {
    let mut routes: RouteConfiguration =
        serde_yaml::from_str(include_str!("client_data/routes.yaml")).unwrap();
    // Terminated CONNECT: a connect_matcher route with a CONNECT upgrade and connect_config.
    let mut tunnel = RouteAction::to_cluster("ratings");
    tunnel.upgrade_configs = vec![RouteUpgrade::terminate_connect()];
    routes.virtual_hosts.push(VirtualHost {
        name: "tunnels".into(),
        domains: vec!["db.internal:5432".into()],
        routes: vec![Route {
            name: "tunnel".into(),
            matcher: RouteMatch {
                path: PathMatch::ConnectMatcher {},
                ..RouteMatch::default()
            },
            action: tunnel,
            filters: Vec::new(),
        }],
    });
    routes.validate().unwrap();
    let cluster: Cluster = serde_yaml::from_str(include_str!("client_data/cluster.yaml")).unwrap();
    let mut eds = Cluster::new("ratings");
    eds.discovery = Discovery::Eds;
    eds.eds_service_name = Some("ratings-v1".into());
    eds.protocol = UpstreamProtocol::UseDownstream;
    eds.lb_policy = LbPolicy::LeastRequest { choice_count: 3 };
    let la = ClusterLoadAssignment::from_addrs("ratings-v1", ["127.0.0.1:9".parse().unwrap()]);
    let outbound = Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: "out".into(),
        address: ([127, 0, 0, 1], ports.0).into(),
        direction: Direction::Outbound,
        route_config_name: "main".into(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: Some(LocalRateLimit {
            token_bucket: TokenBucketConfig {
                max_tokens: 100,
                tokens_per_fill: 10,
                fill_interval: Duration::from_secs(1),
            },
            mode: RateLimitMode::Reject,
            descriptor: Some(DescriptorSource::ClientAddress),
        }),
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    };
    let mut inline = routes.clone();
    inline.name = "inline".into();
    let inbound = Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: "in".into(),
        address: ([127, 0, 0, 1], ports.1).into(),
        direction: Direction::Inbound,
        route_config_name: String::new(),
        route_config: Some(inline),
        http: HttpProtocolOptions {
            http2: false,
            max_request_headers_kb: 32,
            upgrades: vec!["websocket".into(), "CONNECT".into()],
            ..Default::default()
        },
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: Some(TcpProxy::to_cluster("ratings")),
        detection: Detection {
            timeout: Duration::from_millis(500),
            opaque_on_timeout: true,
        },
        // Envoy's default text format on standard output, and our JSON dictionary to a file.
        access_log: vec![
            AccessLog::default(),
            AccessLog::new(
                std::env::temp_dir()
                    .join(format!("mesh-envoy-accepts-{}.log", std::process::id()))
                    .display()
                    .to_string(),
                AccessLogFormat::Json,
            ),
        ],
    };
    let mut opaque_proxy = TcpProxy::to_cluster("");
    opaque_proxy.destination = TcpDestination::WeightedClusters(vec![
        WeightedCluster {
            name: "ratings".into(),
            weight: 3,
        },
        WeightedCluster {
            name: cluster.name.clone(),
            weight: 1,
        },
    ]);
    opaque_proxy.idle_timeout = Duration::from_secs(30);
    opaque_proxy.max_connect_attempts = 2;
    let opaque = Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: "tcp".into(),
        address: ([127, 0, 0, 1], ports.2).into(),
        direction: Direction::Outbound,
        route_config_name: String::new(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: Some(opaque_proxy),
        detection: Default::default(),
        access_log: Vec::new(),
    };
    opaque.validate().unwrap();
    inbound.validate().unwrap();
    BTreeMap::from([
        (T::Cluster.type_url(), vec![encode(&cluster), encode(&eds)]),
        (T::Endpoint.type_url(), vec![encode(&la)]),
        (
            T::Listener.type_url(),
            vec![encode(&outbound), encode(&inbound), encode(&opaque)],
        ),
        (T::Route.type_url(), vec![encode(&routes)]),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_envoy_acks_everything_the_conversion_produces() {
    if mesh_testkit::require_envoy().is_none() {
        return;
    }
    let mut server = ScriptedServer::start().await;
    let yaml = mesh_testkit::ads_bootstrap("envoy-1", server.addr, "GRPC");
    let envoy = tokio::task::spawn_blocking(move || mesh_testkit::EnvoyProcess::start(&yaml));
    let mut s = server.sotw_stream().await;
    let mut to_send = resources((free_port(), free_port(), free_port()));
    let mut acked = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acked only {acked:?}"
        );
        let r = s.recv().await;
        if let Some(e) = &r.error_detail {
            panic!("Envoy rejected {}: {}", r.type_url, e.message);
        }
        if r.response_nonce == "n1" && r.version_info == "1" {
            acked.insert(r.type_url.clone());
        }
        if let Some(resources) = to_send.remove(r.type_url.as_str()) {
            s.send(DiscoveryResponse {
                version_info: "1".into(),
                resources,
                type_url: r.type_url.clone(),
                nonce: "n1".into(),
                ..Default::default()
            });
        }
    }
    // Envoy reports ready only once its listeners are up from what it accepted.
    let envoy = tokio::time::timeout(Duration::from_secs(30), envoy)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let dump = envoy.admin_get("/listeners").unwrap();
    assert!(
        dump.contains("out::") && dump.contains("in::") && dump.contains("tcp::"),
        "{dump}"
    );
}
