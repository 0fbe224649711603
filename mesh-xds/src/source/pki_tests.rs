#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_core::{Cluster, Listener, MtlsMode, Secret, SecretKind};
use x509_parser::prelude::*;

use super::*;
use crate::convert::decode;
use crate::source::MeshSpec;

fn spec(ttl: Duration) -> SecuritySpec {
    SecuritySpec {
        trust_domain: "mesh.test".into(),
        namespace: "default".into(),
        ca: CaSpec {
            generate: true,
            ..CaSpec::default()
        },
        extra_roots: Vec::new(),
        workload_cert_ttl: ttl,
        modes: Default::default(),
    }
}

fn leaf(secrets: &[Secret; 2]) -> String {
    match &secrets[0].kind {
        SecretKind::TlsCertificate(c) => c.certificate_chain.clone(),
        SecretKind::ValidationContext(_) => panic!("default is a certificate"),
    }
}

#[test]
fn a_workload_certificate_carries_the_spiffe_id_and_chains_to_the_ca() {
    let ca = MeshCa::load(&spec(Duration::from_secs(3600))).unwrap();
    let id = SpiffeId::new("mesh.test", "default", "orders");
    let secrets = ca.secrets(&id).unwrap();
    assert_eq!(secrets[0].name, WORKLOAD_SECRET);
    assert_eq!(secrets[1].name, ROOT_SECRET);
    let pem = leaf(&secrets);
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = block.parse_x509().unwrap();
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        vec![GeneralName::URI("spiffe://mesh.test/ns/default/sa/orders")]
    );
    let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca.bundle().as_bytes()).unwrap();
    let ca_cert = ca_block.parse_x509().unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600 + 60, "lifetime plus a minute of clock slack");
}

#[tokio::test(start_paused = true)]
async fn certificates_are_renewed_at_two_thirds_of_their_lifetime() {
    let ca = MeshCa::load(&spec(Duration::from_secs(300))).unwrap();
    let id = SpiffeId::new("mesh.test", "default", "orders");
    let first = leaf(&ca.secrets(&id).unwrap());
    tokio::time::advance(Duration::from_secs(150)).await;
    assert_eq!(leaf(&ca.secrets(&id).unwrap()), first, "kept before 2/3");
    assert!(ca.next_renewal().unwrap() > tokio::time::Instant::now());
    tokio::time::advance(Duration::from_secs(51)).await;
    assert!(ca.next_renewal().unwrap() <= tokio::time::Instant::now());
    let second = leaf(&ca.secrets(&id).unwrap());
    assert_ne!(second, first, "re-issued after 2/3");
}

#[test]
fn a_bad_ca_names_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ca.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let key = dir.path().join("ca.key");
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&key, other.serialize_pem()).unwrap();
    let mut s = spec(Duration::from_secs(60));
    s.ca = CaSpec {
        cert: Some(garbage.clone()),
        key: Some(key.clone()),
        generate: false,
    };
    let err = MeshCa::load(&s).unwrap_err();
    assert_eq!(err.file, garbage.display().to_string());

    // A real CA certificate with somebody else's key.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    std::fs::write(&garbage, &ca_pem).unwrap();
    let err = MeshCa::load(&s).unwrap_err();
    assert_eq!(err.file, key.display().to_string());
    assert!(err.reason.contains("does not match"), "{err}");

    // The right key: loads, and issues certificates that chain to it.
    std::fs::write(&key, ca_key.serialize_pem()).unwrap();
    let ca = MeshCa::load(&s).unwrap();
    assert_eq!(ca.bundle(), ca_pem);

    s.ca = CaSpec::default();
    assert_eq!(MeshCa::load(&s).unwrap_err().file, "security.ca");
}

const MESH: &str = r#"
security:
  trust_domain: mesh.test
  ca: { generate: true }
  workload_cert_ttl: 10m
  modes: { web: permissive }
services:
  - name: orders
    protocol: http2
    endpoints: [{ address: "127.0.0.1:9001" }]
  - name: web
    protocol: use_downstream
    endpoints: [{ address: "127.0.0.1:9002" }]
  - name: external
    endpoints: [{ address: "127.0.0.1:9003" }]
nodes:
  - { id: orders-1, service: orders }
  - { id: web-1, service: web }
  - { id: grpc-1, proxyless: true }
"#;

