//! The layer-4 proxy (Envoy's `tcp_proxy`): connect to an endpoint of the listener's cluster,
//! picked by the cluster's own load balancer (so health, outlier ejection and the LB policy
//! apply as for HTTP), then relay bytes both ways.
//!
//! The relay is tokio's `copy_bidirectional_with_sizes`: one fixed buffer per direction, so a
//! slow reader stops the other side's reads (backpressure, no unbounded buffering), and a
//! side's end of stream becomes a write shutdown of the other (half-close), the other
//! direction carrying on until it ends too.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::{MeshError, TcpProxy};
use mesh_lb::ClusterManager;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::conn::Activity;
use crate::metrics_l4::L4Metrics;

/// Bytes buffered per direction of a relay.
const RELAY_BUFFER: usize = 16 * 1024;

/// One listener's TCP proxy: its config, the clusters it connects to, its counters. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct TcpRelay {
    listener: Arc<str>,
    config: Arc<TcpProxy>,
    clusters: ClusterManager,
    metrics: L4Metrics,
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum Relayed {
    /// Both directions reached their end of stream.
    Done,
    /// No bytes moved for the idle timeout.
    Idle,
}

impl TcpRelay {
    /// The TCP proxy of `listener`.
    pub fn new(
        listener: Arc<str>,
        config: TcpProxy,
        clusters: ClusterManager,
        metrics: L4Metrics,
    ) -> Self {
        Self {
            listener,
            config: Arc::new(config),
            clusters,
            metrics,
        }
    }

    /// Connects upstream and relays `downstream` (whose reads and writes touch `activity`)
    /// until both sides are done, the idle timeout passes, or either side fails. A connect
    /// failure is counted and returned: the caller drops, and so closes, the downstream.
    pub(crate) async fn relay<D>(
        &self,
        mut downstream: D,
        activity: &Activity,
    ) -> Result<Relayed, MeshError>
    where
        D: AsyncRead + AsyncWrite + Unpin,
    {
        let (cluster, mut upstream) = self.connect().await?;
        self.metrics.connected(&self.listener, &cluster);
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut downstream,
            &mut upstream,
            RELAY_BUFFER,
            RELAY_BUFFER,
        );
        match pump(copy, activity, self.config.idle_timeout).await {
            Pumped::Done(Ok((sent, received))) => {
                self.metrics
                    .relayed(&self.listener, &cluster, sent, received);
                Ok(Relayed::Done)
            }
            Pumped::Done(Err(e)) => Err(MeshError::Upstream {
                reason: format!("tcp relay: {e}"),
            }),
            Pumped::Idle => Ok(Relayed::Idle),
        }
    }

    /// An upstream connection: up to `max_connect_attempts`, each to a freshly picked
    /// endpoint (of a freshly drawn cluster when the destination is weighted).
    async fn connect(&self) -> Result<(String, TcpStream), MeshError> {
        let mut last = None;
        for _ in 0..self.config.max_connect_attempts {
            let name = self.config.destination.pick(rand::random());
            match self.connect_once(name).await {
                Ok(stream) => return Ok((name.to_owned(), stream)),
                Err(e) => {
                    self.metrics.connect_failed(&self.listener, name);
                    tracing::debug!(listener = %self.listener, cluster = name, error = %e, "tcp connect failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| MeshError::ClusterNotFound {
            cluster: String::new(),
        }))
    }

    async fn connect_once(&self, name: &str) -> Result<TcpStream, MeshError> {
        let cluster = self
            .clusters
            .get(name)
            .ok_or_else(|| MeshError::ClusterNotFound {
                cluster: name.to_owned(),
            })?;
        let endpoint = cluster
            .pick(None)
            .ok_or_else(|| MeshError::NoHealthyEndpoint {
                cluster: name.to_owned(),
            })?;
        let addr = endpoint.address();
        let timeout = cluster.config().connect_timeout;
        let stream = connect(addr, timeout)
            .await
            .map_err(|e| MeshError::UpstreamConnect {
                endpoint: addr,
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timeout after {timeout:?}"),
        )),
    }
}

/// How a pumped copy ended.
pub(crate) enum Pumped<T> {
    /// The copy finished (or failed).
    Done(T),
    /// No bytes moved for the idle timeout.
    Idle,
}

