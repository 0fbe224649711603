//! A bound listener's task: what [`ListenerManager`] starts for a new or rebound listener.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::Listener;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ListenerManager;
use crate::accept::L4Settings;
use crate::server::{serve, ListenerSettings};
use crate::stack::ListenerStack;
use crate::tcp::TcpRelay;
use crate::tls::InboundTls;
use crate::xproto::XProxy;

/// One bound listener.
pub(super) struct Live {
    pub(super) config: Listener,
    pub(super) stack: ListenerStack,
    /// The RPC proxy, for a listener with `xprotocol` (updated in place).
    pub(super) rpc: Option<XProxy>,
    pub(super) local_addr: SocketAddr,
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<()>,
}

impl ListenerManager {
    /// Starts serving `config` on `socket` with `stack` (and the listener's RPC proxy, kept in
    /// the returned entry so that updates reach it in place).
    pub(super) fn spawn(
        &self,
        config: Listener,
        stack: ListenerStack,
        socket: TcpListener,
        tls: Option<InboundTls>,
    ) -> Live {
        let local_addr = socket.local_addr().unwrap_or(config.address);
        let stop = CancellationToken::new();
        let rpc = XProxy::of_listener(&config, &self.clusters, &self.metrics);
        let settings = ListenerSettings {
            name: Arc::from(config.name.as_str()),
            http: config.http.clone(),
            connections: Arc::clone(&self.connections),
            traced: stack.is_traced(),
            l4: L4Settings {
                serves_http: config.serves_http(),
                detection: config.detection.clone(),
                tcp: config.tcp_proxy.clone().map(|t| {
                    TcpRelay::new(
                        Arc::from(config.name.as_str()),
                        t,
                        self.clusters.clone(),
                        self.metrics.l4().clone(),
                    )
                }),
                tls,
                rpc: rpc.clone(),
            },
        };
        tracing::info!(listener = %config.name, %local_addr, "listening");
        let task = tokio::spawn(serve(
            socket,
            settings,
            stack.service(),
            self.metrics.clone(),
            stop.clone(),
            self.drain,
        ));
        Live {
            config,
            stack,
            rpc,
            local_addr,
            stop,
            task,
        }
    }
}

/// The listen backlog of every listener.
pub(super) const BACKLOG: u32 = 1024;

/// Binds like Envoy: `SO_REUSEADDR`, so a listener can come back on its port at once. Not
/// listening yet: a warming listener holds its address but accepts nothing.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}
