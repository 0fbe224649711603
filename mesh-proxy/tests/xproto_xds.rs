//! RPC listeners over xDS with real SOFARPC peers (npm `sofa-rpc-node`, `tests/bolt_peer.js`).
//!
//! 1. Our control plane serves a `mesh.yaml` with `protocol: bolt` services to three dynamic
//!    sidecars: a real client → the caller's `outbound_bolt` listener → the service node's
//!    RPC inbound listener → a real server. Editing the service's `routes:` moves the calls to
//!    another service's server (an xDS route update, applied without a restart).
//! 2. A generic_proxy resource our sidecar cannot serve (tracing) is NACKed with its field
//!    path while the RPC listener keeps serving its previous config.
#![allow(clippy::unwrap_used)]

mod interop;
mod scripted_ads;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::v3 as gp;
use mesh_core::{Cluster, ClusterLoadAssignment, Listener};
use mesh_xds::convert::{pack, unpack, XdsResource};
use mesh_xds::server::SnapshotCache;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script() -> String {
    format!("{}/tests/bolt_peer.js", env!("CARGO_MANIFEST_DIR"))
}

/// A real SOFARPC server; the counter follows its accepted connections.
fn start_server(node: &Path, modules: &Path, port: u16) -> (Killed, Arc<Mutex<u64>>) {
    let mut child = Command::new(node)
        .args([script().as_str(), "server", &port.to_string()])
        .env("NODE_PATH", modules)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let accepted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("connections ") {
                *count.lock().unwrap() = n.parse().unwrap();
            }
        }
    });
    (Killed(child), accepted)
}

/// One real call of `com.example.Hello:1.0.sayHi("bob")` through `addr`.
async fn call(node: &Path, modules: &Path, addr: SocketAddr) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(script())
        .args([
            "call",
            &addr.to_string(),
            "com.example.Hello",
            "sayHi",
            "[\"bob\"]",
            "2000",
        ])
        .env("NODE_PATH", modules);
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the bolt peer did not finish in 60 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text} / {}", String::from_utf8_lossy(&out.stderr)))
}

