//! Proxyless gRPC with a real gRPC xDS client: Python grpcio (its C-core xDS resolver) with a
//! bootstrap pointing at our control plane resolves `xds:///hello`, calls a tonic server
//! through the endpoints we serve, and follows a hot reload of mesh.yaml to another server,
//! ACKing every resource on the way; a second service uses every LB policy and route feature
//! mesh.yaml has, and is ACKed too.
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_common::ControlPlane;
use mesh_xds::ResourceType;
use prost::Message;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::ServingStatus;

/// The proxyless node's id (in the bootstrap and in mesh.yaml).
const NODE: &str = "grpc-client-1";
/// The health service name both servers know, with different statuses.
const CHECKED: &str = "mesh.Hello";
/// The Python client exits by itself after this many seconds.
const CLIENT_LIFETIME_S: u32 = 60;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The raw `HealthCheckResponse` a server answers with `status`, as hex.
fn response_hex(status: ServingStatus) -> String {
    let status = match status {
        ServingStatus::Serving => 1,
        ServingStatus::NotServing => 2,
        ServingStatus::Unknown => 0,
    };
    hex(&HealthCheckResponse { status }.encode_to_vec())
}

/// A tonic gRPC server (the standard health service) reporting `status` for [`CHECKED`].
async fn health_server(status: ServingStatus) -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(CHECKED, status).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

/// Service `hello` (gRPC, so `http2`) at `endpoint`; service `other` at `others`, with most of
/// what mesh.yaml can say about a service (every LB policy, through a weighted route to four
/// clusters, a route with a rate limit, a fault filter, retries and a hash policy); and the
/// proxyless node.
fn mesh_yaml(endpoint: SocketAddr, others: SocketAddr) -> String {
    format!(
        r#"
services:
  - name: hello
    protocol: http2
    connect_timeout: 1s
    endpoints:
      - address: {endpoint}
  - name: other
    protocol: http2
    lb_policy: {{ maglev: {{ table_size: 65537 }} }}
    circuit_breakers: {{ max_requests: 10 }}
    outlier_detection: {{ consecutive_5xx: 3 }}
    health_check: {{ path: /healthz, interval: 1s, timeout: 1s }}
    endpoints:
      - {{ address: "{others}", zone: z1 }}
    routes:
      - name: limited
        match: {{ grpc: {{ service: pkg.Other, method: Slow }}, headers: [{{ name: x-canary, exact: "true" }}] }}
        route:
          cluster: other
          timeout: 2s
          retry_policy: {{ retry_on: "5xx,unavailable", num_retries: 2, per_try_timeout: 1s }}
          rate_limit: {{ token_bucket: {{ max_tokens: 10, fill_interval: 1s }} }}
          hash_policy: [{{ header: x-user }}]
        filters:
          - fault: {{ abort: {{ http_status: 503, percentage: 1.0 }} }}
      - match: {{ prefix: / }}
        route:
          weighted_clusters:
            - {{ name: other, weight: 1 }}
            - {{ name: random, weight: 1 }}
            - {{ name: least, weight: 1 }}
            - {{ name: ring, weight: 1 }}
  - name: random
    protocol: http2
    lb_policy: random
    endpoints: [{{ address: "{others}" }}]
  - name: least
    protocol: http2
    lb_policy: {{ least_request: {{ choice_count: 2 }} }}
    endpoints: [{{ address: "{others}" }}]
  - name: ring
    protocol: http2
    lb_policy: {{ ring_hash: {{ minimum_ring_size: 1024, maximum_ring_size: 8192 }} }}
    endpoints: [{{ address: "{others}" }}]
nodes:
  - id: {NODE}
    proxyless: true
"#
    )
}

/// The gRPC xDS bootstrap: our control plane over plaintext, and the node id. grpcio 1.85
/// speaks xDS v3 only, so no `server_features` entry is needed.
fn bootstrap(xds: SocketAddr) -> String {
    serde_json::json!({
        "xds_servers": [{
            "server_uri": xds.to_string(),
            "channel_creds": [{ "type": "insecure" }],
            "server_features": [],
        }],
        "node": { "id": NODE, "cluster": "test" },
    })
    .to_string()
}

