//! Certificate rotation under load across our sidecar and real Envoy, driven by our control
//! plane (3 s workload certificates, renewed every 2 s, over SDS): an Envoy of service `front`
//! calls our sidecar serving `web`, and our sidecar of service `front` calls an Envoy serving
//! `webe` (`protocol: http2`: one pooled h2 connection), both over mTLS with
//! `authz: { allow: [{ from: [front] }] }`. Two bounded load loops run across at least two
//! renewals of both servers' certificates (seen in fresh handshakes) with zero failed requests;
//! mTLS connections established before the renewals still serve.
//!
//! Under `CI=true` a missing Envoy fails the test (mesh-testkit's skip-or-fail policy).
#![allow(clippy::unwrap_used)]

mod interop;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use interop::{connect, get_h1, get_on, until, ControlPlane, Load};
use mesh_testkit::TestCa;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_and_our_sidecar_rotate_certificates_under_load() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let ca = TestCa::new("mesh ca").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    std::fs::write(&ca_key, ca.key_pem()).unwrap();
    let (web_app, webe_app) = (
        interop::start_app("web").await,
        interop::start_app("webe").await,
    );
    let p = mesh_testkit::free_ports(8);
    let node = |id: &str, service: &str, i: usize, app: &str| {
        format!(
            "  - id: {id}\n    service: {service}\n    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: \"{app}\" }}\n",
            p[2 * i],
            p[2 * i + 1]
        )
    };
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
  - name: webe
    protocol: http2
    endpoints: [{{ address: "127.0.0.1:{webe_in}" }}]
    authz: {{ allow: [{{ from: [front] }}] }}
nodes:
{}{}{}{}"#,
        node("front-envoy", "front", 0, "127.0.0.1:1"),
        node("front-ours", "front", 1, "127.0.0.1:1"),
        node("web-node", "web", 2, &web_app.to_string()),
        node("webe-node", "webe", 3, &webe_app.to_string()),
        cert = ca_pem.display(),
        key = ca_key.display(),
        web_in = p[5],
        webe_in = p[7],
    );
    let cp = ControlPlane::start(&yaml).await;
    let envoys = [cp.envoy("front-envoy"), cp.envoy("webe-node")];
    let front = cp.sidecar("front-ours").await;
    let web = cp.sidecar("web-node").await;
    // (caller's outbound, service, server's inbound): Envoy → ours, ours → Envoy.
    let paths = [(p[0], "web", p[5]), (p[2], "webe", p[7])];
    for (out, host, _) in paths {
        let first = until(Duration::from_secs(20), || async {
            get_h1(out, host).await.ok().filter(|r| r.0 == 200)
        })
        .await;
        let version = if host == "webe" {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(first, Some((200, format!("{host} {version}"))), "{host}");
    }

    // mTLS connections to both servers established before any renewal.
    let client = ca.issue("spiffe://mesh.test/ns/default/sa/front").unwrap();
    let mut held = Vec::new();
    let mut seen = Vec::new();
    for (_, host, inbound) in paths {
        let (mut send, served) = connect(inbound, &client).await;
        assert_eq!(get_on(&mut send, host).await, 200, "{host}");
        held.push(send);
        seen.push(HashSet::from([served]));
    }

    let loads = paths.map(|(out, host, _)| Load::start(out, host, 1));
    let deadline = Instant::now() + Duration::from_secs(25);
    while seen.iter().any(|s| s.len() < 3) {
        assert!(
            Instant::now() < deadline,
            "no two renewals within 25 s: {:?} certificates (web, webe)",
            seen.iter().map(HashSet::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for ((_, host, inbound), s) in paths.iter().zip(&mut seen) {
            let (mut fresh, served) = connect(*inbound, &client).await;
            assert_eq!(
                get_on(&mut fresh, host).await,
                200,
                "{host}: a new handshake"
            );
            s.insert(served);
        }
    }
    for ((_, host, _), load) in paths.iter().zip(loads) {
        let (ok, failed) = load.stop();
        assert_eq!(
            failed,
            0,
            "{host}: {failed} of {} requests failed",
            ok + failed
        );
        assert!(ok >= 20, "{host}: the load ran: {ok} requests");
        eprintln!("{host}: {ok} requests, none failed");
    }
    for ((_, host, _), send) in paths.iter().zip(&mut held) {
        assert_eq!(
            get_on(send, host).await,
            200,
            "{host}: established connection"
        );
    }
    for n in &cp.cache.dump().nodes {
        assert!(
            n.status.types.iter().all(|t| t.nacked_version.is_none()),
            "{}: {:?}",
            n.node,
            n.status
        );
    }
    front.shutdown().await;
    web.shutdown().await;
    drop(envoys);
}
