//! Real Envoy enforces a route's rate limit from mesh.yaml. The per-route `local_ratelimit`
//! config is sent wrapped in an optional `FilterConfig` (so proxyless gRPC clients, which lack
//! the filter, skip it instead of NACKing the route table): Envoy must still enforce it.
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_common::{wait_for_body, ControlPlane};
use mesh_testkit::ads_bootstrap;
use mesh_testkit::{free_ports, http_request, EnvoyProcess, HttpStub};

fn get(listener: SocketAddr, path: &str) -> u16 {
    http_request(listener, "GET", path, &[("Host", "backend")], b"")
        .unwrap()
        .status
}

#[test]
fn envoy_enforces_a_route_rate_limit_from_mesh_yaml() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let upstream = HttpStub::start(200, "a").unwrap();
    let ports = free_ports(2);
    let node = "envoy-route-ratelimit";
    let yaml = format!(
        r#"
services:
  - name: backend
    connect_timeout: 1s
    endpoints:
      - address: {upstream}
    routes:
      - name: limited
        match: {{ prefix: /limited }}
        route:
          cluster: backend
          rate_limit: {{ token_bucket: {{ max_tokens: 2, fill_interval: 1h }} }}
      - match: {{ prefix: / }}
        route: {{ cluster: backend }}
nodes:
  - id: {node}
    listeners: {{ outbound: 127.0.0.1:{out}, inbound: 127.0.0.1:{inb}, local_app: 127.0.0.1:1 }}
"#,
        upstream = upstream.addr(),
        out = ports[0],
        inb = ports[1],
    );
    let cp = ControlPlane::start(&yaml);
    let _envoy = EnvoyProcess::start(&ads_bootstrap(node, cp.addr, "GRPC")).unwrap();
    let outbound = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_for_body(outbound, "a", Duration::from_secs(10));

    let limited: Vec<u16> = (0..4).map(|_| get(outbound, "/limited")).collect();
    assert_eq!(limited, [200, 200, 429, 429], "two tokens, then 429");
    assert_eq!(get(outbound, "/other"), 200, "other routes are not limited");
}
