//! mTLS between two of our sidecars on loopback: app → A (outbound, plaintext from the app) →
//! mTLS → B (inbound) → app, for HTTP/1.1, h2 and gRPC; clients without a certificate or with
//! a foreign CA's refused at B's handshake; a wrong server identity failing A's connect;
//! permissive mode; rotation of both sides' certificates and the bundle under load.
#![allow(clippy::unwrap_used)]

mod interop;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use interop::AnyServer;
use mesh_core::extensions::PeerIdentity;
use mesh_core::{Reload, Secret, SecretKind, TlsCertificate, ValidationContext};
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use mesh_testkit::{IssuedCert, TestCa};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

const ID_A: &str = "spiffe://mesh.local/ns/default/sa/a";
const ID_B: &str = "spiffe://mesh.local/ns/default/sa/b";

/// An app answering with the HTTP version it was spoken to in and the `x-peer-identity` B's
/// filter set (`/slow` after 100 ms); counts its requests.
async fn start_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let peer = req
                        .headers()
                        .get("x-peer-identity")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = format!("hello {:?} peer={peer:?}", req.version());
                    let slow = req.uri().path() == "/slow";
                    async move {
                        if slow {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// A gRPC health server (tonic).
async fn start_grpc_app() -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("mesh.Hello", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn cert_yaml(name: &str, c: &IssuedCert) -> String {
    format!(
        "  - name: {name}\n    tls_certificate: {{ certificate_chain: {}, private_key: {} }}\n",
        json(&c.cert_pem),
        json(&c.key_pem)
    )
}

fn bundle_yaml(name: &str, pem: &str) -> String {
    format!(
        "  - name: {name}\n    validation_context: {{ trusted_ca: {} }}\n",
        json(pem)
    )
}

/// Sidecar B: an mTLS inbound listener (`mode`) in front of the HTTP app and the gRPC app.
async fn start_b(ca: &TestCa, mode: &str, app: SocketAddr, grpc: SocketAddr) -> (Sidecar, u16) {
    let [inb, admin] = mesh_testkit::free_ports(2)[..] else {
        unreachable!()
    };
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 1s
listeners:
  - name: inbound
    address: 127.0.0.1:{inb}
    direction: inbound
    tls: {{ certificate: default, validation: ROOTCA, mode: {mode} }}
    http_filters: [ {{ custom: {{ name: peer_header }} }} ]
    route_config:
      name: inbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - match: {{ prefix: /grpc.health }}
              route: {{ cluster: grpc_app }}
            - route: {{ cluster: local_app }}
clusters:
  - name: local_app
    protocol: use_downstream
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}" }} ] }} ] }}
  - name: grpc_app
    protocol: http2
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{grpc}" }} ] }} ] }}
secrets:
{}{}"#,
        cert_yaml("default", &ca.issue(ID_B).unwrap()),
        bundle_yaml("ROOTCA", &ca.cert_pem()),
    );
    let boot = Bootstrap::from_yaml(&yaml, Path::new("b.yaml")).unwrap();
    let mut filters = mesh_router::LayerRegistry::default();
    // Shows the app the identity the listener verified (what authorization reads).
    filters.register("peer_header", |_: &mesh_core::FilterConfig| {
        Ok(mesh_router::RouteLayer::new(
            tower::util::MapRequestLayer::new(|mut req: Request<mesh_core::Body>| {
                if let Some(PeerIdentity(id)) = req.extensions().get::<PeerIdentity>().cloned() {
                    req.headers_mut()
                        .insert("x-peer-identity", id.parse().unwrap());
                }
                req
            }),
        ))
    });
    (
        Sidecar::start_static_with(boot, filters).await.unwrap(),
        inb,
    )
}

/// Sidecar A: two plaintext outbound listeners for the app, to B over mTLS with HTTP/1.1
/// (`h1` port) and HTTP/2 (`h2` port), expecting B to be `expect`.
async fn start_a(ca: &TestCa, b: u16, expect: &str) -> (Sidecar, u16, u16) {
    let [h1, h2, admin] = mesh_testkit::free_ports(3)[..] else {
        unreachable!()
    };
    let listener = |name: &str, port: u16, cluster: &str| {
        format!(
            r#"
  - name: {name}
    address: 127.0.0.1:{port}
    direction: outbound
    route_config:
      name: {name}
      virtual_hosts:
        - name: mesh
          domains: ["*"]
          routes:
            - route: {{ cluster: {cluster} }}"#
        )
    };
    let cluster = |name: &str, protocol: &str| {
        format!(
            r#"
  - name: {name}
    protocol: {protocol}
    tls: {{ certificate: default, validation: ROOTCA, match_uri_sans: ["{expect}"] }}
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{b}" }} ] }} ] }}"#
        )
    };
    let yaml = format!(
        "admin: 127.0.0.1:{admin}\ndrain_timeout: 1s\nlisteners:{}{}\nclusters:{}{}\nsecrets:\n{}{}",
        listener("out_h1", h1, "b_h1"),
        listener("out_h2", h2, "b_h2"),
        cluster("b_h1", "http1"),
        cluster("b_h2", "http2"),
        cert_yaml("default", &ca.issue(ID_A).unwrap()),
        bundle_yaml("ROOTCA", &ca.cert_pem()),
    );
    let boot = Bootstrap::from_yaml(&yaml, Path::new("a.yaml")).unwrap();
    (Sidecar::start_static(boot).await.unwrap(), h1, h2)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn clients() -> (HttpClient, HttpClient) {
    let h1 = Client::builder(TokioExecutor::new()).build_http();
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    (h1, h2)
}

async fn get(client: &HttpClient, port: u16, path: &str) -> (StatusCode, String) {
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(format!("http://127.0.0.1:{port}{path}").parse().unwrap()),
    )
    .await
    .expect("request timed out")
    .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_h2_and_grpc_cross_mtls_between_our_sidecars() {
    let ca = TestCa::new("mesh ca").unwrap();
    let ((app, hits), grpc) = (start_app().await, start_grpc_app().await);
    let (b, inb) = start_b(&ca, "strict", app, grpc).await;
    let (a, h1, h2) = start_a(&ca, inb, ID_B).await;
    let (c1, c2) = clients();

    let (status, body) = get(&c1, h1, "/").await;
    let peer_a = format!("peer=Some({ID_A:?})");
    assert_eq!(
        (status, body),
        (StatusCode::OK, format!("hello HTTP/1.1 {peer_a}"))
    );
    let (status, body) = get(&c2, h2, "/").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, format!("hello HTTP/2.0 {peer_a}"))
    );
    assert_eq!(hits.load(Ordering::Relaxed), 2);

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{h2}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let resp = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mesh.Hello".into(),
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().status, 1, "SERVING through mTLS");

    // Strict: plaintext straight to B is closed, and counted.
    assert!(tokio::time::timeout(
        Duration::from_secs(5),
        c1.get(format!("http://127.0.0.1:{inb}/").parse().unwrap())
    )
    .await
    .unwrap()
    .is_err());
    eventually("plaintext refusal counted", || {
        b.secrets()
            .handshake_errors("inbound", "inbound", "plaintext")
            == 1
    })
    .await;
    assert_eq!(
        hits.load(Ordering::Relaxed),
        2,
        "the plaintext request reached nobody"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// An HTTP/1.1 connection to B over TLS with `cert` (or none): the request sender once the
/// handshake and B's verdict on it are through.
async fn tls_client(
    port: u16,
    cert: Option<&IssuedCert>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("b.mesh").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // TLS 1.3: the server judges the client's certificate after the client's handshake ends;
    // its verdict arrives with the first response.
    let req = Request::get("/").body(Empty::new()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await {
        Ok(Ok(r)) if r.status() == StatusCode::OK => Ok(send),
        Ok(Ok(r)) => Err(format!("status {}", r.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_mesh_certificate_are_refused_at_the_handshake() {
    let ca = TestCa::new("mesh ca").unwrap();
    let foreign = TestCa::new("foreign ca").unwrap();
    let ((app, hits), grpc) = (start_app().await, start_grpc_app().await);
    let (b, inb) = start_b(&ca, "strict", app, grpc).await;

    assert!(tls_client(inb, None).await.is_err());
    let errors = |reason: &str| b.secrets().handshake_errors("inbound", "inbound", reason);
    eventually("no-certificate refusal counted", || {
        errors("no_client_certificate") == 1
    })
    .await;
    assert!(tls_client(inb, Some(&foreign.issue(ID_A).unwrap()))
        .await
        .is_err());
    eventually("foreign-CA refusal counted", || errors("unknown_ca") == 1).await;
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "no refused client reached the app"
    );

    tls_client(inb, Some(&ca.issue(ID_A).unwrap()))
        .await
        .unwrap();
    assert_eq!(hits.load(Ordering::Relaxed), 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_fails_the_connect() {
    let ca = TestCa::new("mesh ca").unwrap();
    let ((app, hits), grpc) = (start_app().await, start_grpc_app().await);
    let (b, inb) = start_b(&ca, "strict", app, grpc).await;
    let (a, h1, _) = start_a(&ca, inb, "spiffe://mesh.local/ns/default/sa/x").await;
    let (c1, _) = clients();
    let (status, _) = get(&c1, h1, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "a connect failure (UF)");
    assert!(
        a.secrets()
            .handshake_errors("outbound", "b_h1", "wrong_identity")
            >= 1
    );
    assert_eq!(hits.load(Ordering::Relaxed), 0, "B never saw a request");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_mtls_and_plaintext() {
    let ca = TestCa::new("mesh ca").unwrap();
    let ((app, hits), grpc) = (start_app().await, start_grpc_app().await);
    let (b, inb) = start_b(&ca, "permissive", app, grpc).await;
    let (a, h1, _) = start_a(&ca, inb, ID_B).await;
    let (c1, _) = clients();
    let (status, body) = get(&c1, h1, "/").await;
    assert_eq!(status, StatusCode::OK, "mTLS");
    assert!(body.ends_with(&format!("peer=Some({ID_A:?})")), "{body}");
    let (status, body) = get(&c1, inb, "/").await;
    assert_eq!(status, StatusCode::OK, "plaintext");
    assert!(
        body.ends_with("peer=None"),
        "no identity on plaintext: {body}"
    );
    assert_eq!(hits.load(Ordering::Relaxed), 2);
    a.shutdown().await;
    b.shutdown().await;
}

fn cert_secret(c: &IssuedCert) -> Secret {
    Secret {
        name: "default".into(),
        kind: SecretKind::TlsCertificate(TlsCertificate {
            certificate_chain: c.cert_pem.clone(),
            private_key: c.key_pem.clone(),
        }),
    }
}

fn bundle_secret(pem: String) -> Secret {
    Secret {
        name: "ROOTCA".into(),
        kind: SecretKind::ValidationContext(ValidationContext { trusted_ca: pem }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request_and_keeps_connections() {
    let old = TestCa::new("old ca").unwrap();
    let new = TestCa::new("new ca").unwrap();
    let ((app, hits), grpc) = (start_app().await, start_grpc_app().await);
    let (b, inb) = start_b(&old, "strict", app, grpc).await;
    let (a, h1, h2) = start_a(&old, inb, ID_B).await;
    // An established mTLS connection straight to B, from before the rotation.
    let mut established = tls_client(inb, Some(&old.issue(ID_A).unwrap()))
        .await
        .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for (port, client) in [(h1, clients().0), (h2, clients().1)] {
        let stop = Arc::clone(&stop);
        loops.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            let started = Instant::now();
            // Bounded: 20 s or 20,000 requests, whichever first.
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(20)
                && ok + failed < 20_000
            {
                // A fresh connection now and then: new handshakes during the rotation.
                let fresh = (ok + failed) % 50 == 0;
                let client = if fresh {
                    if port == h1 {
                        clients().0
                    } else {
                        clients().1
                    }
                } else {
                    client.clone()
                };
                match client
                    .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    // A burst of concurrent HTTP/1.1 requests makes A open new connections to B (its pool
    // holds fewer idle ones, each burst being larger than the last): new handshakes at each
    // step of the rotation.
    let burst_failures = Arc::new(AtomicUsize::new(0));
    let burst = |n: usize| {
        let failures = Arc::clone(&burst_failures);
        async move {
            let client = clients().0;
            let all = (0..n).map(|_| {
                let client = client.clone();
                async move {
                    client
                        .get(format!("http://127.0.0.1:{h1}/slow").parse().unwrap())
                        .await
                        .map(|r| r.status())
                }
            });
            for r in futures_util::future::join_all(all).await {
                if !matches!(r, Ok(StatusCode::OK)) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let step = Duration::from_millis(300);
    tokio::time::sleep(step).await;
    burst(8).await;
    // The CA rotation: both bundles carry old and new, then each side's certificate moves to
    // the new CA, then the bundles drop the old CA.
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    b.secrets().reload(bundle_secret(both.clone())).unwrap();
    a.secrets().reload(bundle_secret(both)).unwrap();
    burst(16).await;
    tokio::time::sleep(step).await;
    b.secrets()
        .reload(cert_secret(&new.issue(ID_B).unwrap()))
        .unwrap();
    burst(24).await;
    tokio::time::sleep(step).await;
    a.secrets()
        .reload(cert_secret(&new.issue(ID_A).unwrap()))
        .unwrap();
    burst(32).await;
    tokio::time::sleep(step).await;
    b.secrets().reload(bundle_secret(new.cert_pem())).unwrap();
    a.secrets().reload(bundle_secret(new.cert_pem())).unwrap();
    // Only the new CA is trusted on either side now: these new handshakes succeed only with
    // both sides presenting their new certificates.
    burst(48).await;
    // An expired or malformed secret is refused; the current one keeps serving.
    assert!(b
        .secrets()
        .reload(cert_secret(&new.issue_expired(ID_B).unwrap()))
        .is_err());
    assert!(a
        .secrets()
        .reload(bundle_secret(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()
        ))
        .is_err());
    tokio::time::sleep(step).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in loops {
        let (ok, failed) = l.await.unwrap();
        assert_eq!(failed, 0, "{failed} failed requests (of {})", ok + failed);
        assert!(ok > 10, "the load loop ran ({ok})");
        total += ok;
        eprintln!("load loop: {ok} requests, {failed} failed");
    }
    assert_eq!(
        burst_failures.load(Ordering::Relaxed),
        0,
        "failed burst requests"
    );
    for reason in [
        "unknown_ca",
        "no_client_certificate",
        "other",
        "expired",
        "no_secret",
    ] {
        let (inb_err, out_err) = (
            b.secrets().handshake_errors("inbound", "inbound", reason),
            a.secrets().handshake_errors("outbound", "b_h1", reason)
                + a.secrets().handshake_errors("outbound", "b_h2", reason),
        );
        eprintln!("{reason}: inbound {inb_err} outbound {out_err}");
        assert_eq!(
            (inb_err, out_err),
            (0, 0),
            "no handshake failed for {reason}"
        );
    }
    assert!(hits.load(Ordering::Relaxed) >= total);

    // The connection from before the rotation still serves (its certificate was verified at
    // its handshake), while a new handshake with an old-CA certificate is refused now.
    let resp = established
        .send_request(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    assert!(tls_client(inb, Some(&old.issue(ID_A).unwrap()))
        .await
        .is_err());
    tls_client(inb, Some(&new.issue(ID_A).unwrap()))
        .await
        .unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

/// Waits (bounded) until `f` holds: the server counts a refused handshake just after the
/// client has seen the refusal.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ready(admin: SocketAddr) -> (u16, String) {
    tokio::task::spawn_blocking(move || mesh_testkit::http_get(admin, "/ready").unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_without_tls_says_it_runs_plaintext() {
    let ca = TestCa::new("mesh ca").unwrap();
    let ((app, _), grpc) = (start_app().await, start_grpc_app().await);
    let (b, _) = start_b(&ca, "strict", app, grpc).await;
    let (status, body) = ready(b.admin_addr()).await;
    assert_eq!((status, body.contains("PLAINTEXT")), (200, false), "{body}");
    b.shutdown().await;

    let mut plain = Bootstrap::seed_default();
    plain.admin = SocketAddr::from(([127, 0, 0, 1], mesh_testkit::free_port()));
    let ports = mesh_testkit::free_ports(2);
    plain.mesh.listeners[0].address.set_port(ports[0]);
    plain.mesh.listeners[1].address.set_port(ports[1]);
    let s = Sidecar::start_static(plain).await.unwrap();
    let (status, body) = ready(s.admin_addr()).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("LIVE\nPLAINTEXT"), "{body}");
    s.shutdown().await;
}
