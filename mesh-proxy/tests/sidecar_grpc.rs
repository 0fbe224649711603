//! gRPC (tonic) through both hops of a static sidecar: h2c end to end, trailers (grpc-status)
//! preserved, and the mesh's own gRPC answers.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn start_grpc_app() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("mesh.Hello", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _keep = reporter;
        Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_calls_cross_both_hops_with_trailers() {
    let (app, app_task) = start_grpc_app().await;
    let ports = mesh_testkit::free_ports(3);
    let (out, inb, admin) = (ports[0], ports[1], ports[2]);
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
listeners:
  - name: outbound
    address: 127.0.0.1:{out}
    direction: outbound
    route_config:
      name: outbound
      virtual_hosts:
        - name: mesh
          domains: ["*"]
          routes:
            - name: health-check
              match: {{ grpc: {{ service: grpc.health.v1.Health, method: Check }} }}
              route: {{ cluster: inbound_sidecar }}
  - name: inbound
    address: 127.0.0.1:{inb}
    direction: inbound
    route_config:
      name: inbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - route: {{ cluster: local_app }}
clusters:
  - name: inbound_sidecar
    protocol: http2
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{inb}" }} ] }} ] }}
  - name: local_app
    protocol: http2
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}" }} ] }} ] }}
"#
    );
    let sidecar =
        Sidecar::start_static(Bootstrap::from_yaml(&yaml, Path::new("grpc.yaml")).unwrap())
            .await
            .unwrap();
    let channel = Channel::from_shared(format!("http://127.0.0.1:{out}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    let resp = client
        .check(HealthCheckRequest {
            service: "mesh.Hello".into(),
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);

    // The app's own error status travels in the trailers, through both hops.
    let err = client
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // A method the routes do not cover is answered by the mesh: UNIMPLEMENTED.
    let err = client
        .watch(HealthCheckRequest {
            service: "mesh.Hello".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("mesh router: no route"), "{err:?}");

    sidecar.shutdown().await;
    app_task.abort();
}
