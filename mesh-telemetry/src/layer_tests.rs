#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_core::BoxError;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::pipeline::sampler;
use crate::TRACEPARENT;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A layer over an in-memory exporter (spans exported as they end).
fn traced(ratio: f64, kind: SpanKind) -> (TraceLayer, InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_sampler(sampler(ratio))
        .build();
    let layer = TraceLayer::new(provider.tracer("test"), kind);
    (layer, exporter, provider)
}

type Seen = Arc<Mutex<Option<HeaderMap>>>;

/// An app answering `status`, remembering the headers it was sent.
fn app(
    status: StatusCode,
) -> (
    Seen,
    impl tower::Service<
            Request<()>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future = impl Send,
        > + Clone,
) {
    let seen: Seen = Arc::default();
    let keep = Arc::clone(&seen);
    let svc = service_fn(move |req: Request<()>| {
        *keep.lock().unwrap() = Some(req.headers().clone());
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"hello")));
            *r.status_mut() = status;
            Ok::<_, BoxError>(r)
        }
    });
    (seen, svc)
}

fn sent_traceparent(seen: &Seen) -> String {
    let h = seen.lock().unwrap().clone().unwrap();
    h[TRACEPARENT].to_str().unwrap().to_owned()
}

fn attr(span: &SpanData, key: &str) -> Option<opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

#[tokio::test]
async fn a_span_is_a_child_of_the_incoming_traceparent_and_the_parent_of_the_next_hop() {
    let (layer, exporter, _p) = traced(0.0, SpanKind::Server);
    let (seen, app) = app(StatusCode::OK);
    let req = Request::get("http://orders/x")
        .header(TRACEPARENT, PARENT)
        .header("tracestate", "vendor=1")
        .body(())
        .unwrap();
    let resp = layer.layer(app).oneshot(req).await.unwrap();
    assert_eq!(
        exporter.get_finished_spans().unwrap().len(),
        0,
        "the span lasts until the body ends"
    );
    resp.into_body().collect().await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(
        spans.len(),
        1,
        "a sampled parent is followed even at ratio 0"
    );
    let span = &spans[0];
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(span.name, "GET");
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        span.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert_eq!(
        attr(span, "http.response.status_code"),
        Some(opentelemetry::Value::I64(200))
    );
    assert_eq!(span.status, Status::Unset);
    let out = sent_traceparent(&seen);
    assert_eq!(
        out,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            span.span_context.span_id()
        ),
        "the next hop's parent is this hop's span"
    );
    let h = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        h["tracestate"], "vendor=1",
        "tracestate passes on untouched"
    );
}

#[tokio::test]
async fn without_a_traceparent_a_hop_starts_a_new_trace() {
    let (layer, exporter, _p) = traced(1.0, SpanKind::Client);
    let (seen, app) = app(StatusCode::OK);
    let resp = layer
        .layer(app)
        .oneshot(Request::get("http://orders/x").body(()).unwrap())
        .await
        .unwrap();
    drop(resp); // a client that went away ends the span too
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID, "a root span");
    assert_eq!(spans[0].span_kind, SpanKind::Client);
    let out = sent_traceparent(&seen);
    assert_eq!(
        out,
        format!(
            "00-{}-{}-01",
            spans[0].span_context.trace_id(),
            spans[0].span_context.span_id()
        )
    );
}

#[tokio::test]
async fn unsampled_requests_export_nothing_but_pass_the_decision_on() {
    let (layer, exporter, _p) = traced(0.0, SpanKind::Server);
    let (seen, app) = app(StatusCode::OK);
    let svc = layer.layer(app);
    let resp = svc
        .clone()
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    let out = sent_traceparent(&seen);
    assert!(out.ends_with("-00"), "{out}");
    // An unsampled parent is followed too.
    let unsampled = PARENT.replace("-01", "-00");
    let resp = svc
        .oneshot(
            Request::get("/")
                .header(TRACEPARENT, &unsampled)
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    assert!(sent_traceparent(&seen).starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}

#[tokio::test]
async fn server_errors_and_failed_hops_mark_the_span() {
    let (layer, exporter, _p) = traced(1.0, SpanKind::Server);
    for (status, error) in [
        (StatusCode::NOT_FOUND, false),
        (StatusCode::BAD_GATEWAY, true),
    ] {
        let (_, app) = app(status);
        let resp = layer
            .layer(app)
            .oneshot(Request::get("/").body(()).unwrap())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let span = spans.last().unwrap();
        assert_eq!(span.status != Status::Unset, error, "{status}");
        assert_eq!(attr(span, "error.type").is_some(), error, "{status}");
    }
    let failing = service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, BoxError>(Box::new(MeshError::NoHealthyEndpoint {
            cluster: "orders".into(),
        }))
    });
    let err = layer
        .layer(failing)
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap_err();
    let spans = exporter.get_finished_spans().unwrap();
    let span = spans.last().unwrap();
    assert_eq!(span.status, Status::error(err.to_string()));
    assert_eq!(
        attr(span, "error.type").unwrap().as_str(),
        "no_healthy_endpoint"
    );
    assert!(attr(span, "http.response.status_code").is_none());
}

#[tokio::test]
async fn grpc_status_in_trailers_is_recorded() {
    let (layer, exporter, _p) = traced(1.0, SpanKind::Server);
    let svc = service_fn(|_req: Request<()>| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        trailers.insert("grpc-message", "down".parse().unwrap());
        let body = Full::new(Bytes::from_static(b"x"))
            .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
        Ok::<_, BoxError>(Response::new(body))
    });
    let resp = layer
        .layer(svc)
        .oneshot(Request::post("/svc/M").body(()).unwrap())
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(
        attr(&spans[0], "rpc.grpc.status_code"),
        Some(opentelemetry::Value::I64(14))
    );
    assert_eq!(spans[0].status, Status::error("down"));
}
