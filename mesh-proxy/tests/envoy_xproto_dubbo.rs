//! Envoy as the oracle for dubbo routing over xDS: one `mesh.yaml` with `protocol: dubbo`
//! services, served by our control plane, gives a real Envoy and our sidecar the same
//! `outbound_dubbo` listener (Envoy's `generic_proxy` with its dubbo codec). A generated corpus
//! of dubbo requests (services × methods × service versions × `group` attachments) goes to
//! both, and which recording backend each request reaches — or that the proxy answered it
//! itself (no route) — must agree.
//!
//! Differences on purpose: the proxy's own "no route" answer is status 60 `SERVICE_NOT_FOUND`
//! from ours and 80 `SERVER_ERROR` from Envoy (its generic proxy maps every local error but
//! "invalid argument" to it); both count as "refused" here.
//!
//! Under `CI=true` a missing Envoy fails the test (mesh-testkit's skip-or-fail policy).
#![allow(clippy::unwrap_used)]

mod interop;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use mesh_xprotocol::dubbo::header::{Header, FLAG_REQUEST, FLAG_TWO_WAY, HESSIAN2};
use mesh_xprotocol::dubbo::hessian2::write_string;
use mesh_xprotocol::dubbo::status;
use mesh_xprotocol::{DubboCodec, FrameKind, XCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A dubbo server answering every request with its own name (a hessian2 value response).
async fn recording_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while let Ok(Some(f)) = DubboCodec.decode(&mut buf, 1 << 20) {
                        let reply = match f.kind {
                            FrameKind::Request { oneway: false } => {
                                let mut body = BytesMut::new();
                                body.put_u8(0x91); // RESPONSE_VALUE
                                write_string(&mut body, name);
                                frame(HESSIAN2, status::OK, f.request_id, &body)
                            }
                            FrameKind::HeartbeatRequest => {
                                frame(HESSIAN2 | 0x20, status::OK, f.request_id, b"N")
                            }
                            _ => continue,
                        };
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

fn frame(flag: u8, status: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let h = Header {
        flag,
        status,
        request_id: id,
        body_len: body.len(),
    };
    let mut out = h.encode().to_vec();
    out.extend_from_slice(body);
    out
}

/// One request of the corpus.
#[derive(Debug, Clone)]
struct Case {
    service: &'static str,
    method: &'static str,
    version: &'static str,
    group: Option<&'static str>,
}

fn corpus() -> Vec<Case> {
    let mut out = Vec::new();
    for service in [
        "org.example.Greeter",
        "org.example.Hello",
        "org.example.Cat",
        "org.example.Catalog",
        "org.example.Other",
        "org.example.Unknown",
    ] {
        for method in ["sayHello", "sayBye", "get"] {
            for version in ["", "1.0.0", "2.0.0"] {
                for group in [None, Some("blue"), Some("green"), Some("gray")] {
                    out.push(Case {
                        service,
                        method,
                        version,
                        group,
                    });
                }
            }
        }
    }
    out
}

fn request(id: u64, c: &Case) -> Vec<u8> {
    let mut body = BytesMut::new();
    for s in [
        "2.0.2",
        c.service,
        c.version,
        c.method,
        "Ljava/lang/String;",
    ] {
        write_string(&mut body, s);
    }
    write_string(&mut body, "world");
    body.put_u8(b'H');
    for (k, v) in [("interface", Some(c.service)), ("group", c.group)] {
        if let Some(v) = v {
            write_string(&mut body, k);
            write_string(&mut body, v);
        }
    }
    body.put_u8(b'Z');
    frame(FLAG_REQUEST | FLAG_TWO_WAY | HESSIAN2, 0, id, &body)
}

/// Where a request went: a backend's name, or "refused" (the proxy answered it).
async fn send(s: &mut TcpStream, buf: &mut BytesMut, id: u64, c: &Case) -> String {
    s.write_all(&request(id, c)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(f) = DubboCodec.decode(buf, 1 << 20).unwrap() {
            assert_eq!(f.request_id, id, "{c:?}");
            let body = String::from_utf8_lossy(&f.raw[16..]);
            return match f.status {
                Some(20) if body.contains("backend-a") => "backend-a".into(),
                Some(20) if body.contains("backend-b") => "backend-b".into(),
                Some(st) => format!("refused (status {st})"),
                None => "no status".into(),
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read_buf(buf))
            .await
            .unwrap_or_else(|_| panic!("no answer to {c:?}"))
            .unwrap();
        assert!(n > 0, "connection closed on {c:?}");
    }
}

/// Normalises the documented difference: both proxies' own answers are "refused".
fn class(outcome: &str) -> &str {
    if outcome.starts_with("refused") {
        "refused"
    } else {
        outcome
    }
}

fn mesh_yaml(a: SocketAddr, b: SocketAddr, envoy: &[u16], ours: &[u16]) -> String {
    let node = |id: &str, p: &[u16]| {
        format!(
            "  - id: {id}\n    listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, outbound_dubbo: 127.0.0.1:{}, local_app: 127.0.0.1:1 }}\n",
            p[0], p[1], p[2]
        )
    };
    format!(
        r#"services:
  - name: greeter-a
    protocol: dubbo
    interfaces: [org.example.Greeter, org.example.Hello]
    routes:
      - match: {{ prefix: /org.example.Greeter/, headers: [{{ name: version, exact: "2.0.0" }}] }}
        route: {{ cluster: greeter-b }}
      - match: {{ path: /org.example.Greeter/sayBye }}
        route: {{ cluster: greeter-b }}
      - match: {{ prefix: /org.example.Greeter/, headers: [{{ name: group, exact: blue }}] }}
        route: {{ cluster: greeter-b }}
      - match: {{ prefix: /org.example.Greeter/ }}
        route: {{ cluster: greeter-a }}
      - match: {{ prefix: /org.example.Hello/get }}
        route: {{ cluster: greeter-b }}
      - match: {{ prefix: /org.example.Hello/, headers: [{{ name: group, prefix: gr }}] }}
        route: {{ cluster: greeter-b }}
      - match: {{ prefix: /org.example.Hello/, headers: [{{ name: version, suffix: ".0.0" }}, {{ name: group, exact: blue }}] }}
        route: {{ cluster: greeter-b }}
      - match: {{ prefix: /org.example.Hello/ }}
        route: {{ cluster: greeter-a }}
      - match: {{ prefix: /org.example.Cat }}
        route: {{ cluster: greeter-a }}
    endpoints: [{{ address: "{a}" }}]
  - name: greeter-b
    protocol: dubbo
    interfaces: [org.example.Other]
    endpoints: [{{ address: "{b}" }}]
nodes:
{}{}"#,
        node("envoy-dubbo", envoy),
        node("ours-dubbo", ours),
    )
}

async fn connect(addr: SocketAddr, what: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{what} never listened on {addr}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_our_sidecar_route_a_dubbo_corpus_alike() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let a = recording_backend("backend-a").await;
    let b = recording_backend("backend-b").await;
    let p = mesh_testkit::free_ports(6);
    let cp = interop::ControlPlane::start(&mesh_yaml(a, b, &p[0..3], &p[3..6])).await;
    let sidecar = cp.sidecar("ours-dubbo").await;
    let envoy = cp.envoy("envoy-dubbo");

    let envoy_addr = SocketAddr::from(([127, 0, 0, 1], p[2]));
    let ours_addr = SocketAddr::from(([127, 0, 0, 1], p[5]));
    let mut e = connect(envoy_addr, "envoy").await;
    let mut o = connect(ours_addr, "our sidecar").await;
    let (mut ebuf, mut obuf) = (BytesMut::new(), BytesMut::new());

    let cases = corpus();
    let mut diffs = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    let mut refusals = std::collections::BTreeSet::new();
    for (i, c) in cases.iter().enumerate() {
        let id = i as u64 + 1;
        let theirs = send(&mut e, &mut ebuf, id, c).await;
        let ours = send(&mut o, &mut obuf, id, c).await;
        *seen.entry(class(&ours).to_owned()).or_insert(0) += 1;
        if class(&ours) == "refused" {
            refusals.insert(format!("envoy {theirs}, ours {ours}"));
        }
        if class(&theirs) != class(&ours) {
            diffs.push(format!("{c:?}: envoy {theirs}, ours {ours}"));
        }
    }
    // Nothing NACKed: Envoy accepted our generic_proxy listener as it is.
    let dump = cp.cache.dump();
    for id in ["envoy-dubbo", "ours-dubbo"] {
        let st = &dump.nodes.iter().find(|n| n.node == id).unwrap().status;
        assert!(
            st.types.iter().all(|t| t.nacked_version.is_none()),
            "{id}: {st:?}\n{}",
            envoy.logs()
        );
    }
    assert!(
        diffs.is_empty(),
        "{} of {} cases differ:\n{}",
        diffs.len(),
        cases.len(),
        diffs.join("\n")
    );
    // The corpus exercises all three outcomes.
    for outcome in ["backend-a", "backend-b", "refused"] {
        assert!(seen.get(outcome).copied().unwrap_or(0) > 0, "{seen:?}");
    }
    eprintln!(
        "{} cases, 0 differences: {seen:?}; refusals: {refusals:?}",
        cases.len()
    );
    drop(envoy);
    sidecar.shutdown().await;
}
