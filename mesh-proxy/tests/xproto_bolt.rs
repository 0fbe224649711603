//! Bolt through two sidecars with real SOFARPC peers (npm `sofa-rpc-node`, see
//! `tests/bolt_peer.js`): a real client → sidecar A (outbound RPC listener) → sidecar B
//! (inbound RPC listener) → a real server. Shown: answers arrive intact; 200 concurrent calls
//! from 4 client connections share at most M upstream connections per hop (the server counts
//! its accepted connections, the sidecars their opened ones); a silent upstream is answered
//! with bolt's TIMEOUT while other calls proceed; an unknown service gets NO_PROCESSOR at
//! once; heartbeats are answered by the sidecar; a malformed or oversize frame closes only
//! its own connection, counted.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use mesh_testkit::{
    admin_stats as stats, cluster_yaml as cluster, metric_sum as metric, rpc_listener_yaml,
    until_closed, PeerServer, RawUpstream,
};
use mesh_xprotocol::bolt::{self, BoltRequest};
use mesh_xprotocol::{BoltCodec, FrameKind, XCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upstream connections per endpoint on both sidecars.
const M: u64 = 2;

fn script() -> String {
    format!("{}/tests/bolt_peer.js", env!("CARGO_MANIFEST_DIR"))
}

/// The real server (it counts its accepted connections).
fn start_server(node: &Path, modules: &Path, port: u16) -> PeerServer {
    let mut cmd = Command::new(node);
    cmd.args([script().as_str(), "server", &port.to_string()])
        .env("NODE_PATH", modules);
    PeerServer::start(cmd).unwrap()
}

/// Runs the peer script to completion (bounded) and parses its JSON line.
async fn peer(node: &Path, modules: &Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(script()).args(args).env("NODE_PATH", modules);
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the bolt peer did not finish in 60 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text} / {}", String::from_utf8_lossy(&out.stderr)))
}

fn rpc_listener(name: &str, port: u16, timeout: &str, routes: &str) -> String {
    rpc_listener_yaml(name, port, "bolt", timeout, M, 4096, routes)
}

