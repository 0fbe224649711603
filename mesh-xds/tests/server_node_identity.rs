//! How a node proves who it is: over an mTLS xDS stream, the control plane serves a node's
//! workload certificate (`default`) only to a client whose certificate's URI SAN is that
//! workload's SPIFFE identity; the trust bundle (`ROOTCA`) goes to anyone.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use mesh_xds::server::{SnapshotCache, XdsServer};
use mesh_xds::source::MeshSpec;
use mesh_xds::tls::ServerTls;
use mesh_xds::ResourceType;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const MESH: &str = "security: { trust_domain: mesh.test, ca: { generate: true } }\nservices: [{ name: orders }, { name: payments }]\nnodes: [{ id: orders-1, service: orders }]\n";

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, sans: Vec<SanType>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The names of the secrets a client with certificate `identity` gets for node `orders-1`.
async fn secrets_for(addr: SocketAddr, ca_pem: &str, identity: (String, String)) -> Vec<String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(identity.0, identity.1))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "orders-1".into(),
            ..Node::default()
        }),
        type_url: ResourceType::Secret.type_url().into(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut names: Vec<String> = resp
        .resources
        .iter()
        .map(|any| {
            let s: mesh_core::Secret = mesh_xds::convert::decode(any).unwrap();
            s.name
        })
        .collect();
    names.sort();
    drop(tx);
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_certificate_goes_only_to_the_identity_it_names() {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let (cp_cert, cp_key) = leaf(&ca, vec![SanType::DnsName("localhost".try_into().unwrap())]);
    let tls = ServerTls::from_pem(cp_cert, cp_key)
        .unwrap()
        .client_ca_pem(ca.pem())
        .unwrap();

    let cache = SnapshotCache::new();
    let snaps = MeshSpec::from_yaml(MESH).unwrap().snapshots().unwrap();
    mesh_xds::source::apply(&cache, &snaps, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        XdsServer::new(cache)
            .serve_tls(listener, tls, std::future::pending())
            .await
            .unwrap();
    });

    let uri = |s: &str| {
        SanType::URI(
            format!("spiffe://mesh.test/ns/default/sa/{s}")
                .try_into()
                .unwrap(),
        )
    };
    let orders = leaf(&ca, vec![uri("orders")]);
    assert_eq!(
        secrets_for(addr, &ca.pem(), orders).await,
        ["ROOTCA", "default"]
    );
    let payments = leaf(&ca, vec![uri("payments")]);
    assert_eq!(
        secrets_for(addr, &ca.pem(), payments).await,
        ["ROOTCA"],
        "another identity claiming node orders-1 gets the bundle only"
    );
    server.abort();
}
