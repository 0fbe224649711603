//! The real RPC peers: Node.js with the npm packages (`./scripts/test` installs them with
//! `npm install --prefix ./.node`) and a Python with PyPI's dubbo-ssl-python (in `./.venv`);
//! the peer-script server process, a silent upstream, and the sidecar config and metric helpers
//! the RPC tests share.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::bins::{imports, skip_or_fail, workspace_root};

/// A Node.js binary and the `node_modules` directory that holds the packages a test needs.
#[derive(Debug, Clone)]
pub struct NodePackages {
    /// The `node` binary.
    pub node: PathBuf,
    /// The `node_modules` directory (pass it as `NODE_PATH`).
    pub modules: PathBuf,
}

impl NodePackages {
    /// A `node` command running `script` with [`NodePackages::modules`] on `NODE_PATH`.
    pub fn command(&self, script: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.node);
        cmd.arg(script).env("NODE_PATH", &self.modules);
        cmd
    }
}

/// `node` (`MESH_NODE_BIN`, else on `PATH`) and `MESH_NODE_MODULES` (else
/// `<workspace>/.node/node_modules`) when every one of `packages` is installed there.
pub fn node_packages(packages: &[&str]) -> Option<NodePackages> {
    let node = std::env::var_os("MESH_NODE_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join("node"))
                .find(|p| p.is_file())
        })?;
    let modules = std::env::var_os("MESH_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".node/node_modules"));
    packages
        .iter()
        .all(|p| modules.join(p).join("package.json").is_file())
        .then_some(NodePackages { node, modules })
}

/// [`node_packages`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_node_packages(packages: &[&str]) -> Option<NodePackages> {
    node_packages(packages).or_else(|| {
        skip_or_fail(
            &format!("node with the npm packages {packages:?}"),
            "MESH_NODE_BIN / MESH_NODE_MODULES",
        )
    })
}

/// A Python that can `import dubbo_ssl` (PyPI's dubbo-ssl-python, a real dubbo consumer):
/// `MESH_DUBBO_PYTHON` if set, else `<workspace>/.venv/bin/python` when it is installed there.
pub fn dubbo_python() -> Option<PathBuf> {
    std::env::var_os("MESH_DUBBO_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(workspace_root().join(".venv/bin/python")))
        .filter(|p| imports(p, "import dubbo_ssl"))
}

/// [`dubbo_python`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_dubbo_python() -> Option<PathBuf> {
    dubbo_python().or_else(|| skip_or_fail("python with dubbo-ssl-python", "MESH_DUBBO_PYTHON"))
}

/// A real RPC server run by a peer script, killed and reaped when dropped. The script prints
/// `ready` as its first line once it listens, then `connections N` (N: connections accepted so
/// far) each time it accepts one; [`PeerServer::accepted`] follows those lines.
#[derive(Debug)]
pub struct PeerServer {
    child: Child,
    accepted: Arc<AtomicU64>,
}

impl PeerServer {
    /// Starts `cmd` (stdout piped, stdin closed) and waits for its `ready` line.
    pub fn start(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let stdout = child.stdout.take().context("the peer's stdout")?;
        // Dropped (killed) on an early return below.
        let server = Self {
            child,
            accepted: Arc::new(AtomicU64::new(0)),
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        anyhow::ensure!(first == "ready", "the peer printed {first:?}, not ready");
        let accepted = Arc::clone(&server.accepted);
        // Ends when the child's stdout closes, that is when the child is killed.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("connections ") {
                    accepted.store(n.trim().parse().unwrap_or(u64::MAX), Ordering::SeqCst);
                }
            }
        });
        Ok(server)
    }

    /// Connections the server has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw upstream on loopback that never answers: [`RawUpstream::silent`] reads what arrives
/// (a provider that never responds), [`RawUpstream::closing`] closes each connection once its
/// first bytes arrive (a provider that fails mid-request). Protocol-agnostic; it stops accepting,
/// and closes what it accepted, when dropped.
#[derive(Debug)]
pub struct RawUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    /// An upstream that reads and never answers.
    pub fn silent() -> std::io::Result<Self> {
        Self::start(false)
    }

    /// An upstream that closes each connection when its first bytes arrive.
    pub fn closing() -> std::io::Result<Self> {
        Self::start(true)
    }

    fn start(close_on_data: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // Polls (every 10 ms) rather than blocks, so dropping the handle ends it.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut sink = [0u8; 4096];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    held.push(s);
                }
                held.retain_mut(|s| match s.read(&mut sink) {
                    Ok(0) => false,
                    Ok(_) => !close_on_data,
                    Err(_) => true,
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Ok(Self { addr, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads from `s` until the peer closes it, bounded: panics when it is still open after 10 s. A
/// reset counts as closed.
pub async fn until_closed(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink));
    match read.await {
        Err(_) => panic!("the connection was not closed in 10 s"),
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(Ok(_)) => {}
    }
}

/// The Prometheus text of a sidecar's admin `/stats/prometheus` (the blocking GET off the async
/// threads); panics when it cannot be read.
pub async fn admin_stats(admin: SocketAddr) -> String {
    let get = tokio::task::spawn_blocking(move || crate::http_get(admin, "/stats/prometheus"));
    match get.await {
        Ok(Ok((_, body))) => body,
        Ok(Err(e)) => panic!("GET {admin}/stats/prometheus: {e}"),
        Err(e) => panic!("GET {admin}/stats/prometheus: {e}"),
    }
}

/// The sum of the samples of metric `name` whose line holds every one of `labels` (substrings
/// such as `listener="rpc_out"`), in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, name: &str, labels: &[&str]) -> u64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A sidecar bootstrap's (YAML) listener with an RPC proxy for `protocol` on `port`: the given
/// request timeout (`1s`), `max_upstream_connections` and `max_frame_bytes`, and `routes` (YAML
/// route entries, each line indented by 14 spaces) in a `*` virtual host.
pub fn rpc_listener_yaml(
    name: &str,
    port: u16,
    protocol: &str,
    timeout: &str,
    max_connections: u64,
    max_frame_bytes: u64,
    routes: &str,
) -> String {
    format!(
        r#"
  - name: {name}
    address: 127.0.0.1:{port}
    direction: outbound
    xprotocol:
      protocol: {protocol}
      max_frame_bytes: {max_frame_bytes}
      request_timeout: {timeout}
      max_upstream_connections: {max_connections}
      route_config:
        name: {name}
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
{routes}"#
    )
}

/// A sidecar bootstrap's (YAML) static cluster `name` of one loopback endpoint on `port`.
pub fn cluster_yaml(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}\n    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: \"127.0.0.1:{port}\" }} ] }} ] }}\n"
    )
}
