//! gRPC through the mesh layers, in process: a tonic client whose transport is
//! `RouterLayer → LoadBalanceLayer → pooled HTTP/2 upstream`, balancing over two replicas of a
//! tonic server. No sidecar hop.
//!
//! Run: `cargo run --example grpc`

use std::net::SocketAddr;
use std::time::Duration;

use mesh_core::{
    body, Cluster, ClusterLoadAssignment, LbPolicy, Reload, RouteConfiguration, UpstreamProtocol,
};
use mesh_lb::{ClusterManager, LoadBalance};
use mesh_router::RouterLayer;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Layer, ServiceExt};

/// A replica of the gRPC server (the standard health service stands in for an app).
async fn replica() -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("demo.Greeter", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _keep = reporter;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await
}

/// The example itself, also run by `cargo test` (the example is built with `test = true`).
async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let replicas = [replica().await?, replica().await?];

    // The mesh config an xDS control plane would otherwise deliver.
    let clusters = ClusterManager::new();
    let mut health = Cluster::new("health");
    health.protocol = UpstreamProtocol::Http2;
    health.lb_policy = LbPolicy::LeastRequest { choice_count: 2 };
    health.load_assignment = Some(ClusterLoadAssignment::from_addrs("health", replicas));
    clusters.reload(vec![health])?;
    let routes: RouteConfiguration = mesh_core::yaml::from_str(
        r#"
name: grpc
virtual_hosts:
  - name: health
    domains: ["*"]
    routes:
      - match: { grpc: { service: grpc.health.v1.Health } }
        route: { cluster: health, timeout: 2s, retry_policy: { retry_on: "unavailable,connect-failure", num_retries: 2 } }
"#,
    )?;

    // The stack, as a tonic transport: tonic's body in, the mesh's body out.
    let stack = RouterLayer::new(&routes)?.layer(LoadBalance::upstream(clusters.clone()));
    let channel = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        stack.clone().oneshot(req.map(body::boxed))
    });
    let mut client = HealthClient::new(channel);
    for i in 0..4 {
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            client.check(HealthCheckRequest {
                service: "demo.Greeter".into(),
            }),
        )
        .await??;
        println!("call {i}: demo.Greeter is {:?}", resp.into_inner().status());
    }
    println!(
        "4 calls balanced over {replicas:?} through RouterLayer + LoadBalanceLayer, no sidecar"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        super::run().await.expect("the grpc example failed");
    }
}
