//! Our sidecar ↔ real Envoy over mTLS, all configured by one control plane of ours (mesh.yaml
//! with `security:`, certificates served over SDS): callers of service `frontend` (our sidecar
//! and an Envoy) reach services served by Envoy (`web-e`, `rpc-e`) and by our sidecar (`web-o`,
//! `rpc-o`) over HTTP/1.1 (`web-*`), h2 and gRPC (`rpc-*`, `protocol: http2`), so both
//! directions (ours → Envoy, Envoy → ours) cross an mTLS hop. Every target has
//! `authz: { allow: [{ from: [frontend] }] }`: callers of service `other` (ours and Envoy) get
//! 403 `RBAC: access denied` and gRPC PERMISSION_DENIED from both inbounds, identities coming
//! from the certificates the control plane issued; our denials are counted by reason. Our
//! SDS-fed inbound refuses a client without a certificate and one from another CA at the
//! handshake, counted in `mesh_tls_handshake_errors_total`. Also: permissive inbounds and
//! `use_downstream` services across both, and a sidecar of another service behind a service's
//! endpoint refused by both callers' SAN checks.
//!
//! Under `CI=true` a missing Envoy or curl fails the test (mesh-testkit's skip-or-fail policy).
#![allow(clippy::unwrap_used)]

mod interop;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use interop::{get_h1, get_h2, grpc_check, metrics, start_app, until, ControlPlane};
use mesh_testkit::TestCa;

const TARGETS: [&str; 4] = ["web-e", "rpc-e", "web-o", "rpc-o"];

/// mesh.yaml: caller nodes `front-ours`, `front-envoy` (service frontend), `other-ours`,
/// `other-envoy` (service other) and one node per target (`<target>-node`); `ports[i]` are the
/// (outbound, inbound) of node i in that order, `apps` the targets' apps.
fn mesh_yaml(ports: &[u16], apps: &[std::net::SocketAddr]) -> String {
    let nodes = [
        ("front-ours", "frontend"),
        ("front-envoy", "frontend"),
        ("other-ours", "other"),
        ("other-envoy", "other"),
    ];
    let mut yaml = String::from(
        "security:\n  trust_domain: mesh.test\n  ca: { generate: true }\n  workload_cert_ttl: 1h\n\
         services:\n  - name: frontend\n  - name: other\n",
    );
    for (i, t) in TARGETS.iter().enumerate() {
        let protocol = if t.starts_with("rpc") {
            "http2"
        } else {
            "http1"
        };
        yaml += &format!(
            "  - name: {t}\n    protocol: {protocol}\n    endpoints: [{{ address: \"127.0.0.1:{}\" }}]\n    authz: {{ allow: [{{ from: [frontend] }}] }}\n",
            ports[2 * (4 + i) + 1]
        );
    }
    yaml += "nodes:\n";
    let all = nodes
        .iter()
        .map(|(n, s)| (n.to_string(), *s, "127.0.0.1:1".to_string()))
        .chain(
            TARGETS
                .iter()
                .zip(apps)
                .map(|(t, a)| (format!("{t}-node"), *t, a.to_string())),
        );
    for (i, (node, service, app)) in all.enumerate() {
        yaml += &format!(
            "  - id: {node}\n    service: {service}\n    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: \"{app}\" }}\n",
            ports[2 * i],
            ports[2 * i + 1]
        );
    }
    yaml
}

