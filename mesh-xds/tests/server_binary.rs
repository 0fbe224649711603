//! The `mesh-control-plane` binary: serves examples/mesh.yaml; the admin endpoint shows the
//! snapshots, what a node ACKed and NACKed (with the error), and Prometheus metrics.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_example_and_its_admin_dump() {
    let ports = free_ports(2);
    let (xds, admin) = (
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    );
    let config = mesh_testkit::workspace_root().join("examples/mesh.yaml");
    let _child = Killed(
        Command::new(env!("CARGO_BIN_EXE_mesh-control-plane"))
            .arg("--config")
            .arg(&config)
            .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
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
