//! The `mesh-control-plane` binary: serves examples/mesh.yaml; the admin endpoint shows the
//! snapshots, what a node ACKed and NACKed (with the error), and Prometheus metrics; on SIGTERM
//! it drains and exits 0.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_testkit::{free_ports, http_get, wait_for};
use mesh_xds::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn request(nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "orders-1".into(),
            ..Node::default()
        }),
        type_url: ResourceType::Cluster.type_url().into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| RpcStatus {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..DiscoveryRequest::default()
    }
}

/// Starts the binary on examples/mesh.yaml with `extra` flags, on free ports, and waits for its
/// admin endpoint. Returns the process (killed on drop) and the xDS and admin addresses.
async fn start(extra: &[&str]) -> (Killed, SocketAddr, SocketAddr) {
    let ports = free_ports(2);
    let (xds, admin) = (
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    );
    let config = mesh_testkit::workspace_root().join("examples/mesh.yaml");
    let child = Killed(
        Command::new(env!("CARGO_BIN_EXE_mesh-control-plane"))
            .arg("--config")
            .arg(&config)
            .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            matches!(http_get(admin, "/healthz"), Ok((200, _))).then_some(())
        })
    })
    .await
    .unwrap();
    assert!(up.is_some(), "admin endpoint up");
    (child, xds, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_example_and_its_admin_dump() {
    let (_child, xds, admin) = start(&[]).await;

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(request("", None)).await.unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.resources.len(),
        4,
        "orders, payments, payments-next, local_app"
    );
    tx.send(request(&resp.nonce, Some("cluster rejected: test")))
        .await
        .unwrap();

    let dump = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            let (_, body) = http_get(admin, "/snapshots").ok()?;
            body.contains("cluster rejected: test").then_some(body)
        })
    })
    .await
    .unwrap()
    .expect("the NACK and its error in the dump");
    let json: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    let orders = nodes.iter().find(|n| n["node"] == "orders-1").unwrap();
    assert!(orders["set"].as_array().unwrap().len() >= 4);
    let (status, metrics) =
        tokio::task::spawn_blocking(move || http_get(admin, "/metrics").unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("xds_streams_open 1"), "{metrics}");
    assert!(
        metrics.contains("xds_nacks_total{type=\"cluster\"} 1"),
        "{metrics}"
    );
}

/// On SIGTERM it stops accepting, tells the open connections GOAWAY, and exits 0 within its
/// drain bound even though ADS streams never end by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_within_the_bound() {
    let (mut child, xds, _admin) = start(&["--drain-timeout", "2s"]).await;

    // A subscriber with an open ADS stream.
    let client = mesh_xds::client::XdsClient::builder()
        .address(format!("http://{xds}"))
        .node_id("orders-1")
        .start()
        .unwrap();
    client.wait_ready(Duration::from_secs(10)).await.unwrap();

    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let sent = Instant::now();
    let (child, status) = tokio::task::spawn_blocking(move || {
        let status = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            child.0.try_wait().unwrap()
        });
        (child, status)
    })
    .await
    .unwrap();
    let status = status.expect("still running 10 s after SIGTERM");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?} (bound 2 s)");
    // New connections are refused once it is gone.
    assert!(std::net::TcpStream::connect(xds).is_err());
    drop(child);
    client.shutdown().await;
}
