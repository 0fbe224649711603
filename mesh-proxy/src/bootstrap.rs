//! The sidecar's static bootstrap: a YAML file in mesh-core's model, or the seed default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_core::{AccessLog, MeshConfig, Validate};
use serde::{Deserialize, Serialize};

/// The seed's default mesh: outbound :8082 routes everything to the inbound sidecar at :8083,
/// which routes everything to the local app at 127.0.0.1:6060. Both hops speak the protocol the
/// request came in with (Envoy's `use_downstream_protocol_config`): an HTTP/1.1 app and a gRPC
/// (HTTP/2) app both work with no flags. The outbound listener binds loopback only: it forwards
/// to any service, so on all interfaces anyone who reaches the host could use it as an open
/// proxy into the mesh; the inbound listener takes other hosts' calls and binds all interfaces.
pub const DEFAULT_BOOTSTRAP: &str = r#"
listeners:
  - name: outbound
    address: 127.0.0.1:8082
    direction: outbound
    route_config:
      name: outbound
      virtual_hosts:
        - name: mesh
          domains: ["*"]
          routes:
            - name: to-inbound
              route: { cluster: inbound_sidecar }
  - name: inbound
    address: 0.0.0.0:8083
    direction: inbound
    route_config:
      name: inbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - name: to-local-app
              route: { cluster: local_app }
clusters:
  - name: inbound_sidecar
    protocol: use_downstream
    load_assignment:
      endpoints:
        - endpoints: [ { address: "127.0.0.1:8083" } ]
  - name: local_app
    protocol: use_downstream
    load_assignment:
      endpoints:
        - endpoints: [ { address: "127.0.0.1:6060" } ]
"#;

/// A sidecar bootstrap: the mesh config plus the sidecar's own settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bootstrap {
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    /// How long a shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Open downstream connections at most, across all listeners.
    pub max_connections: usize,
    /// Access logs of every listener that configures none of its own (`--access-log`).
    pub access_log: Vec<AccessLog>,
    /// Listeners, routes, clusters and endpoints.
    pub mesh: MeshConfig,
    /// Tracing: spans of every listener exported over OTLP/gRPC (off when `None`). Set by the
    /// binary's `--otlp-endpoint` and `--trace-sampling`, not read from the file.
    #[serde(skip)]
    pub tracing: Option<mesh_telemetry::TracingOptions>,
}

/// The file's shape: the sidecar settings beside `MeshConfig`'s lists. Spelled out rather than
/// `#[serde(flatten)]`, which would buffer the document and lose the line of an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootstrapFile {
    #[serde(default = "default_admin")]
    admin: SocketAddr,
    #[serde(default = "default_drain", with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    access_log: Vec<AccessLog>,
    #[serde(default)]
    listeners: Vec<mesh_core::Listener>,
    #[serde(default)]
    route_configs: Vec<mesh_core::RouteConfiguration>,
    #[serde(default)]
    clusters: Vec<mesh_core::Cluster>,
    #[serde(default)]
    endpoints: Vec<mesh_core::ClusterLoadAssignment>,
    #[serde(default)]
    secrets: Vec<mesh_core::Secret>,
}

/// Why a bootstrap was refused: the file, where, and why.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not fit the schema (the message names the field, line and column).
    #[error("{file}: {reason}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// serde's message with the location.
        reason: String,
    },
    /// The config parsed but is invalid.
    #[error("{file}: {source}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The field path and the reason.
        source: mesh_core::ValidationError,
    },
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_drain() -> Duration {
    Duration::from_secs(15)
}
fn default_max_connections() -> usize {
    10_000
}

impl Bootstrap {
    /// Parses and validates bootstrap YAML; `file` only names the origin in errors.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Self, BootstrapError> {
        let f: BootstrapFile =
            mesh_core::yaml::from_str(text).map_err(|e| BootstrapError::Parse {
                file: file.to_path_buf(),
                reason: e.to_string(),
            })?;
        let boot = Bootstrap {
            admin: f.admin,
            drain_timeout: f.drain_timeout,
            max_connections: f.max_connections,
            access_log: f.access_log,
            mesh: MeshConfig {
                listeners: f.listeners,
                route_configs: f.route_configs,
                clusters: f.clusters,
                endpoints: f.endpoints,
                secrets: f.secrets,
            },
            tracing: None,
        };
        if let Some((i, e)) = boot
            .access_log
            .iter()
            .enumerate()
            .find_map(|(i, l)| l.validate().err().map(|e| (i, e)))
        {
            return Err(BootstrapError::Invalid {
                file: file.to_path_buf(),
                source: e.within(format!("access_log[{i}]")),
            });
        }
        boot.mesh
            .validate()
            // No SDS here: every secret a listener or cluster names must be in the file.
            .and_then(|()| boot.mesh.check_secret_refs())
            .map_err(|source| BootstrapError::Invalid {
                file: file.to_path_buf(),
                source,
            })?;
        Ok(boot)
    }

    /// Reads, parses and validates a bootstrap file.
    pub fn load(path: &Path) -> Result<Self, BootstrapError> {
        let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// The seed default (see [`DEFAULT_BOOTSTRAP`]).
    pub fn seed_default() -> Self {
        match Self::from_yaml(DEFAULT_BOOTSTRAP, Path::new("<built-in default>")) {
            Ok(b) => b,
            // The default is a constant covered by a unit test.
            Err(e) => unreachable!("built-in bootstrap is invalid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::Direction;

    #[test]
    fn the_seed_default_is_outbound_8082_to_inbound_8083_to_app_6060() {
        let b = Bootstrap::seed_default();
        assert_eq!(b.admin, "127.0.0.1:15000".parse().unwrap());
        let l = &b.mesh.listeners;
        assert_eq!(
            (l[0].address.port(), l[0].direction),
            (8082, Direction::Outbound)
        );
        assert!(
            l[0].address.ip().is_loopback(),
            "the outbound listener is no open proxy"
        );
        assert!(
            l[1].address.ip().is_unspecified(),
            "inbound takes other hosts' calls"
        );
        assert_eq!(
            (l[1].address.port(), l[1].direction),
            (8083, Direction::Inbound)
        );
        let app = b
            .mesh
            .clusters
            .iter()
            .find(|c| c.name == "local_app")
            .unwrap();
        let ep = &app.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
        assert_eq!(ep.address, "127.0.0.1:6060".parse().unwrap());
    }

    #[test]
    fn a_bad_file_is_refused_with_file_field_and_reason() {
        let file = Path::new("/etc/mesh/sidecar.yaml");
        let typo = DEFAULT_BOOTSTRAP.replace("direction: inbound", "direction: sideways");
        let e = Bootstrap::from_yaml(&typo, file).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "/etc/mesh/sidecar.yaml: listeners[1].direction: unknown variant `sideways`"
            ),
            "{e}"
        );
        assert!(e.contains("at line 16 column 16"), "{e}");

        let dangling = DEFAULT_BOOTSTRAP.replace("cluster: local_app", "cluster: nowhere");
        let e = Bootstrap::from_yaml(&dangling, file)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/mesh/sidecar.yaml: listeners[inbound].route_config.virtual_hosts[0].routes[0].route: unknown cluster \"nowhere\""
        );
        let e = Bootstrap::load(Path::new("/nonexistent/x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/x.yaml: "), "{e}");
    }
}
