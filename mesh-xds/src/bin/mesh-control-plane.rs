//! `mesh-control-plane`: the xDS control plane, serving a `mesh.yaml` (hot reloaded) or etcd
//! registrations to sidecars, real Envoy and proxyless gRPC clients.
//!
//! ```text
//! mesh-control-plane --config mesh.yaml --listen 0.0.0.0:18000 --admin 127.0.0.1:19000
//! mesh-control-plane --etcd http://127.0.0.1:2379 --prefix /mesh [--config base.yaml]
//! mesh-control-plane --config mesh.yaml --tls-cert cp.pem --tls-key cp-key.pem [--client-ca ca.pem]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::config::core::v3::Node;
use mesh_xds::server::{admin, mesh_core_validator, Metrics, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;
#[cfg(feature = "etcd")]
use mesh_xds::source::{EtcdSource, MeshSpec};
use mesh_xds::tls::ServerTls;

/// The xDS control plane of the mesh.
#[derive(Debug, Parser)]
#[command(name = "mesh-control-plane", version)]
struct Args {
    /// The mesh file (hot reloaded); with --etcd, the base spec the registrations join.
    #[arg(long, env = "MESH_CONFIG")]
    config: Option<PathBuf>,
    /// etcd endpoints (comma-separated, `host:port` or `http://host:port`).
    #[arg(long, env = "MESH_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix of the registrations in etcd.
    #[arg(long, default_value = "/mesh")]
    prefix: String,
    /// Address of the xDS gRPC server.
    #[arg(long, default_value = "0.0.0.0:18000")]
    listen: SocketAddr,
    /// Address of the admin endpoint (/snapshots, /config_dump?node=ID, /metrics, /healthz).
    #[arg(long, default_value = "127.0.0.1:19000")]
    admin: SocketAddr,
    /// Most discovery streams open at once.
    #[arg(long, default_value_t = 100_000)]
    max_streams: usize,
    /// What snapshots are keyed by: the node id, or the node cluster (one per group).
    #[arg(long, value_enum, default_value_t = NodeKey::Id)]
    node_key: NodeKey,
    /// Serve xDS over TLS with this certificate (PEM; with --tls-key). Clients use https://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mTLS. Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// How often the mesh file is checked for changes.
    #[arg(long, default_value = "200ms", value_parser = humantime_duration)]
    poll: Duration,
    /// On SIGTERM or Ctrl-C: how long open xDS streams may stay before the process exits (new
    /// connections are refused and clients told GOAWAY at once; ADS streams never end by
    /// themselves, so the bound is what ends them).
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NodeKey {
    Id,
    Cluster,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let v: serde_json::Value = serde_json::Value::String(s.to_owned());
    #[derive(serde::Deserialize)]
    struct D(#[serde(with = "humantime_serde")] Duration);
    serde_json::from_value::<D>(v)
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.config.is_none() && args.etcd.is_empty() {
        bail!("give --config mesh.yaml and/or --etcd URL");
    }
    // TLS files are read before anything starts: a bad path fails at once.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = ServerTls::from_files(cert, key)?;
            Some(match &args.client_ca {
                Some(ca) => tls.client_ca_file(ca)?,
                None => tls,
            })
        }
        _ => None,
    };
    if !tls.as_ref().is_some_and(ServerTls::requires_client_cert) {
        // Without client certificates a node's id is a claim nobody checks: any client that
        // reaches the xDS port can ask for any node's workload certificate (see the README's
        // "Trust model").
        tracing::warn!(
            "xDS clients are not authenticated (no --client-ca): under `security:` every node's \
             workload certificate goes to whoever claims its node id (dev mode)"
        );
    }
    let cache = match args.node_key {
        NodeKey::Id => SnapshotCache::new(),
        NodeKey::Cluster => SnapshotCache::with_node_hash(Arc::new(|n: &Node| n.cluster.clone())),
    };
    cache.set_validator(mesh_core_validator());

    if args.etcd.is_empty() {
        let path = args.config.clone().context("--config")?;
        FileSource::new(&path, cache.clone())
            .spawn(args.poll)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    } else {
        spawn_etcd(&args, cache.clone())?;
    }

    let metrics = Arc::new(Metrics::new());
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("bind admin {}", args.admin))?;
    tracing::info!(addr = %admin_listener.local_addr()?, "admin endpoint");
    tokio::spawn(admin::serve(admin_listener, cache.clone(), metrics.clone()));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind xDS {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, tls = ?tls, "xDS server");
    let server = XdsServer::new(cache)
        .with_callbacks(metrics)
        .max_concurrent_streams(args.max_streams);
    // The signal starts a graceful shutdown (no new connections, GOAWAY to the open ones) and
    // the drain clock; the process exits 0 when the last stream is gone or the clock runs out.
    let drain_timeout = args.drain_timeout;
    let (signalled, drain_started) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!(?drain_timeout, "shutting down: draining xDS streams");
        let _ = signalled.send(());
    };
    let deadline = async move {
        if drain_started.await.is_ok() {
            tokio::time::sleep(drain_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let serve = async move {
        match tls {
            Some(tls) => server.serve_tls(listener, tls, shutdown).await,
            None => server.serve(listener, shutdown).await,
        }
    };
    tokio::select! {
        served = serve => served?,
        () = deadline => tracing::info!("drain deadline reached: closing the remaining streams"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (what orchestrators send) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Serves the registrations under `--prefix` in etcd, joined to the `--config` base spec.
#[cfg(feature = "etcd")]
fn spawn_etcd(args: &Args, cache: SnapshotCache) -> anyhow::Result<()> {
    let base = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            MeshSpec::load_str(&path.display().to_string(), &text)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .0
        }
        None => MeshSpec::default(),
    };
    let endpoints = args
        .etcd
        .iter()
        .map(|e| e.trim_start_matches("http://").to_owned())
        .collect();
    EtcdSource::new(endpoints, &args.prefix, cache)
        .with_base(base)
        .spawn();
    Ok(())
}

/// Built without the `etcd` feature: `--etcd` is refused with what to rebuild with.
#[cfg(not(feature = "etcd"))]
fn spawn_etcd(_args: &Args, _cache: SnapshotCache) -> anyhow::Result<()> {
    bail!(
        "--etcd: this mesh-control-plane was built without etcd support; \
         rebuild with `--features cli,etcd` (needs protoc)"
    )
}
