//! The router as a service: extensions, edits, errors as responses, timeout, retries and budget,
//! filters, and reload under concurrent requests. Time-dependent tests run on paused time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use mesh_core::extensions::{Deadline, MatchedRoute, RequestHash, RetryAttempt, TargetCluster};
use mesh_core::{body, MeshError};
use tokio::time::Instant;
use tower::service_fn;

use super::*;
use crate::{HttpService, RouteLayer};

type Calls = Arc<AtomicU32>;

fn config(yaml: &str) -> RouteConfiguration {
    serde_yaml::from_str(yaml).unwrap()
}

/// An inner service echoing the decision and the request as it arrived, in headers.
fn echo() -> HttpService {
    BoxCloneService::new(service_fn(|req: Request<Body>| async move {
        let ext = req.extensions();
        let mut resp = Response::new(body::empty());
        let h = resp.headers_mut();
        let set = |h: &mut http::HeaderMap, k: &'static str, v: &str| {
            h.insert(k, v.parse().unwrap());
        };
        set(h, "x-cluster", &ext.get::<TargetCluster>().unwrap().0);
        set(h, "x-route", &ext.get::<MatchedRoute>().unwrap().route.name);
        set(h, "x-uri", &req.uri().to_string());
        set(
            h,
            "x-hashed",
            &ext.get::<RequestHash>().is_some().to_string(),
        );
        if let Some(v) = req.headers().get("host") {
            set(h, "x-host", v.to_str().unwrap());
        }
        if let Some(v) = req.headers().get("x-added") {
            set(h, "x-added", v.to_str().unwrap());
        }
        set(
            h,
            "x-removed-present",
            &req.headers().contains_key("x-secret").to_string(),
        );
        Ok(resp)
    }))
}

/// An inner service answering the given statuses in turn (then the last one forever), counting
/// calls and recording the retry-attempt marks and bodies it saw.
fn scripted(
    statuses: &'static [u16],
    calls: Calls,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) -> HttpService {
    BoxCloneService::new(service_fn(move |req: Request<Body>| {
        let (calls, seen) = (Arc::clone(&calls), Arc::clone(&seen));
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
            let attempt = req.extensions().get::<RetryAttempt>().map_or(0, |a| a.0);
            let body = req.into_body().collect().await?.to_bytes();
            seen.lock()
                .unwrap()
                .push(format!("{attempt}:{}", String::from_utf8_lossy(&body)));
            let status = statuses[n.min(statuses.len() - 1)];
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = http::StatusCode::from_u16(status)?;
            Ok(resp)
        }
    }))
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(body::empty()).unwrap()
}

const BASIC: &str = r#"
name: basic
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - name: api
        match: { prefix: "/api/" }
        route:
          cluster: api-cluster
          prefix_rewrite: "/v2/"
          host_rewrite: "backend.internal"
          request_headers_to_add: [ { name: x-added, value: yes } ]
          request_headers_to_remove: [ x-secret ]
          response_headers_to_add: [ { name: x-served-by, value: mesh } ]
          response_headers_to_remove: [ x-uri ]
          hash_policy: [ !header x-user ]
      - name: plain
        match: { prefix: "/" }
        route: { cluster: plain-cluster, timeout: 0s }
"#;

