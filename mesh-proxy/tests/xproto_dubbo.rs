//! Dubbo through two sidecars with real peers: real consumers (npm `dubbo-remoting` through
//! `sofa-rpc-node`'s client, `tests/dubbo_peer.js`, and PyPI's `dubbo-ssl-python`,
//! `tests/dubbo_peer.py`) → sidecar A (outbound RPC listener) → sidecar B (inbound RPC
//! listener) → real `dubbo-remoting` providers. Shown: answers the provider computed from the
//! arguments, attachments reaching it; routing by interface, method and the `version` / `group`
//! attachments to two providers; 64 concurrent calls from 8 consumer connections over at most M
//! upstream connections per hop, answered out of order and matched back by id; an unknown
//! service gets dubbo's SERVICE_NOT_FOUND at once; a provider that never answers one call gets
//! SERVER_TIMEOUT after the listener's timeout while calls on the same and other connections are
//! served. With raw frames (no peers needed): the exact statuses and ids, a bad body answered
//! with BAD_REQUEST on a connection that goes on, heartbeats answered, read-only events not,
//! a malformed or oversize frame closing only its own connection (counted), and an upstream's
//! read-only event moving new requests to a new connection.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use mesh_testkit::{
    cluster_yaml, metric_sum, rpc_listener_yaml, until_closed, NodePackages, PeerServer,
    RawUpstream,
};
use mesh_xprotocol::dubbo::header::{Header, FLAG_EVENT, FLAG_REQUEST, FLAG_TWO_WAY, HESSIAN2};
use mesh_xprotocol::dubbo::hessian2::{write_string, Reader};
use mesh_xprotocol::dubbo::status;
use mesh_xprotocol::{DubboCodec, Frame, FrameKind, XCodec, XError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upstream connections per endpoint on both sidecars.
const M: u64 = 2;
const GREETER: &str = "org.example.Greeter";

fn script(name: &str) -> String {
    format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn provider(node: &NodePackages, port: u16, tag: &str) -> PeerServer {
    let mut cmd = node.command(script("dubbo_peer.js"));
    cmd.args(["server", &port.to_string(), tag]);
    PeerServer::start(cmd).unwrap()
}

/// Runs a peer to completion (bounded: 60 s) and parses its JSON lines.
async fn run_peer(mut cmd: tokio::process::Command) -> Vec<Value> {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the dubbo peer did not finish in 60 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: Result<Vec<Value>, _> = text.lines().map(serde_json::from_str).collect();
    parsed.unwrap_or_else(|e| panic!("{e}: {text} / {}", String::from_utf8_lossy(&out.stderr)))
}

/// The node consumer's one JSON line.
async fn node_peer(node: &NodePackages, args: &[&str]) -> Value {
    let mut cmd = tokio::process::Command::new(&node.node);
    cmd.arg(script("dubbo_peer.js"))
        .args(args)
        .env("NODE_PATH", &node.modules);
    run_peer(cmd).await.pop().unwrap_or_default()
}

/// A node call of `GREETER`'s `method` at `version` / `group`.
async fn node_call(node: &NodePackages, addr: &str, at: (&str, &str), method: &str) -> Value {
    let args = if method == "sayHello" {
        "[\"bob\"]"
    } else {
        "[]"
    };
    node_peer(node, &["call", addr, GREETER, at.0, at.1, method, args]).await
}

async fn stats(admin: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || mesh_testkit::http_get(admin, "/stats/prometheus"))
        .await
        .unwrap()
        .unwrap()
        .1
}

fn start_yaml(yaml: &str) -> Bootstrap {
    Bootstrap::from_yaml(yaml, Path::new("dubbo.yaml")).unwrap()
}

/// The `whoami` answer: what the provider saw (its tag, version, group and trace attachments).
fn whoami(answer: &Value) -> Value {
    let text = answer["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dubbo_consumers_and_providers_through_two_sidecars() {
    let Some(node) = mesh_testkit::require_node_packages(&["sofa-rpc-node", "dubbo-remoting"])
    else {
        return;
    };
    let Some(python) = mesh_testkit::require_dubbo_python() else {
        return;
    };
    let p = mesh_testkit::free_ports(6);
    let (blue_port, green_port, out, inb, admin_a, admin_b) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let blue = provider(&node, blue_port, "blue");
    let green = provider(&node, green_port, "green");

    // B routes by attachment (group green), by method and attachment (whoami at version
    // 2.0.0) and else by interface.
    let b_routes = format!(
        "              - {{ match: {{ prefix: \"/{GREETER}/\", headers: [ {{ name: group, exact: green }} ] }}, route: {{ cluster: green }} }}\n              - {{ match: {{ path: \"/{GREETER}/whoami\", headers: [ {{ name: version, exact: \"2.0.0\" }} ] }}, route: {{ cluster: green }} }}\n              - {{ match: {{ prefix: \"/{GREETER}/\" }}, route: {{ cluster: blue }} }}\n"
    );
    let b_yaml = format!(
        "admin: 127.0.0.1:{admin_b}\ndrain_timeout: 1s\nlisteners:{}\nclusters:\n{}{}",
        rpc_listener_yaml("rpc_in", inb, "dubbo", "5s", M, 1 << 20, &b_routes),
        cluster_yaml("blue", blue_port),
        cluster_yaml("green", green_port),
    );
    let a_routes = format!(
        "              - {{ match: {{ prefix: \"/{GREETER}/\" }}, route: {{ cluster: b_inbound }} }}\n"
    );
    let a_yaml = format!(
        "admin: 127.0.0.1:{admin_a}\ndrain_timeout: 1s\nlisteners:{}\nclusters:\n{}",
        rpc_listener_yaml("rpc_out", out, "dubbo", "1s", M, 1 << 20, &a_routes),
        cluster_yaml("b_inbound", inb),
    );
    let b = Sidecar::start_static(start_yaml(&b_yaml)).await.unwrap();
    let a = Sidecar::start_static(start_yaml(&a_yaml)).await.unwrap();
    let addr = format!("127.0.0.1:{out}");

    // The provider's answer to the arguments, and the attachments as they reached it.
    let r = node_call(&node, &addr, ("1.0.0", "blue"), "sayHello").await;
    assert_eq!(r["result"], "blue hello bob", "{r}");
    let seen = whoami(&node_call(&node, &addr, ("1.0.0", "blue"), "whoami").await);
    assert_eq!(
        seen,
        json!({ "tag": "blue", "version": "1.0.0", "group": "blue", "trace": "node-7" })
    );
    // Routing by the group attachment; by method and version (only whoami at 2.0.0 goes green).
    let seen = whoami(&node_call(&node, &addr, ("1.0.0", "green"), "whoami").await);
    assert_eq!(
        (&seen["tag"], &seen["group"]),
        (&json!("green"), &json!("green"))
    );
    let seen = whoami(&node_call(&node, &addr, ("2.0.0", "blue"), "whoami").await);
    assert_eq!(
        (&seen["tag"], &seen["version"]),
        (&json!("green"), &json!("2.0.0"))
    );
    let r = node_call(&node, &addr, ("2.0.0", "blue"), "sayHello").await;
    assert_eq!(r["result"], "blue hello bob", "{r}");

    // 64 concurrent calls from 8 consumer connections, answered after varying delays (so out of
    // order), each matched back to its own call, over at most M connections per hop.
    let r = node_peer(&node, &["load", &addr, "64", "8"]).await;
    assert_eq!(
        (r["ok"].as_u64(), r["failed"].as_u64()),
        (Some(64), Some(0)),
        "{r}"
    );
    assert_eq!(r["inOrder"], false, "the answers came back in order: {r}");
    let (sa, sb) = (stats(a.admin_addr()).await, stats(b.admin_addr()).await);
    let opened = "mesh_rpc_upstream_connections_opened_total";
    let opened_a = metric_sum(&sa, opened, &["listener=\"rpc_out\""]);
    assert!((1..=M).contains(&opened_a), "A opened {opened_a}:\n{sa}");
    // B has two endpoints (blue and green): at most M to each.
    let opened_b = metric_sum(&sb, opened, &["listener=\"rpc_in\""]);
    assert!(
        (2..=2 * M).contains(&opened_b),
        "B opened {opened_b}:\n{sb}"
    );
    for (p, name) in [(&blue, "blue"), (&green, "green")] {
        assert!(
            (1..=M).contains(&p.accepted()),
            "{name} accepted {}",
            p.accepted()
        );
    }
    let served = metric_sum(&sb, "mesh_requests_total", &["listener=\"rpc_in\"", "2xx"]);
    assert!(served >= 69, "B counted {served} successful RPCs");

    // An unknown service: dubbo's SERVICE_NOT_FOUND at once, with the mesh's message.
    let (_, no_provider) = DubboCodec::error_status(XError::NoProvider);
    let r = node_peer(
        &node,
        &[
            "call",
            &addr,
            "org.example.Nope",
            "1.0.0",
            "blue",
            "sayHello",
            "[\"x\"]",
        ],
    )
    .await;
    assert_eq!(r["error"], no_provider, "{r}");
    assert!(r["ms"].as_u64().unwrap() < 2000, "{r}");
    let sa = stats(a.admin_addr()).await;
    assert_eq!(
        metric_sum(&sa, "mesh_local_replies_total", &["rpc_out", "no_route"]),
        1
    );

    // A call the provider never answers: SERVER_TIMEOUT after A's 1 s, while 20 calls on the
    // same consumer connection and 50 on two others are answered meanwhile.
    let (_, timed_out) = DubboCodec::error_status(XError::Timeout);
    let (hang_args, load_args) = (["hang", &addr, GREETER, "20"], ["load", &addr, "50", "2"]);
    let (h, o) = tokio::join!(node_peer(&node, &hang_args), node_peer(&node, &load_args));
    assert_eq!(h["hang"]["error"], timed_out, "{h}");
    let ms = h["hang"]["ms"].as_u64().unwrap();
    assert!((900..5000).contains(&ms), "timed out after {ms} ms");
    assert_eq!(
        (h["ok"].as_u64(), o["ok"].as_u64()),
        (Some(20), Some(50)),
        "{h} {o}"
    );
    assert!(h["othersMs"].as_u64().unwrap() < ms, "{h}");
    let sa = stats(a.admin_addr()).await;
    let timeouts = metric_sum(
        &sa,
        "mesh_local_replies_total",
        &["rpc_out", "upstream_timeout"],
    );
    assert_eq!(timeouts, 1);

    // The python consumer (its own hessian2 encoder) raises the messages of the mesh's
    // SERVICE_NOT_FOUND and SERVER_TIMEOUT responses (their status bytes: the raw-frame test).
    let calls = json!([
        [GREETER, "1.0.0", "blue", "sayHello", ["py"], 5],
        [GREETER, "1.0.0", "green", "whoami", [], 5],
        ["org.example.Nope", "1.0.0", "blue", "sayHello", ["py"], 5],
        [GREETER, "1.0.0", "blue", "hang", [], 5],
    ]);
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(script("dubbo_peer.py"))
        .arg(&addr)
        .arg(calls.to_string())
        .stderr(Stdio::null());
    let r = run_peer(cmd).await;
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[0]["result"], "blue hello py", "{r:?}");
    assert_eq!(
        whoami(&r[1]),
        json!({ "tag": "green", "version": "1.0.0", "group": "green", "trace": "py-7" })
    );
    assert_eq!(r[2]["error"], no_provider, "{r:?}");
    assert!(r[2]["ms"].as_u64().unwrap() < 2000, "{r:?}");
    assert_eq!(r[3]["error"], timed_out, "{r:?}");
    assert!((900..4000).contains(&r[3]["ms"].as_u64().unwrap()), "{r:?}");

    a.shutdown().await;
    b.shutdown().await;
}

const TWO_WAY: u8 = FLAG_REQUEST | FLAG_TWO_WAY | HESSIAN2;

fn frame(flag: u8, status: u8, id: u64, body: &[u8]) -> Vec<u8> {
    Header::frame(flag, status, id, body).to_vec()
}

/// A request as a dubbo 2 consumer writes it: no arguments, a `group` attachment.
fn request(id: u64, service: &str, method: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    for s in ["2.0.2", service, "1.0.0", method, ""] {
        write_string(&mut body, s);
    }
    body.put_u8(b'H');
    write_string(&mut body, "group");
    write_string(&mut body, "blue");
    body.put_u8(b'Z');
    frame(TWO_WAY, 0, id, &body)
}

/// The next frame from `s` (bounded: 10 s).
async fn next_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Frame {
    loop {
        if let Some(f) = DubboCodec.decode(buf, 1 << 20).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf))
            .await
            .expect("no frame in 10 s")
            .unwrap();
        assert!(n > 0, "closed before a frame");
    }
}

