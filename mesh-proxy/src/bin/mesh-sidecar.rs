//! `mesh-sidecar`: the two-listener sidecar.
//!
//! - static: `mesh-sidecar [--config sidecar.yaml]` (no file: the seed default, outbound 127.0.0.1:8082
//!   → inbound :8083 → local app 127.0.0.1:6060);
//! - dynamic: `mesh-sidecar --xds http://127.0.0.1:18000[,..] --node-id ID [--node-cluster C]`:
//!   listeners, routes, clusters and endpoints come from the xDS control plane (ours or any
//!   other serving the subset we support). With `--xds-ca ca.pem` the stream is TLS (addresses
//!   `https://`, or bare `host:port`), `--xds-cert`/`--xds-key` add a client certificate (mTLS)
//!   and `--xds-server-name` the name to verify instead of the address's host.
//!
//! Tracing (either mode): `--otlp-endpoint http://127.0.0.1:4317` exports a span per request
//! and listener over OTLP/gRPC (inbound: SERVER spans, outbound: CLIENT spans), continuing the
//! request's W3C `traceparent`; `--trace-sampling 0.01` samples 1 % of new traces (a sampled
//! parent is always followed).
//! `--access-log[=PATH]` writes one line per request of both listeners to PATH (no value, or
//! `-`: standard output), as Envoy's default text or, with `--access-log-format json`, as JSON;
//! a listener whose own config (LDS `access_log`, or `access_log:` in the bootstrap) names a log
//! writes to that one instead. With the access log on standard output, the sidecar's own log
//! goes to standard error.
//!
//! SIGTERM or SIGINT stops accepting, drains in-flight requests up to the drain deadline and
//! exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_core::{AccessLog, AccessLogFormat};
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::{DynamicOptions, RegistryOptions, Sidecar, SidecarError};
use mesh_telemetry::TracingOptions;
use mesh_xds::client::XdsTls;

/// The mesh sidecar.
#[derive(Debug, Parser)]
#[command(name = "mesh-sidecar", version, about)]
struct Args {
    /// Bootstrap YAML (listeners, routes, clusters, endpoints in mesh-core's model). Without it,
    /// the seed default: outbound 127.0.0.1:8082 → inbound :8083 → local app 127.0.0.1:6060.
    #[arg(long, short = 'c', env = "MESH_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Admin endpoint address (overrides the bootstrap's `admin`; default 127.0.0.1:15000).
    #[arg(long, env = "MESH_ADMIN")]
    admin: Option<SocketAddr>,
    /// Dynamic mode: control-plane addresses, comma-separated, tried in order on failure.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "config",
        requires = "node_id"
    )]
    xds: Vec<String>,
    /// This node's id (dynamic mode).
    #[arg(long)]
    node_id: Option<String>,
    /// This node's cluster / service name (dynamic mode).
    #[arg(long)]
    node_cluster: Option<String>,
    /// Use incremental (delta) xDS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// Persist the last accepted xDS config here, and serve it at once after a restart.
    #[arg(long)]
    persist: Option<PathBuf>,
    /// TLS to the control plane: the CA certificate (PEM) that signs its certificate. Bare
    /// `--xds` addresses then mean `https://`.
    #[arg(long, requires = "xds")]
    xds_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the control plane (mTLS; with --xds-key).
    #[arg(long, requires_all = ["xds_ca", "xds_key"])]
    xds_cert: Option<PathBuf>,
    /// Private key (PEM) of --xds-cert.
    #[arg(long, requires_all = ["xds_ca", "xds_cert"])]
    xds_key: Option<PathBuf>,
    /// The name the control plane's certificate must carry (default: the address's host).
    #[arg(long, requires = "xds_ca")]
    xds_server_name: Option<String>,
    /// Registry (etcd URL) for the registration API (`POST /pub`, `/unpub`, `/sub`, `/unsub`).
    #[arg(long, requires = "xds")]
    registry: Option<String>,
    /// Key prefix in the registry (the control plane's `--prefix`).
    #[arg(long, default_value = "/mesh")]
    registry_prefix: String,
    /// Lease TTL of publications, in seconds: a dead sidecar's entries vanish after it.
    #[arg(long, default_value_t = 10)]
    registry_ttl: u64,
    /// Export spans over OTLP/gRPC to this collector (`http://127.0.0.1:4317`); no tracing
    /// without it.
    #[arg(long, env = "MESH_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The share of new traces sampled, 0.0 to 1.0 (a sampled parent is always followed).
    #[arg(long, default_value_t = 1.0, requires = "otlp_endpoint")]
    trace_sampling: f64,
    /// The spans' `service.name` (default: --node-cluster, else --node-id, else mesh-sidecar).
    #[arg(long, requires = "otlp_endpoint")]
    trace_service_name: Option<String>,
    /// Access log of both listeners: one line per request, appended to PATH (`-`, or no value:
    /// standard output). Off by default.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "-")]
    access_log: Option<String>,
    /// The access log's format: Envoy's default text format, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, requires = "access_log")]
    access_log_format: LogFormat,
    /// Seconds a new or updated listener or cluster waits for its route table, clusters or
    /// endpoints before it goes live with what it has (Envoy's `initial_fetch_timeout`); 0 waits
    /// for ever.
    #[arg(long, default_value_t = 15, requires = "xds")]
    initial_fetch_timeout: u64,
}

