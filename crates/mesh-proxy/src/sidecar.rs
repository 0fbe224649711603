//! The sidecar process: clusters, listeners and the admin endpoint, started from a bootstrap
//! and stopped with a drain.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mesh_core::{Reload, ReloadError};
use mesh_lb::ClusterManager;
use mesh_router::LayerRegistry;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::bootstrap::Bootstrap;
use crate::listeners::ListenerManager;
use crate::metrics::Metrics;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A piece of config was refused.
    #[error(transparent)]
    Config(#[from] ReloadError),
    /// The admin endpoint could not bind.
    #[error("admin endpoint {addr}: {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    listeners: ListenerManager,
    clusters: ClusterManager,
    admin_addr: SocketAddr,
    stop: CancellationToken,
    admin_task: JoinHandle<()>,
}

impl Sidecar {
    /// Starts a sidecar with a static bootstrap: clusters and endpoints first, then the
    /// listeners, then the admin endpoint (ready at once, since the config is complete).
    pub async fn start_static(boot: Bootstrap) -> Result<Self, SidecarError> {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let clusters = ClusterManager::new();
        clusters.reload(boot.mesh.clusters.clone())?;
        for cla in &boot.mesh.endpoints {
            clusters.reload(cla.clone())?;
        }
        let listeners = ListenerManager::new(
            clusters.clone(),
            LayerRegistry::default(),
            metrics,
            boot.max_connections,
            boot.drain_timeout,
        );
        for rc in &boot.mesh.route_configs {
            listeners.apply_routes(rc)?;
        }
        listeners.apply(boot.mesh.listeners.clone())?;

        let dump_cfg = Arc::new(boot.mesh.clone());
        let dump_listeners = listeners.clone();
        let admin = Admin::new(
            registry,
            Arc::new(move || {
                serde_json::json!({
                    "mode": "static",
                    "config": &*dump_cfg,
                    "bound": dump_listeners.addresses(),
                })
            }),
        );
        admin.ready_flag().store(true, Ordering::Release);
        let socket =
            TcpListener::bind(boot.admin)
                .await
                .map_err(|source| SidecarError::AdminBind {
                    addr: boot.admin,
                    source,
                })?;
        let admin_addr = socket.local_addr().unwrap_or(boot.admin);
        let stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin.serve(socket, stop.clone()));
        Ok(Self {
            listeners,
            clusters,
            admin_addr,
            stop,
            admin_task,
        })
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.addresses().get(name).copied()
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The cluster manager (for reloads from outside, e.g. xDS).
    pub fn clusters(&self) -> &ClusterManager {
        &self.clusters
    }

    /// The listener manager.
    pub fn listeners(&self) -> &ListenerManager {
        &self.listeners
    }

    /// Stops accepting, drains in-flight requests (up to the drain deadline), stops the admin
    /// endpoint.
    pub async fn shutdown(self) {
        self.listeners.shutdown().await;
        self.stop.cancel();
        let _ = self.admin_task.await;
    }
}