/// Drives `copy` until it finishes or `activity` saw no bytes for `idle`. One timer per relay,
/// re-armed for the remaining idle time only when it fires (not on every byte).
pub(crate) async fn pump<F: std::future::Future>(
    copy: F,
    activity: &Activity,
    idle: Duration,
) -> Pumped<F::Output> {
    tokio::pin!(copy);
    loop {
        let left = idle.saturating_sub(activity.idle_for());
        if left.is_zero() {
            return Pumped::Idle;
        }
        tokio::select! {
            out = &mut copy => return Pumped::Done(out),
            () = tokio::time::sleep(left) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn pump_closes_an_idle_copy_and_spares_a_busy_one() {
        let activity = Activity::new();
        let never = std::future::pending::<()>();
        let started = tokio::time::Instant::now();
        assert!(matches!(
            pump(never, &activity, Duration::from_secs(5)).await,
            Pumped::Idle
        ));
        assert!(started.elapsed() >= Duration::from_secs(5));
        // Activity pushes the deadline out.
        let a2 = Activity::new();
        let busy = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                a2.touch();
            }
        };
        assert!(matches!(
            pump(busy, &a2, Duration::from_secs(5)).await,
            Pumped::Done(())
        ));
    }

    #[tokio::test]
    async fn relay_half_closes_and_refused_connects_are_errors() {
        // An upstream that reads to its end, then answers with what it got.
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = up.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        });
        let clusters = ClusterManager::new();
        let mut c = mesh_core::Cluster::new("up");
        c.load_assignment = Some(mesh_core::ClusterLoadAssignment::from_addrs(
            "up",
            [up_addr],
        ));
        let mut dead = mesh_core::Cluster::new("dead");
        // A port nobody listens on: bound, then closed.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone_addr = gone.local_addr().unwrap();
        drop(gone);
        dead.load_assignment = Some(mesh_core::ClusterLoadAssignment::from_addrs(
            "dead",
            [gone_addr],
        ));
        mesh_core::Reload::reload(&clusters, vec![c, dead]).unwrap();
        let metrics = L4Metrics::default();
        let relay = TcpRelay::new(
            "l".into(),
            TcpProxy::to_cluster("up"),
            clusters.clone(),
            metrics.clone(),
        );
        let (mut client, near) = tokio::io::duplex(8);
        let activity = Activity::new();
        let task = tokio::spawn(async move { relay.relay(near, &activity).await });
        client.write_all(b"ping pong").await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            back, b"ping pong",
            "half-close carried, answer relayed back"
        );
        assert!(matches!(task.await.unwrap(), Ok(Relayed::Done)));
        server.await.unwrap();

        let mut refused = TcpProxy::to_cluster("dead");
        refused.max_connect_attempts = 2;
        let relay = TcpRelay::new("l".into(), refused, clusters, metrics.clone());
        let (_client, near) = tokio::io::duplex(8);
        let err = relay.relay(near, &Activity::new()).await.unwrap_err();
        assert!(
            matches!(err, MeshError::UpstreamConnect { endpoint, .. } if endpoint == gone_addr),
            "{err}"
        );
        assert_eq!(
            metrics.tcp_connect_failures_for("l", "dead"),
            2,
            "each attempt counted"
        );
    }

    /// An upstream that never reads: the relay stops reading the client once the buffers on
    /// the way are full, so the client is held back instead of the proxy buffering without
    /// bound.
    #[tokio::test]
    async fn a_stalled_upstream_backpressures_the_client() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let stalled = tokio::spawn(async move {
            let (s, _) = up.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let clusters = ClusterManager::new();
        let mut c = mesh_core::Cluster::new("up");
        c.load_assignment = Some(mesh_core::ClusterLoadAssignment::from_addrs(
            "up",
            [up_addr],
        ));
        mesh_core::Reload::reload(&clusters, vec![c]).unwrap();
        let relay = TcpRelay::new(
            "l".into(),
            TcpProxy::to_cluster("up"),
            clusters,
            L4Metrics::default(),
        );
        let (mut client, near) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { relay.relay(near, &Activity::new()).await });
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&written);
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            loop {
                if client.write_all(&chunk).await.is_err() {
                    return;
                }
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        let held = written.load(std::sync::atomic::Ordering::Relaxed);
        // The duplex, the relay's 16 KiB and the kernel's socket buffers (a few MB on
        // loopback): far below what an unbounded relay would have taken in 800 ms.
        assert!(held < 32 << 20, "{held} bytes accepted from the client");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            written.load(std::sync::atomic::Ordering::Relaxed) - held < 1 << 20,
            "still taking bytes: not held back"
        );
        writer.abort();
        task.abort();
        stalled.abort();
    }
}
