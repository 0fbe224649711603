//! TLS on the xDS stream, over loopback: our control plane serving TLS (and mTLS) to the client,
//! with a CA and certificates made at test time (rcgen) and kept in a temp dir. A client that
//! trusts another CA, or that has no certificate for an mTLS control plane, never becomes ready
//! and says why in its status.
#![allow(clippy::unwrap_used, missing_docs)]

mod client_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use client_support::{eventually, Sink};
use mesh_core::*;
use mesh_xds::client::{AdsMode, ConnectionState, XdsClient, XdsClientBuilder, XdsClientError};
use mesh_xds::convert::encode;
use mesh_xds::server::{Snapshot, SnapshotCache, XdsServer};
use mesh_xds::tls::{ServerTls, XdsTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::task::JoinHandle;

/// A CA and the PEM files of certificates it signed, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Issues a certificate for `sans` as `<name>.pem` and `<name>-key.pem`.
    fn issue(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn eds(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn snapshot() -> Snapshot {
    let routes: RouteConfiguration =
        serde_yaml::from_str(include_str!("client_data/routes.yaml")).unwrap();
    let listener = Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: "out".into(),
        address: "127.0.0.1:8082".parse().unwrap(),
        direction: Direction::Outbound,
        route_config_name: routes.name.clone(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    };
    let la = ClusterLoadAssignment::from_addrs("a", [([10, 0, 0, 1], 80).into()]);
    Snapshot::from_anys([
        encode(&eds("a")),
        encode(&la),
        encode(&listener),
        encode(&routes),
    ])
    .unwrap()
}

/// Our control plane over TLS on a free loopback port, serving one node's snapshot.
async fn tls_control_plane(tls: ServerTls) -> (SocketAddr, JoinHandle<()>) {
    let cache = SnapshotCache::new();
    cache.set_snapshot("node-1", snapshot()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        XdsServer::new(cache)
            .serve_tls(listener, tls, std::future::pending())
            .await
            .unwrap();
    });
    (addr, task)
}

fn client(addr: SocketAddr, mode: AdsMode, tls: XdsTls) -> XdsClientBuilder {
    XdsClient::builder()
        .address(format!("https://{addr}"))
        .node_id("node-1")
        .mode(mode)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .tls(tls)
}

/// Waits until the client reports a failed attempt whose error contains `needle`, then checks
/// that it is not ready.
async fn refused(client: &XdsClient, needle: &str) {
    let mut last = String::new();
    eventually("a TLS failure in the status", || {
        if let ConnectionState::Backoff { error } = client.status().connection {
            last = error;
        }
        last.contains(needle)
    })
    .await;
    assert!(!client.is_ready());
    assert!(matches!(
        client.wait_ready(Duration::from_millis(200)).await,
        Err(XdsClientError::NotReady(_))
    ));
}

#[tokio::test]
async fn a_client_trusting_the_ca_gets_its_config_over_tls_in_both_variants() {
    let pki = Pki::new("mesh");
    let (cert, key) = pki.issue("cp", &["localhost", "127.0.0.1"]);
    let (addr, server) = tls_control_plane(ServerTls::from_files(&cert, &key).unwrap()).await;
    for mode in [AdsMode::Sotw, AdsMode::Delta] {
        let clusters = Sink::<Vec<Cluster>>::new();
        let c = client(addr, mode, XdsTls::new().ca_file(pki.path("ca.pem")))
            .sink_all::<Cluster>(clusters.clone())
            .start()
            .unwrap();
        c.wait_ready(client_support::WAIT).await.unwrap();
        assert_eq!(clusters.get(), vec![eds("a")], "{mode:?}");
        assert!(matches!(
            c.status().connection,
            ConnectionState::Connected(_)
        ));
        c.shutdown().await;
    }
    // By name rather than by IP: the certificate's DNS SAN, with the CA given as bytes.
    let c = client(
        addr,
        AdsMode::Sotw,
        XdsTls::new()
            .ca_pem(std::fs::read(pki.path("ca.pem")).unwrap())
            .domain_name("localhost"),
    )
    .start()
    .unwrap();
    c.wait_ready(client_support::WAIT).await.unwrap();
    c.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_and_says_why() {
    let pki = Pki::new("mesh");
    let (cert, key) = pki.issue("cp", &["127.0.0.1"]);
    let (addr, server) = tls_control_plane(ServerTls::from_files(&cert, &key).unwrap()).await;
    let other = Pki::new("other");
    let c = client(
        addr,
        AdsMode::Sotw,
        XdsTls::new().ca_file(other.path("ca.pem")),
    )
    .start()
    .unwrap();
    refused(&c, "UnknownIssuer").await;
    c.shutdown().await;
    // The right CA but the wrong name: refused as well.
    let c = client(
        addr,
        AdsMode::Sotw,
        XdsTls::new()
            .ca_file(pki.path("ca.pem"))
            .domain_name("cp.elsewhere"),
    )
    .start()
    .unwrap();
    refused(&c, "certificate").await;
    c.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn mtls_serves_a_client_with_a_certificate_and_refuses_one_without() {
    let pki = Pki::new("mesh");
    let (cert, key) = pki.issue("cp", &["127.0.0.1"]);
    let (client_cert, client_key) = pki.issue("sidecar", &["sidecar-1.mesh"]);
    let tls = ServerTls::from_files(&cert, &key)
        .unwrap()
        .client_ca_file(pki.path("ca.pem"))
        .unwrap();
    assert!(tls.requires_client_cert());
    let (addr, server) = tls_control_plane(tls).await;

    let with = client(
        addr,
        AdsMode::Delta,
        XdsTls::new()
            .ca_file(pki.path("ca.pem"))
            .identity_files(&client_cert, &client_key),
    )
    .start()
    .unwrap();
    with.wait_ready(client_support::WAIT).await.unwrap();

    let without = client(
        addr,
        AdsMode::Delta,
        XdsTls::new().ca_file(pki.path("ca.pem")),
    )
    .start()
    .unwrap();
    refused(&without, "CertificateRequired").await;
    assert_eq!(without.status().connects, 0, "no stream was ever open");
    assert!(
        with.is_ready(),
        "the refusal does not disturb the other client"
    );
    without.shutdown().await;
    with.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn the_builder_refuses_mismatched_schemes_and_bad_pem() {
    let pki = Pki::new("mesh");
    let tls = || XdsTls::new().ca_file(pki.path("ca.pem"));
    let err = XdsClient::builder()
        .address("http://127.0.0.1:1")
        .tls(tls())
        .start()
        .unwrap_err();
    assert!(matches!(err, XdsClientError::PlaintextWithTls(_)), "{err}");
    let err = XdsClient::builder()
        .address("https://127.0.0.1:1")
        .start()
        .unwrap_err();
    assert!(matches!(err, XdsClientError::HttpsWithoutTls(_)), "{err}");
    let err = XdsClient::builder()
        .address("https://127.0.0.1:1")
        .tls(XdsTls::new().ca_file(pki.path("missing.pem")))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // A client key that does not parse fails at start, not on every connect.
    let (cert, _) = pki.issue("sidecar", &["sidecar-1.mesh"]);
    let err = XdsClient::builder()
        .address("https://127.0.0.1:1")
        .tls(tls().identity_pem(
            std::fs::read(cert).unwrap(),
            "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
        ))
        .start()
        .unwrap_err();
    assert!(matches!(err, XdsClientError::Tls(_)), "{err}");
}