#[tokio::test]
async fn routes_and_records_the_decision_with_rewrites_and_header_edits() {
    let router = RouterLayer::new(&config(BASIC)).unwrap().layer(echo());
    let req = Request::get("/api/users?x=1")
        .header("host", "front.example.com")
        .header("x-secret", "s")
        .header("x-user", "alice")
        .body(body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let h = resp.headers();
    assert_eq!(h["x-cluster"], "api-cluster");
    assert_eq!(h["x-route"], "api");
    assert_eq!(h["x-host"], "backend.internal");
    assert_eq!(h["x-added"], "yes");
    assert_eq!(h["x-removed-present"], "false");
    assert_eq!(h["x-hashed"], "true");
    assert_eq!(h["x-served-by"], "mesh");
    assert!(!h.contains_key("x-uri"), "response header removed");

    let resp = router.oneshot(get("/other")).await.unwrap();
    assert_eq!(resp.headers()["x-cluster"], "plain-cluster");
    assert_eq!(resp.headers()["x-uri"], "/other");
    assert_eq!(resp.headers()["x-hashed"], "false");
}

#[tokio::test]
async fn no_route_is_404_or_unimplemented() {
    let layer = RouterLayer::empty(LayerRegistry::default());
    let resp = layer.layer(echo()).oneshot(get("/x")).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-mesh-error"], "no_route");
    let req = Request::post("/pkg.S/M")
        .header("content-type", "application/grpc")
        .body(body::empty())
        .unwrap();
    let resp = layer.layer(echo()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "12");
}

#[tokio::test(start_paused = true)]
async fn route_timeout_answers_504_at_the_deadline() {
    let cfg = config(
        r#"
name: t
virtual_hosts:
  - { name: vh, domains: ["*"], routes: [ { route: { cluster: c, timeout: 2s } } ] }
"#,
    );
    let slow = BoxCloneService::new(service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(Response::new(body::empty()))
    }));
    let router = RouterLayer::new(&cfg).unwrap().layer(slow);
    let start = Instant::now();
    let resp = router.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let req = Request::post("/pkg.S/M")
        .header("content-type", "application/grpc")
        .body(body::empty())
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
}

/// The router tells the inner service when its time-out fires ([`Deadline`]): the route's, or
/// the per-try time-out's when that is earlier, so that the load balancer can count a request
/// the time-out dropped against its endpoint.
#[tokio::test(start_paused = true)]
async fn the_inner_service_sees_the_deadline_of_the_route_or_of_the_try() {
    let cfg = config(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - match: { prefix: "/try" }
        route: { cluster: c, timeout: 5s, retry_policy: { retry_on: "5xx", num_retries: 1, per_try_timeout: 1s } }
      - match: { prefix: "/" }
        route: { cluster: c, timeout: 2s }
"#,
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let svc = BoxCloneService::new(service_fn(move |req: Request<Body>| {
        let now = Instant::now().into_std();
        let left = req.extensions().get::<Deadline>().map(|d| d.0 - now);
        s.lock().unwrap().push(left);
        async { Ok::<_, BoxError>(Response::new(body::empty())) }
    }));
    let router = RouterLayer::new(&cfg).unwrap().layer(svc);
    router.clone().oneshot(get("/")).await.unwrap();
    router.oneshot(get("/try")).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(Duration::from_secs(2)), Some(Duration::from_secs(1))]
    );
}

const RETRY: &str = r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - route:
          cluster: c
          retry_policy: { retry_on: "5xx", num_retries: 3, backoff: { base_interval: 100ms, max_interval: 1s } }
"#;

