//! Layer 4 through two static sidecars, each with one listener where detection applies
//! (HTTP routes plus an opaque-TCP fallback): HTTP/1.1, h2c, gRPC, a real WebSocket client and
//! server (Python `websockets`), a plain TCP client (`nc`) to a server-first TCP app, a silent
//! client (relayed after the detection bound), and the bad input: a silent or garbage client
//! on an HTTP-only listener is closed and counted, a refusing TCP upstream is a counted connect
//! failure and a closed downstream.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The detection bound of every detecting listener here.
const DETECT: Duration = Duration::from_millis(300);

/// Kills its child on drop (also when an assertion fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server-first TCP app: greets, then echoes upper-cased until the client's end of stream,
/// then closes (so half-close must travel both hops).
async fn start_tcp_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                s.write_all(b"hello from tcp\n").await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(&got.to_ascii_uppercase()).await.unwrap();
            });
        }
    });
    addr
}

async fn start_grpc_app() -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("mesh.Hello", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

fn ws_script() -> String {
    format!("{}/tests/ws_echo.py", env!("CARGO_MANIFEST_DIR"))
}

/// The Python WebSocket echo server, and its port.
fn start_ws_app(python: &Path) -> (Killed, u16) {
    let mut child = Command::new(python)
        .args([ws_script().as_str(), "serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap();
    (Killed(child), port)
}

struct Ports {
    out: u16,
    inb: u16,
    http_only: u16,
    tcp_dead: u16,
    admin_a: u16,
    admin_b: u16,
}

/// Sidecar A (the caller's): `outbound` detects, HTTP → B's inbound, anything else → B's
/// inbound as TCP; `http_only` closes what is not HTTP; `tcp_dead` is opaque to nowhere.
fn sidecar_a(p: &Ports) -> Bootstrap {
    let dead = mesh_testkit::free_port();
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 2s
listeners:
  - name: outbound
    address: 127.0.0.1:{out}
    direction: outbound
    http: {{ upgrades: [websocket] }}
    detection: {{ timeout: 300ms }}
    tcp_proxy: {{ destination: {{ cluster: inbound_sidecar }} }}
    route_config:
      name: outbound
      virtual_hosts:
        - {{ name: all, domains: ["*"], routes: [ {{ route: {{ cluster: inbound_sidecar }} }} ] }}
  - name: http_only
    address: 127.0.0.1:{http_only}
    direction: outbound
    detection: {{ timeout: 300ms }}
    route_config:
      name: http_only
      virtual_hosts:
        - {{ name: all, domains: ["*"], routes: [ {{ route: {{ cluster: inbound_sidecar }} }} ] }}
  - name: tcp_dead
    address: 127.0.0.1:{tcp_dead}
    direction: outbound
    tcp_proxy: {{ destination: {{ cluster: dead }}, max_connect_attempts: 2 }}
clusters:
  - name: inbound_sidecar
    protocol: use_downstream
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{inb}" }} ] }} ] }}
  - name: dead
    connect_timeout: 1s
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{dead}" }} ] }} ] }}
"#,
        admin = p.admin_a,
        out = p.out,
        http_only = p.http_only,
        tcp_dead = p.tcp_dead,
        inb = p.inb,
    );
    Bootstrap::from_yaml(&yaml, Path::new("a.yaml")).unwrap()
}

/// Sidecar B (the apps'): `inbound` detects; HTTP by path to the WebSocket, gRPC or HTTP app,
/// anything else to the TCP app.
fn sidecar_b(p: &Ports, ws: u16, grpc: SocketAddr, http: SocketAddr, tcp: SocketAddr) -> Bootstrap {
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 2s
listeners:
  - name: inbound
    address: 127.0.0.1:{inb}
    direction: inbound
    http: {{ upgrades: [websocket] }}
    detection: {{ timeout: 300ms }}
    tcp_proxy: {{ destination: {{ cluster: tcp_app }}, idle_timeout: 30s }}
    route_config:
      name: inbound
      virtual_hosts:
        - name: apps
          domains: ["*"]
          routes:
            - {{ match: {{ prefix: /ws }}, route: {{ cluster: ws_app }} }}
            - {{ match: {{ prefix: /grpc.health.v1.Health/ }}, route: {{ cluster: grpc_app }} }}
            - {{ route: {{ cluster: http_app }} }}
clusters:
  - name: ws_app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{ws}" }} ] }} ] }}
  - name: grpc_app
    protocol: http2
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{grpc}" }} ] }} ] }}
  - name: http_app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{http}" }} ] }} ] }}
  - name: tcp_app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{tcp}" }} ] }} ] }}
"#,
        admin = p.admin_b,
        inb = p.inb,
    );
    Bootstrap::from_yaml(&yaml, Path::new("b.yaml")).unwrap()
}

/// Reads until the peer closes (or 10 s pass, which fails the test). A close with bytes of
/// ours unread is a reset: closed too.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the connection was never closed");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    got
}

