//! The whole in-process stack an SDK user gets, on one request: rate limit → router → load
//! balancer pick → a ready inner service (no I/O, so this measures the layers, not sockets), with
//! 1,000 routes (100 virtual hosts × 10) over 100 clusters of 100 endpoints (10,000 endpoints).
//! Target: under 1 µs per request.
//!
//! `cargo bench -p mesh-benches --bench stack -- --warm-up-time 1 --measurement-time 3`
//!
//! Load-independent figures: `STACK_ITERS=N` runs the stack N times outside criterion and exits,
//! every call through the non-inlined [`one_request`], so a profiler can count just that:
//! `STACK_ITERS=100000 valgrind --tool=callgrind --toggle-collect='*one_request*'
//! --dump-instr=no target/release/deps/stack-*` gives instructions per request (total / N), and
//! `callgrind_annotate --tree=caller` the calls to `malloc` among them (allocations per request).
#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Request, Response};
use mesh_core::extensions::PickedEndpoint;
use mesh_core::{
    body, Body, BoxError, Cluster, ClusterLoadAssignment, LocalRateLimit, PathMatch,
    RateLimitConfig, RateLimitMode, RateLimitRule, RateLimitScope, Reload, Route, RouteAction,
    RouteConfiguration, RouteMatch, TokenBucketConfig, VirtualHost,
};
use mesh_lb::{ClusterManager, LoadBalanceLayer};
use mesh_ratelimit::RateLimitLayer;
use mesh_router::RouterLayer;
use tower::{Layer, Service};

const HOSTS: usize = 100;
const ROUTES_PER_HOST: usize = 10;
const CLUSTERS: usize = 100;
const ENDPOINTS_PER_CLUSTER: usize = 100;

/// 1,000 routes: per host, prefix and exact routes by turns, each to one of the 100 clusters.
fn routes() -> RouteConfiguration {
    let virtual_hosts = (0..HOSTS)
        .map(|h| VirtualHost {
            name: format!("vh-{h}"),
            domains: vec![format!("svc{h}.example.com")],
            routes: (0..ROUTES_PER_HOST)
                .map(|j| {
                    let path = if j.is_multiple_of(2) {
                        PathMatch::Prefix(format!("/api/s{j}/"))
                    } else {
                        PathMatch::Exact(format!("/api/s{j}/get"))
                    };
                    let mut action = RouteAction::to_cluster(format!("c{}", (h + j) % CLUSTERS));
                    // No timer: measure the layers, not tokio's timer wheel.
                    action.timeout = Duration::ZERO;
                    Route {
                        name: format!("r-{h}-{j}"),
                        matcher: RouteMatch {
                            path,
                            ..RouteMatch::default()
                        },
                        action,
                        filters: Vec::new(),
                    }
                })
                .collect(),
        })
        .collect();
    RouteConfiguration {
        name: "bench".into(),
        virtual_hosts,
        ignore_port_in_host_matching: false,
    }
}

/// 100 clusters of 100 endpoints each (round robin).
fn clusters() -> ClusterManager {
    let all: Vec<Cluster> = (0..CLUSTERS)
        .map(|c| {
            let addrs = (0..ENDPOINTS_PER_CLUSTER).map(|e| {
                let i = c * ENDPOINTS_PER_CLUSTER + e;
                SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080))
            });
            let name = format!("c{c}");
            let mut cluster = Cluster::new(name.clone());
            cluster.load_assignment = Some(ClusterLoadAssignment::from_addrs(name, addrs));
            cluster
        })
        .collect();
    let m = ClusterManager::new();
    m.reload(all).unwrap();
    m
}

/// One listener rule whose bucket never runs dry: every request pays for the check.
fn rate_limit() -> RateLimitLayer {
    RateLimitLayer::new(RateLimitConfig {
        rules: vec![RateLimitRule {
            name: "bench".into(),
            scope: RateLimitScope::Listener,
            limit: LocalRateLimit {
                token_bucket: TokenBucketConfig {
                    max_tokens: u32::MAX,
                    tokens_per_fill: u32::MAX,
                    fill_interval: Duration::from_millis(1),
                },
                mode: RateLimitMode::Reject,
                descriptor: None,
            },
        }],
        ..RateLimitConfig::default()
    })
    .unwrap()
}

/// The app: answers at once, allocates nothing but the empty body; checks a pick happened.
fn ready_inner(req: Request<Body>) -> std::future::Ready<Result<Response<Body>, BoxError>> {
    debug_assert!(req.extensions().get::<PickedEndpoint>().is_some());
    std::future::ready(Ok(Response::new(body::empty())))
}

/// 64 (host, path) pairs spread over hosts and routes.
fn targets() -> Vec<(http::HeaderValue, http::Uri)> {
    (0..64)
        .map(|i| {
            let h = (i * 37) % HOSTS;
            let j = (i * 7) % ROUTES_PER_HOST;
            let path = if j.is_multiple_of(2) {
                format!("/api/s{j}/items/42")
            } else {
                format!("/api/s{j}/get")
            };
            (
                http::HeaderValue::from_str(&format!("svc{h}.example.com")).unwrap(),
                path.parse().unwrap(),
            )
        })
        .collect()
}

/// One request through the stack, as an SDK user's client makes it: poll ready, call, poll the
/// response future once, drop the response. Never inlined, so a profiler can count only this.
#[inline(never)]
fn one_request<S>(svc: &mut S, req: Request<Body>) -> http::StatusCode
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = std::pin::pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(resp) => resp.unwrap().status(),
        Poll::Pending => unreachable!("every layer and the inner service are ready"),
    }
}

fn stack(c: &mut Criterion) {
    let lb = LoadBalanceLayer::new(clusters());
    let router = RouterLayer::new(&routes()).unwrap();
    let mut svc = rate_limit().layer(router.layer(lb.layer(tower::service_fn(ready_inner))));
    let targets = targets();
    let mut call = |req: Request<Body>| one_request(&mut svc, req);
    let request = |i: usize| {
        let (host, uri) = &targets[i & 63];
        let mut req = Request::new(body::empty());
        *req.uri_mut() = uri.clone();
        req.headers_mut().insert(http::header::HOST, host.clone());
        req
    };
    // Every target routes, picks and succeeds.
    for i in 0..64 {
        assert_eq!(call(request(i)), http::StatusCode::OK);
    }
    if let Some(n) = std::env::var("STACK_ITERS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        for i in 0..n {
            black_box(call(request(i)));
        }
        std::process::exit(0);
    }
    let mut g = c.benchmark_group("stack");
    let mut i = 0;
    g.bench_function("ratelimit+router+lb/1000routes/10000endpoints", |b| {
        b.iter_batched(
            || {
                // Building the request is setup, not the stack.
                i += 1;
                request(i)
            },
            |req| black_box(call(req)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
