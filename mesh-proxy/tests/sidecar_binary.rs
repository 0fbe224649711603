//! The `mesh-sidecar` binary as an operator runs it: a bad config is refused with the file, field
//! and reason; SIGTERM drains in-flight requests and exits 0.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-sidecar");

/// A blocking app that answers every request after `delay`.
fn slow_app(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow!");
            });
        }
    });
    addr
}

fn config(app: SocketAddr, listen: u16, admin: u16) -> String {
    format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 5s
listeners:
  - name: outbound
    address: 127.0.0.1:{listen}
    direction: outbound
    route_config:
      name: r
      virtual_hosts: [ {{ name: all, domains: ["*"], routes: [ {{ route: {{ cluster: app }} }} ] }} ]
clusters:
  - name: app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}" }} ] }} ] }}
"#
    )
}

#[test]
fn a_bad_config_is_refused_at_load_with_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text =
        config("127.0.0.1:1".parse().unwrap(), 1, 2).replace("cluster: app", "cluster: nowhere");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: listeners[outbound].route_config"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown cluster \"nowhere\""), "{stderr}");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let app = slow_app(Duration::from_millis(800));
    let ports = mesh_testkit::free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, config(app, ports[0], ports[1])).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let ready = mesh_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        matches!(mesh_testkit::http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "sidecar never became ready");

    let listen: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let in_flight = std::thread::spawn(move || mesh_testkit::http_get(listen, "/work"));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());

    let (status, body) = in_flight.join().unwrap().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "slow!"),
        "the in-flight request completed"
    );
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sidecar did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
    assert!(
        TcpStream::connect(listen).is_err(),
        "port closed after exit"
    );
}

/// `--access-log` with no path writes to stdout, one JSON line per request with
/// `--access-log-format json`, and moves the sidecar's own log to stderr so stdout stays
/// parseable; the line queued before SIGTERM is written before the exit.
#[test]
fn access_log_flag_writes_json_lines_to_stdout() {
    let app = slow_app(Duration::ZERO);
    let ports = mesh_testkit::free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, config(app, ports[0], ports[1])).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--access-log", "--access-log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let ready = mesh_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        matches!(mesh_testkit::http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "sidecar never became ready");
    let listen: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let (status, _) = mesh_testkit::http_get(listen, "/flag?q=1").unwrap();
    assert_eq!(status, 200);
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let line = &lines[0];
    assert_eq!(line["path"], "/flag?q=1");
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["bytes_sent"], 5);
    assert_eq!(line["upstream_host"], app.to_string());
    assert!(stderr.contains("mesh-sidecar running"), "{stderr}");
}
