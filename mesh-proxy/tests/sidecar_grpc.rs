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

/// A gRPC health client of the sidecar listener on `port` (h2c).
async fn health_client(port: u16) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// The seed default (`mesh-sidecar` with no arguments), on free ports: a gRPC app and an
/// HTTP/1.1 app both work through it, since each hop speaks the protocol the request came in
/// with (the default once spoke HTTP/1.1 to the app whatever came in, and gRPC failed with
/// "invalid HTTP version parsed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_default_passes_grpc_and_http1() {
    let (grpc_app, grpc_task) = start_grpc_app().await;
    // A raw HTTP/1.1 server: an HTTP/2 preface would get no answer from it.
    let http_app = mesh_testkit::HttpStub::start(200, "hello over HTTP/1.1").unwrap();
    for (app, grpc) in [(grpc_app.port(), true), (http_app.addr().port(), false)] {
        let ports = mesh_testkit::free_ports(3);
        let (out, inb, admin) = (ports[0], ports[1], ports[2]);
        let yaml = mesh_proxy::bootstrap::DEFAULT_BOOTSTRAP
            .replace("127.0.0.1:8082", &format!("127.0.0.1:{out}"))
            .replace("0.0.0.0:8083", &format!("127.0.0.1:{inb}"))
            .replace("127.0.0.1:8083", &format!("127.0.0.1:{inb}"))
            .replace("127.0.0.1:6060", &format!("127.0.0.1:{app}"));
        let mut boot = Bootstrap::from_yaml(&yaml, Path::new("default.yaml")).unwrap();
        boot.admin = format!("127.0.0.1:{admin}").parse().unwrap();
        let sidecar = Sidecar::start_static(boot).await.unwrap();
        if grpc {
            let resp = health_client(out)
                .await
                .check(HealthCheckRequest {
                    service: "mesh.Hello".into(),
                })
                .await
                .expect("gRPC through the seed default");
            assert_eq!(resp.into_inner().status(), ServingStatus::Serving);
        } else {
            let (status, body) = tokio::task::spawn_blocking(move || {
                mesh_testkit::http_get(([127, 0, 0, 1], out).into(), "/hi")
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!((status, body.as_str()), (200, "hello over HTTP/1.1"));
            assert_eq!(http_app.requests(), 1);
        }
        sidecar.shutdown().await;
    }
    grpc_task.abort();
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
    let mut client = health_client(out).await;

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
