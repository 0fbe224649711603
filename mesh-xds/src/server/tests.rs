//! Unit tests of the cache and the SotW stream logic, with in-memory streams.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::snapshot::tests::{eds_cluster, endpoints, rds_listener, route};
use super::*;
use crate::ResourceType;

fn full(port: u32) -> Snapshot {
    Snapshot::from_resources([
        eds_cluster("a"),
        endpoints("a", port),
        rds_listener("out", "r"),
        route("r"),
    ])
    .unwrap()
}

#[test]
fn an_inconsistent_snapshot_is_refused_and_the_old_one_serves() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("n", full(1)).unwrap();
    let v = cache.snapshot("n").unwrap().version();
    let bad = Snapshot::from_resources([eds_cluster("a")]).unwrap();
    let err = cache.set_snapshot("n", bad).unwrap_err();
    assert!(err.to_string().contains("needs endpoints"), "{err}");
    assert_eq!(cache.snapshot("n").unwrap().version(), v);
}

#[test]
fn the_validator_refuses_what_clients_would_nack() {
    let cache = SnapshotCache::new();
    cache.set_validator(Arc::new(|s: &Snapshot| {
        if s.of(ResourceType::Route).get("r").is_some() {
            Err(SnapshotError::Invalid {
                kind: ResourceType::Route,
                name: "r".into(),
                reason: "no".into(),
            })
        } else {
            Ok(())
        }
    }));
    assert!(matches!(
        cache.set_snapshot("n", full(1)),
        Err(SnapshotError::Invalid { .. })
    ));
    assert!(cache.snapshot("n").is_none());
}

#[test]
fn identical_resources_of_many_nodes_are_stored_once() {
    let cache = SnapshotCache::new();
    for i in 0..100 {
        cache.set_snapshot(&format!("n{i}"), full(1)).unwrap();
    }
    assert_eq!(cache.unique_resources(), 4);
    let a = cache.snapshot("n0").unwrap();
    let b = cache.snapshot("n99").unwrap();
    assert!(Arc::ptr_eq(
        a.of(ResourceType::Route).get("r").unwrap(),
        b.of(ResourceType::Route).get("r").unwrap()
    ));
    cache.set_snapshot("n0", full(2)).unwrap();
    assert_eq!(
        cache.unique_resources(),
        5,
        "only the changed assignment is new"
    );
}

#[tokio::test]
async fn watches_wake_on_a_new_version_only() {
    let cache = SnapshotCache::new();
    let mut rx = cache.watch("n");
    assert!(rx.borrow().snapshot.is_none());
    cache.set_snapshot("n", full(1)).unwrap();
    rx.changed().await.unwrap();
    cache.set_snapshot("n", full(1)).unwrap();
    assert!(!rx.has_changed().unwrap(), "same content, no wake-up");
    cache.set_snapshot("n", full(2)).unwrap();
    assert!(rx.has_changed().unwrap());
}

#[tokio::test]
async fn nodes_without_a_snapshot_get_the_fallback_and_groups_share_one() {
    let cache = SnapshotCache::with_node_hash(Arc::new(|n: &Node| n.cluster.clone()));
    let node = Node {
        id: "pod-1".into(),
        cluster: "orders".into(),
        ..Node::default()
    };
    assert_eq!(cache.node_key(&node), "orders");
    let rx = cache.watch("other");
    cache.set_fallback(full(7)).unwrap();
    assert!(rx.borrow().snapshot.is_some());
    cache.set_snapshot("other", full(8)).unwrap();
    cache.clear_snapshot("other");
    assert_eq!(
        cache.snapshot("other").unwrap().version(),
        full(7).version()
    );
}

/// An in-memory SotW stream on a fresh server.
struct Client {
    req: mpsc::Sender<Result<DiscoveryRequest, Status>>,
    resp: std::pin::Pin<Box<dyn futures::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>,
}

impl Client {
    fn start(server: &XdsServer) -> Self {
        let (req_tx, req_rx) = mpsc::channel(16);
        let rx = server
            .start(
                StreamKind::Ads,
                super::sotw::Sotw::new,
                ReceiverStream::new(req_rx),
                None,
            )
            .unwrap();
        Self {
            req: req_tx,
            resp: super::xds::typed(rx),
        }
    }

