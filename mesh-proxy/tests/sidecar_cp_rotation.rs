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
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use interop::{connect, get_h1, get_on, until, ControlPlane, Load};
use mesh_lb::tls::TlsSecrets;
use mesh_testkit::TestCa;
use tokio::net::TcpStream;

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
    assert_eq!(get_on(&mut held_tls, "web").await, 200);
    let tcp = TcpStream::connect(("127.0.0.1", out)).await.unwrap();
    let (mut held_plain, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(get_on(&mut held_plain, "web").await, 200);

    // The load: two loops of requests through front, bounded in time.
    let load = Load::start(out, "web", 2);

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
        assert_eq!(
            get_on(&mut fresh, "web").await,
            200,
            "a new handshake serves"
        );
        web_seen.insert(served);
        front_seen.insert(front_cert());
    }
    let (ok, failed) = load.stop();
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
        get_on(&mut held_tls, "web").await,
        200,
        "established mTLS connection"
    );
    assert_eq!(
        get_on(&mut held_plain, "web").await,
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
