//! Property test of the HTTP/2 edge against one long-lived sidecar on loopback: the preface,
//! then arbitrary hand-built frames (any type, flags, stream id and payload; now and then a
//! length past the maximum), then a PING. Every case must end within a time bound (no hang)
//! in a live connection (the PING acknowledged) or a GOAWAY; every few cases a normal h2c
//! request must still get 200, and no thread of the sidecar may panic. The case count and the
//! outcomes are printed (`--nocapture`); `PROPTEST_CASES` raises them.
#![allow(clippy::unwrap_used)]

mod edge;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use edge::{edge, panics, runner, Edge, CASE_BOUND, LIVENESS_EVERY};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// One frame on the wire: a 9-byte header (24-bit length, type, flags, 31-bit stream id) and
/// the payload. `length` overrides the payload's length (a frame past the peer's maximum).
fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8], length: Option<u32>) -> Vec<u8> {
    let len = length.unwrap_or(u32::try_from(payload.len()).unwrap());
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    if length.is_none() {
        f.extend_from_slice(payload);
    }
    f
}

/// A generated frame: any type (the ten of RFC 9113 more often), flags, a stream id (0 and the
/// first client streams more often), a payload; rarely a length past 16 KiB with no payload.
fn h2_frame() -> BoxedStrategy<Vec<u8>> {
    let ty = prop_oneof![4 => 0u8..10, 1 => any::<u8>()];
    let stream = prop_oneof![2 => Just(0u32), 2 => Just(1u32), 1 => Just(3u32), 1 => any::<u32>()];
    let payload = prop::collection::vec(any::<u8>(), 0..48);
    let length = prop_oneof![9 => Just(None), 1 => (16_385u32..0x00ff_ffff).prop_map(Some)];
    (ty, any::<u8>(), stream, payload, length)
        .prop_map(|(ty, flags, stream, payload, length)| frame(ty, flags, stream, &payload, length))
        .boxed()
}

/// How an HTTP/2 connection ended up after the generated frames.
#[derive(Debug, PartialEq)]
enum H2Outcome {
    /// Our PING came back acknowledged: the connection lives on.
    Alive,
    /// The server sent GOAWAY with this error code.
    GoAway(u32),
}

/// Writes the preface, an empty SETTINGS, the generated frames and a PING, then reads frames
/// until the PING's ACK or a GOAWAY, within [`CASE_BOUND`].
fn h2_exchange(addr: SocketAddr, frames: &[Vec<u8>]) -> Result<H2Outcome, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(CASE_BOUND)).unwrap();
    s.set_write_timeout(Some(CASE_BOUND)).unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[], None));
    for f in frames {
        out.extend_from_slice(f);
    }
    out.extend(frame(PING, 0, 0, b"liveness", None));
    // A server that gave up on the connection may close before reading it all.
    let _ = s.write_all(&out);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse whatever whole frames are in.
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            if ty == PING && flags & 0x1 == 1 && payload == b"liveness" {
                return Ok(H2Outcome::Alive);
            }
            if ty == GOAWAY && payload.len() >= 8 {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                return Ok(H2Outcome::GoAway(code));
            }
        }
        if started.elapsed() >= CASE_BOUND {
            return Err(format!(
                "neither a PING ACK nor a GOAWAY within {CASE_BOUND:?}"
            ));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed without a GOAWAY".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A normal HTTP/2 request through the `h2` client: the sidecar still serves h2c.
fn h2_request_is_200(edge: &Edge) -> Result<(), String> {
    edge.rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (client, conn) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get("http://a/h2").body(()).unwrap();
        let mut client = client.ready().await.map_err(|e| e.to_string())?;
        let (resp, _) = client.send_request(req, true).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(CASE_BOUND, resp)
            .await
            .map_err(|_| "no h2 response in time".to_string())?
            .map_err(|e| e.to_string())?;
        conn.abort();
        (resp.status() == 200)
            .then_some(())
            .ok_or_else(|| format!("h2 status {}", resp.status()))
    })
}

#[test]
fn arbitrary_http2_frames_end_in_a_live_connection_or_a_goaway_never_a_hang() {
    let count = AtomicU64::new(0);
    let outcomes = std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new());
    let frames = prop::collection::vec(h2_frame(), 1..6);
    let result = runner(1000).run(&frames, |frames| {
        let edge = edge();
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        let outcome = h2_exchange(edge.addr, &frames).map_err(TestCaseError::fail)?;
        let key = match outcome {
            H2Outcome::Alive => "alive".to_string(),
            H2Outcome::GoAway(code) => format!("goaway({code:#x})"),
        };
        *outcomes.lock().unwrap().entry(key).or_default() += 1;
        if n.is_multiple_of(LIVENESS_EVERY) {
            h2_request_is_200(edge).map_err(TestCaseError::fail)?;
        }
        prop_assert_eq!(panics(), 0, "a sidecar thread panicked");
        Ok(())
    });
    eprintln!(
        "HTTP/2 frame sequences: {} cases, outcomes {:?}",
        count.load(Ordering::Relaxed),
        outcomes.lock().unwrap()
    );
    result.unwrap();
    h2_request_is_200(edge()).unwrap();
}
