//! Real Envoy configured and re-configured over ADS by the control plane from mesh.yaml.
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_common::{get_backend, mesh_yaml, wait_for_body, ControlPlane};
use mesh_testkit::ads_bootstrap;
use mesh_testkit::{free_ports, EnvoyProcess, HttpStub};

fn envoy_follows_mesh_yaml(api_type: &str) {
    let _bin = mesh_testkit::envoy_or_skip!();
    let a = HttpStub::start(200, "a").unwrap();
    let b = HttpStub::start(200, "b").unwrap();
    let ports = free_ports(2);
    let node = format!("envoy-{}", api_type.to_lowercase());
    let mut cp = ControlPlane::start(&mesh_yaml(&node, ports[0], ports[1], a.addr()));
    let envoy = EnvoyProcess::start(&ads_bootstrap(&node, cp.addr, api_type)).unwrap();
    let outbound = SocketAddr::from(([127, 0, 0, 1], ports[0]));

    // Envoy loaded the listener, routes, cluster and endpoints and routes to upstream a.
    wait_for_body(outbound, "a", Duration::from_secs(10));
    assert_eq!(envoy.listener_addr("outbound").unwrap(), outbound);

    // An edit moves the traffic to b within a second.
    let start = Instant::now();
    let st = cp.edit(&mesh_yaml(&node, ports[0], ports[1], b.addr()));
    assert!(st.last_error.is_none(), "{st:?}");
    wait_for_body(outbound, "b", Duration::from_secs(1));
    let took = start.elapsed();
    eprintln!("{api_type}: mesh.yaml edit to Envoy routing to b: {took:?}");

    // An invalid edit is refused; Envoy keeps routing to b.
    let bad = mesh_yaml(&node, ports[0], ports[1], b.addr()).replace(
        "connect_timeout: 1s",
        "connect_timeout: 1s\n    lb_policy: { maglev: { table_size: 1000 } }",
    );
    let st = cp.edit(&bad);
    let err = st.last_error.unwrap();
    assert!(err.reason.contains("not a prime"), "{err}");
    for _ in 0..10 {
        assert_eq!(get_backend(outbound).unwrap(), (200, "b".to_owned()));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Envoy never NACKed anything.
    let dump = cp.cache.dump();
    let status = &dump.nodes.iter().find(|n| n.node == node).unwrap().status;
    assert!(
        status.types.iter().all(|t| t.nacked_version.is_none()),
        "{status:?}"
    );
    assert!(
        status.types.iter().any(|t| t.acked_version.is_some()),
        "{status:?}"
    );
    drop(envoy);
}

#[test]
fn envoy_sotw_ads_follows_mesh_yaml() {
    envoy_follows_mesh_yaml("GRPC");
}

#[test]
fn envoy_delta_ads_follows_mesh_yaml() {
    envoy_follows_mesh_yaml("DELTA_GRPC");
}
