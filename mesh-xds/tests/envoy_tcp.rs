//! Real Envoy fed by our control plane from a mesh.yaml with a `protocol: tcp` service: it
//! ACKs the opaque `tcp_proxy` listeners and the WebSocket `upgrade_configs`, and relays bytes
//! through both opaque listeners (the outbound one to the service, the service node's inbound
//! one to its app).
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use envoy_common::{wait_for_body, ControlPlane};
use mesh_testkit::{ads_bootstrap, free_ports, EnvoyProcess, HttpStub};

/// A blocking echo server: each connection's bytes back, then close at the client's end.
fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            });
        }
    });
    addr
}

/// Sends `msg`, half-closes, reads the answer; retried until `limit` (the listener may not be
/// up yet).
fn echo_through(addr: SocketAddr, msg: &[u8], limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        let attempt = (|| -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(msg)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut back = Vec::new();
            s.read_to_end(&mut back)?;
            Ok(back)
        })();
        match attempt {
            Ok(back) if back == msg => return back,
            Ok(back) => last = format!("got {:?}", String::from_utf8_lossy(&back)),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no echo through {addr} within {limit:?}; last: {last}");
}

#[test]
fn envoy_serves_tcp_services_from_mesh_yaml() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let echo = start_echo();
    let http = HttpStub::start(200, "a").unwrap();
    let p = free_ports(3);
    let node = "envoy-tcp";
    let yaml = format!(
        r#"
services:
  - name: backend
    port: 80
    endpoints: [{{ address: "{http}" }}]
  - name: echo
    protocol: tcp
    port: {tcp}
    endpoints: [{{ address: "{echo}" }}]
nodes:
  - id: {node}
    service: echo
    listeners: {{ outbound: 127.0.0.1:{out}, inbound: 127.0.0.1:{inb}, local_app: "{echo}" }}
"#,
        http = http.addr(),
        out = p[0],
        inb = p[1],
        tcp = p[2],
    );
    let cp = ControlPlane::start(&yaml);
    let envoy = EnvoyProcess::start(&ads_bootstrap(node, cp.addr, "GRPC")).unwrap();
    // The HTTP side still works (its listener carries upgrade_configs now).
    wait_for_body(([127, 0, 0, 1], p[0]).into(), "a", Duration::from_secs(10));
    // Envoy's tcp_proxy on the service's port, and on the opaque inbound listener.
    let msg = b"bytes through envoy's tcp_proxy\n";
    echo_through(([127, 0, 0, 1], p[2]).into(), msg, Duration::from_secs(10));
    echo_through(([127, 0, 0, 1], p[1]).into(), msg, Duration::from_secs(10));
    assert_eq!(
        envoy.listener_addr("outbound_tcp_echo").unwrap(),
        SocketAddr::from(([127, 0, 0, 1], p[2]))
    );
    // Nothing was NACKed.
    let dump = cp.cache.dump();
    let status = &dump.nodes.iter().find(|n| n.node == node).unwrap().status;
    assert!(
        status.types.iter().all(|t| t.nacked_version.is_none()),
        "{status:?}"
    );
    drop(envoy);
}
