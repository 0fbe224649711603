//! gRPC through the in-process mesh: a tonic client whose transport is the mesh's layers
//! (router → rate limit → load balancer → pooled HTTP/2 upstream), fed live by xDS through
//! `Mesh::connect`, balancing over two replicas of a tonic server. No sidecar hop.
//!
//! Run: `cargo run --example grpc`
//!
//! Why `with_origin`: a tonic client built with `new(transport)` sends only the method's path
//! (`/grpc.health.v1.Health/Check`), and the router picks a virtual host by authority. The
//! origin (`http://health`) names the service to call, as `http://health/...` would for HTTP.

use std::net::SocketAddr;

use mesh_examples::ControlPlane;
use mesh_xds::sdk::{Mesh, MeshOptions, MeshService};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A replica of the gRPC server (the standard health service stands in for an app). It reports
/// `demo.Greeter` as `status`, so a caller can tell the replicas apart.
async fn replica(
    status: tonic_health::ServingStatus,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), mesh_core::BoxError> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("demo.Greeter", status).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _keep = reporter;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok((addr, task))
}

/// The mesh: `health` over the given replicas (HTTP/2 to them, as gRPC needs), and
/// `health-limited`, the same replicas behind a route limited to one call a minute.
fn mesh_yaml(replicas: &[SocketAddr]) -> String {
    let eps: Vec<String> = replicas
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    let eps = eps.join(", ");
    format!(
        r#"
services:
  - name: health
    protocol: http2
    endpoints: [ {eps} ]
    routes:
      - match: {{ grpc: {{ service: grpc.health.v1.Health }} }}
        route: {{ cluster: health, timeout: 2s, retry_policy: {{ retry_on: "unavailable,connect-failure", num_retries: 2 }} }}
  - name: health-limited
    protocol: http2
    endpoints: [ {eps} ]
    routes:
      - name: limited
        match: {{ grpc: {{ service: grpc.health.v1.Health }} }}
        route: {{ cluster: health-limited, rate_limit: {{ token_bucket: {{ max_tokens: 1, fill_interval: 60s }} }} }}
nodes:
  - {{ id: grpc-sdk-1, sdk: true }}
"#
    )
}

/// One health check of `demo.Greeter` through the mesh, to the service `origin` names.
async fn check(transport: &MeshService, origin: &str) -> Result<ServingStatus, tonic::Status> {
    let origin = origin
        .parse()
        .map_err(|e| tonic::Status::invalid_argument(format!("{e}")))?;
    let mut client = HealthClient::with_origin(transport.clone(), origin);
    let resp = client
        .check(HealthCheckRequest {
            service: "demo.Greeter".into(),
        })
        .await?;
    Ok(resp.into_inner().status())
}

#[tokio::main]
async fn main() -> Result<(), mesh_core::BoxError> {
    let (a, _a) = replica(tonic_health::ServingStatus::Serving).await?;
    let (b, _b) = replica(tonic_health::ServingStatus::NotServing).await?;
    let cp = ControlPlane::start(&mesh_yaml(&[a, b])).await?;
    let mesh = Mesh::connect(MeshOptions::new(cp.url(), "grpc-sdk-1")).await?;
    let transport = mesh.client();
    for i in 0..4 {
        let status = check(&transport, "http://health").await?;
        println!("call {i}: demo.Greeter is {status:?}");
    }
    println!("4 calls balanced over {a} and {b} by the in-process mesh, no sidecar");
    mesh.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Routing by gRPC service, balancing over both replicas, the route's rate limit as
    /// RESOURCE_EXHAUSTED, a missing origin explained, and a live endpoint change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tonic_client_on_the_sdk_follows_xds() {
        let (a, _a) = replica(tonic_health::ServingStatus::Serving).await.unwrap();
        let (b, _b) = replica(tonic_health::ServingStatus::NotServing)
            .await
            .unwrap();
        let cp = ControlPlane::start(&mesh_yaml(&[a, b])).await.unwrap();
        let mesh = Mesh::connect(MeshOptions::new(cp.url(), "grpc-sdk-1"))
            .await
            .expect("the mesh connects and gets a full config");
        let transport = mesh.client();

        // Balancing: both replicas answer (they report different statuses).
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(check(&transport, "http://health").await.unwrap());
        }
        assert!(seen.contains(&ServingStatus::Serving), "{seen:?}");
        assert!(seen.contains(&ServingStatus::NotServing), "{seen:?}");

        // The route's rate limit: one call, then RESOURCE_EXHAUSTED.
        check(&transport, "http://health-limited").await.unwrap();
        let err = check(&transport, "http://health-limited")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

        // Without an origin the request names no service: UNIMPLEMENTED, saying why.
        let mut bare = HealthClient::new(transport.clone());
        let err = bare
            .check(HealthCheckRequest {
                service: "demo.Greeter".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
        assert!(err.message().contains("names no authority"), "{err:?}");
        assert!(err.message().contains("with_origin"), "{err:?}");

        // A live endpoint change: only replica b remains, and every call reaches it.
        cp.rewrite(&mesh_yaml(&[b])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut in_a_row = 0;
        while in_a_row < 6 {
            let status = check(&transport, "http://health").await.unwrap();
            in_a_row = if status == ServingStatus::NotServing {
                in_a_row + 1
            } else {
                0
            };
            assert!(
                Instant::now() < deadline,
                "replica a still answers after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mesh.shutdown().await;
    }
}
