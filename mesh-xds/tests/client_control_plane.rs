//! The two halves of the crate together: this crate's control plane (snapshot cache + ADS
//! server) serves mesh-core config translated by the conversion module, and the client, in both
//! ADS variants, delivers exactly that config to its sinks, follows an update and a removal.
#![allow(clippy::unwrap_used, missing_docs)]

mod client_support;

use std::time::Duration;

use client_support::{eventually, Sink};
use mesh_core::*;
use mesh_xds::client::{AdsMode, XdsClient};
use mesh_xds::convert::encode;
use mesh_xds::server::{Snapshot, SnapshotCache, XdsServer};

fn eds(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn snapshot(
    clusters: &[Cluster],
    eps: &[ClusterLoadAssignment],
    routes: &RouteConfiguration,
) -> Snapshot {
    let listener = Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: "out".into(),
        address: "127.0.0.1:8082".parse().unwrap(),
        direction: Direction::Outbound,
        route_config_name: routes.name.clone(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    };
    let anys = clusters
        .iter()
        .map(encode)
        .chain(eps.iter().map(encode))
        .chain([encode(&listener), encode(routes)]);
    Snapshot::from_anys(anys).unwrap()
}

async fn serves_and_follows(mode: AdsMode) {
    let routes: RouteConfiguration =
        serde_yaml::from_str(include_str!("client_data/routes.yaml")).unwrap();
    let la = |n: &str, port| ClusterLoadAssignment::from_addrs(n, [([10, 0, 0, 1], port).into()]);
    let cache = SnapshotCache::new();
    let (a, b) = (eds("a"), eds("b"));
    cache
        .set_snapshot(
            "node-1",
            snapshot(&[a.clone(), b.clone()], &[la("a", 1), la("b", 2)], &routes),
        )
        .unwrap();
    let (addr, server) = XdsServer::new(cache.clone())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let clusters = Sink::<Vec<Cluster>>::new();
    let table = Sink::<RouteConfiguration>::new();
    let endpoints = Sink::<Vec<ClusterLoadAssignment>>::new();
    let client = XdsClient::builder()
        .address(format!("http://{addr}"))
        .node_id("node-1")
        .mode(mode)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .sink_all::<Cluster>(clusters.clone())
        .sink_all::<ClusterLoadAssignment>(endpoints.clone())
        .sink_named::<RouteConfiguration>("main", table.clone())
        .start()
        .unwrap();
    client.wait_ready(client_support::WAIT).await.unwrap();
    assert_eq!(
        table.get(),
        routes,
        "the route table arrives exactly as the control plane had it"
    );
    assert_eq!(clusters.get(), vec![a.clone(), b]);
    assert_eq!(endpoints.get(), vec![la("a", 1), la("b", 2)]);

    // b goes away and a's endpoints move: the client follows both.
    cache
        .set_snapshot(
            "node-1",
            snapshot(std::slice::from_ref(&a), &[la("a", 3)], &routes),
        )
        .unwrap();
    eventually("the update", || {
        clusters.get() == vec![a.clone()] && endpoints.get() == vec![la("a", 3)]
    })
    .await;
    let dump = client.config();
    assert_eq!(**dump.routes["main"], routes);
    assert_eq!(dump.clusters.len(), 1);
    let status = client.status();
    assert!(status.types.values().all(|t| t.nacks == 0), "{status:?}");
    client.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn sotw_client_against_the_control_plane() {
    serves_and_follows(AdsMode::Sotw).await;
}

#[tokio::test]
async fn delta_client_against_the_control_plane() {
    serves_and_follows(AdsMode::Delta).await;
}
