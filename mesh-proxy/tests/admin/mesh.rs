//! The live mesh the admin tests look at: our control plane (with its admin endpoint), an app,
//! and two dynamic sidecars, `hello-1` (SotW) and `client-1` (delta), ready; plus a node
//! `envoy-1` for a real Envoy to join as. Helpers read the admin endpoints' JSON.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::client::AdsMode;
use mesh_xds::server::{mesh_core_validator, Metrics, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;
use serde_json::Value;

pub const LDS: &str = "ListenersConfigDump";
pub const RDS: &str = "RoutesConfigDump";
pub const CDS: &str = "ClustersConfigDump";
pub const EDS: &str = "EndpointsConfigDump";

/// The control plane (with its admin endpoint), the app and two ready sidecars.
pub struct Mesh {
    pub hello: Sidecar,
    pub client: Sidecar,
    /// The client's outbound listener.
    pub out: SocketAddr,
    pub cp_admin: SocketAddr,
    /// The xDS server's address.
    pub xds: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _app: mesh_testkit::HttpStub,
    _dir: tempfile::TempDir,
}

impl Mesh {
    pub async fn start() -> Self {
        let app = mesh_testkit::HttpStub::start(200, "hello from app\n").unwrap();
        let p = mesh_testkit::free_ports(6);
        let yaml = format!(
            r#"
services:
  - name: hello
    endpoints:
      - address: 127.0.0.1:{hello_in}
nodes:
  - id: hello-1
    service: hello
    listeners: {{ outbound: 127.0.0.1:{unused}, inbound: 127.0.0.1:{hello_in}, local_app: {app} }}
  - id: client-1
    listeners: {{ outbound: 127.0.0.1:{client_out}, inbound: 127.0.0.1:{client_in}, local_app: 127.0.0.1:1 }}
  - id: envoy-1
    listeners: {{ outbound: 127.0.0.1:{envoy_out}, inbound: 127.0.0.1:{envoy_in}, local_app: 127.0.0.1:1 }}
"#,
            envoy_out = p[4],
            envoy_in = p[5],
            hello_in = p[0],
            unused = p[1],
            client_out = p[2],
            client_in = p[3],
            app = app.addr(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
        let cache = SnapshotCache::new();
        cache.set_validator(mesh_core_validator());
        let source = FileSource::new(&path, cache.clone())
            .spawn(Duration::from_millis(100))
            .unwrap();
        let metrics = std::sync::Arc::new(Metrics::new());
        let (xds_addr, server) = XdsServer::new(cache.clone())
            .with_callbacks(metrics.clone())
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let admin_socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cp_admin = admin_socket.local_addr().unwrap();
        let admin = tokio::spawn(mesh_xds::server::admin::serve(admin_socket, cache, metrics));

        let start = |node: &str, mode: AdsMode| {
            let mut o = DynamicOptions::new(vec![format!("http://{xds_addr}")], node);
            o.admin = "127.0.0.1:0".parse().unwrap();
            o.mode = mode;
            o.drain_timeout = Duration::from_secs(1);
            Sidecar::start_dynamic(o)
        };
        let hello = start("hello-1", AdsMode::Sotw).await.unwrap();
        let client = start("client-1", AdsMode::Delta).await.unwrap();
        for s in [&hello, &client] {
            s.xds()
                .unwrap()
                .wait_ready(Duration::from_secs(15))
                .await
                .unwrap();
        }
        let out = SocketAddr::from(([127, 0, 0, 1], p[2]));
        Self {
            hello,
            client,
            out,
            cp_admin,
            xds: xds_addr,
            tasks: vec![source, server, admin],
            _app: app,
            _dir: dir,
        }
    }

    pub async fn stop(self) {
        self.hello.shutdown().await;
        self.client.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || mesh_testkit::http_get(addr, &path).unwrap())
        .await
        .unwrap()
}

pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The section of `dump` whose `@type` ends with `section`.
pub fn section<'a>(dump: &'a Value, section: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().unwrap().ends_with(section))
        .unwrap_or_else(|| panic!("no {section} in {dump}"))
}

pub fn list<'a>(v: &'a Value, field: &str) -> &'a Vec<Value> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// Every entry of `entries` has a non-empty version and an RFC 3339 `last_updated`.
pub fn assert_versioned(entries: &[Value], what: &str) {
    assert!(!entries.is_empty(), "{what}: none");
    for e in entries {
        let state = e.get("active_state").unwrap_or(e);
        let version = state["version_info"].as_str().unwrap_or_default();
        assert!(!version.is_empty(), "{what}: no version in {e}");
        let at = state["last_updated"].as_str().unwrap_or_default();
        assert!(
            at.len() == "2024-01-01T00:00:00.000Z".len() && at.ends_with('Z'),
            "{what}: last_updated {at:?} in {e}"
        );
    }
}
