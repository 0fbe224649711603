//! The sidecar the HTTP-edge property tests talk to: one long-lived instance per test
//! process, on a runtime of its own whose threads are named so that a panic in them is counted,
//! in front of an app that answers 200 with the length of the body it read.
#![allow(clippy::unwrap_used, dead_code)]

pub mod h2;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use proptest::test_runner::{Config, TestRunner};

/// No single exchange may take longer: a hang fails the case.
pub const CASE_BOUND: Duration = Duration::from_secs(3);
/// A normal request is checked after this many cases.
pub const LIVENESS_EVERY: u64 = 25;
/// The streaming body limit of the listener (a chunked body past it gets 413).
pub const MAX_BODY: usize = 4096;

/// The sidecar every case talks to, on a runtime of its own whose threads are named so that a
/// panic in them is counted.
pub struct Edge {
    pub rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    _sidecar: Sidecar,
}

static PANICS: AtomicU64 = AtomicU64::new(0);
const THREAD: &str = "edge-sidecar";

/// The sidecar, started on first use (and the panic hook with it).
pub fn edge() -> &'static Edge {
    static EDGE: OnceLock<Edge> = OnceLock::new();
    EDGE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(THREAD))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(THREAD)
            .enable_all()
            .build()
            .unwrap();
        let sidecar = rt.block_on(async {
            let app = start_app().await;
            let p = mesh_testkit::free_ports(2);
            let yaml = format!(
                r#"
admin: 127.0.0.1:{admin}
listeners:
  - name: edge
    address: 127.0.0.1:{edge}
    direction: outbound
    http: {{ max_request_bytes: {MAX_BODY} }}
    route_config:
      name: edge
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - route: {{ cluster: app }}
clusters:
  - name: app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}" }} ] }} ] }}
"#,
                admin = p[0],
                edge = p[1],
            );
            let boot = Bootstrap::from_yaml(&yaml, Path::new("edge.yaml")).unwrap();
            Sidecar::start_static(boot).await.unwrap()
        });
        let addr = sidecar.listener_addr("edge").unwrap();
        Edge {
            rt,
            addr,
            _sidecar: sidecar,
        }
    })
}

/// The app: answers 200 with the length of the body it read (`Ok(n)`), or the read error.
async fn start_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                        let body = bytes::Bytes::from(format!("{n:?}"));
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

/// How many threads of the sidecar panicked so far.
pub fn panics() -> u64 {
    PANICS.load(Ordering::SeqCst)
}

/// A proptest runner of `cases` cases (`PROPTEST_CASES` overrides), persisting no failures.
pub fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}