/// curl over TLS to our inbound on `port` (server verification off: this is about what the
/// server accepts), with `cert` (`<name>.pem`/`.key` in `dir`) if given: did a response come?
fn curl_ok(curl: &Path, port: u16, dir: &Path, cert: Option<&str>) -> bool {
    let mut cmd = Command::new(curl);
    cmd.args(["-sS", "-k", "--max-time", "5", "-H", "Host: web-o"]);
    if let Some(c) = cert {
        cmd.arg("--cert").arg(dir.join(format!("{c}.pem")));
        cmd.arg("--key").arg(dir.join(format!("{c}.key")));
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    out.status.success()
}

/// The first answer of `call` that is not a connection-level failure (a listener or a route
/// not there yet), within 20 s.
async fn settled<F, Fut, T, E>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    T: AccepTable,
    E: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let last = match call().await {
            Ok(v) if v.accept() => return v,
            Ok(_) => "not yet routed (503/404)".to_string(),
            Err(e) => format!("{e:?}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: no answer within 20 s; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which answers count as settled: not "no route / no endpoint yet" (404, 503, UNAVAILABLE).
trait AccepTable {
    fn accept(&self) -> bool;
}

impl AccepTable for (u16, String) {
    fn accept(&self) -> bool {
        !matches!(self.0, 404 | 503)
    }
}

impl AccepTable for i32 {
    fn accept(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn our_sidecar_and_envoy_speak_mtls_and_enforce_identity_authz_both_ways() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let Some(curl) = mesh_testkit::require_curl() else {
        return;
    };
    let mut apps = Vec::new();
    for t in ["web-e", "rpc-e", "web-o", "rpc-o"] {
        apps.push(start_app(t).await);
    }
    let ports = mesh_testkit::free_ports(16);
    let cp = ControlPlane::start(&mesh_yaml(&ports, &apps)).await;
    let envoys: Vec<_> = ["front-envoy", "other-envoy", "web-e-node", "rpc-e-node"]
        .iter()
        .map(|n| cp.envoy(n))
        .collect();
    let front_ours = cp.sidecar("front-ours").await;
    let other_ours = cp.sidecar("other-ours").await;
    let web_o = cp.sidecar("web-o-node").await;
    let rpc_o = cp.sidecar("rpc-o-node").await;

    // Callers: (name, outbound port). frontend's are allowed, other's denied.
    let allowed = [("front-ours", ports[0]), ("front-envoy", ports[2])];
    let denied = [("other-ours", ports[4]), ("other-envoy", ports[6])];
    for (caller, out) in allowed {
        for t in TARGETS {
            let what = format!("{caller} → {t}");
            if t.starts_with("web") {
                let r = settled(&what, || get_h1(out, t)).await;
                assert_eq!(r, (200, format!("{t} HTTP/1.1")), "{what} over HTTP/1.1");
            } else {
                let r = settled(&what, || get_h2(out, t)).await;
                assert_eq!(r, (200, format!("{t} HTTP/2.0")), "{what} over h2");
                let r = settled(&what, || grpc_check(out, t)).await;
                assert_eq!(r, 1, "{what}: gRPC SERVING");
            }
        }
    }
    for (caller, out) in denied {
        for t in TARGETS {
            let what = format!("{caller} → {t}");
            if t.starts_with("web") {
                let r = settled(&what, || get_h1(out, t)).await;
                assert_eq!(r, (403, "RBAC: access denied".into()), "{what}");
            } else {
                let r = settled(&what, || get_h2(out, t)).await;
                assert_eq!(r, (403, "RBAC: access denied".into()), "{what} over h2");
                let s = grpc_check(out, t).await.unwrap_err();
                assert_eq!(s.code(), tonic::Code::PermissionDenied, "{what}: {s:?}");
                assert_eq!(s.message(), "RBAC: access denied", "{what}");
            }
        }
    }
    // Our inbounds counted each denial (2 callers; rpc-o: h2 and gRPC each) by reason.
    for (s, n) in [(&web_o, 2), (&rpc_o, 4)] {
        let text = metrics(s).await;
        let line = format!(
            r#"mesh_rbac_denied_total{{listener="inbound",policy="no_policy_matched"}} {n}"#
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }

    // Our SDS-fed inbound refuses, at the handshake, a client without a certificate and one
    // with a certificate from another CA (for the right identity), and counts both.
    let dir = tempfile::tempdir().unwrap();
    let stranger = TestCa::new("stranger")
        .unwrap()
        .issue("spiffe://mesh.test/ns/default/sa/frontend")
        .unwrap();
    std::fs::write(dir.path().join("stranger.pem"), &stranger.cert_pem).unwrap();
    std::fs::write(dir.path().join("stranger.key"), &stranger.key_pem).unwrap();
    let web_o_in = ports[2 * 6 + 1];
    let (c, d) = (curl.clone(), dir.path().to_owned());
    let (none, foreign) = tokio::task::spawn_blocking(move || {
        (
            curl_ok(&c, web_o_in, &d, None),
            curl_ok(&c, web_o_in, &d, Some("stranger")),
        )
    })
    .await
    .unwrap();
    assert!(!none, "a client without a certificate must be refused");
    assert!(!foreign, "a client of another CA must be refused");
    let errors = |r: &str| web_o.secrets().handshake_errors("inbound", "inbound", r);
    let counted = until(Duration::from_secs(5), || async {
        (errors("no_client_certificate") == 1 && errors("unknown_ca") == 1).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "no_client_certificate {} unknown_ca {}",
        errors("no_client_certificate"),
        errors("unknown_ca")
    );
    // Nothing was NACKed by anyone.
    for n in &cp.cache.dump().nodes {
        assert!(
            n.status.types.iter().all(|t| t.nacked_version.is_none()),
            "{}: {:?}",
            n.node,
            n.status
        );
    }
    for s in [front_ours, other_ours, web_o, rpc_o] {
        s.shutdown().await;
    }
    drop(envoys);
}

/// Permissive inbounds and `protocol: use_downstream` across Envoy and our sidecar: callers'
/// HTTP/1.1 and h2 go through over mTLS in the protocol they came in, and a plaintext caller is
/// served by the permissive chain (and, having no identity, denied by `from: [frontend]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permissive_use_downstream_services_interoperate() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let (perm_e, perm_o) = (start_app("perm-e").await, start_app("perm-o").await);
    let p = mesh_testkit::free_ports(8);
    let node = |id: &str, service: &str, i: usize, app: &str| {
        format!(
            "  - id: {id}\n    service: {service}\n    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: \"{app}\" }}\n",
            p[2 * i],
            p[2 * i + 1]
        )
    };
    let service = |name: &str, inbound: u16| {
        format!(
            "  - name: {name}\n    protocol: use_downstream\n    endpoints: [{{ address: \"127.0.0.1:{inbound}\" }}]\n    authz: {{ allow: [{{ from: [frontend] }}] }}\n"
        )
    };
    let yaml = format!(
        "security:\n  trust_domain: mesh.test\n  ca: {{ generate: true }}\n  modes: {{ perm-e: permissive, perm-o: permissive }}\n\
         services:\n  - name: frontend\n{}{}nodes:\n{}{}{}{}",
        service("perm-e", p[5]),
        service("perm-o", p[7]),
        node("front-ours", "frontend", 0, "127.0.0.1:1"),
        node("front-envoy", "frontend", 1, "127.0.0.1:1"),
        node("perm-e-node", "perm-e", 2, &perm_e.to_string()),
        node("perm-o-node", "perm-o", 3, &perm_o.to_string()),
    );
    let cp = ControlPlane::start(&yaml).await;
    let envoys = [cp.envoy("front-envoy"), cp.envoy("perm-e-node")];
    let front = cp.sidecar("front-ours").await;
    let target = cp.sidecar("perm-o-node").await;
    let mut wrong = Vec::new();
    for (caller, out) in [("front-ours", p[0]), ("front-envoy", p[2])] {
        for t in ["perm-e", "perm-o"] {
            let what = format!("{caller} → {t}");
            let r = settled(&what, || get_h1(out, t)).await;
            if r != (200, format!("{t} HTTP/1.1")) {
                wrong.push(format!("{what} over HTTP/1.1: {r:?}"));
            }
            let r = settled(&what, || get_h2(out, t)).await;
            if r != (200, format!("{t} HTTP/2.0")) {
                wrong.push(format!("{what} over h2: {r:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Plaintext straight to the permissive inbounds: served, but no identity, so denied.
    for (t, inbound) in [("perm-e", p[5]), ("perm-o", p[7])] {
        let r = get_h1(inbound, t).await;
        assert_eq!(
            r,
            Ok((403, "RBAC: access denied".into())),
            "plaintext → {t}"
        );
    }
    assert_eq!(
        target
            .secrets()
            .handshake_errors("inbound", "inbound", "plaintext"),
        0,
        "permissive does not refuse plaintext"
    );
    front.shutdown().await;
    target.shutdown().await;
    drop(envoys);
}

/// SAN matching across Envoy and our sidecar: a service whose endpoint is a sidecar of another
/// service (`evil`, one Envoy, one ours) is refused by the caller's handshake (wrong identity),
/// by our sidecar (counted) and by Envoy alike; the impostor's app never sees a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_of_another_service_fails_the_callers_handshake() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let evil_app = mesh_testkit::HttpStub::start(200, "evil").unwrap();
    let p = mesh_testkit::free_ports(8);
    let node = |id: &str, service: &str, i: usize, app: &str| {
        format!(
            "  - id: {id}\n    service: {service}\n    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: \"{app}\" }}\n",
            p[2 * i],
            p[2 * i + 1]
        )
    };
    // `web-e` and `web-o` are run by nodes (so their clusters expect their identities), but
    // their endpoints are the inbounds of `evil`'s Envoy and sidecar.
    let yaml = format!(
        "security:\n  trust_domain: mesh.test\n  ca: {{ generate: true }}\n\
         services:\n  - name: frontend\n  - name: evil\n  - name: web-e\n    endpoints: [{{ address: \"127.0.0.1:{}\" }}]\n\
         \x20 - name: web-o\n    endpoints: [{{ address: \"127.0.0.1:{}\" }}]\n\
         nodes:\n{}{}{}{}  - id: web-e-node\n    service: web-e\n  - id: web-o-node\n    service: web-o\n",
        p[5],
        p[7],
        node("front-ours", "frontend", 0, "127.0.0.1:1"),
        node("front-envoy", "frontend", 1, "127.0.0.1:1"),
        node("evil-e", "evil", 2, &evil_app.addr().to_string()),
        node("evil-o", "evil", 3, &evil_app.addr().to_string()),
    );
    let cp = ControlPlane::start(&yaml).await;
    let envoys = [cp.envoy("front-envoy"), cp.envoy("evil-e")];
    let front = cp.sidecar("front-ours").await;
    let evil = cp.sidecar("evil-o").await;
    // Both impostors listen before anyone calls (a refused connection is no handshake).
    for inbound in [p[5], p[7]] {
        let up = until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", inbound))
                .await
                .ok()
        })
        .await;
        assert!(up.is_some(), "{inbound} never listened");
    }
    for (caller, out) in [("front-ours", p[0]), ("front-envoy", p[2])] {
        for t in ["web-e", "web-o"] {
            let what = format!("{caller} → {t}");
            // Retried while the caller's routes and endpoints arrive; then a refusal.
            let r = until(Duration::from_secs(20), || async {
                get_h1(out, t)
                    .await
                    .ok()
                    .filter(|r| r.0 != 404 && !r.1.contains("no healthy upstream"))
            })
            .await;
            let r = r.unwrap_or_else(|| panic!("{what}: no answer"));
            assert!(matches!(r.0, 502 | 503), "{what}: {r:?}");
        }
    }
    let wrong = |c: &str| {
        front
            .secrets()
            .handshake_errors("outbound", c, "wrong_identity")
    };
    assert!(wrong("web-e") >= 1 && wrong("web-o") >= 1, "counted");
    let stats = envoys[0]
        .admin_get("/stats?filter=ssl.fail_verify_san")
        .unwrap();
    for t in ["web-e", "web-o"] {
        let n: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cluster.{t}.ssl.fail_verify_san: ")))
            .unwrap_or_else(|| panic!("{t} in {stats}"))
            .parse()
            .unwrap();
        assert!(n >= 1, "Envoy refused {t}'s server for its SAN: {stats}");
    }
    assert_eq!(evil_app.requests(), 0, "the impostor's app saw nothing");
    front.shutdown().await;
    evil.shutdown().await;
    drop(envoys);
}
