//! mesh-xds source: translating a mesh spec (1,000 services × 10 endpoints) into per-node
//! snapshots: a full translation, against the incremental one the etcd and file sources do when
//! one service's endpoints change (the other 999 services' translations are reused). With one
//! listed node, and with 10 sidecar nodes plus one proxyless node (each node's snapshot is
//! assembled from the shared service resources).
//!
//! `cargo bench -p mesh-benches --bench xds_translate -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_xds::source::{EndpointSpec, MeshSpec, NodeSpec, ServiceSpec, TranslationCache};

const SERVICES: u16 = 1_000;
const ENDPOINTS: u16 = 10;
/// The mesh with `nodes` sidecar nodes (and a proxyless one when `nodes > 1`); `flip` moves one
/// endpoint of the first service.
fn spec(nodes: usize, flip: bool) -> MeshSpec {
    let services = (0..SERVICES)
        .map(|s| {
            let mut svc = ServiceSpec::named(format!("svc-{s}"));
            svc.port = Some(8080);
            svc.endpoints = (0..ENDPOINTS)
                .map(|e| {
                    let port = if flip && s == 0 && e == 0 {
                        9999
                    } else {
                        10_000 + e
                    };
                    let [a, b] = s.to_be_bytes();
                    EndpointSpec {
                        address: SocketAddr::from(([10, a, b, 1], port)),
                        weight: 1,
                        zone: format!("z{}", e % 3),
                        metadata: Default::default(),
                    }
                })
                .collect();
            svc
        })
        .collect();
    let node = |i: usize, proxyless| NodeSpec {
        id: format!("node-{i}"),
        service: Some(format!("svc-{i}")),
        listeners: None,
        proxyless,
        sdk: false,
        http_filters: None,
        tcp_listeners: Default::default(),
        access_log: None,
    };
    MeshSpec {
        services,
        nodes: (0..nodes)
            .map(|i| node(i, false))
            .chain((nodes > 1).then(|| node(nodes, true)))
            .collect(),
        ..MeshSpec::default()
    }
}

fn translate(c: &mut Criterion) {
    for nodes in [1, 10] {
        let (a, b) = (spec(nodes, false), spec(nodes, true));
        let mut g = c.benchmark_group(format!(
            "xds_translate_1000_services_{}_nodes",
            a.nodes.len()
        ));
        g.sample_size(10);
        g.bench_function("full", |bench| bench.iter(|| a.snapshots().unwrap()));
        let mut cache = TranslationCache::default();
        a.snapshots_with(&mut cache).unwrap();
        let mut flip = false;
        g.bench_function("one_service_changed", |bench| {
            bench.iter(|| {
                flip = !flip;
                let s = if flip { &b } else { &a };
                s.snapshots_with(&mut cache).unwrap()
            })
        });
        g.finish();
        // 1,000 for the first translation, then one per iteration.
        eprintln!("service translations made: {}", cache.translated());
    }
}

criterion_group!(benches, translate);
criterion_main!(benches);
