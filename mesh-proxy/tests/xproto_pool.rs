//! The RPC proxy's upstream side on real loopback sockets, driven through the listener
//! manager as LDS/CDS/EDS drive it: bolt frames built by mesh-xprotocol's builders, small
//! in-test bolt servers that count their connections and requests.
//!
//! Shown: RPC outcomes feed outlier detection (an endpoint answering SERVER_EXCEPTION, one
//! refusing connections and one never answering are ejected, and then every call goes to the
//! healthy one); the pool of an endpoint removed by EDS lets its connection go (the server sees
//! it close); a route-only listener update is swapped in place (the open client connection
//! sees the new route on its next call, and no upstream connection is dialled again); a call
//! counts in flight against its endpoint until answered (as HTTP requests do).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mesh_core::{Cluster, ClusterLoadAssignment, Listener, Reload};
use mesh_lb::ClusterManager;
use mesh_proxy::listeners::ListenerManager;
use mesh_proxy::metrics::Metrics;
use mesh_router::LayerRegistry;
use mesh_xprotocol::bolt::{self, BoltRequest};
use mesh_xprotocol::{BoltCodec, Frame, FrameKind, XCodec};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const SERVICE: &str = "com.example.Hello:1.0";

/// How an in-test bolt server answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Every request with this bolt status and a body naming the server's port.
    Answer(u16),
    /// Reads and never answers.
    Silent,
}

/// A bolt server on loopback; its tasks (accept loop and connections) end when it is dropped.
struct BoltServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    tasks: tokio::task::JoinHandle<()>,
}

impl Drop for BoltServer {
    fn drop(&mut self) {
        self.tasks.abort();
    }
}

