//! The real RPC peers: Node.js with the npm packages (`./scripts/test` installs them with
//! `npm install --prefix ./.node`) and a Python with PyPI's dubbo-ssl-python (in `./.venv`).

use std::path::PathBuf;

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
