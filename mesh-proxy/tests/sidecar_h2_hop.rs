//! HTTP/2 between sidecars by default: our control plane marks a service's cluster HTTP/2 when
//! its endpoints are sidecars' inbound listeners, so the hop between two sidecars multiplexes
//! every request on one connection while an HTTP/1.1 client and an HTTP/1.1 app see HTTP/1.1
//! at both ends. Real Envoy fed the same mesh.yaml does the same, in both directions.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::client::AdsMode;
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;

/// Requests sent at once: the app holds each until all have arrived, so they are all in flight
/// together (an HTTP/1.1 hop would need this many connections).
const CONCURRENT: usize = 8;

/// An HTTP/1.1-only app that answers each request with the version it arrived in. Requests
/// for `/hold` are held until a whole batch of `CONCURRENT` of them has arrived (or 5 s
/// passed); `seen` collects their versions.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::Version>>>,
    most_in_flight: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct AppState {
    seen: Arc<Mutex<Vec<http::Version>>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    /// `/hold` requests arrived so far.
    arrived: Arc<tokio::sync::watch::Sender<usize>>,
}

impl AppState {
    async fn answer(self, req: http::Request<hyper::body::Incoming>) -> String {
        if req.uri().path() == "/hold" {
            self.seen.lock().unwrap().push(req.version());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut k = 0;
            self.arrived.send_modify(|n| {
                *n += 1;
                k = *n;
            });
            let batch_end = k.div_ceil(CONCURRENT) * CONCURRENT;
            let mut rx = self.arrived.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|n| *n >= batch_end))
                .await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        format!("{:?}", req.version())
    }
}

async fn start_app() -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState {
        seen: Arc::default(),
        in_flight: Arc::default(),
        most_in_flight: Arc::default(),
        arrived: Arc::new(tokio::sync::watch::channel(0).0),
    };
    let app = App {
        addr,
        seen: Arc::clone(&state.seen),
        most_in_flight: Arc::clone(&state.most_in_flight),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move {
                        let body = state.answer(req).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    app
}

/// One HTTP/1.1 request for `host` through `addr`: the raw status line and the body.
fn call(addr: SocketAddr, host: &str, path: &str) -> Result<(String, String), String> {
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw)
    };
    let raw = run().map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or(raw.clone())?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// `CONCURRENT` requests at once; each must be `HTTP/1.1 200` with the app's answer that it
/// got HTTP/1.1.
async fn concurrent_calls(addr: SocketAddr, host: &'static str) {
    let calls: Vec<_> = (0..CONCURRENT)
        .map(|_| tokio::task::spawn_blocking(move || call(addr, host, "/hold")))
        .collect();
    for c in calls {
        let (status, body) = c.await.unwrap().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "client saw {status:?}");
        assert_eq!(
            body, "HTTP/1.1",
            "the app's answer: the version it was called in"
        );
    }
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_ready(admin: SocketAddr) {
    let ok = tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
            matches!(mesh_testkit::http_get(admin, "/ready"), Ok((200, _))).then_some(())
        })
    })
    .await
    .unwrap();
    assert!(ok.is_some(), "sidecar at {admin} never became ready");
}

/// Waits until `host` answers 200 through `addr` (listeners bind a moment after `/ready`).
async fn wait_serving(addr: SocketAddr, host: &'static str) {
    let ok = tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
            call(addr, host, "/")
                .ok()
                .filter(|(s, _)| s.starts_with("HTTP/1.1 200"))
        })
    })
    .await
    .unwrap();
    assert!(ok.is_some(), "{host} through {addr} never answered 200");
}

