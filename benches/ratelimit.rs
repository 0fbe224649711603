//! Cost of `RateLimit` per request (admitted, rejected, per descriptor; alone and with two
//! threads on one bucket), and its accuracy under a 10x overload in real time.
//!
//! `cargo bench -p mesh-benches --bench ratelimit -- --warm-up-time 1 --measurement-time 3`
//! (the accuracy figure is printed first; `RATELIMIT_ACCURACY_SECS` sets its length, default 10).

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use mesh_core::{
    body, Body, DescriptorSource, LocalRateLimit, RateLimitConfig, RateLimitMode, RateLimitRule,
    RateLimitScope, TokenBucketConfig,
};
use mesh_ratelimit::{Clock, RateLimitLayer, TokenBucket};
use tower_service::Service;

/// The cheapest inner service: answers at once, allocates nothing.
#[derive(Clone)]
struct Hello;

impl Service<Request<Body>> for Hello {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        ready(Ok(Response::new(body::empty())))
    }
}

/// Drives one call to completion; every future here is ready at once.
fn call<S>(svc: &mut S, req: Request<Body>) -> Option<Response<Body>>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(Ok(r)) => Some(r),
        _ => None,
    }
}

fn config(
    max_tokens: u32,
    per_fill: u32,
    interval: Duration,
    d: Option<DescriptorSource>,
) -> RateLimitConfig {
    RateLimitConfig {
        rules: vec![RateLimitRule {
            name: "bench".into(),
            scope: RateLimitScope::Listener,
            limit: LocalRateLimit {
                token_bucket: TokenBucketConfig {
                    max_tokens,
                    tokens_per_fill: per_fill,
                    fill_interval: interval,
                },
                mode: RateLimitMode::Reject,
                descriptor: d,
            },
        }],
        ..RateLimitConfig::default()
    }
}

/// Never runs dry: a token per nanosecond, a 4 s burst.
fn unlimited_bucket() -> TokenBucketConfig {
    TokenBucketConfig {
        max_tokens: u32::MAX,
        tokens_per_fill: u32::MAX,
        fill_interval: Duration::from_millis(1),
    }
}

/// A layer with one listener rule that never runs dry.
fn unlimited(d: Option<DescriptorSource>) -> RateLimitLayer {
    let cfg = config(u32::MAX, u32::MAX, Duration::from_millis(1), d);
    RateLimitLayer::new(cfg).expect("valid config")
}

fn plain() -> Request<Body> {
    Request::new(body::empty())
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    let clock = Clock::system();
    g.bench_function("clock_now", |b| b.iter(|| black_box(clock.now_nanos())));
    g.bench_function("token_bucket_admit", |b| {
        let bucket = TokenBucket::new(&unlimited_bucket(), Clock::system());
        b.iter(|| black_box(bucket.try_acquire()))
    });
    g.bench_function("baseline_inner_only", |b| {
        let mut svc = Hello;
        b.iter(|| black_box(call(&mut svc, plain())))
    });
    g.bench_function("admit_listener", |b| {
        let mut svc = tower_layer_apply(&unlimited(None));
        b.iter(|| black_box(call(&mut svc, plain())))
    });
    g.bench_function("reject_listener", |b| {
        let layer = RateLimitLayer::new(config(1, 1, Duration::from_secs(3600), None))
            .expect("valid config");
        let mut svc = tower_layer_apply(&layer);
        b.iter(|| black_box(call(&mut svc, plain())))
    });
    // Per-descriptor: 1,024 distinct header values, cycled.
    let users: Vec<http::HeaderValue> = (0..1024)
        .map(|i| http::HeaderValue::from_str(&format!("user-{i}")).expect("ascii"))
        .collect();
    let with_user = |i: &mut usize| {
        *i = (*i + 1) & 1023;
        let mut req = plain();
        req.headers_mut().insert("x-user", users[*i].clone());
        req
    };
    g.bench_function("baseline_inner_only_with_header", |b| {
        let (mut svc, mut i) = (Hello, 0);
        b.iter(|| black_box(call(&mut svc, with_user(&mut i))))
    });
    g.bench_function("admit_descriptor_header_1024_keys", |b| {
        let layer = unlimited(Some(DescriptorSource::Header("x-user".into())));
        let (mut svc, mut i) = (tower_layer_apply(&layer), 0);
        b.iter(|| black_box(call(&mut svc, with_user(&mut i))))
    });
    g.finish();
}

