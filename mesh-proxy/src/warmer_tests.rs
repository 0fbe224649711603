#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_core::{Checked, Cluster, ClusterLoadAssignment, Discovery, Listener};
use mesh_lb::ClusterManager;
use mesh_router::LayerRegistry;
use prometheus_client::registry::Registry;

use super::Warmer;
use crate::listeners::ListenerManager;
use crate::metrics::Metrics;
use crate::warming::DEFAULT_INITIAL_FETCH_TIMEOUT;

fn warmer(timeout: Option<Duration>) -> (Warmer, ListenerManager, ClusterManager, Registry) {
    let mut registry = Registry::default();
    let clusters = ClusterManager::new();
    let listeners = ListenerManager::new(
        clusters.clone(),
        LayerRegistry::default(),
        Metrics::register(&mut registry),
        10,
        Duration::from_millis(100),
    )
    .lenient_routes();
    let w = Warmer::new(listeners.clone(), clusters.clone(), timeout, &mut registry);
    (w, listeners, clusters, registry)
}

fn listener(name: &str, port: u16, table: &str) -> Listener {
    mesh_core::yaml::from_str(&format!(
        "{{ name: {name}, address: '127.0.0.1:{port}', direction: outbound, route_config_name: {table} }}"
    ))
    .unwrap()
}

fn eds_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn metrics(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

/// Lets the timer task run after the clock moved.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn warming_resources_go_live_on_the_default_initial_fetch_timeout() {
    let (w, listeners, clusters, registry) = warmer(Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
    let stop = tokio_util::sync::CancellationToken::new();
    let timer = w.spawn_timer(stop.clone());
    w.cluster_sink().reload(vec![eds_cluster("c")]).unwrap();
    w.listener_sink()
        .reload(vec![listener("out", 0, "never")])
        .unwrap();
    settle().await;
    assert!(clusters.get("c").is_none(), "the EDS cluster warms");
    assert!(listeners.addresses().is_empty(), "the listener warms");
    let s = w.status();
    assert_eq!((s.listeners.len(), s.clusters.len()), (1, 1), "{s:?}");
    let m = metrics(&registry);
    assert!(m.contains("mesh_warming_listeners 1"), "{m}");
    assert!(m.contains("mesh_warming_clusters 1"), "{m}");

    tokio::time::advance(DEFAULT_INITIAL_FETCH_TIMEOUT - Duration::from_millis(10)).await;
    settle().await;
    assert!(clusters.get("c").is_none() && listeners.addresses().is_empty());

    tokio::time::advance(Duration::from_millis(20)).await;
    settle().await;
    assert!(clusters.get("c").is_some(), "live, without endpoints");
    assert_eq!(listeners.addresses().len(), 1, "live, with an empty table");
    assert!(w.status().is_empty());
    assert!(metrics(&registry).contains("mesh_warming_listeners 0"));

    stop.cancel();
    timer.await.unwrap();
    listeners.shutdown().await;
}

#[tokio::test]
async fn endpoints_warm_a_cluster_and_the_listener_waiting_for_it() {
    let (w, listeners, clusters, _registry) = warmer(None);
    let table = mesh_core::yaml::from_str(
        "{ name: r, virtual_hosts: [ { name: v, domains: ['*'], routes: [ { match: { prefix: '/' }, route: { cluster: c } } ] } ] }",
    )
    .unwrap();
    w.listener_sink()
        .reload(vec![listener("out", 0, "r")])
        .unwrap();
    w.route_sink().reload(vec![table]).unwrap();
    w.cluster_sink().reload(vec![eds_cluster("c")]).unwrap();
    assert!(listeners.addresses().is_empty() && clusters.get("c").is_none());
    assert!(
        w.status().listeners["out"].contains("clusters"),
        "{:?}",
        w.status()
    );

    let cla = ClusterLoadAssignment::from_addrs("c", ["127.0.0.1:1".parse().unwrap()]);
    w.endpoint_sink()
        .reload(Checked::new(cla).unwrap())
        .unwrap();
    assert_eq!(
        clusters.get("c").unwrap().config().discovery,
        Discovery::Eds
    );
    assert_eq!(listeners.addresses().len(), 1);
    assert!(w.status().is_empty());
    listeners.shutdown().await;
}

#[tokio::test]
async fn a_warming_listener_on_an_address_in_use_is_refused_at_lds_time() {
    let (w, listeners, _clusters, _registry) = warmer(None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = w
        .listener_sink()
        .reload(vec![listener("out", port, "r")])
        .unwrap_err();
    assert!(err.to_string().contains("bind"), "{err}");
    assert!(w.status().is_empty(), "a refused update changes nothing");

    // A free address is held (bound, not listening) while the listener warms: connections are
    // refused, and a socket without SO_REUSEADDR cannot take the port.
    let free = mesh_testkit::free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free));
    let plain_bind = || tokio::net::TcpSocket::new_v4().unwrap().bind(addr);
    w.listener_sink()
        .reload(vec![listener("out", free, "r")])
        .unwrap();
    assert!(
        plain_bind().is_err(),
        "the warming listener holds its address"
    );
    assert!(std::net::TcpStream::connect(addr).is_err());
    w.listener_sink().reload(vec![]).unwrap();
    assert!(
        plain_bind().is_ok(),
        "a removed warming listener releases its address"
    );
    listeners.shutdown().await;
}