/// The status and hessian2 message of a response frame.
fn answer(f: &Frame) -> (u64, Option<u16>, String) {
    let message = Reader::new(&f.raw[16..])
        .read_string()
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_owned();
    (f.request_id, f.status, message)
}

/// The mesh's own dubbo responses on the wire, from a raw client (no peers needed): the exact
/// statuses under the client's own ids, a bad body answered on a connection that goes on,
/// heartbeats answered and read-only notices not, bad framing closing only its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_answers_with_dubbo_statuses() {
    let p = mesh_testkit::free_ports(2);
    let (out, admin) = (p[0], p[1]);
    let quiet = RawUpstream::silent().unwrap();
    let closer = RawUpstream::closing().unwrap();
    let routes = "              - { match: { prefix: \"/org.example.Silent/\" }, route: { cluster: silent } }\n              - { match: { prefix: \"/org.example.Closing/\" }, route: { cluster: closing } }\n";
    let yaml = format!(
        "admin: 127.0.0.1:{admin}\ndrain_timeout: 1s\nlisteners:{}\nclusters:\n{}{}",
        rpc_listener_yaml("rpc_out", out, "dubbo", "300ms", M, 4096, routes),
        cluster_yaml("silent", quiet.addr().port()),
        cluster_yaml("closing", closer.addr().port()),
    );
    let a = Sidecar::start_static(start_yaml(&yaml)).await.unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", out)).await.unwrap();
    let mut buf = BytesMut::new();
    let message = |e| DubboCodec::error_status(e).1.to_owned();

    s.write_all(&request(11, "org.example.Nope", "sayHello"))
        .await
        .unwrap();
    let got = answer(&next_frame(&mut s, &mut buf).await);
    let want = (
        11,
        Some(u16::from(status::SERVICE_NOT_FOUND)),
        message(XError::NoProvider),
    );
    assert_eq!(got, want);

    let started = Instant::now();
    s.write_all(&request(12, "org.example.Silent", "sayHello"))
        .await
        .unwrap();
    let got = answer(&next_frame(&mut s, &mut buf).await);
    let want = (
        12,
        Some(u16::from(status::SERVER_TIMEOUT)),
        message(XError::Timeout),
    );
    assert_eq!(got, want);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    s.write_all(&request(13, "org.example.Closing", "sayHello"))
        .await
        .unwrap();
    let got = answer(&next_frame(&mut s, &mut buf).await);
    let want = (
        13,
        Some(u16::from(status::SERVER_ERROR)),
        message(XError::UpstreamFailure),
    );
    assert_eq!(got, want);

    // A body that is not an invocation (framing intact): BAD_REQUEST under its id; a oneway one
    // gets nothing; a read-only notice from the client gets nothing; the connection goes on and
    // answers the heartbeat that follows, with its id.
    s.write_all(&frame(TWO_WAY, 0, 14, b"\x052.0.2\x91"))
        .await
        .unwrap();
    let got = answer(&next_frame(&mut s, &mut buf).await);
    let want = (
        14,
        Some(u16::from(status::BAD_REQUEST)),
        message(XError::Malformed),
    );
    assert_eq!(got, want);
    let mut quiet_frames = frame(FLAG_REQUEST | HESSIAN2, 0, 15, b"\x91");
    quiet_frames.extend(frame(FLAG_REQUEST | FLAG_EVENT | HESSIAN2, 0, 16, b"\x01R"));
    quiet_frames.extend(frame(TWO_WAY | FLAG_EVENT, 0, 17, b"N"));
    s.write_all(&quiet_frames).await.unwrap();
    let f = next_frame(&mut s, &mut buf).await;
    assert_eq!((f.kind, f.request_id), (FrameKind::HeartbeatResponse, 17));

    // Bad framing and an oversize frame each close their own connection, counted; the first
    // connection still answers.
    let mut bad = TcpStream::connect(("127.0.0.1", out)).await.unwrap();
    bad.write_all(&[0xda, 0x00, 0x01]).await.unwrap();
    until_closed(&mut bad).await;
    let mut big = TcpStream::connect(("127.0.0.1", out)).await.unwrap();
    let mut oversize = frame(TWO_WAY, 0, 1, &[]);
    oversize[12..16].copy_from_slice(&8192i32.to_be_bytes());
    big.write_all(&oversize).await.unwrap();
    until_closed(&mut big).await;
    s.write_all(&request(18, "org.example.Nope", "sayHello"))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut s, &mut buf).await.request_id, 18);

    let sa = stats(a.admin_addr()).await;
    let replies = "mesh_local_replies_total";
    for (code, want) in [
        ("no_route", 2),
        ("upstream_timeout", 1),
        ("upstream_failure", 1),
        ("bad_request", 2),
    ] {
        let got = metric_sum(&sa, replies, &["rpc_out", &format!("\"{code}\"")]);
        assert_eq!(got, want, "{code}:\n{sa}");
    }
    let errors = "mesh_rpc_protocol_errors_total";
    for (reason, want) in [("bad_request", 2), ("malformed", 1), ("too_large", 1)] {
        let got = metric_sum(&sa, errors, &["rpc_out", &format!("\"{reason}\"")]);
        assert_eq!(got, want, "{reason}:\n{sa}");
    }
    a.shutdown().await;
}

