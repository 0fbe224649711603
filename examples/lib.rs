//! Shared pieces of the runnable examples in this folder: a hello-world app, a control plane on
//! a mesh.yaml of the example's own (rewritable, to show a live change), and the whole demo mesh.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Starts a multi-threaded hyper "hello world" app on `addr` (the demo's local app), answering
/// `hello world from <name>` on every path. Returns the bound address.
pub async fn hello_app(addr: SocketAddr, name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "hello world from {name}\n"
                        )))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

/// A control plane serving a mesh.yaml it keeps in a temporary directory: what an example that
/// embeds the SDK connects to (a real application connects to its own control plane). Dropping
/// it stops the server and the file source.
pub struct ControlPlane {
    /// The xDS address.
    pub addr: SocketAddr,
    path: std::path::PathBuf,
    cache: mesh_xds::server::SnapshotCache,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Serves `mesh_yaml` on an ephemeral loopback port.
    pub async fn start(mesh_yaml: &str) -> Result<Self, mesh_core::BoxError> {
        Self::bind(mesh_yaml, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serves `mesh_yaml` on `addr`; the file is polled every 200 ms.
    pub async fn bind(mesh_yaml: &str, addr: SocketAddr) -> Result<Self, mesh_core::BoxError> {
        use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
        use mesh_xds::source::FileSource;

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, mesh_yaml)?;
        let cache = SnapshotCache::new();
        cache.set_validator(mesh_core_validator());
        let source = FileSource::new(&path, cache.clone())
            .spawn(std::time::Duration::from_millis(200))
            .map_err(|e| e.to_string())?;
        let (addr, server) = XdsServer::new(cache.clone()).spawn(addr).await?;
        Ok(Self {
            addr,
            path,
            cache,
            tasks: vec![source, server],
            _dir: dir,
        })
    }

    /// The snapshot cache it serves (for an admin endpoint over it).
    pub fn cache(&self) -> &mesh_xds::server::SnapshotCache {
        &self.cache
    }

    /// The mesh.yaml it serves and hot-reloads.
    pub fn mesh_file(&self) -> &std::path::Path {
        &self.path
    }

    /// The address as a client takes it (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the mesh.yaml (the source picks the edit up within its poll interval).
    pub fn rewrite(&self, mesh_yaml: &str) -> std::io::Result<()> {
        // Write then rename, so the poller never reads half a file.
        let tmp = self.path.with_extension("yaml.tmp");
        std::fs::write(&tmp, mesh_yaml)?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a dynamic sidecar and waits (20 s at most) until its xDS config is complete.
pub async fn ready_sidecar(
    opts: mesh_proxy::sidecar::DynamicOptions,
) -> Result<mesh_proxy::sidecar::Sidecar, mesh_core::BoxError> {
    let sidecar = mesh_proxy::sidecar::Sidecar::start_dynamic(opts).await?;
    if let Some(xds) = sidecar.xds() {
        xds.wait_ready(std::time::Duration::from_secs(20)).await?;
    }
    Ok(sidecar)
}

/// The whole demo mesh in one process: the control plane on the embedded `demo_mesh.yaml`, the
/// hello app, and two sidecars fed by xDS (`client-1` with the outbound listener the caller uses,
/// `hello-1` with the inbound listener in front of the app).
pub mod demo {
    use std::net::SocketAddr;
    use std::time::Duration;

    use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
    use mesh_xds::client::AdsMode;
    use tokio::task::JoinHandle;

    use super::ControlPlane;

    /// The embedded mesh, with `{port}` placeholders.
    pub const MESH_YAML: &str = include_str!("demo_mesh.yaml");

    /// The demo's ports (all on 127.0.0.1).
    #[derive(Debug, Clone, Copy)]
    pub struct Ports {
        /// The hello app (6060).
        pub app: u16,
        /// client-1's outbound listener, what `curl` calls (8082).
        pub client_out: u16,
        /// hello-1's inbound listener, in front of the app (8083).
        pub hello_in: u16,
        /// hello-1's outbound listener (18082).
        pub hello_out: u16,
        /// client-1's inbound listener (18083).
        pub client_in: u16,
        /// client-1's local app (nothing listens; 16060).
        pub client_app: u16,
        /// The control plane's xDS port (18000).
        pub xds: u16,
        /// The control plane's admin port (19000).
        pub cp_admin: u16,
        /// envoy-1's outbound listener, for a real Envoy joining the demo (10082).
        pub envoy_out: u16,
        /// envoy-1's inbound listener (10083).
        pub envoy_in: u16,
        /// client-1's admin endpoint (15000).
        pub client_admin: u16,
        /// hello-1's admin endpoint (15001).
        pub hello_admin: u16,
    }

    impl Default for Ports {
        fn default() -> Self {
            Self {
                app: 6060,
                client_out: 8082,
                hello_in: 8083,
                hello_out: 18082,
                client_in: 18083,
                client_app: 16060,
                xds: 18000,
                cp_admin: 19000,
                envoy_out: 10082,
                envoy_in: 10083,
                client_admin: 15000,
                hello_admin: 15001,
            }
        }
    }

    impl Ports {
        /// The embedded mesh.yaml with these ports.
        pub fn mesh_yaml(&self) -> String {
            [
                ("{app}", self.app),
                ("{client_out}", self.client_out),
                ("{hello_in}", self.hello_in),
                ("{hello_out}", self.hello_out),
                ("{client_in}", self.client_in),
                ("{client_app}", self.client_app),
                ("{envoy_out}", self.envoy_out),
                ("{envoy_in}", self.envoy_in),
            ]
            .iter()
            .fold(MESH_YAML.to_string(), |text, (k, v)| {
                text.replace(k, &v.to_string())
            })
        }
    }

    /// A running demo mesh; [`Demo::shutdown`] stops it.
    pub struct Demo {
        /// The ports in use.
        pub ports: Ports,
        /// The control plane, serving the demo's mesh.yaml (edit its `mesh_file()`: it is
        /// hot-reloaded).
        pub control_plane: ControlPlane,
        client: Sidecar,
        hello: Sidecar,
        admin_task: JoinHandle<()>,
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    impl Demo {
        /// Starts everything and waits until both sidecars have their config.
        pub async fn start(ports: Ports) -> Result<Self, mesh_core::BoxError> {
            super::hello_app(addr(ports.app), "the hello app").await?;
            let control_plane = ControlPlane::bind(&ports.mesh_yaml(), addr(ports.xds)).await?;
            let cp_admin = tokio::net::TcpListener::bind(addr(ports.cp_admin)).await?;
            let metrics = std::sync::Arc::new(mesh_xds::server::Metrics::new());
            let admin_task = tokio::spawn(mesh_xds::server::admin::serve(
                cp_admin,
                control_plane.cache().clone(),
                metrics,
            ));

            let sidecar = |node: &str, admin: u16, mode: AdsMode| {
                let mut o =
                    DynamicOptions::new(vec![format!("http://127.0.0.1:{}", ports.xds)], node);
                o.admin = addr(admin);
                o.mode = mode;
                o.drain_timeout = Duration::from_secs(2);
                super::ready_sidecar(o)
            };
            let hello = sidecar("hello-1", ports.hello_admin, AdsMode::Sotw).await?;
            let client = sidecar("client-1", ports.client_admin, AdsMode::Delta).await?;
            Ok(Self {
                ports,
                control_plane,
                client,
                hello,
                admin_task,
            })
        }

        /// What to try, for people.
        pub fn instructions(&self) -> String {
            let p = &self.ports;
            format!(
                "\
The demo mesh is up: app 127.0.0.1:{app} ← hello-1 inbound :{hin} ← client-1 outbound :{out} ← you.

Try:
  curl 127.0.0.1:{out}/                        # hello world, through both sidecars
  curl -i 127.0.0.1:{out}/limited              # 3rd call within 10 s: 429 from the rate limit
  curl 127.0.0.1:{cadm}/metrics                # client-1's metrics (hello-1: :{hadm})
  curl 127.0.0.1:{cadm}/config_dump            # client-1's live config and xDS versions
  curl '127.0.0.1:{cadm}/config_dump?resource=dynamic_active_clusters'
  curl '127.0.0.1:{cpadm}/config_dump?node=client-1'  # what the control plane serves client-1
  curl 127.0.0.1:{cpadm}/snapshots             # the control plane: what each node has ACKed

The control plane serves {file} (xDS on 127.0.0.1:{xds}); edit it and the sidecars follow.
Real Envoy can join as node envoy-1 (outbound :{eout}): envoy -c examples/envoy/bootstrap.yaml
  then curl 127.0.0.1:{eout}/ goes Envoy → hello-1 → app. (./scripts/test installs Envoy in .venv.)
Ctrl-C stops everything.",
                app = p.app,
                hin = p.hello_in,
                out = p.client_out,
                cadm = p.client_admin,
                hadm = p.hello_admin,
                cpadm = p.cp_admin,
                xds = p.xds,
                eout = p.envoy_out,
                file = self.control_plane.mesh_file().display(),
            )
        }

        /// Drains the sidecars and stops the control plane.
        pub async fn shutdown(self) {
            self.client.shutdown().await;
            self.hello.shutdown().await;
            self.admin_task.abort();
            drop(self.control_plane);
        }
    }
}
