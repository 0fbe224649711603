//! Shared by the real-Envoy tests: a control plane on a mesh.yaml, and an ADS bootstrap.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::{FileSource, ReloadStatus};
use tokio::sync::watch;

/// A control plane serving a mesh.yaml in a temp dir, on its own runtime.
pub struct ControlPlane {
    pub rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    pub path: PathBuf,
    pub cache: SnapshotCache,
    pub status: watch::Receiver<ReloadStatus>,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    pub fn start(yaml: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
        let cache = SnapshotCache::new();
        cache.set_validator(mesh_core_validator());
        let (addr, status) = rt.block_on(async {
            let source = FileSource::new(&path, cache.clone());
            let status = source.status();
            source.spawn(Duration::from_millis(50)).unwrap();
            let (addr, _task) = XdsServer::new(cache.clone())
                .spawn("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            (addr, status)
        });
        Self {
            rt,
            addr,
            path,
            cache,
            status,
            _dir: dir,
        }
    }

    /// Rewrites the file and waits until the source has tried it.
    pub fn edit(&mut self, yaml: &str) -> ReloadStatus {
        let before = self.status.borrow().clone();
        std::fs::write(&self.path, yaml).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.status.borrow().clone();
            if now != before {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the source did not react to the edit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// mesh.yaml with one service `backend` at `upstream`, and node `node` with its outbound
/// listener on `outbound`.
pub fn mesh_yaml(node: &str, outbound: u16, inbound: u16, upstream: SocketAddr) -> String {
    format!(
        r#"
services:
  - name: backend
    port: 80
    connect_timeout: 1s
    endpoints:
      - address: {upstream}
nodes:
  - id: {node}
    listeners: {{ outbound: 127.0.0.1:{outbound}, inbound: 127.0.0.1:{inbound}, local_app: 127.0.0.1:1 }}
"#
    )
}

/// GET / through `listener` with `Host: backend`; the body, or the error.
pub fn get_backend(listener: SocketAddr) -> Result<(u16, String), String> {
    mesh_testkit::http_request(listener, "GET", "/", &[("Host", "backend")], b"")
        .map(|r| (r.status, r.text()))
        .map_err(|e| format!("{e:#}"))
}

/// Polls until `get_backend` answers 200 with `body`; returns how long it took.
pub fn wait_for_body(listener: SocketAddr, body: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = Err(String::from("not tried"));
    while start.elapsed() < limit {
        last = get_backend(listener);
        if matches!(&last, Ok((200, b)) if b == body) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no 200 {body:?} through {listener} within {limit:?}; last: {last:?}");
}