    async fn send(&self, kind: ResourceType, names: &[&str], version: &str, nonce: &str) {
        self.req
            .send(Ok(DiscoveryRequest {
                node: Some(Node {
                    id: "n".into(),
                    ..Node::default()
                }),
                type_url: kind.type_url().into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                ..DiscoveryRequest::default()
            }))
            .await
            .unwrap();
    }

    async fn nack(&self, kind: ResourceType, version: &str, nonce: &str) {
        self.req
            .send(Ok(DiscoveryRequest {
                type_url: kind.type_url().into(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                error_detail: Some(RpcStatus {
                    code: 3,
                    message: "bad config".into(),
                    details: vec![],
                }),
                ..DiscoveryRequest::default()
            }))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
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

    /// Subscribes to every type of `full()` and ACKs each response.
    async fn subscribe_all(&mut self) {
        self.send(ResourceType::Cluster, &[], "", "").await;
        let c = self.next().await;
        self.send(ResourceType::Cluster, &[], &c.version_info, &c.nonce)
            .await;
        self.send(ResourceType::Endpoint, &["a"], "", "").await;
        let e = self.next().await;
        self.send(ResourceType::Endpoint, &["a"], &e.version_info, &e.nonce)
            .await;
        self.send(ResourceType::Listener, &[], "", "").await;
        let l = self.next().await;
        self.send(ResourceType::Listener, &[], &l.version_info, &l.nonce)
            .await;
        self.send(ResourceType::Route, &["r"], "", "").await;
        let r = self.next().await;
        self.send(ResourceType::Route, &["r"], &r.version_info, &r.nonce)
            .await;
    }
}

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|a| Resource::from_any(a.clone()).unwrap().name().to_owned())
        .collect()
}

#[tokio::test]
async fn sotw_answers_acks_and_pushes_changes() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("n", full(1)).unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    c.send(ResourceType::Cluster, &[], "", "").await;
    let r = c.next().await;
    assert_eq!(r.type_url, ResourceType::Cluster.type_url());
    assert_eq!(names(&r), ["a"]);
    assert_eq!(r.version_info, full(1).of(ResourceType::Cluster).version());
    c.send(ResourceType::Cluster, &[], &r.version_info, &r.nonce)
        .await;
    c.send(ResourceType::Endpoint, &["a"], "", "").await;
    let e = c.next().await;
    assert_eq!(names(&e), ["a"]);
    c.send(ResourceType::Endpoint, &["a"], &e.version_info, &e.nonce)
        .await;
    c.nothing().await;

    cache.set_snapshot("n", full(2)).unwrap();
    let e2 = c.next().await;
    assert_eq!(
        e2.type_url,
        ResourceType::Endpoint.type_url(),
        "only EDS changed"
    );
    assert_ne!(e2.version_info, e.version_info);
    c.send(ResourceType::Endpoint, &["a"], &e2.version_info, &e2.nonce)
        .await;
    c.nothing().await;
    let dump = cache.dump();
    let acked = &dump.nodes[0].status.types;
    assert!(acked.iter().any(|t| t.kind == ResourceType::Endpoint
        && t.acked_version.as_deref() == Some(e2.version_info.as_str())));
}

#[tokio::test]
async fn a_nacked_version_is_parked_until_the_snapshot_changes() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("n", full(1)).unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    c.send(ResourceType::Cluster, &[], "", "").await;
    let r = c.next().await;
    c.nack(ResourceType::Cluster, "", &r.nonce).await;
    c.nothing().await;
    // A new stream of the same node (e.g. a reconnect) is not sent the parked version either.
    let mut c2 = Client::start(&server);
    c2.send(ResourceType::Cluster, &[], "", "").await;
    c2.nothing().await;
    let dump = cache.dump();
    let t = &dump.nodes[0].status.types[0];
    assert_eq!(t.nack_error.as_deref(), Some("bad config"));
    // A change un-parks.
    let changed = Snapshot::from_resources([
        eds_cluster("b"),
        endpoints("b", 1),
        rds_listener("out", "r"),
        route("r"),
    ])
    .unwrap();
    cache.set_snapshot("n", changed).unwrap();
    assert_eq!(names(&c.next().await), ["b"]);
    assert_eq!(names(&c2.next().await), ["b"]);
}