fn metric(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_crosses_two_detecting_sidecars() {
    let Some(python) = mesh_testkit::require_ws_python() else {
        return;
    };
    let Some(nc) = mesh_testkit::require_nc() else {
        return;
    };
    let (_ws_server, ws_port) = start_ws_app(&python);
    let grpc = start_grpc_app().await;
    let http = mesh_testkit::HttpStub::start(200, "hello over http").unwrap();
    let tcp = start_tcp_app().await;
    let f = mesh_testkit::free_ports(6);
    let p = Ports {
        out: f[0],
        inb: f[1],
        http_only: f[2],
        tcp_dead: f[3],
        admin_a: f[4],
        admin_b: f[5],
    };
    let b = Sidecar::start_static(sidecar_b(&p, ws_port, grpc, http.addr(), tcp))
        .await
        .unwrap();
    let a = Sidecar::start_static(sidecar_a(&p)).await.unwrap();
    let out: SocketAddr = ([127, 0, 0, 1], p.out).into();

    // HTTP/1.1 and h2c.
    let (status, body) = tokio::task::spawn_blocking(move || mesh_testkit::http_get(out, "/hi"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello over http"));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .get(format!("http://{out}/h2").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "h2c through both detecting hops");

    // gRPC.
    let channel = Channel::from_shared(format!("http://{out}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "mesh.Hello".into(),
        })
        .await
        .expect("gRPC through both hops");
    assert_eq!(health.into_inner().status, 1, "SERVING");

    // A real WebSocket client and server.
    let ws_client = Command::new(&python)
        .args([
            ws_script().as_str(),
            "client",
            &format!("ws://127.0.0.1:{}/ws/chat", p.out),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ws_client.stdout);
    assert!(
        ws_client.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&ws_client.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "echo:/ws/chat:m0",
            "echo:/ws/chat:m1",
            "echo:/ws/chat:m2",
            &(200_000 + "echo:/ws/chat:".len()).to_string()
        ]
    );

    // A plain TCP client (nc): the app's greeting, then the echo after the client's end of
    // stream (nc -N half-closes at the end of its input).
    let mut child = Command::new(&nc)
        .args(["-N", "-w", "10", "127.0.0.1", &p.out.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ping over tcp\n")
        .unwrap();
    let nc_out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&nc_out.stdout),
        "hello from tcp\nPING OVER TCP\n"
    );

    // A silent client: each hop waits out its detection bound, then relays as opaque TCP, so
    // the server-first greeting arrives after about two bounds.
    let started = Instant::now();
    let mut silent = TcpStream::connect(out).await.unwrap();
    let mut greeting = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(5), silent.read_exact(&mut greeting))
        .await
        .expect("a silent client waited past the detection bound")
        .unwrap();
    assert_eq!(&greeting, b"hello from tcp\n");
    let waited = started.elapsed();
    assert!(
        waited >= 2 * DETECT && waited < 2 * DETECT + Duration::from_secs(2),
        "{waited:?}"
    );
    drop(silent);

    // Bad input on the HTTP-only listener: a silent client is closed at the bound, garbage at
    // once; both counted, and the listener keeps serving.
    let http_only: SocketAddr = ([127, 0, 0, 1], p.http_only).into();
    let started = Instant::now();
    let mut silent = TcpStream::connect(http_only).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= DETECT && waited < DETECT + Duration::from_secs(2),
        "{waited:?}"
    );
    let mut garbage = TcpStream::connect(http_only).await.unwrap();
    garbage.write_all(b"\x00\x01\x02 not http").await.unwrap();
    assert!(read_to_close(&mut garbage).await.is_empty());
    let (status, _) =
        tokio::task::spawn_blocking(move || mesh_testkit::http_get(http_only, "/still"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(status, 200, "others are still served");

    // A refusing TCP upstream: counted connect failures (two attempts), the client closed.
    let mut refused = TcpStream::connect(("127.0.0.1", p.tcp_dead)).await.unwrap();
    refused.write_all(b"anyone?").await.unwrap();
    assert!(read_to_close(&mut refused).await.is_empty());

    let (_, stats) = mesh_testkit::http_get(a.admin_addr(), "/stats/prometheus").unwrap();
    let at = |labels: &[&str]| metric(&stats, "mesh_detected_connections_total", labels);
    assert_eq!(
        at(&[
            r#"listener="http_only""#,
            r#"protocol="timeout""#,
            r#"action="closed""#
        ]),
        1,
        "{stats}"
    );
    assert_eq!(
        at(&[
            r#"listener="http_only""#,
            r#"protocol="opaque""#,
            r#"action="closed""#
        ]),
        1
    );
    assert_eq!(
        at(&[
            r#"listener="outbound""#,
            r#"protocol="timeout""#,
            r#"action="tcp""#
        ]),
        1
    );
    assert!(
        at(&[
            r#"listener="outbound""#,
            r#"protocol="http1""#,
            r#"action="http""#
        ]) >= 2
    );
    assert!(
        at(&[
            r#"listener="outbound""#,
            r#"protocol="http2""#,
            r#"action="http""#
        ]) >= 2
    );
    assert_eq!(
        metric(
            &stats,
            "mesh_tcp_connect_failures_total",
            &[r#"listener="tcp_dead""#, r#"cluster="dead""#]
        ),
        2
    );
    assert_eq!(
        metric(
            &stats,
            "mesh_tcp_sent_bytes_total",
            &[r#"listener="outbound""#, r#"cluster="inbound_sidecar""#]
        ),
        "ping over tcp\n".len() as u64,
        "nc's bytes (the silent client sent none)"
    );
    a.shutdown().await;
    b.shutdown().await;
}
