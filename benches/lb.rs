//! mesh-lb: cost of one endpoint pick per policy at 10 / 1,000 / 10,000 endpoints, and of an
//! EDS reload of 10,000 endpoints (alone, and while another thread keeps picking).
//!
//! `cargo bench -p mesh-benches --bench lb -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use mesh_core::{Cluster, ClusterLoadAssignment, Discovery, LbPolicy, Reload};
use mesh_lb::ClusterManager;

fn addrs(n: usize, offset: usize) -> Vec<SocketAddr> {
    (offset..offset + n)
        .map(|i| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080)))
        .collect()
}

fn manager(policy: LbPolicy, n: usize) -> ClusterManager {
    let mut c = Cluster::new("c");
    c.lb_policy = policy;
    c.load_assignment = Some(ClusterLoadAssignment::from_addrs("c", addrs(n, 0)));
    let m = ClusterManager::new();
    m.reload(vec![c]).unwrap();
    m
}

fn policies() -> Vec<(&'static str, LbPolicy)> {
    vec![
        ("round_robin", LbPolicy::RoundRobin),
        ("random", LbPolicy::Random),
        ("p2c", LbPolicy::LeastRequest { choice_count: 2 }),
        ("maglev", LbPolicy::Maglev { table_size: 65537 }),
        (
            "ring_hash",
            LbPolicy::RingHash {
                minimum_ring_size: 1024,
                maximum_ring_size: 8 << 20,
            },
        ),
    ]
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb_pick");
    for (name, policy) in policies() {
        let hashed = matches!(policy, LbPolicy::Maglev { .. } | LbPolicy::RingHash { .. });
        for n in [10, 1_000, 10_000] {
            let m = manager(policy.clone(), n);
            let cluster = m.get("c").unwrap();
            let set = cluster.endpoint_set();
            let mut key = 0u64;
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let hash = hashed.then_some(key);
                    black_box(set.pick(black_box(hash)).map(|e| e.address()))
                })
            });
        }
    }
    // The data path's full lookup: cluster map load + set load + pick + Arc clone.
    let m = manager(LbPolicy::RoundRobin, 10_000);
    g.bench_function("round_robin_via_manager/10000", |b| {
        b.iter(|| black_box(m.get("c").unwrap().pick(None).map(|e| e.address())))
    });
    g.finish();
}

fn eds_assignments() -> (ClusterLoadAssignment, ClusterLoadAssignment) {
    // B replaces 1 % of A's endpoints, as a scale-up/scale-down would.
    let a = ClusterLoadAssignment::from_addrs("c", addrs(10_000, 0));
    let b = ClusterLoadAssignment::from_addrs("c", addrs(10_000, 100));
    (a, b)
}

fn eds_reload(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb_eds_reload_10000");
    for (name, policy) in [
        ("round_robin", LbPolicy::RoundRobin),
        ("maglev", LbPolicy::Maglev { table_size: 65537 }),
    ] {
        let mut cluster = Cluster::new("c");
        cluster.discovery = Discovery::Eds;
        cluster.lb_policy = policy;
        let m = ClusterManager::new();
        m.reload(vec![cluster]).unwrap();
        let (a, b) = eds_assignments();
        let mut flip = false;
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    flip = !flip;
                    if flip {
                        a.clone()
                    } else {
                        b.clone()
                    }
                },
                |cla| m.reload(cla).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // Picks while another thread reloads 10,000 endpoints back to back: picks never wait.
    let mut g = c.benchmark_group("lb_pick_during_eds_reload");
    let mut cluster = Cluster::new("c");
    cluster.discovery = Discovery::Eds;
    let m = ClusterManager::new();
    m.reload(vec![cluster]).unwrap();
    let (a, b) = eds_assignments();
    m.reload(a.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reloads = Arc::new(AtomicU64::new(0));
    let reloader = {
        let (m, stop, reloads) = (m.clone(), stop.clone(), reloads.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                let cla = if i.is_multiple_of(2) {
                    b.clone()
                } else {
                    a.clone()
                };
                m.reload(cla).unwrap();
                reloads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let cluster = m.get("c").unwrap();
    g.bench_function("round_robin/10000", |bench| {
        bench.iter(|| black_box(cluster.pick(None).map(|e| e.address())))
    });
    stop.store(true, Ordering::Relaxed);
    reloader.join().unwrap();
    eprintln!(
        "(reloads during the pick benchmark: {})",
        reloads.load(Ordering::Relaxed)
    );
    g.finish();
}

criterion_group!(benches, pick, eds_reload);
criterion_main!(benches);
