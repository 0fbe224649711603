//! Certificate rotation under load, driven by our control plane: two of our dynamic sidecars
//! (`front` calls `web` over mTLS) get workload certificates with a 3 s lifetime over SDS, so
//! the control plane renews them every 2 s. A bounded load loop through `front` runs across at
//! least two renewals of both sidecars' certificates with zero failed requests; the renewals are
//! seen in real handshakes (the certificate `web` serves changes) and in `front`'s store; a TLS
//! connection established before the renewals, and a client connection to `front`, still serve
//! afterwards; no handshake failed.
#![allow(clippy::unwrap_used)]

mod interop;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use interop::{get_h1, until, ControlPlane};
use mesh_lb::tls::TlsSecrets;
use mesh_testkit::{IssuedCert, TestCa};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

/// Accepts the server's chain as presented: the test reads the certificate, the sidecars check
/// identities themselves.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An mTLS HTTP/1.1 connection to `port` with `cert`: the sender and the certificate the server
/// presented in this handshake.
async fn connect(port: u16, cert: &IssuedCert) -> (Sender, CertificateDer<'static>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("web.mesh").unwrap(), tcp)
        .await
        .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, served)
}

/// GET / with `Host: web` on an established connection: the status.
async fn get_on(send: &mut Sender) -> u16 {
    let req = Request::get("/")
        .header("host", "web")
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("timed out")
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_renewed_by_the_control_plane_fail_no_request() {
    let ca = TestCa::new("mesh ca").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    std::fs::write(&ca_key, ca.key_pem()).unwrap();
    let app = interop::start_app("web").await;
    let p = mesh_testkit::free_ports(4);
    let yaml = format!(
        r#"
security:
  trust_domain: mesh.test
  ca: {{ cert: "{cert}", key: "{key}" }}
  workload_cert_ttl: 3s
services:
  - name: front
  - name: web
    endpoints: [{{ address: "127.0.0.1:{web_in}" }}]
    authz: {{ allow: [{{ from: [front] }}] }}
nodes:
  - id: front-node
    service: front
    listeners: {{ outbound: 127.0.0.1:{fo}, inbound: 127.0.0.1:{fi}, local_app: 127.0.0.1:1 }}
  - id: web-node
    service: web
    listeners: {{ outbound: 127.0.0.1:{wo}, inbound: 127.0.0.1:{web_in}, local_app: "{app}" }}
"#,
        cert = ca_pem.display(),
        key = ca_key.display(),
        fo = p[0],
        fi = p[1],
        wo = p[2],
        web_in = p[3],
    );
    let cp = ControlPlane::start(&yaml).await;
    let front = cp.sidecar("front-node").await;
    let web = cp.sidecar("web-node").await;
    let out = p[0];
    let first = until(Duration::from_secs(10), || async {
        get_h1(out, "web").await.ok().filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(first, Some((200, "web HTTP/1.1".into())));

    // Connections established before any renewal: mTLS straight to web's inbound (as the
    // caller `front`, from the same CA), and a keep-alive client connection to front.
    let client = ca.issue("spiffe://mesh.test/ns/default/sa/front").unwrap();
    let (mut held_tls, served0) = connect(p[3], &client).await;
    assert_eq!(get_on(&mut held_tls).await, 200);
    let tcp = TcpStream::connect(("127.0.0.1", out)).await.unwrap();
    let (mut held_plain, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(get_on(&mut held_plain).await, 200);

    // The load: two loops of requests through front, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], out));
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                    match mesh_testkit::http_request(addr, "GET", "/", &[("Host", "web")], b"") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    // Watch both certificates change at least twice: web's in fresh handshakes, front's in
    // its store.
    let front_cert = || front.secrets().certified_key("default").unwrap().cert[0].clone();
    let mut web_seen = HashSet::from([served0.clone()]);
    let mut front_seen = HashSet::from([front_cert()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while web_seen.len() < 3 || front_seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no two renewals within 20 s: web {} front {} certificates",
            web_seen.len(),
            front_seen.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut fresh, served) = connect(p[3], &client).await;
        assert_eq!(get_on(&mut fresh).await, 200, "a new handshake serves");
        web_seen.insert(served);
        front_seen.insert(front_cert());
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok >= 50, "the load ran: {ok} requests");
    eprintln!(
        "{ok} requests, none failed, across {} certificates of web and {} of front",
        web_seen.len(),
        front_seen.len()
    );

    // The connections from before the renewals still serve (web's first certificate has
    // expired by now: established connections are not re-checked).
    assert_eq!(
        get_on(&mut held_tls).await,
        200,
        "established mTLS connection"
    );
    assert_eq!(
        get_on(&mut held_plain).await,
        200,
        "client connection to front"
    );
    let (_, now) = connect(p[3], &client).await;
    assert_ne!(now, served0, "web serves a renewed certificate");
    for reason in [
        "expired",
        "unknown_ca",
        "wrong_identity",
        "no_secret",
        "other",
    ] {
        assert_eq!(
            front.secrets().handshake_errors("outbound", "web", reason),
            0,
            "{reason}"
        );
    }
    front.shutdown().await;
    web.shutdown().await;
}