impl BoltServer {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, o, r) = (accepted.clone(), open.clone(), requests.clone());
        let tasks = tokio::spawn(async move {
            // Connections live in the set: aborting the accept loop drops (aborts) them too.
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (o, r) = (o.clone(), r.clone());
                conns.spawn(async move {
                    serve_conn(s, behaviour, addr.port(), &r).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            open,
            requests,
            tasks,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve_conn(mut s: TcpStream, behaviour: Behaviour, port: u16, requests: &AtomicUsize) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(frame)) = BoltCodec.decode(&mut buf, 1 << 20) {
            if !matches!(frame.kind, FrameKind::Request { .. }) {
                continue;
            }
            requests.fetch_add(1, Ordering::SeqCst);
            if let Behaviour::Answer(status) = behaviour {
                let id = u32::try_from(frame.request_id).unwrap();
                let body = format!("from {port}");
                let resp = bolt::response(
                    bolt::CODEC_HESSIAN2,
                    id,
                    status,
                    bolt::CMD_RESPONSE,
                    body.as_bytes(),
                );
                if s.write_all(&resp).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A bolt client on one connection, one call at a time.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u32,
}

impl Client {
    async fn connect(port: u16) -> Self {
        Self {
            stream: TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    /// Calls `SERVICE` and returns the response (bounded: 10 s fails the test).
    async fn call(&mut self) -> Frame {
        let id = self.next_id;
        self.next_id += 1;
        let req = bolt::request(&BoltRequest {
            id,
            codec: bolt::CODEC_HESSIAN2,
            timeout_ms: 3000,
            oneway: false,
            class: "com.alipay.sofa.rpc.core.request.SofaRequest",
            headers: &[("service", SERVICE), ("sofa_head_method_name", "sayHi")],
            content: b"hi",
        });
        self.stream.write_all(&req).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(f) = BoltCodec.decode(&mut self.buf, 1 << 20).unwrap() {
                    assert_eq!(f.request_id, u64::from(id));
                    return f;
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the proxy closed the client connection");
            }
        })
        .await
        .expect("no answer in 10 s")
    }
}

/// Which server answered (its port in the body), or the bolt status of a failure.
fn answered_by(f: &Frame) -> Result<u16, u16> {
    let status = f.status.unwrap();
    if status != bolt::status::SUCCESS {
        return Err(status);
    }
    let text = String::from_utf8_lossy(&f.raw);
    let port = text.rsplit("from ").next().unwrap();
    Ok(port.parse().unwrap())
}

fn rpc_listener(port: u16, cluster: &str, timeout: &str) -> Listener {
    mesh_core::yaml::from_str(&format!(
        "{{ name: rpc, address: '127.0.0.1:{port}', direction: outbound, xprotocol: {{ \
         protocol: bolt, request_timeout: {timeout}, max_upstream_connections: 1, \
         route_config: {{ name: rpc, virtual_hosts: [ {{ name: all, domains: ['*'], routes: [ \
         {{ match: {{ prefix: '/{SERVICE}/' }}, route: {{ cluster: {cluster} }} }} ] }} ] }} }} }}"
    ))
    .unwrap()
}

fn cluster(name: &str, addrs: &[SocketAddr], extra: &str) -> Cluster {
    let endpoints: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address: '{a}' }}"))
        .collect();
    mesh_core::yaml::from_str(&format!(
        "{{ name: {name}, {extra} load_assignment: {{ endpoints: [ {{ endpoints: [ {} ] }} ] }} }}",
        endpoints.join(", ")
    ))
    .unwrap()
}

struct Mesh {
    listeners: ListenerManager,
    clusters: ClusterManager,
    registry: Registry,
}

impl Mesh {
    fn new(clusters: Vec<Cluster>) -> Self {
        let cm = ClusterManager::new();
        cm.reload(clusters).unwrap();
        let mut registry = Registry::default();
        let listeners = ListenerManager::new(
            cm.clone(),
            LayerRegistry::default(),
            Metrics::register(&mut registry),
            100,
            Duration::from_secs(1),
        );
        Self {
            listeners,
            clusters: cm,
            registry,
        }
    }

    /// The value of the sample of `name` whose labels contain `label`.
    fn metric(&self, name: &str, label: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_ejected_by_rpc_outcomes_and_calls_go_to_the_healthy_one() {
    let good = BoltServer::start(Behaviour::Answer(bolt::status::SUCCESS)).await;
    let erring = BoltServer::start(Behaviour::Answer(bolt::status::SERVER_EXCEPTION)).await;
    let silent = BoltServer::start(Behaviour::Silent).await;
    // A port nobody listens on: every connect is refused.
    let refused: SocketAddr = ([127, 0, 0, 1], mesh_testkit::free_ports(1)[0]).into();
    let addrs = [good.addr, erring.addr, silent.addr, refused];
    let outliers = "healthy_panic_threshold: 0, outlier_detection: { consecutive_5xx: 3, \
                    consecutive_gateway_failure: 3, interval: 1s, base_ejection_time: 600s, \
                    max_ejection_percent: 100 },";
    let mesh = Mesh::new(vec![cluster("c", &addrs, outliers)]);
    let port = mesh_testkit::free_ports(1)[0];
    mesh.listeners
        // Long enough that the healthy endpoint never times out on a busy machine.
        .apply(vec![rpc_listener(port, "c", "1s")])
        .unwrap();

    let mut client = Client::connect(port).await;
    let state = mesh.clusters.get("c").unwrap();
    let endpoints = state.endpoints();
    let mut failures = Vec::new();
    // Round robin over four: each bad endpoint fails three times in a row and is ejected.
    for _ in 0..40 {
        if let Err(status) = answered_by(&client.call().await) {
            failures.push(status);
        }
        if addrs[1..].iter().all(|a| endpoints[a].is_ejected()) {
            break;
        }
    }
    let count = |s: u16| failures.iter().filter(|f| **f == s).count();
    // Each bad endpoint failed three times in a row, then was ejected and got no more calls
    // (the refused one's failures are the mesh's own answers).
    assert_eq!(
        (erring.requests(), silent.requests()),
        (3, 3),
        "three calls each reached the failing servers: {failures:?}"
    );
    assert!(
        count(bolt::status::SERVER_EXCEPTION) == 3 && count(bolt::status::TIMEOUT) >= 3,
        "{failures:?}"
    );
    assert!(
        failures.len() >= 9,
        "and three refused connects: {failures:?}"
    );
    for bad in &addrs[1..] {
        assert!(endpoints[bad].is_ejected(), "{bad} ejected");
    }
    assert!(!endpoints[&good.addr].is_ejected());
    eventually("the set is rebuilt without them", || {
        state.endpoint_set().healthy() == 1
    })
    .await;
    let (erring_seen, silent_seen) = (erring.requests(), silent.requests());
    for _ in 0..20 {
        assert_eq!(answered_by(&client.call().await), Ok(good.addr.port()));
    }
    assert_eq!(
        erring.requests(),
        erring_seen,
        "no call reached an ejected endpoint"
    );
    assert_eq!(silent.requests(), silent_seen);
    assert!(mesh.metric("mesh_requests_total", "status_class=\"2xx\"") >= 20);
    mesh.listeners.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_removed_by_eds_has_its_pooled_connection_closed() {
    let a = BoltServer::start(Behaviour::Answer(bolt::status::SUCCESS)).await;
    let b = BoltServer::start(Behaviour::Answer(bolt::status::SUCCESS)).await;
    let mut eds = cluster("c", &[], "");
    eds.discovery = mesh_core::Discovery::Eds;
    eds.load_assignment = None;
    let mesh = Mesh::new(vec![eds]);
    mesh.clusters
        .reload(ClusterLoadAssignment::from_addrs("c", [a.addr]))
        .unwrap();
    let port = mesh_testkit::free_ports(1)[0];
    mesh.listeners
        .apply(vec![rpc_listener(port, "c", "5s")])
        .unwrap();
    let mut client = Client::connect(port).await;
    assert_eq!(answered_by(&client.call().await), Ok(a.addr.port()));
    assert_eq!(a.open.load(Ordering::SeqCst), 1);

    // EDS moves the cluster to b: a drains (nothing in flight) and its connection closes
    // without any further call.
    mesh.clusters
        .reload(ClusterLoadAssignment::from_addrs("c", [b.addr]))
        .unwrap();
    eventually("a's pooled connection is closed", || {
        a.open.load(Ordering::SeqCst) == 0
    })
    .await;
    let open = "mesh_rpc_upstream_connections{";
    eventually("the proxy counts no open connection", || {
        mesh.metric(open, "listener=\"rpc\"") == 0
    })
    .await;
    for _ in 0..3 {
        assert_eq!(answered_by(&client.call().await), Ok(b.addr.port()));
    }
    assert_eq!(mesh.metric(open, "listener=\"rpc\""), 1, "only b's");
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        1,
        "a was not dialled again"
    );
    mesh.listeners.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_is_swapped_in_place_keeping_connections_both_sides() {
    let one = BoltServer::start(Behaviour::Answer(bolt::status::SUCCESS)).await;
    let two = BoltServer::start(Behaviour::Answer(bolt::status::SUCCESS)).await;
    let mesh = Mesh::new(vec![
        cluster("one", &[one.addr], ""),
        cluster("two", &[two.addr], ""),
    ]);
    let port = mesh_testkit::free_ports(1)[0];
    mesh.listeners
        .apply(vec![rpc_listener(port, "one", "5s")])
        .unwrap();
    let mut client = Client::connect(port).await;
    assert_eq!(answered_by(&client.call().await), Ok(one.addr.port()));

    // The route now names cluster two (and the time-out changed): the same client connection
    // is routed there on its next call.
    mesh.listeners
        .apply(vec![rpc_listener(port, "two", "4s")])
        .unwrap();
    assert_eq!(answered_by(&client.call().await), Ok(two.addr.port()));
    // And back: one's pooled connection was kept, not dialled again.
    mesh.listeners
        .apply(vec![rpc_listener(port, "one", "4s")])
        .unwrap();
    assert_eq!(answered_by(&client.call().await), Ok(one.addr.port()));
    assert_eq!(one.accepted.load(Ordering::SeqCst), 1, "one dialled once");
    assert_eq!(two.accepted.load(Ordering::SeqCst), 1, "two dialled once");
    let opened = "mesh_rpc_upstream_connections_opened_total";
    assert_eq!(mesh.metric(opened, "listener=\"rpc\""), 2);

    // A change of the connection settings lets the pools go: the next call dials anew.
    let mut wider = rpc_listener(port, "one", "4s");
    wider.xprotocol.as_mut().unwrap().max_upstream_connections = 2;
    mesh.listeners.apply(vec![wider]).unwrap();
    assert_eq!(answered_by(&client.call().await), Ok(one.addr.port()));
    assert_eq!(one.accepted.load(Ordering::SeqCst), 2, "a new connection");
    eventually("the old connection to one ends", || {
        one.open.load(Ordering::SeqCst) == 1
    })
    .await;
    mesh.listeners.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_counts_in_flight_against_its_endpoint_until_answered() {
    let silent = BoltServer::start(Behaviour::Silent).await;
    let mesh = Mesh::new(vec![cluster("c", &[silent.addr], "")]);
    let port = mesh_testkit::free_ports(1)[0];
    mesh.listeners
        .apply(vec![rpc_listener(port, "c", "1s")])
        .unwrap();
    let endpoint = mesh.clusters.get("c").unwrap().endpoints()[&silent.addr].clone();
    let mut client = Client::connect(port).await;
    let call = tokio::spawn(async move { client.call().await });
    // Counted while it waits (what least_request balances on and a drain waits for)...
    eventually("the call is in flight", || endpoint.in_flight() == 1).await;
    // ...and no longer once the mesh has answered it with bolt's TIMEOUT.
    let answer = call.await.unwrap();
    assert_eq!(answered_by(&answer), Err(bolt::status::TIMEOUT));
    eventually("the call is done", || endpoint.in_flight() == 0).await;
    assert_eq!(endpoint.requests(), 1);
    mesh.listeners.shutdown().await;
}
