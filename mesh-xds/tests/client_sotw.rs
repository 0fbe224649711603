//! The SotW client against a scripted ADS server over loopback: exact message sequences for ACK
//! and NACK with nonces, removal, the resource chains, a server that dies and comes back,
//! failover, periodic re-requests and the persisted config.
#![allow(clippy::unwrap_used, missing_docs)]

mod client_support;

use std::time::Duration;

use client_support::{eventually, ScriptedServer, Sink, SotwStream};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use mesh_core::*;
use mesh_xds::client::{ConnectionState, XdsClient, XdsClientBuilder};
use mesh_xds::convert::encode;
use mesh_xds::{ResourceType, ResourceType as T};

fn eds(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn endpoints(name: &str, port: u16) -> ClusterLoadAssignment {
    ClusterLoadAssignment::from_addrs(name, [([10, 0, 0, 1], port).into()])
}

fn listener() -> Listener {
    Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: "out".into(),
        address: "127.0.0.1:8082".parse().unwrap(),
        direction: Direction::Outbound,
        route_config_name: "main".into(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    }
}

fn routes() -> RouteConfiguration {
    RouteConfiguration {
        name: "main".into(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                action: RouteAction::to_cluster("a"),
                ..Route::default()
            }],
        }],
        ignore_port_in_host_matching: false,
    }
}

