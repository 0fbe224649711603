//! mesh-router: cost of routing one request (the match alone, and a whole `Router::call` into a
//! ready inner service) at 10 / 1,000 / 10,000 routes across up to 100 virtual hosts, and the
//! cost of one reload (validate + compile + swap) of 10,000 routes.
//!
//! `cargo bench -p mesh-benches --bench router -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use http::{Request, Response};
use mesh_core::{
    body, Body, BoxError, HeaderMatcher, PathMatch, Reload, Route, RouteAction, RouteConfiguration,
    RouteMatch, StringMatch, VirtualHost,
};
use mesh_router::{LayerRegistry, RouteTable, RouterLayer};
use tower::{Layer, Service};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// `n` routes over `min(n, 100)` virtual hosts. Per host: prefix and exact routes by turns
/// (`/api/s{j}/` and `/api/s{j}/get`), one in eight also conditioned on a header, and a regex
/// route last, so the table looks like a real mixed one.
fn config(n: usize) -> RouteConfiguration {
    let hosts = n.min(100);
    let per_host = n / hosts;
    let virtual_hosts = (0..hosts)
        .map(|h| {
            let routes = (0..per_host)
                .map(|j| {
                    let path = if j + 1 == per_host && per_host > 1 {
                        PathMatch::Regex("/r/[0-9]+".into())
                    } else if j % 2 == 0 {
                        PathMatch::Prefix(format!("/api/s{j}/"))
                    } else {
                        PathMatch::Exact(format!("/api/s{j}/get"))
                    };
                    let headers = if j % 8 == 7 {
                        vec![HeaderMatcher {
                            name: "x-env".into(),
                            value: StringMatch::Exact("canary".into()),
                            ignore_case: false,
                            invert: false,
                            treat_missing_header_as_empty: false,
                        }]
                    } else {
                        Vec::new()
                    };
                    let mut action = RouteAction::to_cluster(format!("svc-{h}-{j}"));
                    // No timer: the call benchmark measures the router, not tokio's timer.
                    action.timeout = std::time::Duration::ZERO;
                    Route {
                        name: format!("r-{h}-{j}"),
                        matcher: RouteMatch {
                            path,
                            headers,
                            ..RouteMatch::default()
                        },
                        action,
                        filters: Vec::new(),
                    }
                })
                .collect();
            VirtualHost {
                name: format!("vh-{h}"),
                domains: vec![format!("svc{h}.example.com")],
                routes,
            }
        })
        .collect();
    RouteConfiguration {
        name: "bench".into(),
        virtual_hosts,
        ignore_port_in_host_matching: false,
    }
}

/// 64 requests spread over the hosts, each hitting a prefix or an exact route in the back half
/// of its host (so a linear scan would pay for the routes before it).
fn requests(n: usize) -> Vec<Request<Body>> {
    let hosts = n.min(100);
    let per_host = n / hosts;
    (0..64)
        .map(|i| {
            let h = (i * 37) % hosts;
            let j = (per_host / 2 + i % (per_host / 2).max(1)).min(per_host.saturating_sub(2));
            // Skip the header-conditioned routes: they need the header and this is the common case.
            let j = if j % 8 == 7 { j - 1 } else { j };
            let path = if j % 2 == 0 {
                format!("/api/s{j}/items/42")
            } else {
                format!("/api/s{j}/get")
            };
            Request::get(path)
                .header("host", format!("svc{h}.example.com"))
                .header("user-agent", "bench")
                .body(body::empty())
                .unwrap()
        })
        .collect()
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("router/decide");
    for n in SIZES {
        let table = RouteTable::compile(&config(n), &LayerRegistry::default()).unwrap();
        let reqs = requests(n);
        for r in &reqs {
            assert!(table.decide(r).is_ok(), "{} {:?}", r.uri(), r.headers());
        }
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 63;
                black_box(table.decide(black_box(&reqs[i])).is_ok())
            })
        });
    }
    g.finish();
}

fn ready_inner(_req: Request<Body>) -> std::future::Ready<Result<Response<Body>, BoxError>> {
    std::future::ready(Ok(Response::new(body::empty())))
}

fn call(c: &mut Criterion) {
    let mut g = c.benchmark_group("router/call");
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    for n in SIZES {
        let layer = RouterLayer::new(&config(n)).unwrap();
        let mut router = layer.layer(tower::service_fn(ready_inner));
        let reqs = requests(n);
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || {
                    // Rebuilding the request is setup, not routing.
                    i = (i + 1) & 63;
                    let r = &reqs[i];
                    let mut req = Request::new(body::empty());
                    *req.uri_mut() = r.uri().clone();
                    *req.headers_mut() = r.headers().clone();
                    req
                },
                |req| {
                    assert!(router.poll_ready(&mut cx).is_ready());
                    let mut fut = std::pin::pin!(router.call(req));
                    match fut.as_mut().poll(&mut cx) {
                        Poll::Ready(resp) => black_box(resp.unwrap().status()),
                        Poll::Pending => unreachable!("the inner service is ready"),
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn reload(c: &mut Criterion) {
    let mut g = c.benchmark_group("router/reload");
    g.sample_size(10);
    let n = 10_000;
    let layer = RouterLayer::new(&config(n)).unwrap();
    g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
        b.iter_batched(
            || config(n),
            |cfg| layer.reload(cfg).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, route, call, reload);
criterion_main!(benches);
