//! The etcd source against a real etcd: registration, lease expiry, etcd restart, replicas.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_testkit::EtcdProcess;
use mesh_xds::server::{mesh_core_validator, SnapshotCache};
use mesh_xds::source::{register, EtcdSource, EtcdStatus, Registration};
use mesh_xds::ResourceType;
use tokio::sync::watch;

const PREFIX: &str = "/mesh-test";

fn source(etcd: &EtcdProcess) -> (SnapshotCache, watch::Receiver<EtcdStatus>) {
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let src = EtcdSource::new(vec![etcd.endpoint()], PREFIX, cache.clone());
    let status = src.status();
    src.spawn();
    (cache, status)
}

async fn wait(
    status: &mut watch::Receiver<EtcdStatus>,
    what: &str,
    f: impl Fn(&EtcdStatus) -> bool,
) {
    let ok = tokio::time::timeout(Duration::from_secs(15), status.wait_for(|s| f(s)))
        .await
        .is_ok();
    assert!(
        ok,
        "timed out waiting for {what}; status: {:?}",
        *status.borrow()
    );
}

fn endpoint_count(cache: &SnapshotCache, service: &str) -> Option<usize> {
    let snap = cache.snapshot("any")?;
    let r = snap.of(ResourceType::Endpoint).get(service)?;
    let la: mesh_core::ClusterLoadAssignment = mesh_xds::convert::decode(r.any()).unwrap();
    Some(la.len())
}

#[test]
fn registrations_leases_restarts_and_replicas() {
    let _bin = mesh_testkit::etcd_or_skip!();
    let mut etcd = EtcdProcess::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = etcd.endpoint();
    let (cache, mut status) = rt.block_on(async { source(&etcd) });
    let (replica, mut replica_status) = rt.block_on(async { source(&etcd) });

    rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .unwrap();
        // A registration with a lease kept alive, and one left to expire.
        let kept = Registration::new("127.0.0.1:9001".parse().unwrap());
        let lease = register(&mut client, PREFIX, "orders", &kept, 10)
            .await
            .unwrap();
        let (mut keeper, _stream) = client.lease_keep_alive(lease).await.unwrap();
        // A second service, so that the expiry below shows only `orders` is translated again.
        let users = Registration::new("127.0.0.1:9101".parse().unwrap());
        client
            .put(
                users.key(PREFIX, "users"),
                serde_json::to_string(&users).unwrap(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        let short = Registration::new("127.0.0.1:9002".parse().unwrap());
        register(&mut client, PREFIX, "orders", &short, 2)
            .await
            .unwrap();
        wait(&mut status, "three endpoints", |s| s.endpoints == 3).await;
        assert_eq!(endpoint_count(&cache, "orders"), Some(2));
        let translated = status.borrow().translated;

        // Replicas on one etcd serve the same versions (content hashes).
        wait(&mut replica_status, "replica: three endpoints", |s| {
            s.endpoints == 3
        })
        .await;
        assert_eq!(
            cache.snapshot("any").unwrap().version(),
            replica.snapshot("any").unwrap().version()
        );

        // The short lease expires (keep the other alive meanwhile).
        let mut expired = false;
        for _ in 0..40 {
            keeper.keep_alive().await.unwrap();
            if status.borrow().endpoints == 2 {
                expired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            expired,
            "lease expiry removed the endpoint: {:?}",
            *status.borrow()
        );
        assert_eq!(endpoint_count(&cache, "orders"), Some(1));
        assert_eq!(endpoint_count(&cache, "users"), Some(1));
        assert_eq!(
            status.borrow().translated,
            translated + 1,
            "the expiry re-translated orders alone (users reused)"
        );
        // Revoke the kept lease before the restart so nothing expires across it.
        client.lease_revoke(lease).await.unwrap();
        wait(&mut status, "no endpoints", |s| s.endpoints == 0).await;
    });

    // etcd goes down: the last snapshot keeps serving.
    etcd.stop();
    let before = cache.snapshot("any").unwrap().version();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cache.snapshot("any").unwrap().version(), before);
    let rev = status.borrow().revision;
    etcd.restart().unwrap();

    rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .unwrap();
        let reg = Registration::new("127.0.0.1:9003".parse().unwrap());
        register(&mut client, PREFIX, "payments", &reg, 30)
            .await
            .unwrap();
        wait(&mut status, "the watch resumed after the restart", |s| {
            s.endpoints == 1 && s.revision > rev
        })
        .await;
        assert_eq!(endpoint_count(&cache, "payments"), Some(1));
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}
