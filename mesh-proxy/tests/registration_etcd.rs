//! The registration API against real etcd and our control plane: `/pub` on one sidecar makes
//! the service routable from another; killing the publisher removes it once its lease expires.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::{EtcdSource, MeshSpec};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-sidecar");

fn call(addr: SocketAddr) -> Option<u16> {
    mesh_testkit::http_request(addr, "GET", "/", &[("Host", "hello")], b"")
        .ok()
        .map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_services_become_routable_and_vanish_with_the_publisher() {
    if mesh_testkit::require_etcd().is_none() {
        return;
    }
    let etcd = tokio::task::spawn_blocking(|| mesh_testkit::EtcdProcess::start().unwrap())
        .await
        .unwrap();
    let app = mesh_testkit::HttpStub::start(200, "hello from the published app").unwrap();
    let p = mesh_testkit::free_ports(8);
    let base = format!(
        r#"
nodes:
  - id: client-1
    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: 127.0.0.1:1 }}
  - id: pub-1
    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: 127.0.0.1:1 }}
"#,
        p[0], p[1], p[2], p[3]
    );
    let (spec, _) = MeshSpec::load_str("base.yaml", &base).unwrap();
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let source = EtcdSource::new(vec![etcd.endpoint()], "/mesh", cache.clone())
        .with_base(spec)
        .spawn();
    let (xds, xds_task) = XdsServer::new(cache)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let mut opts = DynamicOptions::new(vec![format!("http://{xds}")], "client-1");
    opts.admin = SocketAddr::from(([127, 0, 0, 1], p[4]));
    let client = Sidecar::start_dynamic(opts).await.unwrap();
    client
        .xds()
        .unwrap()
        .wait_ready(Duration::from_secs(15))
        .await
        .unwrap();

    // The publisher is a real process, so that it can die without a goodbye.
    let mut publisher = Command::new(BIN)
        .args(["--xds", &format!("http://{xds}"), "--node-id", "pub-1"])
        .args(["--admin", &format!("127.0.0.1:{}", p[5])])
        .args(["--registry", &etcd.client_url(), "--registry-ttl", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pub_admin = SocketAddr::from(([127, 0, 0, 1], p[5]));
    let out = SocketAddr::from(([127, 0, 0, 1], p[0]));
    let app_port = app.addr().port();
    let (published, routed, sub, gone) = tokio::task::spawn_blocking(move || {
        let ready = mesh_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            matches!(mesh_testkit::http_get(pub_admin, "/ready"), Ok((200, _))).then_some(())
        });
        assert!(ready.is_some(), "publisher never ready");
        let bad = mesh_testkit::http_request(pub_admin, "POST", "/pub", &[], b"{\"service\": 1}").unwrap();
        assert_eq!(bad.status, 400, "{}", bad.text());
        let body = format!(r#"{{"service":"hello","address":"127.0.0.1","port":{app_port},"metadata":{{"version":"v1"}}}}"#);
        let published = mesh_testkit::http_request(pub_admin, "POST", "/pub", &[], body.as_bytes()).unwrap();
        let routed = mesh_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            (call(out) == Some(200)).then_some(())
        });
        let sub = mesh_testkit::http_request(pub_admin, "POST", "/sub", &[], br#"{"service":"hello"}"#).unwrap();
        // Crash: no deregistration; the lease (2 s) must expire.
        let _ = Command::new("kill").args(["-KILL", &publisher.id().to_string()]).status();
        let _ = publisher.wait();
        let gone = mesh_testkit::wait_for(Duration::from_secs(12), Duration::from_millis(100), || {
            (call(out) != Some(200)).then_some(())
        });
        (published, routed, sub, gone)
    })
    .await
    .unwrap();
    assert_eq!(published.status, 200, "{}", published.text());
    assert!(
        published.text().contains("/mesh/services/hello/127.0.0.1:"),
        "{}",
        published.text()
    );
    assert!(
        routed.is_some(),
        "the published service never became routable"
    );
    assert_eq!(sub.status, 200);
    assert!(
        sub.text().contains(&format!("127.0.0.1:{app_port}")),
        "{}",
        sub.text()
    );
    assert!(
        gone.is_some(),
        "the dead publisher's service is still routed"
    );
    assert!(app.requests() >= 1);

    client.shutdown().await;
    source.abort();
    xds_task.abort();
    drop(etcd);
}
