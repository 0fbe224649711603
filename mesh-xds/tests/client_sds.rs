//! The client subscribes to the SDS secrets its listeners and clusters name (as Envoy does:
//! by name, over ADS) and hands them to its sinks; it is ready only once they arrived. An
//! expired certificate is NACKed with the reason and the old secret keeps serving. Against our
//! control plane with `security:` set, in both ADS variants.
#![allow(clippy::unwrap_used, missing_docs)]

mod client_support;

use std::time::Duration;

use client_support::{eventually, Sink};
use mesh_core::*;
use mesh_xds::client::{AdsMode, XdsClient};
use mesh_xds::convert::encode;
use mesh_xds::server::{Resource, Snapshot, SnapshotCache, XdsServer};
use mesh_xds::source::MeshSpec;
use mesh_xds::ResourceType;

const MESH: &str = "security: { trust_domain: mesh.test, ca: { generate: true } }\nservices: [{ name: orders, endpoints: [{ address: \"127.0.0.1:9001\" }] }]\nnodes: [{ id: orders-1, service: orders }]\n";

fn expired_default() -> Secret {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(2);
    params.not_after = now - time::Duration::days(1);
    Secret {
        name: "default".into(),
        kind: SecretKind::TlsCertificate(TlsCertificate {
            certificate_chain: params.self_signed(&key).unwrap().pem(),
            private_key: key.serialize_pem(),
        }),
    }
}

/// `snap` with its `default` secret replaced by `secret`.
fn with_secret(snap: &Snapshot, secret: &Secret) -> Snapshot {
    let mut resources = Vec::new();
    for ty in ResourceType::ALL {
        for r in snap.of(ty).items().values() {
            if ty == ResourceType::Secret && r.name() == "default" {
                resources.push(Resource::from_any(encode(secret)).unwrap());
            } else {
                resources.push(Resource::clone(r));
            }
        }
    }
    Snapshot::from_resources(resources).unwrap()
}

async fn subscribes_to_its_secrets(mode: AdsMode) {
    let snaps = MeshSpec::from_yaml(MESH).unwrap().snapshots().unwrap();
    let snap = snaps.nodes["orders-1"].clone();
    let cache = SnapshotCache::new();
    cache.set_snapshot("orders-1", snap.clone()).unwrap();
    let (addr, server) = XdsServer::new(cache.clone())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let secrets = Sink::<Vec<Secret>>::new();
    let client = XdsClient::builder()
        .address(format!("http://{addr}"))
        .node_id("orders-1")
        .mode(mode)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .sink_all::<Secret>(secrets.clone())
        .start()
        .unwrap();
    client.wait_ready(client_support::WAIT).await.unwrap();
    let got = secrets.get();
    let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ROOTCA", "default"], "{mode:?}");
    let first = got[1].clone();
    assert!(matches!(
        &first.kind,
        SecretKind::TlsCertificate(c) if c.certificate_chain.contains("BEGIN CERTIFICATE")
    ));
    let config = client.config();
    assert_eq!(config.secrets.len(), 2);
    assert!(
        config.listeners["inbound"].tls.is_some(),
        "the inbound listener names them"
    );

    // An expired certificate: NACKed with the reason, the old one keeps serving.
    cache
        .set_snapshot("orders-1", with_secret(&snap, &expired_default()))
        .unwrap();
    eventually("the NACK", || {
        client
            .status()
            .types
            .get(ResourceType::Secret.type_url())
            .is_some_and(|t| t.nacks > 0)
    })
    .await;
    let status = client.status();
    let err = status.types[ResourceType::Secret.type_url()]
        .last_error
        .clone()
        .unwrap();
    assert!(
        err.contains("secret[default].tls_certificate.certificate_chain[0]")
            && err.contains("not valid now"),
        "{err}"
    );
    assert_eq!(**client.config().secrets["default"], first);
    assert_eq!(secrets.get()[1], first);
    client.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn sotw_client_subscribes_to_its_secrets() {
    subscribes_to_its_secrets(AdsMode::Sotw).await;
}

#[tokio::test]
async fn delta_client_subscribes_to_its_secrets() {
    subscribes_to_its_secrets(AdsMode::Delta).await;
}