fn resp(ty: ResourceType, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: ty.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

async fn expect(
    s: &mut SotwStream,
    ty: ResourceType,
    version: &str,
    nonce: &str,
) -> DiscoveryRequest {
    let r = s.recv().await;
    assert_eq!(
        (
            r.type_url.as_str(),
            r.version_info.as_str(),
            r.response_nonce.as_str()
        ),
        (ty.type_url(), version, nonce),
        "unexpected request: {r:?}"
    );
    r
}

struct Sinks {
    clusters: std::sync::Arc<Sink<Vec<Cluster>>>,
    endpoints: std::sync::Arc<Sink<Vec<ClusterLoadAssignment>>>,
    routes: std::sync::Arc<Sink<RouteConfiguration>>,
}

fn client(addrs: &[String], sinks: &Sinks) -> XdsClientBuilder {
    let mut b = XdsClient::builder()
        .node_id("sidecar-1")
        .node_cluster("reviews")
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .sink_all::<Cluster>(sinks.clusters.clone())
        .sink_all::<ClusterLoadAssignment>(sinks.endpoints.clone())
        .sink_named::<RouteConfiguration>("main", sinks.routes.clone());
    for a in addrs {
        b = b.address(a.clone());
    }
    b
}

fn sinks() -> Sinks {
    Sinks {
        clusters: Sink::new(),
        endpoints: Sink::new(),
        routes: Sink::new(),
    }
}

/// Serves the whole chain (CDS → EDS, LDS → RDS) at version 1 and checks each ACK.
async fn serve_full_config(s: &mut SotwStream) {
    let cds = expect(s, T::Cluster, "", "").await;
    assert_eq!(cds.node.as_ref().unwrap().id, "sidecar-1");
    expect(s, T::Listener, "", "").await;
    s.send(resp(
        T::Cluster,
        "c1",
        "n1",
        vec![encode(&eds("a")), encode(&eds("b"))],
    ));
    assert!(expect(s, T::Cluster, "c1", "n1")
        .await
        .error_detail
        .is_none());
    let sub = expect(s, T::Endpoint, "", "").await;
    assert_eq!(sub.resource_names, ["a", "b"]);
    s.send(resp(
        T::Endpoint,
        "e1",
        "n2",
        vec![encode(&endpoints("a", 1)), encode(&endpoints("b", 2))],
    ));
    expect(s, T::Endpoint, "e1", "n2").await;
    s.send(resp(T::Listener, "l1", "n3", vec![encode(&listener())]));
    expect(s, T::Listener, "l1", "n3").await;
    assert_eq!(expect(s, T::Route, "", "").await.resource_names, ["main"]);
    s.send(resp(T::Route, "r1", "n4", vec![encode(&routes())]));
    expect(s, T::Route, "r1", "n4").await;
}

#[tokio::test]
async fn ack_nack_removal_and_reconnect_with_versions_held() {
    let mut server = ScriptedServer::start().await;
    let sinks = sinks();
    let client = client(&[server.uri()], &sinks).start().unwrap();
    let mut s = server.sotw_stream().await;
    serve_full_config(&mut s).await;
    client.wait_ready(client_support::WAIT).await.unwrap();
    assert_eq!(sinks.routes.get().name, "main");
    assert_eq!(sinks.endpoints.get().len(), 2);

    // A bad cluster: NACK naming it, at the old version, while the old config keeps serving.
    let mut bad = Cluster::new("c");
    bad.health_check = Some(HealthCheck {
        path: "no-slash".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        healthy_threshold: 1,
        unhealthy_threshold: 1,
        host: None,
    });
    s.send(resp(
        T::Cluster,
        "c2",
        "n5",
        vec![encode(&eds("a")), encode(&bad)],
    ));
    let nack = expect(&mut s, T::Cluster, "c1", "n5").await;
    let detail = nack.error_detail.unwrap();
    assert!(
        detail.message.contains("cluster[c].health_check.path"),
        "{}",
        detail.message
    );
    assert_eq!(sinks.clusters.get().len(), 2);
    assert_eq!(sinks.clusters.reloads(), 1);

    // Removal: b is absent from the next full response.
    s.send(resp(T::Cluster, "c3", "n6", vec![encode(&eds("a"))]));
    expect(&mut s, T::Cluster, "c3", "n6").await;
    let sub = expect(&mut s, T::Endpoint, "e1", "n2").await;
    assert_eq!(sub.resource_names, ["a"], "b's EDS subscription is dropped");
    let names = |v: &[Cluster]| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&sinks.clusters.get()), ["a"]);
    assert_eq!(sinks.endpoints.get().len(), 1);
    let status = client.status();
    assert_eq!(status.types[T::Cluster.type_url()].version, "c3");
    assert_eq!(status.types[T::Cluster.type_url()].nacks, 1);

    // The server dies: the client keeps serving, backs off, and resubscribes with its versions
    // when the server comes back on the same port.
    drop(s); // the streams and the listener go away with the process
    let addr = server.kill().await;
    eventually("backoff", || {
        matches!(client.status().connection, ConnectionState::Backoff { .. })
    })
    .await;
    assert_eq!(sinks.clusters.get().len(), 1);
    let mut server = ScriptedServer::start_on(addr).await;
    let mut s = server.sotw_stream().await;
    expect(&mut s, T::Cluster, "c3", "").await;
    let eds_req = expect(&mut s, T::Endpoint, "e1", "").await;
    assert_eq!(eds_req.resource_names, ["a"]);
    expect(&mut s, T::Listener, "l1", "").await;
    let rds = expect(&mut s, T::Route, "r1", "").await;
    assert_eq!(rds.resource_names, ["main"]);
    eventually("reconnected", || client.status().connects == 2).await;
    assert!(client.is_ready());
    client.shutdown().await;
}

#[tokio::test]
async fn a_resent_rejected_version_is_not_reapplied_and_its_nack_is_held() {
    let mut server = ScriptedServer::start().await;
    let sinks = Sinks {
        clusters: Sink::refusing(|cs: &Vec<Cluster>| cs.iter().any(|c| c.name == "evil")),
        ..sinks()
    };
    let client = client(&[server.uri()], &sinks)
        .backoff(Duration::from_millis(300), Duration::from_secs(1))
        .start()
        .unwrap();
    let mut s = server.sotw_stream().await;
    expect(&mut s, T::Cluster, "", "").await;
    expect(&mut s, T::Listener, "", "").await;
    s.send(resp(
        T::Cluster,
        "v1",
        "n1",
        vec![encode(&Cluster::new("ok"))],
    ));
    expect(&mut s, T::Cluster, "v1", "n1").await;
    s.send(resp(
        T::Cluster,
        "v2",
        "n2",
        vec![encode(&Cluster::new("evil"))],
    ));
    let nack = expect(&mut s, T::Cluster, "v1", "n2").await;
    assert!(nack
        .error_detail
        .unwrap()
        .message
        .contains("refused by the test sink"));
    // A control plane that resends at once gets its NACK only after a backoff (≥ 300 ms here).
    s.send(resp(
        T::Cluster,
        "v2",
        "n3",
        vec![encode(&Cluster::new("evil"))],
    ));
    assert!(
        s.quiet(Duration::from_millis(150)).await,
        "the repeated NACK is held back"
    );
    let again = expect(&mut s, T::Cluster, "v1", "n3").await;
    assert!(again.error_detail.is_some());
    assert_eq!(
        sinks.clusters.reloads(),
        1,
        "the rejected version was not re-applied"
    );
    assert_eq!(client.status().types[T::Cluster.type_url()].nacks, 2);
    client.shutdown().await;
}