#[tokio::test(start_paused = true)]
async fn retries_5xx_replaying_the_body_and_marking_attempts() {
    let (calls, seen) = (Calls::default(), Arc::default());
    let inner = scripted(&[503, 500, 200], Arc::clone(&calls), Arc::clone(&seen));
    let router = RouterLayer::new(&config(RETRY)).unwrap().layer(inner);
    let req = Request::post("/").body(body::full("hello")).unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(*seen.lock().unwrap(), ["0:hello", "1:hello", "2:hello"]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_and_never_retries_a_4xx() {
    let (calls, seen) = (Calls::default(), Arc::default());
    let router =
        RouterLayer::new(&config(RETRY))
            .unwrap()
            .layer(scripted(&[502], Arc::clone(&calls), seen));
    assert_eq!(router.oneshot(get("/")).await.unwrap().status(), 502);
    assert_eq!(calls.load(Ordering::SeqCst), 4, "one try and three retries");

    let (calls, seen) = (Calls::default(), Arc::default());
    let router =
        RouterLayer::new(&config(RETRY))
            .unwrap()
            .layer(scripted(&[404], Arc::clone(&calls), seen));
    assert_eq!(router.oneshot(get("/")).await.unwrap().status(), 404);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_not_retried() {
    let (calls, seen) = (Calls::default(), Arc::default());
    let router =
        RouterLayer::new(&config(RETRY))
            .unwrap()
            .layer(scripted(&[503], Arc::clone(&calls), seen));
    let (mut tx, stream) = http_body_util::channel::Channel::<bytes::Bytes, BoxError>::new(1);
    tokio::spawn(async move { tx.send_data(bytes::Bytes::from_static(b"chunk")).await });
    let req = Request::post("/").body(body::boxed(stream)).unwrap();
    assert_eq!(router.oneshot(req).await.unwrap().status(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_connect_failures_and_per_try_timeouts() {
    let cfg = config(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - route:
          cluster: c
          retry_policy: { retry_on: "connect-failure,gateway-error", num_retries: 2, per_try_timeout: 1s }
"#,
    );
    let calls = Calls::default();
    let c = Arc::clone(&calls);
    let flaky = BoxCloneService::new(service_fn(move |_req: Request<Body>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 => Err(Box::new(MeshError::UpstreamConnect {
                    endpoint: "127.0.0.1:1".parse().unwrap(),
                    reason: "refused".into(),
                }) as BoxError),
                1 => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(Response::new(body::empty()))
                }
                _ => Ok(Response::new(body::full("third"))),
            }
        }
    }));
    let router = RouterLayer::new(&cfg).unwrap().layer(flaky);
    let resp = router.oneshot(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_concurrent_retries() {
    let with_budget = |budget: &str| {
        config(&format!(
            r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - route:
          cluster: c
          retry_policy: {{ retry_on: "5xx", num_retries: 1 {budget} }}
"#
        ))
    };
    // Every request fails after a second, all at once: twenty requests in flight.
    let run = |cfg: RouteConfiguration| async move {
        let calls = Calls::default();
        let c = Arc::clone(&calls);
        let failing = BoxCloneService::new(service_fn(move |_req: Request<Body>| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut r = Response::new(body::empty());
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, BoxError>(r)
            }
        }));
        let router = RouterLayer::new(&cfg).unwrap().layer(failing);
        let tasks: Vec<_> = (0..20)
            .map(|_| tokio::spawn(router.clone().oneshot(get("/"))))
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().status(), 503);
        }
        calls.load(Ordering::SeqCst) - 20
    };
    assert_eq!(
        run(with_budget("")).await,
        20,
        "without a budget every request retries"
    );
    // 10% of 20 in flight = 2 concurrent retries at most (the minimum is 1).
    let retries = run(with_budget(
        ", budget: { budget_percent: 10, min_retry_concurrency: 1 }",
    ))
    .await;
    assert!((1..=2).contains(&retries), "{retries}");
}

