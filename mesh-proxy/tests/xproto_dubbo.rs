//! Dubbo through two sidecars with real peers: real consumers (npm `dubbo-remoting` through
//! `sofa-rpc-node`'s client, `tests/dubbo_peer.js`, and PyPI's `dubbo-ssl-python`,
//! `tests/dubbo_peer.py`) → sidecar A (outbound RPC listener) → sidecar B (inbound RPC
//! listener) → real `dubbo-remoting` providers. Shown: answers the provider computed from the
//! arguments, attachments reaching it; routing by interface, method and the `version` / `group`
//! attachments to two providers; 64 concurrent calls from 8 consumer connections over at most M
//! upstream connections per hop, answered out of order and matched back by id; an unknown
//! service gets dubbo's SERVICE_NOT_FOUND at once; a provider that never answers one call gets
//! SERVER_TIMEOUT after the listener's timeout while calls on the same and other connections are
//! served. The same with raw frames and the exact status bytes: `xproto_dubbo_frames.rs`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use mesh_testkit::{
    admin_stats as stats, cluster_yaml, metric_sum, rpc_listener_yaml, NodePackages, PeerServer,
};
use mesh_xprotocol::{DubboCodec, XError};
use serde_json::{json, Value};

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
