//! Connection floods on a real loopback listener (issue #18): silent clients and half-sent
//! HTTP/2 prefaces are closed at the handshake (detection) timeout, idle connections are shed
//! oldest first at the process-wide connection limit so a legitimate client still gets in, and
//! each close is counted by reason.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use mesh_core::{body, Body, BoxError, Detection, HttpProtocolOptions};
use mesh_proxy::accept::L4Settings;
use mesh_proxy::limit::ConnectionLimit;
use mesh_proxy::metrics::Metrics;
use mesh_proxy::metrics_l4::CloseReason;
use mesh_proxy::server::{serve, ListenerSettings, StackService};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;

/// The sidecar's default connection limit (`SidecarConfig::max_connections`).
const DEFAULT_LIMIT: usize = 10_000;

/// Answers 200, after `x-delay-ms` if the request asks for a delay.
fn ok_stack() -> StackService {
    BoxCloneService::new(tower::service_fn(|req: Request<Body>| async move {
        let delay = req
            .headers()
            .get("x-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok::<_, BoxError>(Response::new(body::full("ok")))
    }))
}

struct Running {
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(max_connections: usize, detection_timeout: Option<Duration>) -> Running {
    start_with(
        max_connections,
        detection_timeout,
        HttpProtocolOptions::default(),
    )
    .await
}

async fn start_with(
    max_connections: usize,
    detection_timeout: Option<Duration>,
    http: HttpProtocolOptions,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let mut l4 = L4Settings::default();
    if let Some(t) = detection_timeout {
        l4.detection = Detection {
            timeout: t,
            ..Default::default()
        };
    }
    let settings = ListenerSettings {
        name: Arc::from("flood"),
        http,
        connections: Arc::new(ConnectionLimit::new(max_connections)),
        traced: false,
        l4,
    };
    tokio::spawn(serve(
        listener,
        settings,
        ok_stack(),
        metrics.clone(),
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    Running {
        addr,
        metrics,
        shutdown,
    }
}

/// Sends one HTTP/1.1 request on `s` and returns the status line.
async fn request(s: &mut TcpStream, extra: &str) -> String {
    s.write_all(format!("GET / HTTP/1.1\r\nhost: a\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Waits (at most `within`) for the server to close `s`; true if it did.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or GOAWAY before the close is fine.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn idle_connections_are_shed_oldest_first_at_the_limit() {
    let l = start(10, None).await;
    // Ten keep-alive connections, each done with one request: the limit is full of idle ones.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        assert!(request(&mut s, "").await.starts_with("HTTP/1.1 200"));
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The eleventh is admitted; the one idle longest (the first) is closed for it.
    let mut new = TcpStream::connect(l.addr).await.unwrap();
    assert!(request(&mut new, "").await.starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle[0], Duration::from_secs(2)).await);
    for s in &mut idle[1..] {
        assert!(
            !closed_within(s, Duration::from_millis(20)).await,
            "only the oldest is shed"
        );
    }
    assert_eq!(l.metrics.l4().closed_for("flood", CloseReason::ShedIdle), 1);
    assert_eq!(
        l.metrics.l4().closed_for("flood", CloseReason::OverLimit),
        0
    );
}

#[tokio::test]
async fn busy_connections_are_not_shed_and_the_new_one_is_refused() {
    let l = start(2, None).await;
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-delay-ms: 600\r\n\r\n")
            .await
            .unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = TcpStream::connect(l.addr).await.unwrap();
    let _ = refused
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await;
    assert!(closed_within(&mut refused, Duration::from_secs(2)).await);
    for s in &mut busy {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "in-flight requests finish"
        );
    }
    assert_eq!(
        l.metrics.l4().closed_for("flood", CloseReason::OverLimit),
        1
    );
    assert_eq!(l.metrics.l4().closed_for("flood", CloseReason::ShedIdle), 0);
}

#[tokio::test]
async fn the_per_address_cap_closes_the_extra_connections_of_one_address() {
    let http = HttpProtocolOptions {
        max_connections_per_ip: Some(3),
        ..Default::default()
    };
    let l = start_with(100, None, http).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        assert!(request(&mut s, "").await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut fourth = TcpStream::connect(l.addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await);
    assert_eq!(
        l.metrics.l4().closed_for("flood", CloseReason::PerIpLimit),
        1
    );
    // One of the three closes: its slot is free again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn partial_h2_prefaces_are_closed_at_the_handshake_timeout() {
    // The default detection (handshake) timeout: 1 s.
    let l = start(100, None).await;
    let sends: [&[u8]; 3] = [
        b"",
        b"PRI * HTTP",
        // The whole preface but no SETTINGS.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    for sent in sends {
        let mut s = TcpStream::connect(l.addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await,
            "{sent:?} held open"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
            "{sent:?} closed after {took:?}"
        );
    }
    assert_eq!(
        l.metrics
            .l4()
            .closed_for("flood", CloseReason::HandshakeTimeout),
        3
    );
}

/// Where the flood test's server runs: a child process (this test binary again), so that the
/// 10,050 client sockets and the server's 10,000 fit the per-process file limit.
const CHILD_ENV: &str = "MESH_FLOOD_SERVER";

/// The flood test server's handshake timeout: long enough that all 10,050 connections are open
/// before the first is timed out, even when earlier tests left ~20,000 loopback sockets in
/// TIME_WAIT and each connect() searches long for a free port (8 s was not always enough).
const FLOOD_TIMEOUT: Duration = Duration::from_secs(15);

/// The flood: 10,050 connections that send nothing against the default limit. The server
/// (in a child process) uses a 15 s handshake timeout, so the limit is reached even on a slow
/// machine; a legitimate request then gets its 200 within a second (an idle silent connection
/// is shed for it), and every silent connection is closed by the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_connections_do_not_lock_out_a_client() {
    const SILENT: usize = DEFAULT_LIMIT + 50;
    const TIMEOUT: Duration = FLOOD_TIMEOUT;
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "flood_server_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the server child did not start")
            .unwrap()
            .expect("the server child exited");
        // The harness may print `test … ...` on the same line first.
        if let Some((_, a)) = line.split_once("FLOOD_ADDR ") {
            break a.trim().parse().unwrap();
        }
    };

    let started = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .unwrap();
        silent.push((s, Instant::now()));
    }
    let flood_took = started.elapsed();
    assert!(
        flood_took < TIMEOUT,
        "opening the flood took {flood_took:?}, longer than the handshake timeout"
    );

    // The legitimate client, while the flood holds every permit.
    let legit = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(1), request(&mut s, ""))
        .await
        .expect("no answer within 1 s");
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    let legit_took = legit.elapsed();
    drop(s);

    // Every silent connection is closed by the timeout (plus slack for a busy machine).
    let mut readers = tokio::task::JoinSet::new();
    for (mut s, at) in silent {
        readers.spawn(async move {
            let deadline = at + TIMEOUT + Duration::from_secs(3);
            let left = deadline.saturating_duration_since(Instant::now());
            closed_within(&mut s, left).await
        });
    }
    let mut closed = 0;
    while let Some(r) = readers.join_next().await {
        closed += usize::from(r.unwrap());
    }
    // Ask the child for its counts, then end it.
    drop(child.stdin.take());
    let mut counts = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
    {
        if let Some((_, c)) = line.split_once("FLOOD_COUNTS ") {
            counts = c.to_owned();
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    eprintln!(
        "flood of {SILENT} opened in {flood_took:?}; legitimate 200 in {legit_took:?}; \
         {closed} closed; server counts: {counts}"
    );
    assert_eq!(closed, SILENT, "silent connections left open");
    let shed: usize = counts
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("shed_idle="))
        .expect("no counts from the child")
        .parse()
        .unwrap();
    assert!(
        shed > 50,
        "the limit was reached and idle ones shed: {counts}"
    );
}

/// Not a test by itself: the flood test's server, run in a child process (see
/// [`CHILD_ENV`]); without the variable it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_server_child_process() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let l = start(DEFAULT_LIMIT, Some(FLOOD_TIMEOUT)).await;
    println!("FLOOD_ADDR {}", l.addr);
    // Serve until the parent closes stdin.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 16];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    let m = l.metrics.l4();
    println!(
        "FLOOD_COUNTS shed_idle={} over_limit={} handshake_timeout={}",
        m.closed_for("flood", CloseReason::ShedIdle),
        m.closed_for("flood", CloseReason::OverLimit),
        m.closed_for("flood", CloseReason::HandshakeTimeout),
    );
}
