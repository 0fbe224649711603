//! Proxyless gRPC with a real gRPC xDS client: Python grpcio (its C-core xDS resolver) with a
//! bootstrap pointing at our control plane resolves `xds:///hello`, calls a tonic server
//! through the endpoints we serve, and follows a hot reload of mesh.yaml to another server,
//! ACKing every resource on the way.
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_common::ControlPlane;
use mesh_xds::server::ResourceType;
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

/// Service `hello` (gRPC, so `http2`) at `endpoint`, a second service, and the proxyless node.
fn mesh_yaml(endpoint: SocketAddr) -> String {
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
    endpoints:
      - address: 127.0.0.1:9
        zone: z1
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
    let mut cp = ControlPlane::start(&mesh_yaml(first));
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
    let status = cp.edit(&mesh_yaml(second));
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    let not_serving = response_hex(ServingStatus::NotServing);
    let answer = client.command(&format!("until {not_serving} 100 5"));
    let mut fields = answer.split(' ');
    assert_eq!(
        fields.next(),
        Some(not_serving.as_str()),
        "after the reload the calls reach the second server: {answer}"
    );
    assert_node_acked_everything(&cp);
    eprintln!(
        "resolved and called in {resolved_in:?}; after the reload: {answer} (last, calls, s)"
    );
}

#[test]
fn a_node_that_is_not_proxyless_gets_no_api_listener() {
    // The same file translates for a sidecar node without API listeners: a gRPC client that
    // bootstraps as an unlisted node would find no `hello` listener (checked here on the
    // snapshot, since a missing resource only times out on the client).
    let (_, snaps) = mesh_xds::source::MeshSpec::load_str(
        "mesh.yaml",
        &mesh_yaml("127.0.0.1:1".parse().unwrap()),
    )
    .unwrap();
    let listeners = snaps.fallback.of(ResourceType::Listener).items();
    assert!(listeners.contains_key("outbound") && !listeners.contains_key("hello"));
    let proxyless = snaps.nodes[NODE].of(ResourceType::Listener).items();
    assert!(proxyless.contains_key("hello") && proxyless.contains_key("other"));
}
