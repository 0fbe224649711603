//! Dynamic sidecars configured by our own control plane (mesh.yaml source, ADS): traffic
//! crosses both hops once `/ready`, a config change under load loses no request, and a listener
//! moved by LDS closes its old port and opens the new one.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::client::AdsMode;
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::{FileSource, ReloadStatus};

fn mesh_yaml(
    app: SocketAddr,
    hello_inbound: u16,
    client_out: u16,
    client_in: u16,
    timeout: &str,
) -> String {
    format!(
        r#"
services:
  - name: hello
    timeout: {timeout}
    endpoints:
      - address: 127.0.0.1:{hello_inbound}
nodes:
  - id: hello-1
    service: hello
    listeners: {{ outbound: 127.0.0.1:{unused}, inbound: 127.0.0.1:{hello_inbound}, local_app: {app} }}
  - id: client-1
    listeners: {{ outbound: 127.0.0.1:{client_out}, inbound: 127.0.0.1:{client_in}, local_app: 127.0.0.1:1 }}
"#,
        unused = mesh_testkit::free_port(),
    )
}

async fn wait_ready(s: &Sidecar) {
    let admin = s.admin_addr();
    let ok = tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
            matches!(mesh_testkit::http_get(admin, "/ready"), Ok((200, _))).then_some(())
        })
    })
    .await
    .unwrap();
    assert!(ok.is_some(), "sidecar never became ready");
}

fn call(addr: SocketAddr) -> Result<(u16, String), String> {
    mesh_testkit::http_request(addr, "GET", "/", &[("Host", "hello")], b"")
        .map(|r| (r.status, r.text()))
        .map_err(|e| format!("{e:#}"))
}

async fn edit(
    path: &std::path::Path,
    status: &mut tokio::sync::watch::Receiver<ReloadStatus>,
    yaml: String,
) -> ReloadStatus {
    status.borrow_and_update();
    std::fs::write(path, yaml).unwrap();
    tokio::time::timeout(Duration::from_secs(5), status.changed())
        .await
        .unwrap()
        .unwrap();
    status.borrow().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_sidecars_follow_the_control_plane_without_losing_requests() {
    let app = mesh_examples_free_app().await;
    let p = mesh_testkit::free_ports(5);
    let (hello_in, client_out, client_in, client_out2) = (p[0], p[1], p[2], p[3]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, mesh_yaml(app, hello_in, client_out, client_in, "5s")).unwrap();

    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let source = FileSource::new(&path, cache.clone());
    let mut status = source.status();
    let source_task = source.spawn(Duration::from_millis(50)).unwrap();
    let (xds_addr, xds_task) = XdsServer::new(cache.clone())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let start = |node: &str, admin: u16, mode: AdsMode| {
        let mut o = DynamicOptions::new(vec![format!("http://{xds_addr}")], node);
        o.admin = SocketAddr::from(([127, 0, 0, 1], admin));
        o.mode = mode;
        o.drain_timeout = Duration::from_secs(2);
        Sidecar::start_dynamic(o)
    };
    let admins = mesh_testkit::free_ports(2);
    let hello = start("hello-1", admins[0], AdsMode::Sotw).await.unwrap();
    let client = start("client-1", admins[1], AdsMode::Delta).await.unwrap();
    wait_ready(&hello).await;
    wait_ready(&client).await;

    let out = SocketAddr::from(([127, 0, 0, 1], client_out));
    let (code, body) = tokio::task::spawn_blocking(move || {
        // The last listener of the chain may bind a moment after /ready; retry briefly.
        mesh_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            call(out).ok().filter(|r| r.0 == 200)
        })
        .unwrap_or_else(|| call(out).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "hello world from app\n"),
        "app → outbound → inbound → app"
    );

    // A load loop across a config change: no request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                    match call(out) {
                        Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = edit(
        &path,
        &mut status,
        mesh_yaml(app, hello_in, client_out, client_in, "7s"),
    )
    .await;
    assert!(s.last_error.is_none(), "{s:?}");
    // An invalid edit is refused and the old config keeps serving.
    let s = edit(
        &path,
        &mut status,
        "services: [ { name: hello, lb_policy: sideways } ]".into(),
    )
    .await;
    assert!(s.last_error.is_some(), "{s:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 20, "load ran: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reconfiguration",
        ok + failed
    );

    // LDS moves the client's outbound listener: the old port closes, the new one serves.
    let s = edit(
        &path,
        &mut status,
        mesh_yaml(app, hello_in, client_out2, client_in, "7s"),
    )
    .await;
    assert!(s.last_error.is_none(), "{s:?}");
    let out2 = SocketAddr::from(([127, 0, 0, 1], client_out2));
    let moved = tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            (std::net::TcpStream::connect(out).is_err() && matches!(call(out2), Ok((200, _))))
                .then_some(())
        })
    })
    .await
    .unwrap();
    assert!(moved.is_some(), "listener did not move to {out2}");

    let (code, dump) = mesh_testkit::http_get(client.admin_addr(), "/stats/prometheus").unwrap();
    assert_eq!(code, 200);
    assert!(dump.contains("mesh_xds_connected 1"), "{dump}");
    // ACK and NACK counts only grow: counters, with the `_total` suffix (the classic text
    // format names the family after its samples).
    assert!(
        dump.contains("# TYPE mesh_xds_acks_total counter"),
        "{dump}"
    );
    assert!(
        dump.contains("# TYPE mesh_xds_nacks_total counter"),
        "{dump}"
    );
    assert!(
        dump.contains(
            "mesh_xds_acks_total{type_url=\"type.googleapis.com/envoy.config.listener.v3.Listener\"}"
        ),
        "{dump}"
    );

    hello.shutdown().await;
    client.shutdown().await;
    source_task.abort();
    xds_task.abort();
}

/// The demo's hello app on a free port.
async fn mesh_examples_free_app() -> SocketAddr {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |_req: http::Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from_static(b"hello world from app\n"),
                        )))
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
