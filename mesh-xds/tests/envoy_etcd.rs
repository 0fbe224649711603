//! Real Envoy configured and re-configured from etcd registrations.
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_common::wait_for_body;
use mesh_testkit::ads_bootstrap;
use mesh_testkit::{free_ports, EnvoyProcess, EtcdProcess, HttpStub};
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::{register, EtcdSource, MeshSpec, Registration};

#[test]
fn envoy_follows_etcd_registrations() {
    let _envoy = mesh_testkit::envoy_or_skip!();
    let _etcd = mesh_testkit::etcd_or_skip!();
    let etcd = EtcdProcess::start().unwrap();
    let a = HttpStub::start(200, "a").unwrap();
    let b = HttpStub::start(200, "b").unwrap();
    let ports = free_ports(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Policies and the node's listeners from a base spec; endpoints from etcd.
    let base = MeshSpec::from_yaml(&format!(
        "services:\n  - name: backend\n    connect_timeout: 1s\nnodes:\n  - id: envoy-etcd\n    \
         listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{} }}\n",
        ports[0], ports[1]
    ))
    .unwrap();
    let endpoint = etcd.endpoint();
    let (xds, mut client, lease_a) = rt.block_on(async {
        let cache = SnapshotCache::new();
        cache.set_validator(mesh_core_validator());
        EtcdSource::new(vec![endpoint.clone()], "/mesh", cache.clone())
            .with_base(base)
            .spawn();
        let (addr, _) = XdsServer::new(cache)
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .unwrap();
        let lease = register(
            &mut client,
            "/mesh",
            "backend",
            &Registration::new(a.addr()),
            30,
        )
        .await
        .unwrap();
        (addr, client, lease)
    });
    let envoy = EnvoyProcess::start(&ads_bootstrap("envoy-etcd", xds, "GRPC")).unwrap();
    let outbound = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_for_body(outbound, "a", Duration::from_secs(10));

    // b registers and a deregisters: Envoy follows.
    rt.block_on(async {
        register(
            &mut client,
            "/mesh",
            "backend",
            &Registration::new(b.addr()),
            30,
        )
        .await
        .unwrap();
        client.lease_revoke(lease_a).await.unwrap();
    });
    let took = wait_for_body(outbound, "b", Duration::from_secs(5));
    eprintln!("etcd change to Envoy routing to b: {took:?}");
    drop(envoy);
    rt.shutdown_timeout(Duration::from_secs(1));
}