fn tower_layer_apply(layer: &RateLimitLayer) -> mesh_ratelimit::RateLimit<Hello> {
    tower_layer::Layer::layer(layer, Hello)
}

/// Two threads on one bucket: the time each request takes while both hammer it.
fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    for (name, layer) in [
        ("admit_listener_2_threads", Some(unlimited(None))),
        ("baseline_inner_only_2_threads", None),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(2);
                std::thread::scope(|s| {
                    let workers: Vec<_> = (0..2)
                        .map(|_| {
                            let (layer, barrier) = (layer.clone(), &barrier);
                            s.spawn(move || {
                                barrier.wait();
                                let start = Instant::now();
                                match layer {
                                    Some(l) => {
                                        let mut svc = tower_layer_apply(&l);
                                        for _ in 0..iters {
                                            black_box(call(&mut svc, plain()));
                                        }
                                    }
                                    None => {
                                        for _ in 0..iters {
                                            black_box(call(&mut Hello, plain()));
                                        }
                                    }
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        .filter_map(|w| w.join().ok())
                        .max()
                        .unwrap_or_default()
                })
            })
        });
    }
    g.finish();
}

/// Two threads on one standalone bucket (the algorithm alone: clock + CAS under contention).
fn two_threads_bucket(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    g.bench_function("token_bucket_admit_2_threads", |b| {
        b.iter_custom(|iters| {
            let bucket = TokenBucket::new(&unlimited_bucket(), Clock::system());
            let barrier = Barrier::new(2);
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..2)
                    .map(|_| {
                        let (bucket, barrier) = (&bucket, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                let _ = black_box(bucket.try_acquire());
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .filter_map(|w| w.join().ok())
                    .max()
                    .unwrap_or_default()
            })
        })
    });
    g.finish();
}

/// 10,000/s with a burst of 1,000, offered 100,000/s by two paced threads: prints how many were
/// admitted against `burst + rate * elapsed`.
fn accuracy(_: &mut Criterion) {
    let secs: u64 = std::env::var("RATELIMIT_ACCURACY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let (rate, burst, offered) = (10_000u64, 1_000u32, 100_000u64);
    let layer = RateLimitLayer::new(config(burst, 10, Duration::from_millis(1), None))
        .expect("valid config");
    let admitted = AtomicU64::new(0);
    let total = offered * secs;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (layer, admitted) = (layer.clone(), &admitted);
            s.spawn(move || {
                let mut svc = tower_layer_apply(&layer);
                // Thread t sends requests t, t+2, t+4, ... each at its scheduled instant.
                let interval = Duration::from_nanos(1_000_000_000 / offered);
                let mut n = t;
                while n < total {
                    let due = start + interval * u32::try_from(n).unwrap_or(u32::MAX);
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                    if call(&mut svc, plain()).is_some_and(|r| r.status() == 200) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 2;
                }
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let expected = f64::from(burst) + rate as f64 * elapsed;
    println!(
        "ratelimit/accuracy: {:.1}x overload for {elapsed:.2}s: admitted {admitted} vs \
         burst + rate * time = {expected:.0} ({:+.2}%)",
        offered as f64 / rate as f64,
        (admitted - expected) / expected * 100.0
    );
}

criterion_group!(
    benches,
    accuracy,
    single_thread,
    two_threads,
    two_threads_bucket
);
criterion_main!(benches);