/// The Python client process, killed on drop.
struct PyClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PyClient {
    fn start(python: &Path, bootstrap: &Path, target: &str) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxyless_grpc_client.py");
        let request = HealthCheckRequest {
            service: CHECKED.into(),
        };
        let mut child = Command::new(python)
            .arg(script)
            .args([target, &hex(&request.encode_to_vec())])
            .arg(CLIENT_LIFETIME_S.to_string())
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            // Loopback only: never through a proxy from the environment.
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("grpc_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and returns its answer line (bounded: the client ends itself after
    /// [`CLIENT_LIFETIME_S`], which closes its stdout).
    fn command(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the python client exited on {cmd:?}");
        line.trim().to_owned()
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until the node has ACKed the endpoints version set now, and checks that it
/// NACKed nothing.
fn assert_node_acked_everything(cp: &ControlPlane) {
    let set = cp.cache.snapshot(NODE).unwrap();
    let want = set.of(ResourceType::Endpoint).version();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dump = cp.cache.dump();
        let node = dump.nodes.iter().find(|n| n.node == NODE).unwrap();
        for t in &node.status.types {
            assert!(
                t.nack_error.is_none(),
                "the gRPC client NACKed {:?}: {:?}",
                t.kind,
                t.nack_error
            );
        }
        let acked = |kind| {
            node.status
                .types
                .iter()
                .find(|t| t.kind == kind)
                .and_then(|t| t.acked_version.clone())
        };
        let all_acked = [
            ResourceType::Listener,
            ResourceType::Route,
            ResourceType::Cluster,
        ]
        .into_iter()
        .all(|k| acked(k).is_some());
        if all_acked && acked(ResourceType::Endpoint).as_deref() == Some(want.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no ACK of every type (endpoints at {want}): {:?}",
            node.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_grpc_xds_client_resolves_the_service_and_follows_a_reload() {
    let python = mesh_testkit::grpc_python_or_skip!();
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let first = servers.block_on(health_server(ServingStatus::Serving));
    let second = servers.block_on(health_server(ServingStatus::NotServing));
    let mut cp = ControlPlane::start(&mesh_yaml(first, first));
    let dir = tempfile::tempdir().unwrap();
    let bootstrap_path = dir.path().join("bootstrap.json");
    std::fs::write(&bootstrap_path, bootstrap(cp.addr)).unwrap();

    let start = Instant::now();
    let mut client = PyClient::start(&python, &bootstrap_path, "xds:///hello");
    let serving = response_hex(ServingStatus::Serving);
    let answer = client.command("call");
    if answer != serving {
        // A NACK is the likely cause: name it.
        assert_node_acked_everything(&cp);
    }
    assert_eq!(
        answer, serving,
        "the first call through xds:///hello reaches the first server"
    );
    let resolved_in = start.elapsed();
    assert_node_acked_everything(&cp);

    // Hot reload: `hello` moves to the second server; the live channel follows.
    let status = cp.edit(&mesh_yaml(second, first));
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    let not_serving = response_hex(ServingStatus::NotServing);
    let followed = client.command(&format!("until {not_serving} 100 5"));
    assert_eq!(
        followed.split(' ').next(),
        Some(not_serving.as_str()),
        "after the reload the calls reach the second server: {followed}"
    );
    assert_node_acked_everything(&cp);

    // The other service: a weighted route over clusters of every LB policy (maglev, least
    // request and random are served to gRPC as ring hash and round robin), a rate-limited route (optional
    // for gRPC) and a fault filter; all ACKed, and the call reaches the first server.
    let mut other = PyClient::start(&python, &bootstrap_path, "xds:///other");
    let answer = other.command("call");
    if answer != serving {
        assert_node_acked_everything(&cp);
    }
    assert_eq!(answer, serving, "xds:///other reaches its endpoint");
    assert_node_acked_everything(&cp);
    eprintln!(
        "resolved and called in {resolved_in:?}; after the reload: {followed} (last, calls, s)"
    );
}

#[test]
fn a_node_that_is_not_proxyless_gets_no_api_listener() {
    // The same file translates for a sidecar node without API listeners: a gRPC client that
    // bootstraps as an unlisted node would find no `hello` listener (checked here on the
    // snapshot, since a missing resource only times out on the client).
    let (_, snaps) = mesh_xds::source::MeshSpec::load_str(
        "mesh.yaml",
        &mesh_yaml(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ),
    )
    .unwrap();
    let listeners = snaps.fallback.of(ResourceType::Listener).items();
    assert!(listeners.contains_key("outbound") && !listeners.contains_key("hello"));
    let proxyless = snaps.nodes[NODE].of(ResourceType::Listener).items();
    assert!(proxyless.contains_key("hello") && proxyless.contains_key("other"));
    // Policies gRPC lacks are served to it as ones it has; sidecars get them as they are.
    let lb = |snap: &mesh_xds::server::Snapshot, name: &str| {
        let c: mesh_core::Cluster =
            mesh_xds::convert::decode(snap.of(ResourceType::Cluster).get(name).unwrap().any())
                .unwrap();
        c.lb_policy
    };
    let grpc = &snaps.nodes[NODE];
    assert!(matches!(
        lb(grpc, "other"),
        mesh_core::LbPolicy::RingHash { .. }
    ));
    assert_eq!(lb(grpc, "least"), mesh_core::LbPolicy::RoundRobin);
    assert_eq!(lb(grpc, "random"), mesh_core::LbPolicy::RoundRobin);
    assert!(matches!(
        lb(&snaps.fallback, "other"),
        mesh_core::LbPolicy::Maglev { .. }
    ));
    assert!(matches!(
        lb(&snaps.fallback, "least"),
        mesh_core::LbPolicy::LeastRequest { .. }
    ));
}
