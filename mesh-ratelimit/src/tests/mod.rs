//! Behaviour of the layer as a whole: modes, scopes, descriptors, eviction, reload, accuracy.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use mesh_core::extensions::{ClientAddr, MatchedRoute};
use mesh_core::{body, Body, RateLimitConfig, Reload, Route};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};

use crate::{Clock, RateLimit, RateLimitLayer};

type Inner = BoxCloneService<Request<Body>, Response<Body>, Infallible>;
type Svc = RateLimit<Inner>;

fn config(yaml: &str) -> RateLimitConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn layer(yaml: &str) -> RateLimitLayer {
    RateLimitLayer::with_clock(config(yaml), Clock::tokio()).unwrap()
}

fn svc(layer: &RateLimitLayer) -> Svc {
    let hello = service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(body::full("hello")))
    });
    layer.layer(BoxCloneService::new(hello))
}

fn get() -> http::request::Builder {
    Request::builder().uri("http://svc/hello")
}

async fn send(svc: &Svc, req: Request<Body>) -> Response<Body> {
    svc.clone().oneshot(req).await.unwrap()
}

async fn status(svc: &Svc, req: Request<Body>) -> u16 {
    send(svc, req).await.status().as_u16()
}

fn plain() -> Request<Body> {
    get().body(body::empty()).unwrap()
}

const LISTENER_1_PER_3S: &str = r#"
rules:
  - name: l
    scope: listener
    token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 3s }
"#;

#[tokio::test(start_paused = true)]
async fn reject_mode_answers_429_with_retry_after_and_ratelimit_headers() {
    let svc = svc(&layer(LISTENER_1_PER_3S));
    assert_eq!(status(&svc, plain()).await, 200);
    assert_eq!(status(&svc, plain()).await, 200);
    let r = send(&svc, plain()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = r.headers();
    assert_eq!(h["retry-after"], "3");
    assert_eq!(h["x-ratelimit-limit"], "2");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-ratelimit-reset"], "6", "two tokens short: full in 6s");
    assert_eq!(h["x-mesh-error"], "rate_limited");
    // The retry-after counts down with time, rounded up to whole seconds.
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let r = send(&svc, plain()).await;
    assert_eq!(r.headers()["retry-after"], "2");
    tokio::time::advance(Duration::from_millis(1_500)).await;
    assert_eq!(status(&svc, plain()).await, 200, "one token back after 3s");
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_resource_exhausted() {
    let svc = svc(&layer(LISTENER_1_PER_3S));
    let grpc = || {
        get()
            .header("content-type", "application/grpc")
            .body(body::empty())
            .unwrap()
    };
    send(&svc, grpc()).await;
    send(&svc, grpc()).await;
    let r = send(&svc, grpc()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "8");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
}

#[tokio::test(start_paused = true)]
async fn success_headers_are_opt_in() {
    let l = layer(LISTENER_1_PER_3S);
    let without = svc(&l);
    assert!(send(&without, plain())
        .await
        .headers()
        .get("x-ratelimit-limit")
        .is_none());
    let with = svc(&l.clone().success_headers(true));
    let r = send(&with, plain()).await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
}

/// Calls the service without awaiting: the hello service is always ready.
fn start(
    svc: &Svc,
    req: Request<Body>,
) -> crate::ResponseFuture<<Inner as tower::Service<Request<Body>>>::Future, Inner> {
    let mut svc = svc.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(tower::Service::poll_ready(&mut svc, &mut cx).is_ready());
    tower::Service::call(&mut svc, req)
}

fn routed(name: &str) -> Request<Body> {
    let mut req = plain();
    req.extensions_mut().insert(MatchedRoute {
        route_config: "rc".into(),
        virtual_host: "vh".into(),
        route: Arc::new(Route {
            name: name.into(),
            ..Route::default()
        }),
    });
    req
}

#[tokio::test(start_paused = true)]
async fn route_rules_apply_to_their_route_only_and_all_or_nothing() {
    let svc = svc(&layer(
        r#"
rules:
  - name: listener
    scope: listener
    token_bucket: { max_tokens: 3, tokens_per_fill: 1, fill_interval: 1h }
  - name: slow-route
    scope: !route slow
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h }
"#,
    ));
    assert_eq!(status(&svc, routed("slow")).await, 200);
    let r = send(&svc, routed("slow")).await;
    assert_eq!(r.status(), 429);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body.to_bytes()).contains("slow-route"));
    // The refused request did not spend the listener's token: two are left for other routes.
    assert_eq!(status(&svc, routed("fast")).await, 200);
    assert_eq!(status(&svc, plain()).await, 200);
    assert_eq!(status(&svc, routed("fast")).await, 429);
}

const PER_HEADER: &str = r#"
rules:
  - name: per-user
    scope: listener
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h }
    descriptor: { header: x-user }
"#;

