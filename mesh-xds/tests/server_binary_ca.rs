//! The `mesh-control-plane` binary refuses to start on a mesh CA it cannot use (a CA file that
//! does not parse, or a key that does not match it), naming the file and the reason.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary on `mesh.yaml` in `dir`; returns its exit success and stderr (bounded: a
/// binary that keeps running is killed and reported as such).
fn run(dir: &Path) -> (bool, String) {
    let ports = mesh_testkit::free_ports(2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-control-plane"))
        .arg("--config")
        .arg(dir.join("mesh.yaml"))
        .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--admin", &format!("127.0.0.1:{}", ports[1])])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let status = status.unwrap_or_else(|| panic!("still running after 10 s; stderr: {err}"));
    (status.success(), err)
}

fn write_mesh(dir: &Path) {
    let yaml = format!(
        "security:\n  trust_domain: mesh.test\n  ca:\n    cert: {}\n    key: {}\nservices:\n  - name: orders\nnodes:\n  - {{ id: orders-1, service: orders }}\n",
        dir.join("ca.pem").display(),
        dir.join("ca.key").display()
    );
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
}

#[test]
fn a_ca_that_does_not_parse_stops_the_control_plane_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path());
    std::fs::write(
        dir.path().join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ca.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let (ok, err) = run(dir.path());
    assert!(!ok, "must not start; stderr: {err}");
    let ca = dir.path().join("ca.pem").display().to_string();
    assert!(err.contains(&ca), "names {ca}: {err}");
    assert!(
        err.contains("not an X.509 certificate") || err.contains("bad PEM"),
        "{err}"
    );
}

#[test]
fn a_ca_key_that_does_not_match_stops_the_control_plane_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path());
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(
        dir.path().join("ca.pem"),
        params.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ca.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let (ok, err) = run(dir.path());
    assert!(!ok, "must not start; stderr: {err}");
    let key = dir.path().join("ca.key").display().to_string();
    assert!(err.contains(&key), "names {key}: {err}");
    assert!(err.contains("does not match"), "{err}");
}