/// `--access-log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Envoy's default format string.
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// The sidecar-wide access log the flags ask for.
    fn access_log(&self) -> Vec<AccessLog> {
        let format = match self.access_log_format {
            LogFormat::Text => AccessLogFormat::Text,
            LogFormat::Json => AccessLogFormat::Json,
        };
        self.access_log
            .iter()
            .map(|path| AccessLog::new(path.as_str(), format))
            .collect()
    }

    /// The tracing options the flags ask for.
    fn tracing(&self) -> Option<TracingOptions> {
        let endpoint = self.otlp_endpoint.as_ref()?;
        let service = self
            .trace_service_name
            .as_ref()
            .or(self.node_cluster.as_ref())
            .or(self.node_id.as_ref())
            .map_or("mesh-sidecar", String::as_str);
        Some(
            TracingOptions::new(endpoint)
                .sampling_ratio(self.trace_sampling)
                .service_name(service),
        )
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let access_log = args.access_log();
    let logs_to_stdout = access_log
        .iter()
        .any(|l| l.path == mesh_core::ACCESS_LOG_STDOUT);
    let subscriber = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    // Access-log lines on stdout stay parseable: the sidecar's own log moves out of their way.
    if logs_to_stdout {
        subscriber.with_writer(std::io::stderr).init();
    } else {
        subscriber.init();
    }
    if !args.xds.is_empty() {
        let xds = args
            .xds
            .iter()
            .map(|a| match (a.contains("://"), args.xds_ca.is_some()) {
                (true, _) => a.clone(),
                (false, true) => format!("https://{a}"),
                (false, false) => format!("http://{a}"),
            })
            .collect();
        let mut opts = DynamicOptions::new(xds, args.node_id.clone().unwrap_or_default());
        opts.node_cluster = args.node_cluster.clone();
        opts.persist = args.persist.clone();
        opts.xds_tls = args.xds_ca.as_ref().map(|ca| {
            let mut tls = XdsTls::new().ca_file(ca);
            if let (Some(cert), Some(key)) = (&args.xds_cert, &args.xds_key) {
                tls = tls.identity_files(cert, key);
            }
            if let Some(name) = &args.xds_server_name {
                tls = tls.domain_name(name);
            }
            tls
        });
        opts.registry = args.registry.as_ref().map(|url| RegistryOptions {
            url: url.clone(),
            prefix: args.registry_prefix.clone(),
            ttl: std::time::Duration::from_secs(args.registry_ttl),
        });
        opts.initial_fetch_timeout = (args.initial_fetch_timeout > 0)
            .then(|| std::time::Duration::from_secs(args.initial_fetch_timeout));
        if args.delta {
            opts.mode = mesh_xds::client::AdsMode::Delta;
        }
        if let Some(admin) = args.admin {
            opts.admin = admin;
        }
        opts.tracing = args.tracing();
        opts.access_log = access_log;
        return run(Sidecar::start_dynamic(opts).await).await;
    }
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
    boot.tracing = args.tracing();
    if !access_log.is_empty() {
        boot.access_log = access_log;
    }
    run(Sidecar::start_static(boot).await).await
}

async fn run(started: Result<Sidecar, SidecarError>) -> ExitCode {
    let sidecar = match started {
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