#[test]
fn under_security_nodes_get_secrets_mtls_listeners_and_verifying_clusters() {
    let spec = MeshSpec::from_yaml(MESH).unwrap();
    let snaps = spec.snapshots().unwrap();
    let orders = &snaps.nodes["orders-1"];
    let secret = orders.of(crate::ResourceType::Secret);
    let names: Vec<_> = secret.items().keys().cloned().collect();
    assert_eq!(names, vec!["ROOTCA".to_string(), "default".to_string()]);
    let cert: Secret = decode(secret.get("default").unwrap().any()).unwrap();
    let SecretKind::TlsCertificate(c) = cert.kind else {
        panic!()
    };
    assert!(c.certificate_chain.contains("BEGIN CERTIFICATE"));

    let inbound: Listener = decode(
        orders
            .of(crate::ResourceType::Listener)
            .get("inbound")
            .unwrap()
            .any(),
    )
    .unwrap();
    assert_eq!(inbound.tls.as_ref().unwrap().mode, MtlsMode::Strict);
    let outbound: Listener = decode(
        orders
            .of(crate::ResourceType::Listener)
            .get("outbound")
            .unwrap()
            .any(),
    )
    .unwrap();
    assert!(outbound.tls.is_none(), "the local app's side is plaintext");
    let web_in: Listener = decode(
        snaps.nodes["web-1"]
            .of(crate::ResourceType::Listener)
            .get("inbound")
            .unwrap()
            .any(),
    )
    .unwrap();
    assert_eq!(web_in.tls.unwrap().mode, MtlsMode::Permissive);

    let clusters = orders.of(crate::ResourceType::Cluster);
    let c: Cluster = decode(clusters.get("orders").unwrap().any()).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(
        tls.match_uri_sans,
        vec!["spiffe://mesh.test/ns/default/sa/orders"]
    );
    assert_eq!(tls.alpn, vec!["h2"]);
    let web: Cluster = decode(clusters.get("web").unwrap().any()).unwrap();
    assert_eq!(
        web.tls.unwrap().alpn,
        Vec::<String>::new(),
        "use_downstream: each connection offers its caller's protocol (a fixed h2 + http/1.1 \
         list lets the server pick h2 under an HTTP/1.1 codec)"
    );
    let ext: Cluster = decode(clusters.get("external").unwrap().any()).unwrap();
    assert!(ext.tls.is_none(), "no sidecar runs it: plaintext");
    let app: Cluster = decode(clusters.get("local_app").unwrap().any()).unwrap();
    assert!(app.tls.is_none());

    // Proxyless gRPC clients: no SDS, plaintext clusters.
    let grpc = &snaps.nodes["grpc-1"];
    assert!(grpc.of(crate::ResourceType::Secret).items().is_empty());
    let c: Cluster = decode(
        grpc.of(crate::ResourceType::Cluster)
            .get("orders")
            .unwrap()
            .any(),
    )
    .unwrap();
    assert!(c.tls.is_none());
}

#[test]
fn without_security_nothing_changes() {
    let plain = MESH.split("services:").nth(1).unwrap();
    let spec = MeshSpec::from_yaml(&format!("services:{plain}")).unwrap();
    let snaps = spec.snapshots().unwrap();
    let orders = &snaps.nodes["orders-1"];
    assert!(orders.of(crate::ResourceType::Secret).items().is_empty());
    let c: Cluster = decode(
        orders
            .of(crate::ResourceType::Cluster)
            .get("orders")
            .unwrap()
            .any(),
    )
    .unwrap();
    assert!(c.tls.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_file_source_renews_certificates_with_a_new_snapshot_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, MESH).unwrap();
    let cache = crate::server::SnapshotCache::new();
    let task = crate::source::FileSource::new(&path, cache.clone())
        .spawn(Duration::from_secs(1))
        .unwrap();
    let cert_of = |cache: &crate::server::SnapshotCache| {
        let snap = cache.snapshot("orders-1").unwrap();
        let s: Secret = decode(
            snap.of(crate::ResourceType::Secret)
                .get("default")
                .unwrap()
                .any(),
        )
        .unwrap();
        (snap.version(), s)
    };
    let (v1, first) = cert_of(&cache);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(cert_of(&cache).1, first, "kept while the file is unchanged");
    // 2/3 of 10 minutes, plus a poll.
    tokio::time::sleep(Duration::from_secs(400 - 60 + 2)).await;
    let (v2, second) = cert_of(&cache);
    assert_ne!(second, first, "renewed");
    assert_ne!(v2, v1, "a new snapshot version");
    task.abort();
}
