//! mesh-xds client: decode + convert + validate + reload of a 10,000-endpoint
//! ClusterLoadAssignment into mesh-lb's `ClusterManager` (the real EDS sink), the same into a
//! bare arc-swap sink, an EDS response changing one of 1,000 held assignments, and the loopback
//! latency from a control plane sending an update to the sink having applied it.
//!
//! `cargo bench -p mesh-benches --bench xds -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use mesh_core::{
    Checked, Cluster, ClusterLoadAssignment, Discovery, Endpoint, Locality, LocalityEndpoints,
    Reload, ReloadEach, ReloadError, Shared,
};
use mesh_lb::ClusterManager;
use mesh_xds::client::{AdsState, XdsClient, XdsClientBuilder};
use mesh_xds::convert::encode;
use mesh_xds::ResourceType;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// 100 localities × 100 endpoints; `salt` changes the weights so each update differs.
fn big_assignment(salt: u32) -> ClusterLoadAssignment {
    let endpoints = (0..100u32)
        .map(|l| LocalityEndpoints {
            locality: Locality {
                region: "eu".into(),
                zone: format!("z{l}"),
                sub_zone: String::new(),
            },
            priority: 0,
            load_balancing_weight: Some(1),
            lb_endpoints: (0..100u32)
                .map(|i| {
                    let n = l * 100 + i;
                    let addr = SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 8080));
                    let mut e = Endpoint::new(addr);
                    e.weight = 1 + (n + salt) % 3;
                    e
                })
                .collect(),
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: "big".into(),
        endpoints,
        overprovisioning_factor: 140,
    }
}

