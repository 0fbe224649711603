//! A listener on a real loopback socket: protocol detection, the per-hop headers, the
//! protections (413, 431, 400 and the process keeps serving), the connection limit and drain.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::extensions::{ClientAddr, ListenerName};
use mesh_core::{body, Body, BoxError, HttpProtocolOptions};
use mesh_proxy::metrics::Metrics;
use mesh_proxy::server::{serve, ListenerSettings, StackService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;

/// Echoes what the edge handed the stack: headers and extensions, after an optional delay.
fn echo_stack() -> StackService {
    BoxCloneService::new(tower::service_fn(|req: Request<Body>| async move {
        let delay = req
            .headers()
            .get("x-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let h = req.headers();
        let text = format!(
            "version={:?} xff={:?} rid={} tp={} te={:?} conn_hdr={} client={} listener={}",
            req.version(),
            h.get("x-forwarded-for"),
            h.contains_key("x-request-id"),
            h.contains_key("traceparent"),
            h.get("te"),
            h.contains_key("x-hop"),
            req.extensions().get::<ClientAddr>().is_some(),
            req.extensions()
                .get::<ListenerName>()
                .map(|l| l.0.to_string())
                .unwrap_or_default(),
        );
        let body = req.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>(Response::new(body::full(format!(
            "{text} body={}",
            body.len()
        ))))
    }))
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(http: HttpProtocolOptions, max_connections: usize) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let settings = ListenerSettings {
        name: Arc::from("test"),
        http,
        connections: Arc::new(mesh_proxy::limit::ConnectionLimit::new(max_connections)),
        traced: false,
        l4: Default::default(),
    };
    let task = tokio::spawn(serve(
        listener,
        settings,
        echo_stack(),
        Metrics::register(&mut registry),
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    Running {
        addr,
        shutdown,
        task,
    }
}

async fn get(addr: SocketAddr, http2: bool, req: Request<Full<Bytes>>) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<Full<Bytes>>();
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{addr}{path}").parse().unwrap();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(Request::from_parts(parts, body)),
    )
    .await
    .expect("request timed out")
    .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

#[tokio::test]
async fn detects_http1_and_h2c_and_does_the_per_hop_work() {
    let l = start(HttpProtocolOptions::default(), 100).await;
    let mut r = req("/");
    r.headers_mut()
        .insert("connection", "x-hop".parse().unwrap());
    r.headers_mut().insert("x-hop", "1".parse().unwrap());
    r.headers_mut()
        .insert("x-forwarded-for", "10.1.2.3".parse().unwrap());
    let (status, text) = get(l.addr, false, r).await;
    assert_eq!(status, 200);
    assert!(text.starts_with("version=HTTP/1.1"), "{text}");
    assert!(text.contains("xff=Some(\"10.1.2.3, 127.0.0.1\")"), "{text}");
    assert!(text.contains("rid=true tp=true"), "{text}");
    assert!(
        text.contains("conn_hdr=false client=true listener=test"),
        "{text}"
    );

    let mut r = req("/");
    r.headers_mut().insert("te", "trailers".parse().unwrap());
    let (status, text) = get(l.addr, true, r).await;
    assert_eq!(status, 200);
    assert!(text.starts_with("version=HTTP/2.0"), "{text}");
    assert!(
        text.contains("te=Some(\"trailers\")"),
        "gRPC's te: trailers survives: {text}"
    );
    l.shutdown.cancel();
    l.task.await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_get_413_by_length_and_while_streaming() {
    let http = HttpProtocolOptions {
        max_request_bytes: 1000,
        ..Default::default()
    };
    let l = start(http, 100).await;
    let big = Request::post("/")
        .body(Full::new(Bytes::from(vec![b'x'; 2000])))
        .unwrap();
    let (status, text) = get(l.addr, false, big).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("mesh proxy: request body over the 1000-byte limit"),
        "{text}"
    );
    let ok = Request::post("/")
        .body(Full::new(Bytes::from(vec![b'x'; 999])))
        .unwrap();
    assert_eq!(
        get(l.addr, false, ok).await.1.split(' ').next_back(),
        Some("body=999")
    );

    // Chunked, so no content-length: the limit trips while the stack reads the body.
    let mut s = TcpStream::connect(l.addr).await.unwrap();
    let chunk = "x".repeat(800);
    let raw = format!(
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn huge_headers_get_431_and_garbage_gets_400_and_serving_goes_on() {
    let http = HttpProtocolOptions {
        max_request_headers_kb: 8,
        ..Default::default()
    };
    let l = start(http, 100).await;
    let mut s = TcpStream::connect(l.addr).await.unwrap();
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "y".repeat(20_000)
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    let mut s = TcpStream::connect(l.addr).await.unwrap();
    s.write_all(b"BLAH / HTTP/9.9 nonsense\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    assert_eq!(
        get(l.addr, false, req("/")).await.0,
        200,
        "the listener keeps serving"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let l = start(HttpProtocolOptions::default(), 1).await;
    // The first connection holds the only permit while its slow request runs.
    let mut first = TcpStream::connect(l.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-delay-ms: 300\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = TcpStream::connect(l.addr).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the second connection is closed without an answer");
    assert!(read_head(&mut first).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let l = start(HttpProtocolOptions::default(), 100).await;
    let mut slow = req("/");
    slow.headers_mut()
        .insert("x-delay-ms", "400".parse().unwrap());
    let addr = l.addr;
    let in_flight = tokio::spawn(async move { get(addr, false, slow).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    l.shutdown.cancel();
    let (status, _) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the in-flight request finished");
    tokio::time::timeout(Duration::from_secs(5), l.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port is closed after the drain"
    );
}

#[tokio::test]
async fn admin_serves_health_readiness_metrics_and_config_dump() {
    use mesh_proxy::admin::Admin;
    use std::sync::atomic::Ordering;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.record_mesh_error("outbound", "no_route");
    let admin = Admin::new(
        registry,
        Arc::new(|| {
            let mut dump = mesh_xds::config_dump::ConfigDump::default();
            dump.listeners
                .static_entries
                .push(mesh_xds::config_dump::DumpEntry::of(
                    "outbound",
                    &serde_json::json!({"name": "outbound"}),
                    None,
                    None,
                ));
            dump
        }),
    );
    let ready = admin.ready_flag();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(admin.serve(listener, stop.clone()));

    assert_eq!(
        get(addr, false, req("/healthz")).await,
        (200, "ok\n".into())
    );
    assert_eq!(get(addr, false, req("/ready")).await.0, 503);
    ready.store(true, Ordering::Release);
    assert_eq!(get(addr, false, req("/ready")).await.0, 200);
    let (status, text) = get(addr, false, req("/stats/prometheus")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"mesh_local_replies_total{listener="outbound",code="no_route"} 1"#),
        "{text}"
    );
    let (status, text) = get(addr, false, req("/config_dump")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["configs"][0]["static_listeners"][0]["listener"]["name"],
        "outbound"
    );
    let (status, text) = get(addr, false, req("/config_dump?resource=nope")).await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = get(addr, false, req("/config_dump?name_regex=(")).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(get(addr, false, req("/nope")).await.0, 404);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let http = HttpProtocolOptions {
        request_headers_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let l = start(http, 100).await;
    // Slowloris: headers that never finish.
    let mut s = TcpStream::connect(l.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("not closed")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // Idle keep-alive: one request, then silence. (hyper's header timeout also covers the wait
    // for the next HTTP/1 request, so give this listener a long one to see our idle timer.)
    let http = HttpProtocolOptions {
        request_headers_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let l = start(http, 100).await;
    let mut s = TcpStream::connect(l.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("idle connection kept")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );

    // A slow request in flight is not idle.
    let mut slow = req("/");
    slow.headers_mut()
        .insert("x-delay-ms", "900".parse().unwrap());
    assert_eq!(get(l.addr, false, slow).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_floods_are_cut_off_and_others_keep_being_served() {
    let l = start(HttpProtocolOptions::default(), 100).await;
    let tcp = TcpStream::connect(l.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    // CVE-2023-44487: open streams and reset them at once, as fast as possible.
    let mut sent = 0;
    for _ in 0..5_000 {
        let ready = tokio::time::timeout(Duration::from_secs(5), client.clone().ready()).await;
        let Ok(Ok(mut ready)) = ready else { break };
        let req = Request::get(format!("http://{}/", l.addr))
            .body(())
            .unwrap();
        match ready.send_request(req, false) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
        client = ready;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_task).await;
    let err = ended
        .expect("the flooding connection was not closed")
        .unwrap()
        .unwrap_err();
    // The server sends GOAWAY(ENHANCE_YOUR_CALM) and closes; a client still writing may see the
    // closed socket (broken pipe / reset) before it reads the GOAWAY. Either way it was cut off.
    let cut_off = (err.is_go_away() && err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
        || err.get_io().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        });
    assert!(cut_off, "{err:?} after {sent} resets");
    assert!(sent < 5_000, "cut off after {sent} resets");
    // Everyone else is still served.
    assert_eq!(get(l.addr, true, req("/")).await.0, 200);
}
