//! `mesh-sidecar`: the two-listener sidecar.
//!
//! Static mode: `mesh-sidecar [--config sidecar.yaml]` (no file: the seed default, outbound :8082
//! → inbound :8083 → local app 127.0.0.1:6060). SIGTERM or SIGINT stops accepting, drains
//! in-flight requests up to the drain deadline and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;

/// The mesh sidecar.
#[derive(Debug, Parser)]
#[command(name = "mesh-sidecar", version, about)]
struct Args {
    /// Bootstrap YAML (listeners, routes, clusters, endpoints in mesh-core's model). Without it,
    /// the seed default: outbound :8082 → inbound :8083 → local app 127.0.0.1:6060.
    #[arg(long, short = 'c', env = "MESH_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Admin endpoint address (overrides the bootstrap's `admin`).
    #[arg(long, env = "MESH_ADMIN")]
    admin: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let boot = match &args.config {
        Some(path) => Bootstrap::load(path),
        None => Ok(Bootstrap::seed_default()),
    };
    let mut boot = match boot {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mesh-sidecar: config refused: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(admin) = args.admin {
        boot.admin = admin;
    }
    let sidecar = match Sidecar::start_static(boot).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mesh-sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(admin = %sidecar.admin_addr(), listeners = ?sidecar.listeners().addresses(), "mesh-sidecar running");
    wait_for_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    sidecar.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM (what orchestrators send) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
