//! Real Envoy is the oracle for the control plane's mTLS: with `security:` set, our control
//! plane configures two Envoys (node A and node B of service `backend`); a request through A's
//! outbound listener reaches B's app over mTLS (B's certificate checked for `backend`'s SPIFFE
//! identity); B's inbound refuses a client with no certificate and one with a certificate from
//! another CA at the handshake, and accepts one from the mesh CA; `openssl s_client` shows the
//! SPIFFE URI SAN of B's certificate; Envoy ACKs the renewed certificate and keeps serving.
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_common::{wait_for_body, ControlPlane};
use mesh_testkit::{ads_bootstrap, free_ports, EnvoyProcess, HttpStub};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

/// A CA written to `dir` as `<name>.pem`/`<name>.key`; returns its issuer.
fn write_ca(dir: &Path, name: &str) -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    Issuer::new(params, key)
}

/// A client certificate for `uri` from `issuer`, written as `<name>.pem`/`<name>.key`.
fn write_client(dir: &Path, name: &str, uri: &str, issuer: &Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// curl over TLS to `addr` (server verification off: the test is about what the server
/// accepts), with the client certificate `cert` if given. Ok(body) or Err(curl's complaint).
fn curl(curl: &Path, addr: SocketAddr, dir: &Path, cert: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(curl);
    cmd.args(["-sS", "-k", "--max-time", "5", "-H", "Host: backend"]);
    if let Some(c) = cert {
        cmd.arg("--cert").arg(dir.join(format!("{c}.pem")));
        cmd.arg("--key").arg(dir.join(format!("{c}.key")));
    }
    let out = cmd
        .arg(format!("https://{addr}/"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The SDS secret version node `node` ACKed for the `default` certificate (from the cache's
/// per-node status), if any.
fn acked_secret_version(cp: &ControlPlane, node: &str) -> Option<String> {
    let dump = cp.cache.dump();
    let n = dump.nodes.iter().find(|n| n.node == node)?;
    n.status
        .types
        .iter()
        .find(|t| t.kind == mesh_xds::ResourceType::Secret)
        .and_then(|t| t.acked_version.clone())
}

#[test]
fn two_envoys_speak_mtls_with_identities_from_our_control_plane() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let Some(curl_bin) = mesh_testkit::require_curl() else {
        return;
    };
    let Some(openssl) = mesh_testkit::require_openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "ca");
    let other = write_ca(dir.path(), "other");
    let id = "spiffe://mesh.test/ns/default/sa/client";
    write_client(dir.path(), "good", id, &ca);
    write_client(dir.path(), "stranger", id, &other);

    let app = HttpStub::start(200, "b-app").unwrap();
    let p = free_ports(4);
    let (a_out, a_in, b_out, b_in) = (p[0], p[1], p[2], p[3]);
    let yaml = format!(
        r#"
security:
  trust_domain: mesh.test
  ca: {{ cert: {ca}, key: {key} }}
  workload_cert_ttl: 15s
services:
  - name: a
    endpoints: [{{ address: "127.0.0.1:{a_in}" }}]
  - name: backend
    endpoints: [{{ address: "127.0.0.1:{b_in}" }}]
nodes:
  - id: node-a
    service: a
    listeners: {{ outbound: 127.0.0.1:{a_out}, inbound: 127.0.0.1:{a_in}, local_app: 127.0.0.1:1 }}
  - id: node-b
    service: backend
    listeners: {{ outbound: 127.0.0.1:{b_out}, inbound: 127.0.0.1:{b_in}, local_app: "{app}" }}
"#,
        ca = dir.path().join("ca.pem").display(),
        key = dir.path().join("ca.key").display(),
        app = app.addr(),
    );
    let cp = ControlPlane::start(&yaml);
    let envoy_a = EnvoyProcess::start(&ads_bootstrap("node-a", cp.addr, "GRPC")).unwrap();
    let envoy_b = EnvoyProcess::start(&ads_bootstrap("node-b", cp.addr, "GRPC")).unwrap();

    // app → A outbound (plaintext) → mTLS → B inbound → B's app.
    wait_for_body(
        ([127, 0, 0, 1], a_out).into(),
        "b-app",
        Duration::from_secs(20),
    );

    // B's inbound over TLS: no certificate, or another CA's, is refused; the mesh CA's works.
    let b_inbound = SocketAddr::from(([127, 0, 0, 1], b_in));
    let none = curl(&curl_bin, b_inbound, dir.path(), None);
    assert!(
        none.is_err(),
        "no client certificate must be refused: {none:?}"
    );
    let stranger = curl(&curl_bin, b_inbound, dir.path(), Some("stranger"));
    assert!(
        stranger.is_err(),
        "another CA must be refused: {stranger:?}"
    );
    assert_eq!(
        curl(&curl_bin, b_inbound, dir.path(), Some("good")).unwrap(),
        "b-app",
        "the mesh CA's certificate is accepted (the refusals above were about the certificate)"
    );
    // Plaintext to a strict inbound: no HTTP answer.
    assert!(
        mesh_testkit::http_request(b_inbound, "GET", "/", &[("Host", "backend")], b"").is_err()
    );

    // openssl shows B's SPIFFE identity.
    let out = Command::new(&openssl)
        .args(["s_client", "-connect", &b_inbound.to_string()])
        .arg("-cert")
        .arg(dir.path().join("good.pem"))
        .arg("-key")
        .arg(dir.path().join("good.key"))
        .arg("-CAfile")
        .arg(dir.path().join("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let pem_start = shown.find("-----BEGIN CERTIFICATE-----").expect(&shown);
    let pem_end = shown.find("-----END CERTIFICATE-----").unwrap() + 25;
    let cert = &shown[pem_start..pem_end];
    let mut x509 = Command::new(&openssl)
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut x509.stdin.take().unwrap(), cert.as_bytes()).unwrap();
    let sans = String::from_utf8_lossy(&x509.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        sans.contains("URI:spiffe://mesh.test/ns/default/sa/backend"),
        "{sans}"
    );
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");

    // Rotation: the certificates are renewed at 10 s of their 15 s; both Envoys ACK the new
    // secret version and the path keeps serving.
    let first = acked_secret_version(&cp, "node-b").expect("node-b ACKed its secrets");
    let first_a = acked_secret_version(&cp, "node-a").expect("node-a ACKed its secrets");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served = 0;
    loop {
        assert_eq!(
            envoy_common::get_backend(([127, 0, 0, 1], a_out).into()),
            Ok((200, "b-app".to_string())),
            "through a renewal"
        );
        served += 1;
        let now = acked_secret_version(&cp, "node-b");
        let a_now = acked_secret_version(&cp, "node-a");
        if now.as_ref().is_some_and(|v| *v != first)
            && a_now.as_ref().is_some_and(|v| *v != first_a)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewed secret ACKed within 30 s (b: {now:?}, first {first:?}); logs:\n{}",
            envoy_b.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served > 10, "requests ran through the renewal");
    // Nothing was NACKed by either Envoy.
    let dump = cp.cache.dump();
    for n in &dump.nodes {
        assert!(
            n.status.types.iter().all(|t| t.nacked_version.is_none()),
            "{}: {:?}",
            n.node,
            n.status
        );
    }
    drop((envoy_a, envoy_b));
}
