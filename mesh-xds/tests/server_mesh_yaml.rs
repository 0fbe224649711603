//! mesh.yaml: the example parses and translates, errors name file and line, hot reload.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use mesh_xds::convert::decode;
use mesh_xds::server::{mesh_core_validator, Snapshot, SnapshotCache};
use mesh_xds::source::{FileSource, MeshSpec, OUTBOUND};
use mesh_xds::ResourceType;
use prost::Message;

fn example() -> String {
    let path = mesh_testkit::workspace_root().join("examples/mesh.yaml");
    std::fs::read_to_string(path).unwrap()
}

/// Converts every resource of `snap` as the client does before it ACKs (API listeners excepted:
/// mesh-core has no model of them). The control plane validates the model it translates and
/// does not convert its own output back at run time; this is the test that it need not.
fn assert_clients_accept(snap: &Snapshot) {
    for r in snap.of(ResourceType::Cluster).items().values() {
        decode::<mesh_core::Cluster>(r.any()).unwrap();
    }
    for r in snap.of(ResourceType::Endpoint).items().values() {
        decode::<mesh_core::ClusterLoadAssignment>(r.any()).unwrap();
    }
    for r in snap.of(ResourceType::Route).items().values() {
        decode::<mesh_core::RouteConfiguration>(r.any()).unwrap();
    }
    for r in snap.of(ResourceType::Listener).items().values() {
        let proto = Listener::decode(r.any().value.as_slice()).unwrap();
        if proto.api_listener.is_none() {
            decode::<mesh_core::Listener>(r.any()).unwrap();
        }
    }
}

#[test]
fn the_example_translates_into_valid_snapshots() {
    let (spec, snaps) = MeshSpec::load_str("mesh.yaml", &example()).unwrap();
    assert_eq!(spec.services.len(), 3);
    assert_clients_accept(&snaps.fallback);
    for s in snaps.nodes.values() {
        assert_clients_accept(s);
        s.check_consistency().unwrap();
    }
    // The outbound routes reach every service by name and name:port.
    let orders = &snaps.nodes["orders-1"];
    let routes: mesh_core::RouteConfiguration =
        decode(orders.of(ResourceType::Route).get(OUTBOUND).unwrap().any()).unwrap();
    let vh = routes
        .virtual_hosts
        .iter()
        .find(|v| v.name == "orders")
        .unwrap();
    assert_eq!(
        vh.domains,
        ["orders", "orders:8080", "orders.shop.internal"]
    );
    // Per-node addresses, and the service's inbound rate limit.
    let inbound: mesh_core::Listener = decode(
        orders
            .of(ResourceType::Listener)
            .get("inbound")
            .unwrap()
            .any(),
    )
    .unwrap();
    assert_eq!(inbound.address.port(), 18083);
    assert_eq!(inbound.rate_limit.unwrap().token_bucket.max_tokens, 100);
    // EDS endpoints grouped by zone.
    let la: mesh_core::ClusterLoadAssignment = decode(
        orders
            .of(ResourceType::Endpoint)
            .get("orders")
            .unwrap()
            .any(),
    )
    .unwrap();
    assert_eq!(la.endpoints.len(), 2);
    // A proxyless client gets an API listener per service and no socket listener.
    let grpc = &snaps.nodes["grpc-client-1"];
    let listeners = grpc.of(ResourceType::Listener).items();
    assert_eq!(listeners.len(), 3);
    let api = Listener::decode(listeners["payments"].any().value.as_slice()).unwrap();
    assert!(api.api_listener.is_some() && api.address.is_none());
    // Unlisted nodes get the default addresses.
    let out: mesh_core::Listener = decode(
        snaps
            .fallback
            .of(ResourceType::Listener)
            .get(OUTBOUND)
            .unwrap()
            .any(),
    )
    .unwrap();
    assert_eq!(out.address.to_string(), "127.0.0.1:8082");
}

#[test]
fn errors_name_the_file_line_and_reason() {
    let text = "services:\n  - name: a\n    endpoints: []\n    colour: blue\n";
    let err = MeshSpec::load_str("m.yaml", text).unwrap_err();
    assert_eq!(err.line, Some(4), "{err}");
    assert!(err.to_string().starts_with("m.yaml:4:"), "{err}");
    assert!(err.reason.contains("colour"), "{err}");

    let text =
        "services:\n  - name: a\n  - name: b\n    lb_policy: { maglev: { table_size: 100 } }\n";
    let err = MeshSpec::load_str("m.yaml", text).unwrap_err();
    assert_eq!(err.line, Some(3), "{err}");
    assert!(err.reason.contains("services[b]"), "{err}");
    assert!(err.reason.contains("not a prime"), "{err}");

    let text = "services:\n  - name: a\n    routes:\n      - match: { prefix: / }\n        route: { cluster: nowhere }\n";
    let err = MeshSpec::load_str("m.yaml", text).unwrap_err();
    assert!(err.reason.contains("nowhere"), "{err}");
}

#[tokio::test]
async fn the_file_is_hot_reloaded_and_a_bad_edit_keeps_the_last_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let yaml = |port: u16| {
        format!("services:\n  - name: a\n    endpoints:\n      - address: 127.0.0.1:{port}\n")
    };
    std::fs::write(&path, yaml(9001)).unwrap();
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let source = FileSource::new(&path, cache.clone());
    let mut status = source.status();
    let task = source.spawn(Duration::from_millis(20)).unwrap();
    let v1 = cache.snapshot("any-node").unwrap().version();

    std::fs::write(&path, yaml(9002)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| s.applied == 2))
        .await
        .unwrap()
        .unwrap();
    let v2 = cache.snapshot("any-node").unwrap().version();
    assert_ne!(v1, v2);

    std::fs::write(
        &path,
        "services:\n  - name: a\n    endpoints:\n      - address: 0.0.0.0:1\n",
    )
    .unwrap();
    let st = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let err = st.last_error.unwrap();
    assert!(
        err.file.ends_with("mesh.yaml") && err.line == Some(2),
        "{err}"
    );
    assert!(err.reason.contains("unicast"), "{err}");
    assert_eq!(
        cache.snapshot("any-node").unwrap().version(),
        v2,
        "last good serves"
    );
    task.abort();
}
