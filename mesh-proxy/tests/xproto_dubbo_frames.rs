//! The mesh's own dubbo answers on the wire, from raw clients and upstreams (no real peers
//! needed): the exact status bytes under the client's own ids (SERVICE_NOT_FOUND, SERVER_TIMEOUT,
//! SERVER_ERROR, BAD_REQUEST), a bad body answered on a connection that goes on, heartbeats
//! answered and read-only notices not, a malformed or oversize frame closing only its own
//! connection (counted), and an upstream's read-only event retiring its connection.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use mesh_testkit::{
    admin_stats as stats, cluster_yaml, metric_sum, rpc_listener_yaml, until_closed, RawUpstream,
};
use mesh_xprotocol::dubbo::header::{Header, FLAG_EVENT, FLAG_REQUEST, FLAG_TWO_WAY, HESSIAN2};
use mesh_xprotocol::dubbo::hessian2::{write_string, Reader};
use mesh_xprotocol::dubbo::status;
use mesh_xprotocol::{DubboCodec, Frame, FrameKind, XCodec, XError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upstream connections per endpoint.
const M: u64 = 2;
const GREETER: &str = "org.example.Greeter";

fn start_yaml(yaml: &str) -> Bootstrap {
    Bootstrap::from_yaml(yaml, Path::new("dubbo.yaml")).unwrap()
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