/// What the read-only upstream saw: the connection number of each request, and which of its
/// connections were closed by the sidecar.
#[derive(Default)]
struct Seen {
    requests: Vec<(u64, u64)>,
    closed: Vec<u64>,
}

/// An upstream that answers every request OK and, on its first connection, sends Dubbo's
/// read-only event right behind its first answer (as a provider does before it shuts down).
async fn read_only_upstream(seen: Arc<std::sync::Mutex<Seen>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let conn = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while let Some(f) = DubboCodec.decode(&mut buf, 1 << 20).unwrap() {
                        seen.lock().unwrap().requests.push((conn, f.request_id));
                        let mut out = frame(HESSIAN2, status::OK, f.request_id, b"\x91\x02ok");
                        if conn == 1 {
                            out.extend(frame(
                                FLAG_REQUEST | FLAG_EVENT | HESSIAN2,
                                0,
                                99,
                                b"\x01R",
                            ));
                        }
                        s.write_all(&out).await.unwrap();
                    }
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        seen.lock().unwrap().closed.push(conn);
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An upstream's read-only event: the sidecar sends no new request on that connection (with
/// one connection allowed, the next request opens a new one) and closes it once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_read_only_event_retires_the_connection() {
    let p = mesh_testkit::free_ports(2);
    let (out, admin) = (p[0], p[1]);
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let upstream = read_only_upstream(Arc::clone(&seen)).await;
    let routes = format!(
        "              - {{ match: {{ prefix: \"/{GREETER}/\" }}, route: {{ cluster: provider }} }}\n"
    );
    let yaml = format!(
        "admin: 127.0.0.1:{admin}\ndrain_timeout: 1s\nlisteners:{}\nclusters:\n{}",
        rpc_listener_yaml("rpc_out", out, "dubbo", "2s", 1, 4096, &routes),
        cluster_yaml("provider", upstream),
    );
    let a = Sidecar::start_static(start_yaml(&yaml)).await.unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", out)).await.unwrap();
    let mut buf = BytesMut::new();
    for id in [1, 2, 3] {
        s.write_all(&request(id, GREETER, "sayHello"))
            .await
            .unwrap();
        let f = next_frame(&mut s, &mut buf).await;
        assert_eq!((f.request_id, f.status), (id, Some(u16::from(status::OK))));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().closed.contains(&1) {
        assert!(
            Instant::now() < deadline,
            "the read-only connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let conns: Vec<u64> = seen.requests.iter().map(|(c, _)| *c).collect();
    assert_eq!(conns, [1, 2, 2], "requests per upstream connection");
    a.shutdown().await;
}