fn user(u: &str) -> Request<Body> {
    get().header("x-user", u).body(body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_descriptor_value_has_its_own_bucket() {
    let svc = svc(&layer(PER_HEADER));
    assert_eq!(status(&svc, user("alice")).await, 200);
    assert_eq!(status(&svc, user("alice")).await, 429);
    assert_eq!(
        status(&svc, user("bob")).await,
        200,
        "bob is isolated from alice"
    );
    assert_eq!(
        status(&svc, plain()).await,
        200,
        "no header: the shared bucket"
    );
    assert_eq!(status(&svc, plain()).await, 429);
}

#[tokio::test(start_paused = true)]
async fn client_address_and_grpc_method_descriptors() {
    let by_ip = svc(&layer(
        &PER_HEADER.replace("{ header: x-user }", "client_address"),
    ));
    let from = |ip: &str| {
        let mut req = plain();
        let addr: SocketAddr = format!("{ip}:1234").parse().unwrap();
        req.extensions_mut().insert(ClientAddr(addr));
        req
    };
    assert_eq!(status(&by_ip, from("10.0.0.1")).await, 200);
    assert_eq!(status(&by_ip, from("10.0.0.1")).await, 429);
    assert_eq!(status(&by_ip, from("10.0.0.2")).await, 200);
    assert_eq!(status(&by_ip, from("[::1]")).await, 200);

    let by_method = svc(&layer(
        &PER_HEADER.replace("{ header: x-user }", "grpc_method"),
    ));
    let call = |method: &str| {
        Request::builder()
            .uri(format!("http://svc/pkg.Svc/{method}"))
            .header("content-type", "application/grpc")
            .body(body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&by_method, call("A"))
            .await
            .headers()
            .get("grpc-status"),
        None
    );
    assert_eq!(
        send(&by_method, call("A")).await.headers()["grpc-status"],
        "8"
    );
    assert_eq!(
        send(&by_method, call("B"))
            .await
            .headers()
            .get("grpc-status"),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_distinct_descriptors_stays_bounded() {
    let l = layer(&format!("{PER_HEADER}max_descriptors: 200\n"));
    let svc = svc(&l);
    for i in 0..5_000 {
        assert_eq!(status(&svc, user(&format!("u{i}"))).await, 200);
    }
    let held = l.descriptor_buckets("per-user").unwrap();
    assert!((1..=200).contains(&held), "{held}");
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_unchanged_buckets_and_renews_changed_ones() {
    let two_rules = r#"
rules:
  - name: a
    scope: listener
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h }
  - name: b
    scope: !route r
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h }
"#;
    let l = layer(two_rules);
    let svc = svc(&l);
    assert_eq!(status(&svc, routed("r")).await, 200);
    assert_eq!(status(&svc, plain()).await, 429);
    // Same config: both buckets stay empty.
    l.reload(config(two_rules)).unwrap();
    assert_eq!(status(&svc, plain()).await, 429);
    // A new mode for "a" keeps its bucket; "b" gets a new limit and a fresh bucket.
    let changed = r#"
rules:
  - name: a
    scope: listener
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h }
    mode: { wait: { max_wait: 1ms, max_waiting: 1 } }
  - name: b
    scope: !route r
    token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 1h }
"#;
    l.reload(config(changed)).unwrap();
    assert_eq!(status(&svc, plain()).await, 429, "a kept its empty bucket");
    let before = l.limiter.rule("a").unwrap();
    assert_eq!(l.limiter.rule("b").unwrap().gcra.max_tokens, 2);
    // An invalid update is refused and the old rules keep serving.
    let err = l
        .reload(config(&changed.replace("max_tokens: 2", "max_tokens: 0")))
        .unwrap_err();
    assert!(err.to_string().contains("max_tokens"), "{err}");
    assert!(Arc::ptr_eq(&before, &l.limiter.rule("a").unwrap()));
    // Dropping every rule lets everything through.
    l.reload(RateLimitConfig::default()).unwrap();
    assert_eq!(status(&svc, plain()).await, 200);
}

#[tokio::test(start_paused = true)]
async fn reload_with_a_smaller_descriptor_bound_keeps_state_and_shrinks() {
    let l = layer(&format!("{PER_HEADER}max_descriptors: 1024\n"));
    let svc = svc(&l);
    for i in 0..500 {
        assert_eq!(status(&svc, user(&format!("u{i}"))).await, 200);
    }
    l.reload(config(&format!("{PER_HEADER}max_descriptors: 64\n")))
        .unwrap();
    assert_eq!(
        status(&svc, user("u499")).await,
        429,
        "same rule: state kept"
    );
    for i in 1_000..3_000 {
        status(&svc, user(&format!("u{i}"))).await;
    }
    let held = l.descriptor_buckets("per-user").unwrap();
    assert!(held <= 64, "{held}");
}

mod load;
mod wait;