struct ControlPlane {
    xds: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn control_plane(yaml: &str) -> ControlPlane {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let source = FileSource::new(&path, cache.clone());
    let source_task = source.spawn(Duration::from_millis(50)).unwrap();
    let (xds, xds_task) = XdsServer::new(cache)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    ControlPlane {
        xds,
        tasks: vec![source_task, xds_task],
        _dir: dir,
    }
}

async fn sidecar(xds: SocketAddr, node: &str) -> Sidecar {
    let mut o = DynamicOptions::new(vec![format!("http://{xds}")], node);
    o.admin = SocketAddr::from(([127, 0, 0, 1], mesh_testkit::free_port()));
    o.mode = AdsMode::Sotw;
    o.drain_timeout = Duration::from_secs(2);
    let s = Sidecar::start_dynamic(o).await.unwrap();
    wait_ready(s.admin_addr()).await;
    s
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_between_sidecars_is_http2_while_client_and_app_keep_http1() {
    let app = start_app().await;
    let p = mesh_testkit::free_ports(6);
    let yaml = format!(
        r#"
services:
  - name: hello
    endpoints: [ {{ address: "127.0.0.1:{hello_in}" }} ]
  - name: hello-h1
    mesh_protocol: http1
    endpoints: [ {{ address: "127.0.0.1:{hello_in}" }} ]
nodes:
  - id: hello-1
    service: hello
    listeners: {{ outbound: "127.0.0.1:{hello_out}", inbound: "127.0.0.1:{hello_in}", local_app: "{app}" }}
  - id: client-1
    listeners: {{ outbound: "127.0.0.1:{client_out}", inbound: "127.0.0.1:{client_in}", local_app: "127.0.0.1:1" }}
"#,
        hello_in = p[0],
        hello_out = p[1],
        client_out = p[2],
        client_in = p[3],
        app = app.addr,
    );
    let cp = control_plane(&yaml).await;
    let hello = sidecar(cp.xds, "hello-1").await;
    let client = sidecar(cp.xds, "client-1").await;
    let out = local(p[2]);
    wait_serving(out, "hello").await;
    let inbound_before = mesh_testkit::http_get(hello.admin_addr(), "/stats/prometheus")
        .unwrap()
        .1;

    app.seen.lock().unwrap().clear();
    concurrent_calls(out, "hello").await;
    assert_eq!(
        app.most_in_flight.load(Ordering::SeqCst),
        CONCURRENT,
        "the requests were in flight together"
    );
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![http::Version::HTTP_11; CONCURRENT]);

    // The inbound sidecar took every request of the hop on HTTP/2 connections: at most the
    // one the warm-up opened, none of HTTP/1.1.
    let inbound = mesh_testkit::http_get(hello.admin_addr(), "/stats/prometheus")
        .unwrap()
        .1;
    let detected = |text: &str, proto: &str| {
        metric(
            text,
            "mesh_detected_connections_total",
            &["listener=\"inbound\"", &format!("protocol=\"{proto}\"")],
        )
    };
    assert_eq!(detected(&inbound, "http1"), 0.0, "{inbound}");
    assert_eq!(
        detected(&inbound, "http2"),
        1.0,
        "one h2c connection: {inbound}"
    );
    assert_eq!(
        detected(&inbound, "http2"),
        detected(&inbound_before, "http2"),
        "{CONCURRENT} concurrent requests opened no new connection: {inbound}"
    );
    let outbound = mesh_testkit::http_get(client.admin_addr(), "/stats/prometheus")
        .unwrap()
        .1;
    assert_eq!(
        metric(
            &outbound,
            "mesh_upstream_connections",
            &["cluster=\"hello\""]
        ),
        1.0,
        "{outbound}"
    );

    // The opt-out: `mesh_protocol: http1` keeps HTTP/1.1 on the hop, a connection per
    // request in flight.
    app.seen.lock().unwrap().clear();
    app.most_in_flight.store(0, Ordering::SeqCst);
    concurrent_calls(out, "hello-h1").await;
    let inbound = mesh_testkit::http_get(hello.admin_addr(), "/stats/prometheus")
        .unwrap()
        .1;
    assert_eq!(detected(&inbound, "http1"), CONCURRENT as f64, "{inbound}");

    hello.shutdown().await;
    client.shutdown().await;
    for t in cp.tasks {
        t.abort();
    }
}

/// Real Envoy, fed the same kind of mesh.yaml: it ACKs the HTTP/2 cluster
/// (`typed_extension_protocol_options`) and speaks HTTP/2 to our inbound sidecar, and its own
/// inbound listener takes our outbound sidecar's h2c; the app gets HTTP/1.1 either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_speaks_http2_to_sidecars_and_accepts_it() {
    let Some(_) = mesh_testkit::require_envoy() else {
        return;
    };
    let app = start_app().await;
    let p = mesh_testkit::free_ports(6);
    let (ours_in, ours_out, envoy_in, envoy_out) = (p[0], p[1], p[2], p[3]);
    let yaml = format!(
        r#"
services:
  - name: hello
    endpoints: [ {{ address: "127.0.0.1:{ours_in}" }} ]
  - name: hello-envoy
    endpoints: [ {{ address: "127.0.0.1:{envoy_in}" }} ]
nodes:
  - id: ours-1
    service: hello
    listeners: {{ outbound: "127.0.0.1:{ours_out}", inbound: "127.0.0.1:{ours_in}", local_app: "{app}" }}
  - id: envoy-1
    service: hello-envoy
    listeners: {{ outbound: "127.0.0.1:{envoy_out}", inbound: "127.0.0.1:{envoy_in}", local_app: "{app}" }}
"#,
        app = app.addr,
    );
    let cp = control_plane(&yaml).await;
    let ours = sidecar(cp.xds, "ours-1").await;
    let envoy =
        mesh_testkit::EnvoyProcess::start(&mesh_testkit::ads_bootstrap("envoy-1", cp.xds, "GRPC"))
            .unwrap();

