//! Property test of the HTTP/2 edge against one long-lived sidecar on loopback: the preface,
//! then arbitrary hand-built frames (any type, flags, stream id and payload; now and then a
//! length past the maximum), then a PING. Every case must end within a time bound (no hang)
//! in a live connection (the PING acknowledged) or a GOAWAY; every few cases a normal h2c
//! request must still get 200, and no thread of the sidecar may panic. The case count and the
//! outcomes are printed (`--nocapture`); `PROPTEST_CASES` raises them.
#![allow(clippy::unwrap_used)]

mod edge;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use edge::{edge, h2, panics, runner, LIVENESS_EVERY};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// A generated frame: any type (the ten of RFC 9113 more often), flags, a stream id (0 and the
/// first client streams more often), a payload; rarely a length past 16 KiB with no payload.
fn h2_frame() -> BoxedStrategy<Vec<u8>> {
    let ty = prop_oneof![4 => 0u8..10, 1 => any::<u8>()];
    let stream = prop_oneof![2 => Just(0u32), 2 => Just(1u32), 1 => Just(3u32), 1 => any::<u32>()];
    let payload = prop::collection::vec(any::<u8>(), 0..48);
    let length = prop_oneof![9 => Just(None), 1 => (16_385u32..0x00ff_ffff).prop_map(Some)];
    (ty, any::<u8>(), stream, payload, length)
        .prop_map(|(ty, flags, stream, payload, length)| {
            h2::frame(ty, flags, stream, &payload, length)
        })
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

/// Sends the generated frames and a PING, then reads until the PING's ACK or a GOAWAY.
fn h2_exchange(addr: SocketAddr, frames: &[Vec<u8>]) -> Result<H2Outcome, String> {
    let started = Instant::now();
    let mut s = h2::open(addr, frames)?;
    h2::read_until(&mut s, started, |ty, flags, _, payload| {
        if h2::is_liveness_ack(ty, flags, payload) {
            return Some(H2Outcome::Alive);
        }
        (ty == h2::GOAWAY)
            .then(|| h2::error_code(ty, payload))
            .flatten()
            .map(H2Outcome::GoAway)
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
            h2::h2_request_is_200(edge).map_err(TestCaseError::fail)?;
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
    h2::h2_request_is_200(edge()).unwrap();
}
