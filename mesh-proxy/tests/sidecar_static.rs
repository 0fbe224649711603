//! A static sidecar on real loopback sockets: app → outbound → inbound → app, and the mesh's own
//! answers (404, 429, 502, 503, 504) with the right statuses.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use tokio::net::TcpListener;

/// A hello app: `/slow` waits 2 s, everything else says hello and which hop headers it saw.
async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        let xff = req
                            .headers()
                            .get("x-forwarded-for")
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = format!(
                            "hello world via {:?} rid={}",
                            xff,
                            req.headers().contains_key("x-request-id")
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn bootstrap(app: SocketAddr) -> (Bootstrap, u16, u16) {
    let ports = mesh_testkit::free_ports(3);
    let (out, inb, admin) = (ports[0], ports[1], ports[2]);
    let dead = mesh_testkit::free_port();
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 2s
listeners:
  - name: outbound
    address: 127.0.0.1:{out}
    direction: outbound
    rate_limit:
      token_bucket: {{ max_tokens: 1000, tokens_per_fill: 1000, fill_interval: 1s }}
    route_config:
      name: outbound
      virtual_hosts:
        - name: mesh
          domains: ["*"]
          routes:
            - name: limited
              match: {{ prefix: /limited }}
              route:
                cluster: inbound_sidecar
                rate_limit: {{ token_bucket: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 60s }} }}
            - name: slow
              match: {{ path: /slow }}
              route: {{ cluster: inbound_sidecar, timeout: 200ms }}
            - name: dead
              match: {{ prefix: /dead }}
              route: {{ cluster: dead }}
            - name: down
              match: {{ prefix: /down }}
              route: {{ cluster: down }}
            - name: app
              match: {{ prefix: /app }}
              route: {{ cluster: inbound_sidecar }}
            - name: root
              match: {{ path: / }}
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
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{inb}" }} ] }} ] }}
  - name: local_app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}" }} ] }} ] }}
  - name: dead
    connect_timeout: 1s
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{dead}" }} ] }} ] }}
  - name: down
    healthy_panic_threshold: 0
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}", health: unhealthy }} ] }} ] }}
"#
    );
    (
        Bootstrap::from_yaml(&yaml, Path::new("test.yaml")).unwrap(),
        out,
        admin,
    )
}

async fn send(
    addr: SocketAddr,
    path: &str,
    http2: bool,
    grpc: bool,
) -> (u16, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<Full<Bytes>>();
    let mut req = Request::get(format!("http://{addr}{path}"))
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
async fn requests_cross_both_hops_and_the_mesh_answers_its_own_errors() {
    let app = start_app().await;
    let (boot, out_port, _) = bootstrap(app);
    let sidecar = Sidecar::start_static(boot).await.unwrap();
    let out: SocketAddr = format!("127.0.0.1:{out_port}").parse().unwrap();
    assert_eq!(sidecar.listener_addr("outbound"), Some(out));

    let (status, _, body) = send(out, "/", false, false).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("hello world via Some(\"127.0.0.1, 127.0.0.1\") rid=true"),
        "two hops appended: {body}"
    );
    let (status, _, body) = send(out, "/app/x", true, false).await;
    assert_eq!(
        (status, body.starts_with("hello world")),
        (200, true),
        "h2c downstream: {body}"
    );

    let (status, headers, body) = send(out, "/nothing-here", false, false).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(headers["x-mesh-error"], "no_route");
    let (status, headers, _) = send(out, "/nothing-here", false, true).await;
    assert_eq!(
        (status, &headers["grpc-status"]),
        (200, &"12".parse::<http::HeaderValue>().unwrap())
    );

    assert_eq!(send(out, "/limited", false, false).await.0, 200);
    assert_eq!(send(out, "/limited", false, false).await.0, 200);
    let (status, headers, _) = send(out, "/limited", false, false).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));

    let (status, _, body) = send(out, "/slow", false, false).await;
    assert_eq!(status, 504, "{body}");
    let (status, _, body) = send(out, "/dead", false, false).await;
    assert_eq!(status, 502, "{body}");
    let (status, headers, body) = send(out, "/down", false, false).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-mesh-error"], "no_healthy_endpoint");

    // One more call, so a pooled connection is open (the timeout above closed the last one).
    assert_eq!(send(out, "/", false, false).await.0, 200);
    // The admin endpoint saw it all.
    let (status, text) = mesh_testkit::http_get(sidecar.admin_addr(), "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"mesh_local_replies_total{listener="outbound",code="rate_limited"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="root",cluster="inbound_sidecar",status_class="2xx""#),
        "{text}"
    );
    assert!(
        text.contains(r#"mesh_upstream_endpoints{cluster="local_app"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mesh_upstream_healthy_endpoints{cluster="down"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mesh_upstream_connections{cluster="inbound_sidecar"} 1"#),
        "pooled: {text}"
    );
    assert!(
        text.contains(r#"mesh_upstream_connections{cluster="local_app"} 1"#),
        "pooled: {text}"
    );
    let (status, dump) = mesh_testkit::http_get(sidecar.admin_addr(), "/config_dump").unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let listeners = dump["configs"][0]["static_listeners"].as_array().unwrap();
    assert!(!listeners.is_empty(), "{dump}");
    assert!(listeners[0]["last_updated"].is_string(), "{dump}");
    assert!(
        dump["configs"][0].get("dynamic_listeners").is_none(),
        "static only: {dump}"
    );
    sidecar.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "listeners closed after shutdown"
    );
}