    // Envoy (outbound) → our sidecar (inbound) → app.
    wait_serving(local(envoy_out), "hello").await;
    concurrent_calls(local(envoy_out), "hello").await;
    let clusters = envoy
        .admin_get("/config_dump?resource=dynamic_active_clusters")
        .unwrap();
    assert!(
        clusters.contains("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            && clusters.contains("http2_protocol_options"),
        "Envoy holds the HTTP/2 cluster: {clusters}"
    );
    let stats = envoy
        .admin_get("/stats?filter=^cluster\\.hello\\.")
        .unwrap();
    let stat = |name: &str| -> f64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cluster.hello.{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(stat("upstream_cx_http2_total"), 1.0, "{stats}");
    assert_eq!(stat("upstream_cx_http1_total"), 0.0, "{stats}");
    let inbound = mesh_testkit::http_get(ours.admin_addr(), "/stats/prometheus")
        .unwrap()
        .1;
    assert_eq!(
        metric(
            &inbound,
            "mesh_detected_connections_total",
            &["listener=\"inbound\"", "protocol=\"http2\""]
        ),
        1.0,
        "{inbound}"
    );

    // Our sidecar (outbound) → Envoy (inbound, HTTP/2 by prior knowledge) → app.
    wait_serving(local(ours_out), "hello-envoy").await;
    app.seen.lock().unwrap().clear();
    concurrent_calls(local(ours_out), "hello-envoy").await;
    assert_eq!(
        app.seen.lock().unwrap().clone(),
        vec![http::Version::HTTP_11; CONCURRENT]
    );
    let stats = envoy.admin_get("/stats?filter=downstream_cx_http").unwrap();
    let inbound_h2 = stats
        .lines()
        .find_map(|l| l.strip_prefix("http.inbound.downstream_cx_http2_total: "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(inbound_h2, Some(1.0), "{stats}");
    let outbound = mesh_testkit::http_get(ours.admin_addr(), "/stats/prometheus")
        .unwrap()
        .1;
    assert_eq!(
        metric(
            &outbound,
            "mesh_upstream_connections",
            &["cluster=\"hello-envoy\""]
        ),
        1.0,
        "{outbound}"
    );

    drop(envoy);
    ours.shutdown().await;
    for t in cp.tasks {
        t.abort();
    }
}

/// An HTTP/1.1 app that accepts every WebSocket upgrade and echoes the bytes that follow (and
/// answers a plain request `ok`).
async fn start_echo_app() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: http::Request<_>| async move {
                    if !req.headers().contains_key("upgrade") {
                        let ok = http::Response::new(Full::new(bytes::Bytes::from("ok")));
                        return Ok::<_, std::convert::Infallible>(ok);
                    }
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(up) = upgrade.await else { return };
                        let mut io = hyper_util::rt::TokioIo::new(up);
                        let mut buf = [0u8; 64];
                        while let Ok(n @ 1..) = io.read(&mut buf).await {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    let resp = http::Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .body(Full::new(bytes::Bytes::new()))
                        .unwrap();
                    Ok(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// A WebSocket upgrade to a service whose cluster is HTTP/2 between sidecars takes an
/// HTTP/1.1 connection of its own (hyper's client has no extended CONNECT) and is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_crosses_an_http2_cluster_over_http1() {
    let app = start_echo_app().await;
    let p = mesh_testkit::free_ports(4);
    let yaml = format!(
        r#"
services:
  - name: echo
    endpoints: [ {{ address: "127.0.0.1:{echo_in}" }} ]
nodes:
  - id: echo-1
    service: echo
    listeners: {{ outbound: "127.0.0.1:{echo_out}", inbound: "127.0.0.1:{echo_in}", local_app: "{app}" }}
  - id: client-1
    listeners: {{ outbound: "127.0.0.1:{client_out}", inbound: "127.0.0.1:{client_in}", local_app: "127.0.0.1:1" }}
"#,
        echo_in = p[0],
        echo_out = p[1],
        client_out = p[2],
        client_in = p[3],
    );
    let cp = control_plane(&yaml).await;
    let echo = sidecar(cp.xds, "echo-1").await;
    let client = sidecar(cp.xds, "client-1").await;
    let out = local(p[2]);
    wait_serving(out, "echo").await;
    let outbound = mesh_testkit::http_get(client.admin_addr(), "/config_dump")
        .unwrap()
        .1;
    assert!(
        outbound.contains("http2"),
        "echo's cluster is HTTP/2: {outbound}"
    );

    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(out).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "closed after {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        got
    })
    .await
    .unwrap();
    assert_eq!(&echoed, b"ping");

    echo.shutdown().await;
    client.shutdown().await;
    for t in cp.tasks {
        t.abort();
    }
}