fn eds_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn response(
    ty: ResourceType,
    version: &str,
    res: Vec<envoy_types::pb::google::protobuf::Any>,
) -> Vec<u8> {
    DiscoveryResponse {
        version_info: version.into(),
        resources: res,
        type_url: ty.type_url().into(),
        nonce: version.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A state machine subscribed to EDS for cluster "big".
fn subscribed(builder: XdsClientBuilder) -> AdsState {
    let mut state = builder.into_state();
    state.on_connect();
    let cds = response(
        ResourceType::Cluster,
        "c1",
        vec![encode(&eds_cluster("big"))],
    );
    state.on_response(DiscoveryResponse::decode(cds.as_slice()).unwrap());
    state
}

struct SharedSink(Shared<ClusterLoadAssignment>);

impl Reload<Checked<ClusterLoadAssignment>> for SharedSink {
    fn reload(&self, update: Checked<ClusterLoadAssignment>) -> Result<(), ReloadError> {
        self.0.store(update.into_inner());
        Ok(())
    }
}

impl ReloadEach<Checked<ClusterLoadAssignment>> for SharedSink {
    fn remove(&self, _name: &str) -> Result<(), ReloadError> {
        Ok(())
    }
}

fn bench_eds_10k(c: &mut Criterion) {
    // Wire bytes of two alternating versions, as a control plane would send them.
    let wire = [
        response(
            ResourceType::Endpoint,
            "e1",
            vec![encode(&big_assignment(0))],
        ),
        response(
            ResourceType::Endpoint,
            "e2",
            vec![encode(&big_assignment(1))],
        ),
    ];
    let mut g = c.benchmark_group("xds_eds_10k_endpoints");
    g.sample_size(20);
    let mgr = Arc::new(ClusterManager::new());
    mgr.reload(vec![eds_cluster("big")]).unwrap();
    let mut lb_state = subscribed(
        XdsClient::builder()
            .sink_all::<Cluster>(mgr.clone())
            .sink_each::<ClusterLoadAssignment>(mgr.clone()),
    );
    let mut i = 0usize;
    g.bench_function("decode_convert_reload_mesh_lb", |b| {
        b.iter(|| {
            i += 1;
            let resp = DiscoveryResponse::decode(wire[i % 2].as_slice()).unwrap();
            let out = lb_state.on_response(resp);
            assert!(out[0].hold || matches!(&out[0].request, mesh_xds::client::Outbound::Sotw(r) if r.error_detail.is_none()));
        })
    });
    let sink = Arc::new(SharedSink(Shared::default()));
    let mut bare = subscribed(XdsClient::builder().sink_each::<ClusterLoadAssignment>(sink));
    g.bench_function("decode_convert_reload_arc_swap", |b| {
        b.iter(|| {
            i += 1;
            let resp = DiscoveryResponse::decode(wire[i % 2].as_slice()).unwrap();
            bare.on_response(resp);
        })
    });
    g.bench_function("decode_convert_only", |b| {
        b.iter(|| {
            i += 1;
            let resp = DiscoveryResponse::decode(wire[i % 2].as_slice()).unwrap();
            mesh_xds::convert::decode::<ClusterLoadAssignment>(&resp.resources[0]).unwrap()
        })
    });
    g.finish();
}

/// 1,000 EDS clusters of 100 endpoints each; every response changes one of them. The client
/// keeps the other 999 as they are (no copy of their endpoints per response).
fn bench_eds_one_of_1000(c: &mut Criterion) {
    let assignment = |i: usize, salt: u32| {
        let mut la = big_assignment(salt);
        la.cluster_name = format!("c{i}");
        la.endpoints.truncate(1);
        la
    };
    let mut state = XdsClient::builder()
        .sink_each::<ClusterLoadAssignment>(Arc::new(SharedSink(Shared::default())))
        .into_state();
    state.on_connect();
    let clusters = (0..1000).map(|i| encode(&eds_cluster(&format!("c{i}"))));
    let cds = response(ResourceType::Cluster, "c1", clusters.collect());
    state.on_response(DiscoveryResponse::decode(cds.as_slice()).unwrap());
    let all = (0..1000).map(|i| encode(&assignment(i, 0)));
    let eds = response(ResourceType::Endpoint, "e0", all.collect());
    state.on_response(DiscoveryResponse::decode(eds.as_slice()).unwrap());
    let wire = [1u32, 2].map(|salt| {
        let one = vec![encode(&assignment(7, salt))];
        response(ResourceType::Endpoint, &format!("e{salt}"), one)
    });
    let mut g = c.benchmark_group("xds_eds_1000_assignments");
    g.sample_size(20);
    let mut i = 0usize;
    g.bench_function("one_changed_sotw", |b| {
        b.iter(|| {
            i += 1;
            let resp = DiscoveryResponse::decode(wire[i % 2].as_slice()).unwrap();
            state.on_response(resp);
        })
    });
    g.finish();
    assert_eq!(state.config().endpoints.len(), 1000);
}

// ---- loopback: a minimal ADS server whose responses the bench writes ----------------------

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct Server {
    streams: mpsc::UnboundedSender<mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Server {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        // ACKs are drained; the bench watches the sink instead.
        tokio::spawn(async move { while let Some(Ok(_)) = inbound.next().await {} });
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.streams.send(tx);
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("SotW only"))
    }
}

fn bench_loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(SharedSink(Shared::default()));
    let (client, stream) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (streams_tx, mut streams) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(Server {
                    streams: streams_tx,
                }))
                // TCP_NODELAY, as real control planes (Go's net) set: without it Nagle and the
                // peer's delayed ACK add ~40 ms to every large response.
                .serve_with_incoming(TcpListenerStream::new(listener).map(|s| {
                    s.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                })),
        );
        let client = XdsClient::builder()
            .address(format!("http://{addr}"))
            .node_id("bench")
            .sink_each::<ClusterLoadAssignment>(sink.clone())
            .start()
            .unwrap();
        let stream = streams.recv().await.unwrap();
        let cds = DiscoveryResponse::decode(
            response(
                ResourceType::Cluster,
                "c1",
                vec![encode(&eds_cluster("big"))],
            )
            .as_slice(),
        )
        .unwrap();
        stream.send(Ok(cds)).unwrap();
        (client, stream)
    });
    let mut watch = client.watch::<ClusterLoadAssignment>();
    let mut g = c.benchmark_group("xds_loopback");
    for (label, size) in [
        ("update_to_applied_10_endpoints", 10usize),
        ("update_to_applied_1000_endpoints", 1000),
    ] {
        let mut n = 0u64;
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        n += 1;
                        let mut la = big_assignment(n as u32);
                        la.endpoints.truncate(size.div_ceil(100));
                        for g in &mut la.endpoints {
                            g.lb_endpoints.truncate(size.min(100));
                        }
                        let resp = DiscoveryResponse {
                            version_info: format!("v{n}"),
                            resources: vec![encode(&la)],
                            type_url: ResourceType::Endpoint.type_url().into(),
                            nonce: format!("n{n}"),
                            ..Default::default()
                        };
                        watch.borrow_and_update();
                        let start = Instant::now();
                        stream.send(Ok(resp)).unwrap();
                        tokio::time::timeout(Duration::from_secs(5), watch.changed())
                            .await
                            .unwrap()
                            .unwrap();
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
    }
    g.finish();
    drop(client);
}

criterion_group!(
    benches,
    bench_eds_10k,
    bench_eds_one_of_1000,
    bench_loopback
);
criterion_main!(benches);
