//! LDS semantics of the listener manager on real sockets: added listeners open their port,
//! removed ones close it, an address change rebinds, a route change keeps the socket, and a bad
//! update changes nothing.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_core::{Cluster, ClusterLoadAssignment, Listener, Reload, RouteConfiguration};
use mesh_lb::ClusterManager;
use mesh_proxy::listeners::ListenerManager;
use mesh_proxy::metrics::Metrics;
use mesh_router::LayerRegistry;

fn listener(name: &str, port: u16, routes: &str) -> Listener {
    mesh_core::yaml::from_str(&format!(
        "{{ name: {name}, address: '127.0.0.1:{port}', direction: outbound, route_config_name: {routes} }}"
    ))
    .unwrap()
}

fn routes(name: &str, prefix: &str) -> RouteConfiguration {
    mesh_core::yaml::from_str(&format!(
        "{{ name: {name}, virtual_hosts: [ {{ name: v, domains: ['*'], routes: [ {{ match: {{ prefix: '{prefix}' }}, route: {{ cluster: c }} }} ] }} ] }}"
    ))
    .unwrap()
}

async fn open(port: u16) -> bool {
    tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .is_ok()
}

async fn status(port: u16, path: &str) -> u16 {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = path.to_string();
    tokio::task::spawn_blocking(move || mesh_testkit::http_get(addr, &path).unwrap().0)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_config_like_lds() {
    let stub = mesh_testkit::HttpStub::start(200, "upstream").unwrap();
    let clusters = ClusterManager::new();
    let mut c = Cluster::new("c");
    c.load_assignment = Some(ClusterLoadAssignment::from_addrs("c", [stub.addr()]));
    clusters.reload(vec![c]).unwrap();
    let mut reg = prometheus_client::registry::Registry::default();
    let mgr = ListenerManager::new(
        clusters,
        LayerRegistry::default(),
        Metrics::register(&mut reg),
        100,
        Duration::from_secs(1),
    );
    let p = mesh_testkit::free_ports(3);
    mgr.apply_routes(&routes("r", "/")).unwrap();
    mgr.apply(vec![listener("a", p[0], "r"), listener("b", p[1], "r")])
        .unwrap();
    assert!(open(p[0]).await && open(p[1]).await);
    assert_eq!(status(p[0], "/x").await, 200);

    // A route change keeps the socket and swaps the table.
    mgr.apply_routes(&routes("r", "/only")).unwrap();
    assert_eq!(status(p[0], "/x").await, 404);
    assert_eq!(status(p[0], "/only").await, 200);

    // b removed, a moved to a new port.
    mgr.apply(vec![listener("a", p[2], "r")]).unwrap();
    let closed = mesh_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        (std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], p[1]))).is_err()
            && std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], p[0]))).is_err())
        .then_some(())
    });
    assert!(
        closed.is_some(),
        "removed and moved listeners close their old ports"
    );
    assert!(open(p[2]).await);
    assert_eq!(mgr.addresses().len(), 1);

    // A listener naming an unknown route table is refused, and nothing changes.
    let err = mgr
        .apply(vec![
            listener("a", p[2], "r"),
            listener("z", p[0], "missing"),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("listener \"z\""), "{err}");
    assert!(!open(p[0]).await);
    assert_eq!(
        status(p[2], "/only").await,
        200,
        "the old set keeps serving"
    );
    mgr.shutdown().await;
    assert!(!open(p[2]).await);
}

/// An LDS update that only changes a listener's access logs swaps them in place (same socket):
/// requests after it are logged to the new file, none before it; a log that cannot be opened
/// refuses the update and the old logs keep writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_change_in_place_and_an_unopenable_one_is_refused() {
    let stub = mesh_testkit::HttpStub::start(200, "upstream").unwrap();
    let clusters = ClusterManager::new();
    let mut c = Cluster::new("c");
    c.load_assignment = Some(ClusterLoadAssignment::from_addrs("c", [stub.addr()]));
    clusters.reload(vec![c]).unwrap();
    let mut reg = prometheus_client::registry::Registry::default();
    let writers = mesh_proxy::access_log::AccessLogWriters::register(&mut reg);
    let mgr = ListenerManager::new(
        clusters,
        LayerRegistry::default(),
        Metrics::register(&mut reg),
        100,
        Duration::from_secs(1),
    )
    .with_access_logs(writers.clone(), Vec::new());
    let port = mesh_testkit::free_port();
    mgr.apply_routes(&routes("r", "/")).unwrap();
    mgr.apply(vec![listener("a", port, "r")]).unwrap();
    assert_eq!(status(port, "/before").await, 200);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.log");
    let mut logged = listener("a", port, "r");
    logged.access_log = vec![mesh_core::AccessLog::new(
        file.display().to_string(),
        mesh_core::AccessLogFormat::Text,
    )];
    mgr.apply(vec![logged.clone()]).unwrap();
    assert_eq!(status(port, "/after").await, 200);

    let mut bad = logged.clone();
    bad.access_log[0].path = dir.path().join("no/such/dir/x.log").display().to_string();
    let err = mgr.apply(vec![bad]).unwrap_err().to_string();
    assert!(err.contains("no/such/dir/x.log"), "{err}");
    assert_eq!(status(port, "/still").await, 200);

    mgr.shutdown().await;
    writers.shutdown().await;
    let text = std::fs::read_to_string(&file).unwrap();
    let paths: Vec<&str> = text.lines().map(|l| l.split('"').nth(1).unwrap()).collect();
    assert_eq!(
        paths,
        ["GET /after HTTP/1.1", "GET /still HTTP/1.1"],
        "{text}"
    );
}