#[tokio::test]
async fn a_client_that_holds_the_version_is_not_sent_it_again() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("n", full(1)).unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    let v = full(1).of(ResourceType::Cluster).version();
    c.send(ResourceType::Cluster, &[], &v, "").await;
    c.nothing().await;
    // But a new name under the same version is answered.
    c.send(ResourceType::Endpoint, &["a"], "", "").await;
    assert_eq!(names(&c.next().await), ["a"]);
}

#[tokio::test]
async fn pushes_go_in_dependency_order_and_make_before_break() {
    let cache = SnapshotCache::new();
    cache.set_snapshot("n", full(1)).unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    c.subscribe_all().await;
    c.nothing().await;
    // Replace cluster a by b everywhere: the new route would point at b.
    let next = Snapshot::from_resources([
        eds_cluster("b"),
        endpoints("b", 1),
        rds_listener("out", "r2"),
        route("r2"),
    ])
    .unwrap();
    cache.set_snapshot("n", next).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = c.next().await;
        got.push((ResourceType::from_type_url(&r.type_url).unwrap(), names(&r)));
    }
    c.nothing().await;
    assert_eq!(
        got,
        [
            (ResourceType::Cluster, vec!["a".to_owned(), "b".to_owned()]),
            (ResourceType::Listener, vec!["out".to_owned()]),
            (ResourceType::Cluster, vec!["b".to_owned()]),
        ],
        "clusters first and removed last; EDS/RDS wait for the client to ask for b and r2"
    );
    c.send(ResourceType::Endpoint, &["b"], "", "").await;
    assert_eq!(names(&c.next().await), ["b"]);
    c.send(ResourceType::Route, &["r2"], "", "").await;
    assert_eq!(names(&c.next().await), ["r2"]);
}

#[tokio::test]
async fn sotw_eds_pushes_carry_only_what_changed_and_resubscribed_names_come_again() {
    let snap = |port_b: u32| {
        Snapshot::from_resources([
            eds_cluster("a"),
            endpoints("a", 1),
            eds_cluster("b"),
            endpoints("b", port_b),
        ])
        .unwrap()
    };
    let cache = SnapshotCache::new();
    cache.set_snapshot("n", snap(1)).unwrap();
    let server = XdsServer::new(cache.clone());
    let mut c = Client::start(&server);
    c.send(ResourceType::Endpoint, &["a", "b"], "", "").await;
    let e = c.next().await;
    assert_eq!(names(&e), ["a", "b"]);
    c.send(
        ResourceType::Endpoint,
        &["a", "b"],
        &e.version_info,
        &e.nonce,
    )
    .await;
    cache.set_snapshot("n", snap(2)).unwrap();
    let e2 = c.next().await;
    assert_eq!(names(&e2), ["b"], "only the changed assignment");
    assert_eq!(
        e2.version_info,
        snap(2).of(ResourceType::Endpoint).version()
    );
    c.send(
        ResourceType::Endpoint,
        &["a", "b"],
        &e2.version_info,
        &e2.nonce,
    )
    .await;
    c.nothing().await;
    // Dropping a name sends nothing; asking for it again sends it (the client forgot it).
    c.send(ResourceType::Endpoint, &["b"], &e2.version_info, "")
        .await;
    c.nothing().await;
    c.send(ResourceType::Endpoint, &["a", "b"], &e2.version_info, "")
        .await;
    assert_eq!(names(&c.next().await), ["a"]);
}

#[tokio::test]
async fn the_stream_limit_is_enforced() {
    let server = XdsServer::new(SnapshotCache::new()).max_concurrent_streams(1);
    let a = server.open(StreamKind::Ads).unwrap();
    assert_eq!(
        server.open(StreamKind::Ads).err().unwrap().code(),
        tonic::Code::ResourceExhausted
    );
    drop(a);
    assert!(server.open(StreamKind::Ads).is_ok());
}
