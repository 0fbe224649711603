//! The delta client against a scripted ADS server over loopback: add, `removed_resources`, a bad
//! resource NACKed while the old one serves, the chains, and a reconnect with
//! `initial_resource_versions`.
#![allow(clippy::unwrap_used, missing_docs)]

mod client_support;

use std::time::Duration;

use client_support::{eventually, DeltaStream, ScriptedServer, Sink};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_core::*;
use mesh_xds::client::{AdsMode, ConnectionState, XdsClient};
use mesh_xds::convert::encode;
use mesh_xds::ResourceType as T;

fn eds(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn resp(
    ty: T,
    nonce: &str,
    add: Vec<(&str, &str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sys-{nonce}"),
        type_url: ty.type_url().into(),
        nonce: nonce.into(),
        resources: add
            .into_iter()
            .map(|(name, version, any)| Resource {
                name: name.into(),
                version: version.into(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn expect(s: &mut DeltaStream, ty: T, nonce: &str) -> DeltaDiscoveryRequest {
    let r = s.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.response_nonce.as_str()),
        (ty.type_url(), nonce),
        "unexpected request: {r:?}"
    );
    r
}

#[tokio::test]
async fn delta_add_remove_nack_and_reconnect() {
    let mut server = ScriptedServer::start().await;
    let clusters = Sink::<Vec<Cluster>>::new();
    let endpoints = Sink::<Vec<ClusterLoadAssignment>>::new();
    let client = XdsClient::builder()
        .address(server.uri())
        .node_id("sdk-1")
        .mode(AdsMode::Delta)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .sink_all::<Cluster>(clusters.clone())
        .sink_all::<ClusterLoadAssignment>(endpoints.clone())
        .start()
        .unwrap();
    let mut s = server.delta_stream().await;
    let first = expect(&mut s, T::Cluster, "").await;
    assert!(
        first.resource_names_subscribe.is_empty() && first.initial_resource_versions.is_empty()
    );
    assert_eq!(first.node.unwrap().id, "sdk-1");
    expect(&mut s, T::Listener, "").await;

    s.send(resp(
        T::Cluster,
        "d1",
        vec![("a", "1", encode(&eds("a"))), ("b", "1", encode(&eds("b")))],
        &[],
    ));
    assert!(expect(&mut s, T::Cluster, "d1")
        .await
        .error_detail
        .is_none());
    let sub = expect(&mut s, T::Endpoint, "").await;
    assert_eq!(sub.resource_names_subscribe, ["a", "b"]);
    let la = |n: &str| {
        encode(&ClusterLoadAssignment::from_addrs(
            n,
            ["10.0.0.9:80".parse().unwrap()],
        ))
    };
    s.send(resp(
        T::Endpoint,
        "d2",
        vec![("a", "e1", la("a")), ("b", "e1", la("b"))],
        &[],
    ));
    expect(&mut s, T::Endpoint, "d2").await;
    s.send(resp(T::Listener, "d3", vec![], &[]));
    expect(&mut s, T::Listener, "d3").await;
    client.wait_ready(client_support::WAIT).await.unwrap();
    assert_eq!(endpoints.get().len(), 2);

    // A bad resource beside a good change: NACK, and neither applies.
    let mut bad = eds("c");
    bad.connect_timeout = Duration::ZERO;
    let mut a2 = eds("a");
    a2.connect_timeout = Duration::from_secs(1);
    s.send(resp(
        T::Cluster,
        "d4",
        vec![("a", "2", encode(&a2)), ("c", "1", encode(&bad))],
        &[],
    ));
    let nack = expect(&mut s, T::Cluster, "d4").await;
    assert!(nack
        .error_detail
        .unwrap()
        .message
        .contains("cluster[c].connect_timeout"));
    assert_eq!(
        clusters
            .get()
            .iter()
            .find(|c| c.name == "a")
            .unwrap()
            .connect_timeout,
        Duration::from_secs(5)
    );

    // removed_resources: b goes, with its endpoints and its EDS subscription.
    s.send(resp(
        T::Cluster,
        "d5",
        vec![("a", "2", encode(&a2))],
        &["b"],
    ));
    expect(&mut s, T::Cluster, "d5").await;
    let unsub = expect(&mut s, T::Endpoint, "").await;
    assert_eq!(unsub.resource_names_unsubscribe, ["b"]);
    assert_eq!(
        clusters
            .get()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(endpoints.get().len(), 1);
    assert_eq!(
        client.status().types[T::Cluster.type_url()].version,
        "sys-d5"
    );

    // Reconnect: the client resumes with the versions it holds.
    drop(s);
    let addr = server.kill().await;
    eventually("backoff", || {
        matches!(client.status().connection, ConnectionState::Backoff { .. })
    })
    .await;
    let mut server = ScriptedServer::start_on(addr).await;
    let mut s = server.delta_stream().await;
    let cds = expect(&mut s, T::Cluster, "").await;
    assert_eq!(cds.initial_resource_versions.len(), 1);
    assert_eq!(cds.initial_resource_versions["a"], "2");
    let eds_req = expect(&mut s, T::Endpoint, "").await;
    assert_eq!(eds_req.resource_names_subscribe, ["a"]);
    assert_eq!(eds_req.initial_resource_versions["a"], "e1");
    expect(&mut s, T::Listener, "").await;
    assert_eq!(
        endpoints.get().len(),
        1,
        "the last good config kept serving"
    );
    client.shutdown().await;
}

#[tokio::test]
async fn delta_refresh_recovers_a_change_the_server_forgot_to_push() {
    let mut server = ScriptedServer::start().await;
    let clusters = Sink::<Vec<Cluster>>::new();
    let client = XdsClient::builder()
        .address(server.uri())
        .node_id("sdk-1")
        .mode(AdsMode::Delta)
        // Long enough that no second refresh replaces the new stream while the test scripts it.
        .refresh_interval(Duration::from_secs(1))
        .sink_all::<Cluster>(clusters.clone())
        .start()
        .unwrap();
    let mut s = server.delta_stream().await;
    expect(&mut s, T::Cluster, "").await;
    expect(&mut s, T::Listener, "").await;
    let plain = Cluster::new("a");
    s.send(resp(
        T::Cluster,
        "d1",
        vec![("a", "1", encode(&plain))],
        &[],
    ));
    expect(&mut s, T::Cluster, "d1").await;
    s.send(resp(T::Listener, "d2", vec![], &[]));
    expect(&mut s, T::Listener, "d2").await;
    client.wait_ready(client_support::WAIT).await.unwrap();

    // The control plane changes "a" to version 2 but never pushes it on this stream. The
    // refresh re-subscribes on a new stream with the versions held; the server answers with
    // what differs, and the client applies it.
    let mut changed = Cluster::new("a");
    changed.connect_timeout = Duration::from_secs(2);
    let mut s2 = server.delta_stream().await;
    let cds = expect(&mut s2, T::Cluster, "").await;
    assert_eq!(cds.initial_resource_versions.len(), 1);
    assert_eq!(cds.initial_resource_versions["a"], "1");
    assert!(cds.resource_names_subscribe.is_empty(), "wildcard");
    expect(&mut s2, T::Listener, "").await;
    s2.send(resp(
        T::Cluster,
        "r1",
        vec![("a", "2", encode(&changed))],
        &[],
    ));
    expect(&mut s2, T::Cluster, "r1").await;
    assert_eq!(clusters.get(), vec![changed]);
    let status = client.status();
    assert!(status.refreshes >= 1, "{status:?}");
    assert_eq!(status.connects, 1, "a refresh is not a reconnect");
    assert!(matches!(status.connection, ConnectionState::Connected(_)));
    assert_eq!(status.types[T::Cluster.type_url()].version, "sys-r1");
    client.shutdown().await;
}
