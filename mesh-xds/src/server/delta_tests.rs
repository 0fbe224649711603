//! Unit tests of the delta stream logic, with in-memory streams.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::snapshot::tests::{eds_cluster, endpoints, rds_listener, route};
use super::*;
use crate::ResourceType;

fn snap(clusters: &[(&str, u32)]) -> Snapshot {
    let mut rs = vec![rds_listener("out", "r"), route("r")];
    for (c, port) in clusters {
        rs.push(eds_cluster(c));
        rs.push(endpoints(c, *port));
    }
    Snapshot::from_resources(rs).unwrap()
}

struct Client {
    req: mpsc::Sender<Result<DeltaDiscoveryRequest, Status>>,
    resp: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>,
    >,
}

impl Client {
    fn start(server: &XdsServer) -> Self {
        let (req_tx, req_rx) = mpsc::channel(16);
        let rx = server
            .start(
                StreamKind::DeltaAds,
                super::delta::Delta::new,
                ReceiverStream::new(req_rx),
                None,
            )
            .unwrap();
        Self {
            req: req_tx,
            resp: super::xds::typed(rx),
        }
    }

    async fn send(&self, r: DeltaDiscoveryRequest) {
        self.req.send(Ok(r)).await.unwrap();
    }

    async fn subscribe(&self, kind: ResourceType, names: &[&str], held: &[(&str, String)]) {
        self.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "n".into(),
                ..Node::default()
            }),
            type_url: kind.type_url().into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: held
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect::<HashMap<_, _>>(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: error.map(|m| RpcStatus {
                code: 3,
                message: m.into(),
                details: vec![],
            }),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut self.resp),
        )
        .await
        .expect("a response within 5 s")
        .unwrap()
        .unwrap()
    }

    async fn nothing(&mut self) {
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            futures::StreamExt::next(&mut self.resp),
        )
        .await;
        assert!(r.is_err(), "expected no response, got {r:?}");
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

fn kind(r: &DeltaDiscoveryResponse) -> ResourceType {
    ResourceType::from_type_url(&r.type_url).unwrap()
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_removes_last() {
    let cache = SnapshotCache::new();
    cache
        .set_snapshot("n", snap(&[("a", 1), ("b", 1)]))
        .unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    c.subscribe(ResourceType::Cluster, &[], &[]).await;
    let r = c.next().await;
    assert_eq!(names(&r), ["a", "b"]);
    c.ack(&r, None).await;
    c.subscribe(ResourceType::Endpoint, &["a", "b"], &[]).await;
    let r = c.next().await;
    assert_eq!(names(&r), ["a", "b"]);
    c.ack(&r, None).await;
    c.nothing().await;

    // One endpoint changes: one resource goes out.
    cache
        .set_snapshot("n", snap(&[("a", 2), ("b", 1)]))
        .unwrap();
    let r = c.next().await;
    assert_eq!((kind(&r), names(&r)), (ResourceType::Endpoint, vec!["a"]));
    assert!(r.removed_resources.is_empty());
    c.ack(&r, None).await;
    c.nothing().await;

    // b goes, c comes: additions first (clusters, then endpoints), removals after, in reverse
    // dependency order.
    cache
        .set_snapshot("n", snap(&[("a", 2), ("c", 1)]))
        .unwrap();
    let r1 = c.next().await;
    assert_eq!((kind(&r1), names(&r1)), (ResourceType::Cluster, vec!["c"]));
    assert!(r1.removed_resources.is_empty());
    let r2 = c.next().await;
    assert_eq!(kind(&r2), ResourceType::Endpoint);
    assert_eq!(r2.removed_resources, ["b"]);
    let r3 = c.next().await;
    assert_eq!(kind(&r3), ResourceType::Cluster);
    assert_eq!(r3.removed_resources, ["b"]);
    assert!(r3.resources.is_empty());
    let dump = cache.dump();
    assert!(dump.nodes[0]
        .status
        .types
        .iter()
        .any(|t| t.kind == ResourceType::Endpoint && t.acked_version.is_some()));
}

#[tokio::test]
async fn a_client_holding_current_versions_gets_nothing_on_reconnect() {
    let cache = SnapshotCache::new();
    let s = snap(&[("a", 1)]);
    let held = s.of(ResourceType::Cluster).get("a").unwrap().version();
    cache.set_snapshot("n", s).unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    c.subscribe(ResourceType::Cluster, &[], &[("a", held)])
        .await;
    c.nothing().await;
    c.subscribe(ResourceType::Endpoint, &["a"], &[("a", "stale".into())])
        .await;
    assert_eq!(names(&c.next().await), ["a"]);
}

#[tokio::test]
async fn a_delta_nack_is_parked_and_the_resources_resent_after_a_change() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("n", snap(&[("a", 1)])).unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    c.subscribe(ResourceType::Endpoint, &["a"], &[]).await;
    let r = c.next().await;
    c.ack(&r, Some("no")).await;
    c.nothing().await;
    c.subscribe(ResourceType::Endpoint, &["a"], &[]).await;
    c.nothing().await;
    cache.set_snapshot("n", snap(&[("a", 3)])).unwrap();
    assert_eq!(names(&c.next().await), ["a"]);
}

#[tokio::test]
async fn an_idle_stream_task_stays_small() {
    // One such task per subscriber: what lives across its wait (not the handlers' state, not
    // a whole request) is what 10,000 subscribers hold.
    let server = XdsServer::new(SnapshotCache::new());
    let guard = server.open(StreamKind::DeltaAds).unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let base = stream::StreamBase::new(server.shared_for_test(), guard, None, tx, None);
    let requests = request::Requests::<DeltaDiscoveryRequest>::new(tonic::body::Body::empty());
    let task = stream::drive(delta::Delta::new(base), requests);
    let size = std::mem::size_of_val(&task);
    assert!(size < 1024, "the idle stream future is {size} bytes");
}
