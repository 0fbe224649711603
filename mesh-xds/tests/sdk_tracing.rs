//! The SDK's trace layer (feature `otel`) over the mesh layers and a real hyper client: each
//! call is a CLIENT span, a child of the caller's `traceparent`, and the app on the other side
//! of a real socket sees this span as its parent.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{body, Body, MeshConfig, RateLimitConfig, Reload};
use mesh_lb::ClusterManager;
use mesh_ratelimit::RateLimitLayer;
use mesh_router::{LayerRegistry, RouterLayer};
use mesh_xds::sdk::otel::{SpanKind, TraceLayer, TRACEPARENT};
use mesh_xds::sdk::MeshLayer;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tower::{Layer, ServiceExt};

/// An app on loopback that answers 200 and remembers each request's `traceparent`.
async fn app() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let keep = Arc::clone(&keep);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tp = req.headers().get("traceparent").cloned();
                    keep.lock().unwrap().push(
                        tp.map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default(),
                    );
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi")))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn sdk_calls_are_client_spans_and_the_app_sees_them_as_parent() {
    let (addr, seen) = app().await;
    let config: MeshConfig = mesh_core::yaml::from_str(&format!(
        r#"
route_configs:
  - name: outbound
    virtual_hosts: [ {{ name: orders, domains: ["orders"], routes: [ {{ route: {{ cluster: orders }} }} ] }} ]
clusters:
  - name: orders
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{addr}" }} ] }} ] }}
"#
    ))
    .unwrap();
    let router = RouterLayer::empty(LayerRegistry::default());
    router.reload(config.route_configs[0].clone()).unwrap();
    let clusters = ClusterManager::new();
    clusters.reload(config.clusters.clone()).unwrap();
    let mesh = MeshLayer::new(
        router,
        RateLimitLayer::new(RateLimitConfig::default()).unwrap(),
        clusters,
    );

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let trace = TraceLayer::new(provider.tracer("sdk"), SpanKind::Client);
    let client =
        trace.layer(mesh.layer(Client::builder(TokioExecutor::new()).build_http::<Body>()));

    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("http://orders/api")
        .header(TRACEPARENT, parent)
        .body(body::empty())
        .unwrap();
    let resp = client.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        span.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert_eq!(
        seen.lock().unwrap()[0],
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            span.span_context.span_id()
        )
    );

    // A call the mesh refuses (no route) is a CLIENT-side error too (404 >= 400).
    let resp = client
        .oneshot(Request::get("http://nowhere/").body(body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    drop(resp);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(
        spans[1].parent_span_id,
        SpanId::INVALID,
        "no traceparent: a new trace"
    );
    assert!(matches!(
        spans[1].status,
        opentelemetry::trace::Status::Error { .. }
    ));
}
