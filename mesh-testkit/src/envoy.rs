//! A real Envoy process for a test.

use crate::process::Managed;
use crate::{http_get, wait_for};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tempfile::TempDir;

/// How long [`EnvoyProcess::start`] waits for `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Envoy, started from a YAML bootstrap config, killed on drop.
///
/// The config must declare an `admin:` block on loopback; its port may be 0,
/// since Envoy reports the bound admin address (`--admin-address-path`).
/// Listener ports may be 0 too: ask [`EnvoyProcess::listener_addr`].
pub struct EnvoyProcess {
    child: Managed,
    admin: SocketAddr,
    dir: TempDir,
}

impl EnvoyProcess {
    /// Writes `config_yaml` to a temp dir and runs
    /// `envoy -c <file> --disable-hot-restart --base-id <unique>
    /// --log-level warn --concurrency 1`, with its output in
    /// [`EnvoyProcess::log_path`]; waits (at most 30 s) for the admin
    /// endpoint's `/ready` to answer 200.
    ///
    /// Errors if Envoy is not found (check [`crate::require_envoy`] first),
    /// exits early, or does not get ready in time; the error has its log.
    pub fn start(config_yaml: &str) -> Result<EnvoyProcess> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let bin = crate::envoy_bin().context("envoy not found; run ./scripts/test")?;
        let dir = tempfile::Builder::new().prefix("mesh-envoy-").tempdir()?;
        let config = dir.path().join("envoy.yaml");
        let admin_file = dir.path().join("admin-address");
        std::fs::write(&config, config_yaml)?;
        let base_id =
            (std::process::id() % 4_000_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--base-id", &base_id.to_string()])
            .args(["--log-level", "warn", "--concurrency", "1"]);
        let mut child = Managed::spawn("envoy", cmd, &dir.path().join("envoy.log"))?;

        let mut last_err = String::from("admin address file not written yet");
        let admin = wait_for(READY_TIMEOUT, Duration::from_millis(50), || {
            if let Err(e) = child.check_alive() {
                return Some(Err(e));
            }
            let text = std::fs::read_to_string(&admin_file).ok()?;
            let addr: SocketAddr = text.trim().parse().ok()?;
            match http_get(addr, "/ready") {
                Ok((200, _)) => Some(Ok(addr)),
                Ok((status, body)) => {
                    last_err = format!("/ready answered {status}: {}", body.trim());
                    None
                }
                Err(e) => {
                    last_err = format!("{e:#}");
                    None
                }
            }
        });
        let admin = match admin {
            Some(result) => result?,
            None => bail!(
                "envoy not ready after {READY_TIMEOUT:?} ({last_err}); does the config have \
                 an admin block? log:\n{}",
                child.logs()
            ),
        };
        Ok(EnvoyProcess { child, admin, dir })
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `GET path` from the admin endpoint (e.g. `/config_dump`, `/clusters`,
    /// `/stats?filter=...`); errors unless the status is 200.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let (status, body) = http_get(self.admin, path)?;
        if status != 200 {
            bail!("envoy admin GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// The address the listener `name` is bound to (read from the admin
    /// `/listeners`), which resolves port 0 in the config.
    pub fn listener_addr(&self, name: &str) -> Result<SocketAddr> {
        let listeners = self.admin_get("/listeners")?;
        let prefix = format!("{name}::");
        let line = listeners
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .with_context(|| format!("no listener {name:?} in /listeners:\n{listeners}"))?;
        let first = line.split(',').next().unwrap_or_default().trim();
        first
            .parse()
            .with_context(|| format!("bad address {first:?} for listener {name:?}"))
    }

    /// Everything Envoy logged so far.
    pub fn logs(&self) -> String {
        self.child.logs()
    }

    /// The log file (Envoy's stdout and stderr).
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// The temp dir holding the config and the log; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// An Envoy bootstrap for node `node` whose listeners and clusters (LDS, CDS, and through them
/// RDS and EDS) all come over ADS from the control plane at `xds` (`api_type`: `GRPC` for state
/// of the world, `DELTA_GRPC` for delta), with its admin endpoint on a free loopback port.
pub fn ads_bootstrap(node: &str, xds: SocketAddr, api_type: &str) -> String {
    format!(
        r#"
node: {{ id: {node}, cluster: test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
    - name: xds
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: xds
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
"#,
        port = xds.port()
    )
}
