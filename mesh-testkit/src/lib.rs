//! Test helpers for the mesh crates: find and run the real Envoy and etcd
//! binaries on loopback, pick free ports, and make tiny HTTP requests.
//!
//! `./scripts/test` installs Envoy, etcd and Python's grpcio and exports
//! `MESH_ENVOY_BIN`, `MESH_ETCD_BIN` and `MESH_GRPC_PYTHON`. A plain
//! `cargo test` also finds them in the repo's `.venv` or on `PATH`. The npm RPC peers (sofa-rpc-node,
//! dubbo-remoting) live in `./.node` (`MESH_NODE_BIN`, `MESH_NODE_MODULES`, [`require_node_packages`]);
//! PyPI's dubbo-ssl-python in `./.venv` (`MESH_DUBBO_PYTHON`, [`require_dubbo_python`]). When a binary is missing, tests that need it skip
//! loudly on a developer's machine and fail under `CI=true`:
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! let _envoy_bin = mesh_testkit::envoy_or_skip!(Ok(()));
//! let envoy = mesh_testkit::EnvoyProcess::start("admin: ...")?;
//! let (status, body) = mesh_testkit::http_get(envoy.listener_addr("main")?, "/")?;
//! # let _ = (status, body);
//! # Ok(())
//! # }
//! ```

mod bins;
mod ca;
mod envoy;
mod etcd;
mod etcd_cluster;
mod http;
mod net;
mod process;
mod rpc_peers;

pub use bins::{
    curl_bin, envoy_bin, etcd_bin, grpc_python, in_ci, nc_bin, openssl_bin, otlp_python,
    promtool_bin, promtool_check_metrics, require_curl, require_envoy, require_etcd,
    require_grpc_python, require_nc, require_openssl, require_otlp_python, require_promtool,
    require_sofa_node, require_ws_python, skip_or_fail, sofa_node, workspace_root, ws_python,
};
pub use ca::{IssuedCert, TestCa};
pub use envoy::{ads_bootstrap, EnvoyProcess};
pub use etcd::EtcdProcess;
pub use etcd_cluster::EtcdCluster;
pub use http::{http_get, http_request, HttpResponse, HttpStub};
pub use net::{free_port, free_ports, wait_for};
pub use rpc_peers::{
    admin_stats, cluster_yaml, dubbo_python, metric_sum, node_packages, require_dubbo_python,
    require_node_packages, rpc_listener_yaml, until_closed, NodePackages, PeerServer, RawUpstream,
};

/// Evaluates to the Envoy binary's path, or returns from the calling
/// function when Envoy is missing (after a loud skip message; under
/// `CI=true` it panics instead, see [`require_envoy`]).
///
/// `envoy_or_skip!()` returns `()`; `envoy_or_skip!(value)` returns `value`
/// (e.g. `Ok(())` in a test returning `Result`).
#[macro_export]
macro_rules! envoy_or_skip {
    () => {
        $crate::envoy_or_skip!(())
    };
    ($ret:expr) => {
        match $crate::require_envoy() {
            ::std::option::Option::Some(path) => path,
            ::std::option::Option::None => return $ret,
        }
    };
}

/// Evaluates to the etcd binary's path, or returns from the calling function
/// when etcd is missing (after a loud skip message; under `CI=true` it panics
/// instead, see [`require_etcd`]).
///
/// `etcd_or_skip!()` returns `()`; `etcd_or_skip!(value)` returns `value`.
#[macro_export]
macro_rules! etcd_or_skip {
    () => {
        $crate::etcd_or_skip!(())
    };
    ($ret:expr) => {
        match $crate::require_etcd() {
            ::std::option::Option::Some(path) => path,
            ::std::option::Option::None => return $ret,
        }
    };
}

/// Evaluates to the path of a Python that has grpcio, or returns from the calling function when
/// there is none (after a loud skip message; under `CI=true` it panics instead, see
/// [`require_grpc_python`]).
///
/// `grpc_python_or_skip!()` returns `()`; `grpc_python_or_skip!(value)` returns `value`.
#[macro_export]
macro_rules! grpc_python_or_skip {
    () => {
        $crate::grpc_python_or_skip!(())
    };
    ($ret:expr) => {
        match $crate::require_grpc_python() {
            ::std::option::Option::Some(path) => path,
            ::std::option::Option::None => return $ret,
        }
    };
}

/// Evaluates to the path of a Python with grpcio and opentelemetry-proto (an OTLP receiver), or
/// returns from the calling function when there is none (after a loud skip message; under
/// `CI=true` it panics instead, see [`require_otlp_python`]).
#[macro_export]
macro_rules! otlp_python_or_skip {
    () => {
        $crate::otlp_python_or_skip!(())
    };
    ($ret:expr) => {
        match $crate::require_otlp_python() {
            ::std::option::Option::Some(path) => path,
            ::std::option::Option::None => return $ret,
        }
    };
}
