//! Access logs of dynamic sidecars: mesh.yaml's `access_log` travels over LDS to our sidecar,
//! which writes what it asks for; a node that turns it off (`access_log: []`) falls back to the
//! sidecar's own option (`DynamicOptions::access_log`, the `--access-log` flag).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mesh_core::{AccessLog, AccessLogFormat};
use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;

/// The first line of `log` containing every one of `needles`, waited for (bounded). (The calls
/// retry until the routes have arrived, so earlier lines of the same request id may be 404s.)
async fn line_with(log: &Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {needles:?} in {}:\n{text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET / with `Host: hello` through `port`, retried while the listener comes up.
async fn call(port: u16, rid: &'static str) -> u16 {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            mesh_testkit::http_request(
                addr,
                "GET",
                "/",
                &[("Host", "hello"), ("x-request-id", rid)],
                b"",
            )
            .ok()
            .map(|r| r.status)
            .filter(|s| *s == 200)
        })
        .unwrap_or(0)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lds_access_logs_are_written_and_the_option_fills_in_when_a_node_has_none() {
    let app = mesh_testkit::HttpStub::start(200, "hi").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (from_lds, from_option) = (dir.path().join("lds.json"), dir.path().join("option.log"));
    let p = mesh_testkit::free_ports(6);
    let yaml = format!(
        r#"
access_log: [ {{ path: "{lds}", format: json }} ]
services:
  - name: hello
    endpoints: [ {{ address: {app} }} ]
nodes:
  - id: logs-from-lds
    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: 127.0.0.1:1 }}
  - id: logs-from-option
    access_log: []
    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: 127.0.0.1:1 }}
"#,
        p[0],
        p[1],
        p[2],
        p[3],
        lds = from_lds.display(),
        app = app.addr(),
    );
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let source_task = FileSource::new(&path, cache.clone())
        .spawn(Duration::from_millis(50))
        .unwrap();
    let (xds_addr, xds_task) = XdsServer::new(cache.clone())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let start = |node: &str, admin: u16, access_log: Vec<AccessLog>| {
        let mut o = DynamicOptions::new(vec![format!("http://{xds_addr}")], node);
        o.admin = SocketAddr::from(([127, 0, 0, 1], admin));
        o.drain_timeout = Duration::from_secs(1);
        o.access_log = access_log;
        Sidecar::start_dynamic(o)
    };
    let option = vec![AccessLog::new(
        from_option.display().to_string(),
        AccessLogFormat::Text,
    )];
    let lds = start("logs-from-lds", p[4], option.clone()).await.unwrap();
    let opt = start("logs-from-option", p[5], option).await.unwrap();

    assert_eq!(call(p[0], "rid-lds").await, 200);
    assert_eq!(call(p[2], "rid-option").await, 200);
    let line: serde_json::Value =
        serde_json::from_str(&line_with(&from_lds, &["rid-lds", "\"response_code\":200"]).await)
            .unwrap();
    assert_eq!(line["upstream_cluster"], "hello");
    assert_eq!(line["upstream_host"], app.addr().to_string());
    assert_eq!(line["response_code"], 200);
    let text = line_with(&from_option, &["rid-option", "\" 200 "]).await;
    assert!(text.contains("\"GET / HTTP/1.1\" 200 - 0 2 "), "{text}");

    lds.shutdown().await;
    opt.shutdown().await;
    let lds_text = std::fs::read_to_string(&from_lds).unwrap();
    assert!(!lds_text.contains("rid-option"), "{lds_text}");
    let option_text = std::fs::read_to_string(&from_option).unwrap();
    assert!(
        !option_text.contains("rid-lds"),
        "mesh.yaml's log wins: {option_text}"
    );
    source_task.abort();
    xds_task.abort();
}
