//! The `mesh-sidecar` binary's TLS flags for the xDS stream reach the client: a bare `--xds`
//! address with `--xds-ca` means https:// and the CA file is read at start (a missing one is an
//! error naming it), and a client certificate needs its key. (The TLS handshakes themselves are
//! tested in mesh-xds, against our control plane.)
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-sidecar");

fn run(args: &[&str]) -> Output {
    let admin = format!("127.0.0.1:{}", mesh_testkit::free_port());
    Command::new(BIN)
        .args(["--node-id", "n1", "--admin", &admin])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn xds_tls_flags_reach_the_client_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("missing-ca.pem");
    let out = run(&["--xds", "127.0.0.1:1", "--xds-ca", ca.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing-ca.pem"), "{err}");

    // With TLS, an explicit http:// address is refused rather than sent in plaintext.
    let pem = dir.path().join("ca.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = run(&[
        "--xds",
        "http://127.0.0.1:1",
        "--xds-ca",
        pem.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("use https://"), "{err}");

    let out = run(&[
        "--xds",
        "127.0.0.1:1",
        "--xds-ca",
        pem.to_str().unwrap(),
        "--xds-cert",
        pem.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("--xds-key"), "{err}");
}