#[tokio::test]
async fn fails_over_to_the_next_control_plane() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut server = ScriptedServer::start().await;
    let sinks = sinks();
    let client = client(&[dead, server.uri()], &sinks).start().unwrap();
    let mut s = server.sotw_stream().await;
    serve_full_config(&mut s).await;
    client.wait_ready(client_support::WAIT).await.unwrap();
    assert!(
        matches!(client.status().connection, ConnectionState::Connected(a) if a == server.uri())
    );
    client.shutdown().await;
}

#[tokio::test]
async fn periodic_refresh_re_requests_the_full_state() {
    let mut server = ScriptedServer::start().await;
    let sinks = sinks();
    let client = client(&[server.uri()], &sinks)
        .refresh_interval(Duration::from_millis(100))
        .start()
        .unwrap();
    let mut s = server.sotw_stream().await;
    serve_full_config(&mut s).await;
    // The pull: every subscription again, with an empty version, keeping the last nonce.
    let r = expect(&mut s, ResourceType::Cluster, "", "n1").await;
    assert!(r.resource_names.is_empty());
    client.shutdown().await;
}

#[tokio::test]
async fn a_persisted_config_serves_at_once_while_the_control_plane_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.json");
    let mut server = ScriptedServer::start().await;
    let first = sinks();
    let c = client(&[server.uri()], &first)
        .persist_to(&file)
        .start()
        .unwrap();
    let mut s = server.sotw_stream().await;
    serve_full_config(&mut s).await;
    c.wait_ready(client_support::WAIT).await.unwrap();
    // The route table is the last of the full config to arrive (the listener names "main"
    // before it does): once it is in the file, the whole config is.
    eventually("persisted", || {
        std::fs::read(&file).is_ok_and(|b| b.windows(13).any(|w| w == b"virtual_hosts"))
    })
    .await;
    c.shutdown().await;
    let addr = server.kill().await;

    let again = sinks();
    let c = client(&[format!("http://{addr}")], &again)
        .persist_to(&file)
        .start()
        .unwrap();
    assert!(c.is_ready(), "ready from the persisted config");
    assert_eq!(again.routes.get().name, "main");
    assert_eq!(again.endpoints.get().len(), 2);
    // When the control plane returns, the client resubscribes with the persisted versions.
    let mut server = ScriptedServer::start_on(addr).await;
    let mut s = server.sotw_stream().await;
    expect(&mut s, ResourceType::Cluster, "c1", "").await;
    c.shutdown().await;
}

#[tokio::test]
async fn readiness_times_out_without_a_full_config() {
    let mut server = ScriptedServer::start().await;
    let sinks = sinks();
    let client = client(&[server.uri()], &sinks).start().unwrap();
    let mut s = server.sotw_stream().await;
    expect(&mut s, T::Cluster, "", "").await;
    // Clusters arrive, listeners never do: not ready, and the wait says so.
    s.send(resp(
        T::Cluster,
        "c1",
        "n1",
        vec![encode(&Cluster::new("a"))],
    ));
    expect(&mut s, T::Listener, "", "").await;
    expect(&mut s, T::Cluster, "c1", "n1").await;
    let err = client
        .wait_ready(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no full config"), "{err}");
    assert!(!client.status().ready);
    let json = serde_json::to_string(&client.status()).unwrap();
    assert!(
        json.contains("\"connected\""),
        "the admin view serializes: {json}"
    );
    client.shutdown().await;
}