/// Calls until one answers "hi bob" (listeners bind a moment after the config arrives).
async fn call_until_ok(node: &Path, modules: &Path, addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = call(node, modules, addr).await;
        if r["result"] == "hi bob" {
            return;
        }
        assert!(Instant::now() < deadline, "no answer through {addr}: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spec(p: &[u16], app_a: u16, app_b: u16, target: &str) -> String {
    let (a_in, b_in, client_bolt) = (p[0], p[1], p[2]);
    let node = |id: &str, service: &str, inbound: u16, app: u16, bolt: u16, n: usize| {
        format!(
            "  - id: {id}\n{service}    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{inbound}, local_app: 127.0.0.1:{app}, outbound_bolt: 127.0.0.1:{bolt}, outbound_dubbo: 127.0.0.1:{} }}\n",
            p[3 + n],
            p[6 + n],
        )
    };
    format!(
        r#"services:
  - name: hello
    protocol: bolt
    interfaces: [com.example.Hello:1.0]
    routes:
      - match: {{ prefix: /com.example.Hello:1.0/ }}
        route: {{ cluster: {target} }}
    endpoints: [{{ address: "127.0.0.1:{a_in}" }}]
  - name: hello-b
    protocol: bolt
    interfaces: [com.example.HelloB:1.0]
    endpoints: [{{ address: "127.0.0.1:{b_in}" }}]
nodes:
{}{}{}"#,
        node("hello-a-1", "    service: hello\n", a_in, app_a, p[9], 0),
        node("hello-b-1", "    service: hello-b\n", b_in, app_b, p[10], 1),
        node("client-1", "", p[11], 1, client_bolt, 2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_yaml_bolt_services_through_two_dynamic_sidecars() {
    through_dynamic_sidecars(false).await;
}

/// Relies on the RPC proxy swapping a listener's routes in place: a route change that rebuilt
/// the listener would rebind its address, which the sidecar refuses (`Address already in
/// use`, a NACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_yaml_route_edit_moves_bolt_calls_to_another_server() {
    through_dynamic_sidecars(true).await;
}

async fn through_dynamic_sidecars(update_route: bool) {
    let Some((node, modules)) = mesh_testkit::require_sofa_node() else {
        return;
    };
    let apps = mesh_testkit::free_ports(2);
    let (_a, accepted_a) = start_server(&node, &modules, apps[0]);
    let (_b, accepted_b) = start_server(&node, &modules, apps[1]);
    let p = mesh_testkit::free_ports(12);
    let cp = interop::ControlPlane::start(&spec(&p, apps[0], apps[1], "hello")).await;
    let a = cp.sidecar("hello-a-1").await;
    let b = cp.sidecar("hello-b-1").await;
    let client = cp.sidecar("client-1").await;
    let out = SocketAddr::from(([127, 0, 0, 1], p[2]));

    // Client → client-1's outbound_bolt → hello-a-1's RPC inbound → server A.
    call_until_ok(&node, &modules, out, Duration::from_secs(15)).await;
    assert!(*accepted_a.lock().unwrap() >= 1);
    assert_eq!(*accepted_b.lock().unwrap(), 0, "B got no call yet");

    // The route now sends com.example.Hello:1.0 to hello-b: calls reach server B.
    if update_route {
        edit_route(
            &cp.path,
            &spec(&p, apps[0], apps[1], "hello-b"),
            &cp.cache,
            &node,
            &modules,
            out,
            &accepted_a,
            &accepted_b,
        )
        .await;
    }
    // Nothing NACKed along the way.
    let dump = cp.cache.dump();
    for id in ["hello-a-1", "hello-b-1", "client-1"] {
        let status = &dump.nodes.iter().find(|n| n.node == id).unwrap().status;
        assert!(
            status.types.iter().all(|t| t.nacked_version.is_none()),
            "{id}: {status:?}"
        );
    }
    for s in [client, b, a] {
        s.shutdown().await;
    }
}

/// Writes `yaml` (the route to hello-b) and waits until calls reach server B, then checks
/// server A takes no new connection.
#[allow(clippy::too_many_arguments)]
async fn edit_route(
    path: &Path,
    yaml: &str,
    cache: &SnapshotCache,
    node: &Path,
    modules: &Path,
    out: SocketAddr,
    accepted_a: &Mutex<u64>,
    accepted_b: &Mutex<u64>,
) {
    std::fs::write(path, yaml).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while *accepted_b.lock().unwrap() == 0 {
        if Instant::now() > deadline {
            let status: Vec<_> = cache
                .dump()
                .nodes
                .iter()
                .map(|n| format!("{}: {:?}", n.node, n.status))
                .collect();
            panic!("the route update never applied: {status:#?}");
        }
        let r = call(node, modules, out).await;
        assert_eq!(r["result"], "hi bob", "{r}");
    }
    let before_a = *accepted_a.lock().unwrap();
    for _ in 0..3 {
        let r = call(node, modules, out).await;
        assert_eq!(r["result"], "hi bob", "{r}");
    }
    assert_eq!(
        *accepted_a.lock().unwrap(),
        before_a,
        "server A takes no new connection after the update"
    );
}

fn rpc_listener(port: u16) -> Listener {
    mesh_core::yaml::from_str(&format!(
        r#"
name: rpc_out
address: 127.0.0.1:{port}
direction: outbound
xprotocol:
  protocol: bolt
  route_config:
    name: rpc_out
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: /com.example.Hello:1.0/ }}
            route: {{ cluster: app }}
"#
    ))
    .unwrap()
}

/// `l`'s proto with tracing set on its generic proxy.
fn with_tracing(l: &Listener) -> lpb::Listener {
    let mut p = l.to_proto();
    let Some(lpb::filter::ConfigType::TypedConfig(any)) =
        &mut p.filter_chains[0].filters[0].config_type
    else {
        panic!("no typed_config")
    };
    let mut g: gp::GenericProxy = unpack(any, "").unwrap();
    g.tracing = Some(Default::default());
    *any = pack(&g);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unservable_generic_proxy_is_nacked_with_its_path_and_calls_keep_working() {
    let Some((node, modules)) = mesh_testkit::require_sofa_node() else {
        return;
    };
    let ports = mesh_testkit::free_ports(2);
    let (_server, _) = start_server(&node, &modules, ports[0]);
    let mut s = scripted_ads::Setup::start(None).await;
    let mut c = Cluster::new("app");
    let app = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    c.load_assignment = Some(ClusterLoadAssignment::from_addrs("app", [app]));
    s.ads.send(&[c]);
    let l = rpc_listener(ports[1]);
    s.ads.send(std::slice::from_ref(&l));
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    call_until_ok(&node, &modules, addr, Duration::from_secs(15)).await;

    s.ads
        .send_raw(Listener::TYPE_URL, vec![pack(&with_tracing(&l))]);
    let detail = s.ads.nacked(Listener::TYPE_URL).await;
    assert!(
        detail.contains("filter_chains[0].filters[0].typed_config.tracing"),
        "{detail}"
    );
    let r = call(&node, &modules, addr).await;
    assert_eq!(r["result"], "hi bob", "the old listener keeps serving: {r}");
    s.stop().await;
}
