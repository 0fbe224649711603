//! Authorization on our sidecar's inbound listener, over real loopback sockets: allowed requests
//! reach the app, denied ones get Envoy's 403 `RBAC: access denied` (gRPC: PERMISSION_DENIED)
//! and never reach it, and `/stats/prometheus` counts both, denials by deciding policy.
//! (Identity-based policies are covered by mesh-router's unit tests with `PeerIdentity`
//! inserted; over plaintext no caller has an identity, which this test also shows.)
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;

fn bootstrap(app: SocketAddr, action: &str) -> (Bootstrap, SocketAddr) {
    let ports = mesh_testkit::free_ports(2);
    let (inb, admin) = (ports[0], ports[1]);
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 1s
listeners:
  - name: inbound
    address: 127.0.0.1:{inb}
    direction: inbound
    rbac:
      action: {action}
      policies:
        read-api:
          principals: [{{ any: true }}]
          permissions:
            - and_rules:
                - url_path: {{ prefix: /api/ }}
                - header: {{ name: ":method", exact: GET }}
        orders-only:
          principals:
            - authenticated: {{ exact: "spiffe://cluster.local/ns/default/sa/orders" }}
          permissions: [{{ any: true }}]
    route_config:
      name: inbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - route: {{ cluster: local_app }}
clusters:
  - name: local_app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}" }} ] }} ] }}
"#
    );
    (
        Bootstrap::from_yaml(&yaml, Path::new("test.yaml")).unwrap(),
        format!("127.0.0.1:{inb}").parse().unwrap(),
    )
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    grpc: bool,
) -> (u16, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(grpc)
        .build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    if grpc {
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_allows_matching_requests_and_denies_the_rest_with_envoys_answer() {
    let app = mesh_testkit::HttpStub::start(200, "hello from the app").unwrap();
    let (boot, inbound) = bootstrap(app.addr(), "ALLOW");
    let sidecar = Sidecar::start_static(boot).await.unwrap();

    let (status, _, body) = send(inbound, "GET", "/api/orders?x=1", false).await;
    assert_eq!((status, body.as_str()), (200, "hello from the app"));
    let (status, headers, body) = send(inbound, "POST", "/api/orders", false).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(headers["x-mesh-error"], "rbac_denied");
    // Plaintext: no identity, so the identity policy never matches.
    let (status, _, _) = send(inbound, "GET", "/internal", false).await;
    assert_eq!(status, 403);
    // gRPC over h2c: PERMISSION_DENIED in a trailers-only answer.
    let (status, headers, _) = send(inbound, "POST", "/pkg.Orders/Get", true).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "7");
    assert_eq!(headers["grpc-message"], "RBAC: access denied");
    assert_eq!(app.requests(), 1, "denied requests never reach the app");

    let (status, text) = mesh_testkit::http_get(sidecar.admin_addr(), "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"mesh_rbac_allowed_total{listener="inbound"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mesh_rbac_denied_total{listener="inbound",policy="no_policy_matched"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mesh_local_replies_total{listener="inbound",code="rbac_denied"} 3"#),
        "{text}"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_policies_are_counted_by_the_policy_that_matched() {
    let app = mesh_testkit::HttpStub::start(200, "ok").unwrap();
    let (boot, inbound) = bootstrap(app.addr(), "DENY");
    let sidecar = Sidecar::start_static(boot).await.unwrap();

    let (status, _, body) = send(inbound, "GET", "/api/x", false).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(send(inbound, "POST", "/api/x", false).await.0, 200);
    assert_eq!(send(inbound, "GET", "/other", false).await.0, 200);
    let (_, text) = mesh_testkit::http_get(sidecar.admin_addr(), "/stats/prometheus").unwrap();
    assert!(
        text.contains(r#"mesh_rbac_denied_total{listener="inbound",policy="read-api"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mesh_rbac_allowed_total{listener="inbound"} 2"#),
        "{text}"
    );
    sidecar.shutdown().await;
}
