//! The discovery server over real loopback gRPC: ADS and a per-type service.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use mesh_xds::server::{Resource, Snapshot, SnapshotCache, XdsServer};
use mesh_xds::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn snapshot(names: &[&str]) -> Snapshot {
    Snapshot::from_resources(names.iter().map(|n| {
        Resource::encode(&Cluster {
            name: (*n).into(),
            ..Cluster::default()
        })
        .unwrap()
    }))
    .unwrap()
}

fn request(version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "sidecar-1".into(),
            ..Node::default()
        }),
        type_url: ResourceType::Cluster.type_url().into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..DiscoveryRequest::default()
    }
}

async fn next(r: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), r.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// An ADS client of the server at `addr` with a stream open and its first request (for
/// everything) sent: the request sender, the responses and the client, which holds the
/// connection.
async fn open_ads(
    addr: std::net::SocketAddr,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
    AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
) {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(request("", "")).await.unwrap();
    let responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses, client)
}

#[tokio::test]
async fn ads_over_grpc_serves_and_pushes() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("sidecar-1", snapshot(&["a"])).unwrap();
    let server = XdsServer::new(cache.clone());
    let (addr, task) = server
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let (tx, mut responses, _client) = open_ads(addr).await;
    let first = next(&mut responses).await;
    assert_eq!(first.resources.len(), 1);
    assert_eq!(server.open_streams(), 1);
    tx.send(request(&first.version_info, &first.nonce))
        .await
        .unwrap();

    cache
        .set_snapshot("sidecar-1", snapshot(&["a", "b"]))
        .unwrap();
    let second = next(&mut responses).await;
    assert_eq!(second.resources.len(), 2);
    assert_ne!(second.version_info, first.version_info);

    // Fetch on the per-type service sees the same snapshot.
    let mut cds = ClusterDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let fetched = cds
        .fetch_clusters(request("", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.version_info, second.version_info);

    drop(tx);
    drop(responses);
    for _ in 0..50 {
        if server.open_streams() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.open_streams(), 0, "closed streams are released");
    task.abort();
}

#[tokio::test]
async fn per_type_services_stream_sotw_and_delta() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    let cache = SnapshotCache::new();
    cache.set_snapshot("sidecar-1", snapshot(&["a"])).unwrap();
    let server = XdsServer::new(cache.clone()).max_concurrent_streams(8);
    let (addr, task) = server
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut cds = ClusterDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // State of the world on CDS, the type URL implied by the service.
    let mut req = request("", "");
    req.type_url.clear();
    let (tx, rx) = mpsc::channel(4);
    tx.send(req).await.unwrap();
    let mut sotw = cds
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut sotw).await.resources.len(), 1);

    // Delta on CDS.
    let (dtx, drx) = mpsc::channel(4);
    dtx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "sidecar-1".into(),
            ..Node::default()
        }),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut delta = cds
        .delta_clusters(ReceiverStream::new(drx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), delta.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.resources[0].name, "a");
    cache
        .set_snapshot("sidecar-1", snapshot(&["a", "b"]))
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), delta.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let names: Vec<_> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b"], "delta sends only the new cluster");
    assert_eq!(
        next(&mut sotw).await.resources.len(),
        2,
        "SotW sends the whole set"
    );
    task.abort();
}

#[tokio::test]
async fn serve_drains_open_connections_on_shutdown() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("sidecar-1", snapshot(&["a"])).unwrap();
    let server = XdsServer::new(cache);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let (tx, mut responses, client) = open_ads(addr).await;
    assert_eq!(next(&mut responses).await.resources.len(), 1);

    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !serving.is_finished(),
        "the open stream is drained, not cut"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once shutting down"
    );
    drop((tx, responses, client));
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns once the last connection closed")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_malformed_request_ends_the_stream_with_internal() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let server = XdsServer::new(SnapshotCache::new());
    let (addr, task) = server.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A gRPC message of 3 bytes that are no protobuf.
    let garbage = bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
    let req = http::Request::post(format!(
        "http://{addr}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(garbage))
    .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = body.trailers().expect("grpc-status trailers");
    assert_eq!(trailers["grpc-status"], "13", "{trailers:?}");
    task.abort();
}
