//! The `mesh-control-plane` binary's TLS flags: `--tls-cert`/`--tls-key` with `--client-ca`
//! serve examples/mesh.yaml over mTLS; our client with a certificate of that CA gets its full
//! config, one without a certificate is refused.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_testkit::{free_ports, http_get, wait_for};
use mesh_xds::client::{ConnectionState, XdsClient, XdsTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_mtls_with_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let ca_pem = write("ca.pem", ca.pem());
    let issue = |name: &str, san: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}-key.pem"), key.serialize_pem()),
        )
    };
    let (cp_cert, cp_key) = issue("cp", "127.0.0.1");
    let (me_cert, me_key) = issue("orders-1", "orders-1.mesh");

    let ports = free_ports(2);
    let (xds, admin) = (
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    );
    let config = mesh_testkit::workspace_root().join("examples/mesh.yaml");
    let _child = Killed(
        Command::new(env!("CARGO_BIN_EXE_mesh-control-plane"))
            .arg("--config")
            .arg(&config)
            .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
            .arg("--tls-cert")
            .arg(&cp_cert)
            .arg("--tls-key")
            .arg(&cp_key)
            .arg("--client-ca")
            .arg(&ca_pem)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            matches!(http_get(admin, "/healthz"), Ok((200, _))).then_some(())
        })
    })
    .await
    .unwrap();
    assert!(up.is_some(), "admin endpoint up");

    let client = |tls: XdsTls| {
        XdsClient::builder()
            .address(format!("https://{xds}"))
            .node_id("orders-1")
            .backoff(Duration::from_millis(50), Duration::from_millis(200))
            .tls(tls)
            .start()
            .unwrap()
    };
    let with = client(
        XdsTls::new()
            .ca_file(&ca_pem)
            .identity_files(&me_cert, &me_key),
    );
    with.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert!(!with.config().clusters.is_empty());

    let without = client(XdsTls::new().ca_file(&ca_pem));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let ConnectionState::Backoff { error } = without.status().connection {
            if error.contains("CertificateRequired") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal: {:?}",
            without.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!without.is_ready());
    without.shutdown().await;
    with.shutdown().await;
}
