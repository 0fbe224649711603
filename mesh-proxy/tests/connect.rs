//! Terminated CONNECT through a static sidecar: a real client (curl's `--proxytunnel` sends
//! CONNECT) through the sidecar's tunnel to a real HTTP server, raw bytes both ways to an echo
//! app (over HTTP/1.1 and HTTP/2), and the bad cases: an authority no route serves (404), a cluster that refuses (502, the
//! sidecar's answer to a connect failure), each counted, with the listener still serving.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An app that echoes upper-cased until the client's end of stream, then closes.
async fn start_echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let up = buf[..n].to_ascii_uppercase();
                    if s.write_all(&up).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn sidecar(port: u16, admin: u16, web: SocketAddr, echo: SocketAddr) -> Bootstrap {
    let dead = mesh_testkit::free_port();
    let tunnel = |cluster: &str| {
        format!(
            "[ {{ match: {{ connect_matcher: {{}} }}, route: {{ cluster: {cluster}, \
             upgrade_configs: [ {{ upgrade_type: CONNECT, connect_config: {{}} }} ] }} }} ]"
        )
    };
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 1s
listeners:
  - name: edge
    address: 127.0.0.1:{port}
    direction: outbound
    http: {{ upgrades: [CONNECT] }}
    route_config:
      name: edge
      virtual_hosts:
        - {{ name: web, domains: ["web.internal:80"], routes: {web_routes} }}
        - {{ name: echo, domains: ["echo.internal:7"], routes: {echo_routes} }}
        - {{ name: dead, domains: ["dead.internal:80"], routes: {dead_routes} }}
        - name: plain
          domains: ["*"]
          routes: [ {{ match: {{ prefix: / }}, route: {{ cluster: web }} }} ]
clusters:
  - name: web
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{web}" }} ] }} ] }}
  - name: echo
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{echo}" }} ] }} ] }}
  - name: dead
    connect_timeout: 1s
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{dead}" }} ] }} ] }}
"#,
        web_routes = tunnel("web"),
        echo_routes = tunnel("echo"),
        dead_routes = tunnel("dead"),
    );
    Bootstrap::from_yaml(&yaml, Path::new("connect.yaml")).unwrap()
}

/// curl through the proxy with a tunnel: (exit status, the CONNECT's status, the body).
fn curl_tunnel(curl: &PathBuf, proxy: u16, url: &str) -> (Option<i32>, String, String) {
    let out = Command::new(curl)
        .args(["-sS", "--max-time", "10", "-p", "-x"])
        .arg(format!("http://127.0.0.1:{proxy}"))
        .args(["-w", "\n%{http_connect}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, connect) = text.rsplit_once('\n').unwrap_or(("", &text));
    (out.status.code(), connect.to_owned(), body.to_owned())
}

fn metric(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_routed_terminated_and_relayed() {
    let Some(curl) = mesh_testkit::require_curl() else {
        return;
    };
    let web = mesh_testkit::HttpStub::start(200, "hello through the tunnel").unwrap();
    let echo = start_echo_app().await;
    let f = mesh_testkit::free_ports(2);
    let (port, admin) = (f[0], f[1]);
    let sidecar = Sidecar::start_static(sidecar(port, admin, web.addr(), echo))
        .await
        .unwrap();

    // A real client: curl sends CONNECT web.internal:80, then its GET inside the tunnel.
    let c = curl.clone();
    let (code, connect, body) =
        tokio::task::spawn_blocking(move || curl_tunnel(&c, port, "http://web.internal/"))
            .await
            .unwrap();
    assert_eq!((code, connect.as_str()), (Some(0), "200"), "{body}");
    assert_eq!(body, "hello through the tunnel");
    assert_eq!(
        web.requests(),
        1,
        "the GET crossed the tunnel to the server"
    );

    // Raw bytes both ways, in several rounds, then the client's end of stream ends it.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"CONNECT echo.internal:7 HTTP/1.1\r\nHost: echo.internal:7\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed before the CONNECT answer");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for round in ["ping", "\0binary\u{7f}", "last"] {
        s.write_all(round.as_bytes()).await.unwrap();
        let mut got = vec![0u8; round.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, round.to_ascii_uppercase().as_bytes());
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes after the client's end of stream")
        .unwrap();
    assert!(rest.is_empty());

    // No route for the authority: 404, the tunnel never opens.
    let c = curl.clone();
    let (code, connect, _) =
        tokio::task::spawn_blocking(move || curl_tunnel(&c, port, "http://nowhere.internal/"))
            .await
            .unwrap();
    assert_ne!(code, Some(0));
    assert_eq!(connect, "404");
    // The cluster refuses: the connect failure is the sidecar's 502.
    let c = curl.clone();
    let (code, connect, _) =
        tokio::task::spawn_blocking(move || curl_tunnel(&c, port, "http://dead.internal/"))
            .await
            .unwrap();
    assert_ne!(code, Some(0));
    assert_eq!(connect, "502");

    // Plain requests on the same listener are unaffected (a prefix route never sees CONNECT,
    // a connect_matcher never sees GET).
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = tokio::task::spawn_blocking(move || mesh_testkit::http_get(addr, "/"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello through the tunnel"));

    let admin: SocketAddr = ([127, 0, 0, 1], admin).into();
    let (_, text) = tokio::task::spawn_blocking(move || mesh_testkit::http_get(admin, "/metrics"))
        .await
        .unwrap()
        .unwrap();
    let edge = r#"listener="edge""#;
    assert_eq!(
        metric(
            &text,
            "mesh_local_replies_total",
            &[edge, r#"code="no_route""#]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mesh_local_replies_total",
            &[edge, r#"code="upstream_connect_failure""#]
        ),
        1,
        "{text}"
    );
    sidecar.shutdown().await;
}

/// HTTP/2 CONNECT (RFC 9113 §8.5, `:authority` and no `:path`) from hyper's h2c client: the
/// same route, the stream becomes the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connect_is_terminated_too() {
    let web = mesh_testkit::HttpStub::start(200, "unused").unwrap();
    let echo = start_echo_app().await;
    let f = mesh_testkit::free_ports(2);
    let (port, admin) = (f[0], f[1]);
    let sidecar = Sidecar::start_static(sidecar(port, admin, web.addr(), echo))
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let connect = |authority: &str| {
        http::Request::connect(authority)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let resp = send
        .send_request(connect("nowhere.internal:7"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = send.send_request(connect("echo.internal:7")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let upgraded = tokio::time::timeout(Duration::from_secs(5), hyper::upgrade::on(resp))
        .await
        .unwrap()
        .unwrap();
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    tunnel.write_all(b"over h2").await.unwrap();
    let mut got = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"OVER H2");
    // An open tunnel is ended at the drain deadline (1 s here), not left behind.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), sidecar.shutdown())
        .await
        .expect("shutdown waits for the tunnel only until the drain deadline");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the tunnel is closed after the drain deadline"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    drop(send);
    driver.abort();
}
