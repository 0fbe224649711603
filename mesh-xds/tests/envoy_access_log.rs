//! mesh.yaml's `access_log` reaches real Envoy over ADS: Envoy accepts the file access log our
//! control plane emits (no NACK) and writes, with the JSON dictionary we send, lines with exactly
//! the keys the sidecar writes, and the same response flags for the same cases.
#![allow(clippy::unwrap_used)]

mod envoy_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_common::{mesh_yaml, wait_for_body, ControlPlane};
use mesh_testkit::{ads_bootstrap, free_ports, EnvoyProcess, HttpStub};
use serde_json::Value;

/// Envoy's lines in `log` with request id `rid` (Envoy flushes its log about every second).
fn line_for(log: &Path, rid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .find(|v| v["request_id"] == rid);
        if let Some(v) = found {
            return v;
        }
        assert!(Instant::now() < deadline, "no line for {rid} in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn envoy_writes_the_json_access_log_mesh_yaml_asks_for() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy-access.json");
    let backend = HttpStub::start(200, "a").unwrap();
    let ports = free_ports(2);
    let node = "envoy-access-log";
    let yaml = format!(
        "access_log: [ {{ path: \"{}\", format: json }} ]\n{}",
        log.display(),
        mesh_yaml(node, ports[0], ports[1], backend.addr())
    );
    let cp = ControlPlane::start(&yaml);
    let _envoy = EnvoyProcess::start(&ads_bootstrap(node, cp.addr, "GRPC")).unwrap();
    let outbound = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_for_body(outbound, "a", Duration::from_secs(10));

    let get = |host: &str, rid: &str| {
        mesh_testkit::http_request(
            outbound,
            "GET",
            "/x?y=1",
            &[("Host", host), ("x-request-id", rid)],
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(get("backend", "rid-envoy-ok"), 200);
    assert_eq!(get("nowhere", "rid-envoy-nr"), 404);

    let ok = line_for(&log, "rid-envoy-ok");
    let keys: Vec<&str> = ok.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want: Vec<&str> = mesh_core::ACCESS_LOG_JSON_FIELDS
        .iter()
        .map(|(k, _)| *k)
        .collect();
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want, "{ok}");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/x?y=1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["upstream_cluster"], "backend");
    assert_eq!(ok["upstream_host"], backend.addr().to_string());
    assert_eq!(ok["authority"], "backend");

    let nr = line_for(&log, "rid-envoy-nr");
    assert_eq!(
        (&nr["response_code"], &nr["response_flags"]),
        (&Value::from(404), &Value::from("NR"))
    );

    let dump = cp.cache.dump();
    let status = &dump.nodes.iter().find(|n| n.node == node).unwrap().status;
    assert!(
        status.types.iter().all(|t| t.nacked_version.is_none()),
        "{status:?}"
    );
}
