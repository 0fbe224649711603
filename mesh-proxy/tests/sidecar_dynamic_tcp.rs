//! A `protocol: tcp` service through two dynamic sidecars configured by our control plane: the
//! caller's opaque `outbound_tcp_echo` listener → the service node's opaque inbound listener →
//! a server-first app. Opaque listeners do no detection, so the app's greeting reaches a client
//! that has sent nothing at once, not after a detection timeout.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Greets, then echoes upper-cased what it got once the client half-closed.
async fn start_tcp_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 ready\n").await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(&got.to_ascii_uppercase()).await.unwrap();
            });
        }
    });
    addr
}

async fn wait_ready(s: &Sidecar) {
    let admin = s.admin_addr();
    let ok = tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
            matches!(mesh_testkit::http_get(admin, "/ready"), Ok((200, _))).then_some(())
        })
    })
    .await
    .unwrap();
    assert!(ok.is_some(), "sidecar never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_services_cross_two_dynamic_sidecars() {
    let app = start_tcp_app().await;
    let p = mesh_testkit::free_ports(6);
    let (echo_in, echo_out, client_tcp, client_out, client_in, svc_port) =
        (p[0], p[1], p[2], p[3], p[4], p[5]);
    let yaml = format!(
        r#"
services:
  - name: echo
    protocol: tcp
    port: {svc_port}
    endpoints: [{{ address: "127.0.0.1:{echo_in}" }}]
nodes:
  - id: echo-1
    service: echo
    listeners: {{ outbound: 127.0.0.1:{echo_out}, inbound: 127.0.0.1:{echo_in}, local_app: "{app}" }}
  - id: client-1
    listeners: {{ outbound: 127.0.0.1:{client_out}, inbound: 127.0.0.1:{client_in}, local_app: 127.0.0.1:1 }}
    tcp_listeners: {{ echo: 127.0.0.1:{client_tcp} }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let source_task = FileSource::new(&path, cache.clone())
        .spawn(Duration::from_millis(50))
        .unwrap();
    let (xds_addr, xds_task) = XdsServer::new(cache.clone())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admins = mesh_testkit::free_ports(2);
    let start = |node: &str, admin: u16| {
        let mut o = DynamicOptions::new(vec![format!("http://{xds_addr}")], node);
        o.admin = SocketAddr::from(([127, 0, 0, 1], admin));
        o.drain_timeout = Duration::from_secs(2);
        Sidecar::start_dynamic(o)
    };
    let echo = start("echo-1", admins[0]).await.unwrap();
    let client = start("client-1", admins[1]).await.unwrap();
    wait_ready(&echo).await;
    wait_ready(&client).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], client_tcp));
    // The listener may bind a moment after /ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{addr}: {e}"),
        }
    };
    let started = Instant::now();
    let mut greeting = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 ready\n");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "opaque listeners wait for no detection: {:?}",
        started.elapsed()
    );
    s.write_all(b"helo mesh\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rest, b"HELO MESH\n",
        "half-close crossed both hops and back"
    );
    // Nothing NACKed.
    let dump = cache.dump();
    for node in ["echo-1", "client-1"] {
        let status = &dump.nodes.iter().find(|n| n.node == node).unwrap().status;
        assert!(
            status.types.iter().all(|t| t.nacked_version.is_none()),
            "{node}: {status:?}"
        );
    }
    client.shutdown().await;
    echo.shutdown().await;
    source_task.abort();
    xds_task.abort();
}