fn hello(id: u32, content: &[u8]) -> bytes::Bytes {
    bolt::request(&BoltRequest {
        id,
        codec: bolt::CODEC_HESSIAN2,
        timeout_ms: 3000,
        oneway: false,
        class: "com.alipay.sofa.rpc.core.request.SofaRequest",
        headers: &[
            ("service", "com.example.Hello:1.0"),
            ("sofa_head_method_name", "sayHi"),
        ],
        content,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sofa_rpc_through_two_sidecars() {
    let Some((node, modules)) = mesh_testkit::require_sofa_node() else {
        return;
    };
    let p = mesh_testkit::free_ports(6);
    let (app, out, inb, admin_a, admin_b, limited) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let server = start_server(&node, &modules, app);
    let quiet = RawUpstream::silent().unwrap();

    let hello_route = "              - { match: { prefix: \"/com.example.Hello:1.0/\" }, route: { cluster: CLUSTER } }\n";
    let b_yaml = format!(
        "admin: 127.0.0.1:{admin_b}\ndrain_timeout: 1s\nlisteners:{}\nclusters:\n{}",
        rpc_listener(
            "rpc_in",
            inb,
            "5s",
            &hello_route.replace("CLUSTER", "hello_app")
        ),
        cluster("hello_app", app),
    );
    let a_routes = format!(
        "{}              - {{ match: {{ prefix: \"/com.example.Silent:1.0/\" }}, route: {{ cluster: silent }} }}\n",
        hello_route.replace("CLUSTER", "b_inbound")
    );
    // One call per hour on `rpc_limited` (the listener's rate limit, as HTTP's).
    let limited_listener = format!(
        "{}    rate_limit: {{ token_bucket: {{ max_tokens: 1, fill_interval: 1h }} }}\n",
        rpc_listener(
            "rpc_limited",
            limited,
            "1s",
            &hello_route.replace("CLUSTER", "b_inbound")
        )
    );
    let a_yaml = format!(
        "admin: 127.0.0.1:{admin_a}\ndrain_timeout: 1s\nlisteners:{}{}\nclusters:\n{}{}",
        rpc_listener("rpc_out", out, "1s", &a_routes),
        limited_listener,
        cluster("b_inbound", inb),
        cluster("silent", quiet.addr().port()),
    );
    let b = Sidecar::start_static(Bootstrap::from_yaml(&b_yaml, Path::new("b.yaml")).unwrap())
        .await
        .unwrap();
    let a = Sidecar::start_static(Bootstrap::from_yaml(&a_yaml, Path::new("a.yaml")).unwrap())
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{out}");

    // One call, answered intact.
    let r = peer(
        &node,
        &modules,
        &["call", &addr, "com.example.Hello", "sayHi", "[\"bob\"]"],
    )
    .await;
    assert_eq!(r["result"], "hi bob", "{r}");

    // 200 concurrent calls from 4 client connections over at most M connections per hop.
    let r = peer(&node, &modules, &["load", &addr, "200", "4"]).await;
    assert_eq!(
        (r["ok"].as_u64(), r["failed"].as_u64()),
        (Some(200), Some(0)),
        "{r}"
    );
    let server_side = server.accepted();
    assert!(
        (1..=M).contains(&server_side),
        "the server accepted {server_side} connections"
    );
    let (sa, sb) = (stats(a.admin_addr()).await, stats(b.admin_addr()).await);
    let opened = "mesh_rpc_upstream_connections_opened_total";
    let opened_a = metric(&sa, opened, &["listener=\"rpc_out\""]);
    let opened_b = metric(&sb, opened, &["listener=\"rpc_in\""]);
    assert!((1..=M).contains(&opened_a), "A opened {opened_a}:\n{sa}");
    assert!((1..=M).contains(&opened_b), "B opened {opened_b}");
    let served = metric(&sb, "mesh_requests_total", &["listener=\"rpc_in\"", "2xx"]);
    assert!(served >= 201, "B counted {served} successful RPCs");

    // An unknown service: bolt's NO_PROCESSOR at once, counted as no route.
    let r = peer(
        &node,
        &modules,
        &["call", &addr, "com.example.Nope", "sayHi", "[\"x\"]"],
    )
    .await;
    assert!(r["error"].is_string(), "{r}");
    assert!(r["ms"].as_u64().unwrap() < 2000, "{r}");
    let sa = stats(a.admin_addr()).await;
    assert!(metric(&sa, "mesh_local_replies_total", &["rpc_out", "no_route"]) >= 1);

    // A silent upstream: the timeout error after the listener's 1 s while other calls go on.
    let silent_args = [
        "call",
        &addr,
        "com.example.Silent",
        "sayHi",
        "[\"x\"]",
        "10000",
    ];
    let load_args = ["load", &addr, "50", "2"];
    let silent_call = peer(&node, &modules, &silent_args);
    let others = peer(&node, &modules, &load_args);
    let (s, o) = tokio::join!(silent_call, others);
    assert!(s["error"].is_string(), "{s}");
    let ms = s["ms"].as_u64().unwrap();
    assert!((900..5000).contains(&ms), "timed out after {ms} ms");
    assert_eq!(o["ok"].as_u64(), Some(50), "{o}");
    let sa = stats(a.admin_addr()).await;
    assert!(
        metric(
            &sa,
            "mesh_local_replies_total",
            &["rpc_out", "upstream_timeout"]
        ) >= 1
    );

    // A heartbeat is answered by the sidecar, with its id.
    let mut hb = TcpStream::connect(&addr).await.unwrap();
    hb.write_all(&bolt::heartbeat_request(77)).await.unwrap();
    let mut buf = BytesMut::new();
    let ack = loop {
        if let Some(f) = BoltCodec.decode(&mut buf, 1 << 16).unwrap() {
            break f;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), hb.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the heartbeat response");
    };
    assert_eq!(
        (ack.kind, ack.request_id),
        (FrameKind::HeartbeatResponse, 77)
    );

    // A malformed frame and an oversize one each close their own connection, counted; the
    // heartbeat connection and new calls are untouched.
    let mut bad = TcpStream::connect(&addr).await.unwrap();
    bad.write_all(&[0x01, 0x07, 0x00, 0x01, 0xff, 0xff])
        .await
        .unwrap();
    until_closed(&mut bad).await;
    let mut big = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    big.write_all(&hello(1, &[0u8; 8192])[..64]).await.unwrap();
    until_closed(&mut big).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    hb.write_all(&bolt::heartbeat_request(78)).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), hb.read_buf(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0, "the heartbeat connection was closed too");
    let r = peer(
        &node,
        &modules,
        &["call", &addr, "com.example.Hello", "sayHi", "[\"after\"]"],
    )
    .await;
    assert_eq!(r["result"], "hi after", "{r}");
    let sa = stats(a.admin_addr()).await;
    let errors = "mesh_rpc_protocol_errors_total";
    assert_eq!(metric(&sa, errors, &["rpc_out", "malformed"]), 1, "{sa}");
    assert_eq!(metric(&sa, errors, &["rpc_out", "too_large"]), 1);

    // The listener's rate limit: the second call is refused with bolt's overload status.
    let addr = format!("127.0.0.1:{limited}");
    let r = peer(
        &node,
        &modules,
        &["call", &addr, "com.example.Hello", "sayHi", "[\"1\"]"],
    )
    .await;
    assert_eq!(r["result"], "hi 1", "{r}");
    let r = peer(
        &node,
        &modules,
        &["call", &addr, "com.example.Hello", "sayHi", "[\"2\"]"],
    )
    .await;
    assert!(r["error"].is_string(), "{r}");
    let sa = stats(a.admin_addr()).await;
    assert_eq!(
        metric(
            &sa,
            "mesh_local_replies_total",
            &["rpc_limited", "rate_limited"]
        ),
        1
    );

    a.shutdown().await;
    b.shutdown().await;
    let _: PathBuf = modules;
}

/// Sends `frame` and returns the first frame that comes back (bounded: 10 s).
async fn exchange(s: &mut TcpStream, frame: &[u8]) -> mesh_xprotocol::Frame {
    s.write_all(frame).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = BoltCodec.decode(&mut buf, 1 << 20).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
            .await
            .expect("no response in 10 s")
            .unwrap();
        assert!(n > 0, "closed before a response");
    }
}

/// The mesh's own bolt responses on the wire, from a raw client (no Node.js needed): the
/// exact statuses and the client's own request ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_answers_with_bolt_statuses() {
    let p = mesh_testkit::free_ports(2);
    let (out, admin) = (p[0], p[1]);
    let (quiet, closer) = (
        RawUpstream::silent().unwrap(),
        RawUpstream::closing().unwrap(),
    );
    let routes = "              - { match: { prefix: \"/com.example.Silent:1.0/\" }, route: { cluster: silent } }\n              - { match: { prefix: \"/com.example.Hello:1.0/\" }, route: { cluster: closing } }\n";
    let yaml = format!(
        "admin: 127.0.0.1:{admin}\ndrain_timeout: 1s\nlisteners:{}\nclusters:\n{}{}",
        rpc_listener("rpc_out", out, "300ms", routes),
        cluster("silent", quiet.addr().port()),
        cluster("closing", closer.addr().port()),
    );
    let a = Sidecar::start_static(Bootstrap::from_yaml(&yaml, Path::new("a.yaml")).unwrap())
        .await
        .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", out)).await.unwrap();
    let call = |id: u32, service: &'static str| {
        bolt::request(&BoltRequest {
            id,
            codec: bolt::CODEC_HESSIAN2,
            timeout_ms: 3000,
            oneway: false,
            class: "com.alipay.sofa.rpc.core.request.SofaRequest",
            headers: &[("service", service), ("sofa_head_method_name", "sayHi")],
            content: b"body",
        })
    };
    let f = exchange(&mut s, &call(11, "com.example.Nope:1.0")).await;
    assert_eq!(
        (f.request_id, f.status),
        (11, Some(bolt::status::NO_PROCESSOR))
    );
    let started = Instant::now();
    let f = exchange(&mut s, &call(12, "com.example.Silent:1.0")).await;
    assert_eq!((f.request_id, f.status), (12, Some(bolt::status::TIMEOUT)));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let f = exchange(&mut s, &call(13, "com.example.Hello:1.0")).await;
    assert_eq!(
        (f.request_id, f.status),
        (13, Some(bolt::status::CONNECTION_CLOSED))
    );
    let sa = stats(a.admin_addr()).await;
    for code in ["no_route", "upstream_timeout", "upstream_failure"] {
        assert_eq!(
            metric(&sa, "mesh_local_replies_total", &["rpc_out", code]),
            1,
            "{code}"
        );
    }
    a.shutdown().await;
}