#[tokio::test(start_paused = true)]
async fn fault_filter_from_the_route_delays_and_aborts() {
    let cfg = config(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - name: faulty
        match: { prefix: "/f" }
        route: { cluster: c, timeout: 0s }
        filters: [ !fault { delay: { fixed_delay: 3s, percentage: 100 }, abort: { http_status: 418, percentage: 100 } } ]
      - name: fine
        route: { cluster: c }
"#,
    );
    let router = RouterLayer::new(&cfg).unwrap().layer(echo());
    let start = Instant::now();
    let resp = router.clone().oneshot(get("/f")).await.unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["x-mesh-error"], "fault_abort");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(router.oneshot(get("/g")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn custom_layers_come_from_the_registry_in_order() {
    type Edit = fn(Request<Body>) -> Request<Body>;
    #[derive(Clone)]
    struct Tag(Edit);
    impl<S> Layer<S> for Tag {
        type Service = tower::util::MapRequest<S, Edit>;
        fn layer(&self, inner: S) -> Self::Service {
            tower::util::MapRequest::new(inner, self.0)
        }
    }
    fn tag_a(mut r: Request<Body>) -> Request<Body> {
        r.headers_mut()
            .append("x-added", http::HeaderValue::from_static("a"));
        r
    }
    fn tag_b(mut r: Request<Body>) -> Request<Body> {
        r.headers_mut()
            .append("x-added", http::HeaderValue::from_static("b"));
        r
    }
    let mut registry = LayerRegistry::default();
    registry.register("tag", |c: &mesh_core::FilterConfig| match c {
        mesh_core::FilterConfig::Custom { config, .. } => {
            let v = config.get("value").ok_or("tag needs a value")?;
            Ok(RouteLayer::new(Tag(if v == "a" { tag_a } else { tag_b })))
        }
        _ => Err("tag takes a custom config".into()),
    });
    let cfg = config(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - route: { cluster: c }
        filters: [ !custom { name: tag, config: { value: a } } ]
"#,
    );
    let router = RouterLayer::with_registry(&cfg, registry.clone())
        .unwrap()
        .layer(echo());
    assert_eq!(
        router.oneshot(get("/")).await.unwrap().headers()["x-added"],
        "a"
    );
    let mut bad = cfg.clone();
    bad.virtual_hosts[0].routes[0].filters = vec![mesh_core::FilterConfig::Custom {
        name: "tag".into(),
        config: Default::default(),
        optional: false,
    }];
    let err = RouterLayer::with_registry(&bad, registry).unwrap_err();
    assert!(err.to_string().contains("tag needs a value"), "{err}");
}

/// `router.oneshot(req)` boxed outside the `async` block that awaits it: holding the router's
/// future in a spawned block trips rustc's "not general enough" on `BoxError`'s lifetime.
fn send(router: &Router<HttpService>, req: Request<Body>) -> BoxFuture {
    Box::pin(router.clone().oneshot(req))
}

/// A table whose every route sends to `cluster-{n}` under the route name `route-{n}`.
fn generation(n: u32) -> RouteConfiguration {
    config(&format!(
        r#"
name: gen
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - {{ name: route-{n}, match: {{ prefix: "/a" }}, route: {{ cluster: cluster-{n} }} }}
      - {{ name: route-{n}-b, match: {{ prefix: "/" }}, route: {{ cluster: cluster-{n} }} }}
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_concurrent_requests_never_mixes_tables() {
    let layer = RouterLayer::new(&generation(0)).unwrap();
    let router = layer.layer(echo());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let total = Calls::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (router, stop, total) = (router.clone(), Arc::clone(&stop), Arc::clone(&total));
            tokio::spawn(async move {
                let mut served = 0u32;
                while !stop.load(Ordering::Relaxed) && served < 50_000 {
                    let resp = send(&router, get("/a/x")).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let route = resp.headers()["x-route"].to_str().unwrap().to_string();
                    let cluster = resp.headers()["x-cluster"].to_str().unwrap().to_string();
                    assert_eq!(
                        route.replace("route", "cluster"),
                        cluster,
                        "one table per request"
                    );
                    served += 1;
                    total.fetch_add(1, Ordering::Relaxed);
                    // The echo answers at once, so yield or the loop would hold the worker.
                    tokio::task::yield_now().await;
                }
                served
            })
        })
        .collect();
    for n in 1..=300 {
        layer.reload(generation(n)).unwrap();
        if n % 50 == 0 {
            // A bad table in between is refused and the last good one keeps serving.
            let mut bad = generation(n);
            bad.virtual_hosts[0].domains.clear();
            assert!(layer.reload(bad).is_err());
            assert_eq!(layer.table().name(), "gen");
        }
        // Let requests run between reloads (bounded wait).
        let before = total.load(Ordering::Relaxed);
        for _ in 0..1000 {
            if total.load(Ordering::Relaxed) > before {
                break;
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for c in clients {
        served += c.await.unwrap();
    }
    assert!(served >= 300, "requests ran between the reloads: {served}");
    let resp = router.oneshot(get("/a")).await.unwrap();
    assert_eq!(resp.headers()["x-cluster"], "cluster-300");
}
