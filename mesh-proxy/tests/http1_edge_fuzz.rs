//! Property tests of the HTTP/1.1 edge against one long-lived sidecar on loopback: generated
//! request lines, header names and values and chunk-size lines, written raw on a TCP socket.
//! Every case must get its answer within a time bound (no hang): a well-formed request 200 from
//! the app behind the sidecar, a malformed one exactly 400 (never a 5xx: the fault is the
//! client's). Every few cases a normal request must still succeed, and no thread of the sidecar
//! may panic. The case counts are printed (`--nocapture`); `PROPTEST_CASES` raises them.
//!
//! Inputs always start like a request line (a method token, a space, a `/`): the listener's
//! protocol detection sends anything else elsewhere, and that is not this test's subject.
#![allow(clippy::unwrap_used)]

mod edge;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use edge::{edge, panics, runner, CASE_BOUND, LIVENESS_EVERY, MAX_BODY};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// What a generated HTTP/1 request must get.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// 200 from the app, which read a body of this many bytes.
    Ok(usize),
    /// This status from the sidecar.
    Status(u16),
}

/// One exchange's answer: the status and body, within [`CASE_BOUND`].
fn exchange(addr: SocketAddr, request: &[u8]) -> Result<(u16, String), String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(CASE_BOUND)).unwrap();
    s.set_write_timeout(Some(CASE_BOUND)).unwrap();
    // The sidecar may answer and close before it read everything: a failed write is fine.
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if started.elapsed() >= CASE_BOUND {
        return Err(format!("no answer within {CASE_BOUND:?} (read: {read:?})"));
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?} (read: {read:?})"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Checks one case and, every [`LIVENESS_EVERY`] cases, that a normal request still gets 200.
fn check_h1(request: &[u8], expect: &Expect, count: &AtomicU64) -> Result<(), TestCaseError> {
    let edge = edge();
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let (status, body) = exchange(edge.addr, request).map_err(TestCaseError::fail)?;
    let shown = String::from_utf8_lossy(request);
    match expect {
        Expect::Ok(len) => {
            prop_assert_eq!(status, 200, "{:?} -> {} {}", shown, status, body);
            prop_assert_eq!(body, format!("Ok({len})"), "{:?}", shown);
        }
        Expect::Status(want) => {
            prop_assert_eq!(status, *want, "{:?} -> {} {}", shown, status, body);
        }
    }
    if n.is_multiple_of(LIVENESS_EVERY) {
        let normal = b"GET /alive HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let (status, _) = exchange(edge.addr, normal).map_err(TestCaseError::fail)?;
        prop_assert_eq!(status, 200, "a normal request after {} cases", n);
    }
    prop_assert_eq!(panics(), 0, "a sidecar thread panicked");
    Ok(())
}

/// A part of a message: its bytes and whether it is well-formed.
type Part = (Vec<u8>, bool);

/// `valid` with one byte of `bad` inserted at a random place (after its first `keep` bytes).
fn corrupt(
    valid: impl Strategy<Value = String> + 'static,
    bad: Vec<u8>,
    keep: usize,
) -> BoxedStrategy<Part> {
    (
        valid,
        prop::sample::select(bad),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(v, b, at)| {
            let mut bytes = v.into_bytes();
            let at = keep + at.index(bytes.len() - keep + 1);
            bytes.insert(at, b);
            (bytes, false)
        })
        .boxed()
}

/// Bytes in `0..=255` except those listed.
fn bytes_except(allowed: impl Fn(u8) -> bool) -> Vec<u8> {
    (0..=255u8).filter(|b| !allowed(*b)).collect()
}

const PCHARS: &str = "[A-Za-z0-9._~!$&'()*+,;=:@/-]";

fn target() -> BoxedStrategy<Part> {
    let regex = format!("/{PCHARS}{{0,30}}(\\?{PCHARS}{{0,20}})?");
    let valid = || prop::string::string_regex(&regex).unwrap();
    // Control bytes, DEL, space, non-ASCII, and `#` (a fragment, which the sidecar refuses).
    let bad = bytes_except(|b| (0x21..0x7f).contains(&b) && b != b'#');
    prop_oneof![
        3 => valid().prop_map(|t| (t.into_bytes(), true)),
        2 => corrupt(valid(), bad, 1),
    ]
    .boxed()
}

fn version() -> BoxedStrategy<Part> {
    let bad = [
        "HTTP/1.2",
        "HTTP/2.0",
        "HTTP/0.9",
        "HTTP/3.0",
        "HTTP/1",
        "HTTP/11",
        "HTTP/1.",
        "http/1.1",
        "HTTPS/1.1",
        "HTTP 1.1",
        "HTTP/1.1x",
        "",
        "H",
    ];
    prop_oneof![
        3 => prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"])
            .prop_map(|v| (v.as_bytes().to_vec(), true)),
        1 => prop::sample::select(bad.to_vec()).prop_map(|v| (v.as_bytes().to_vec(), false)),
        1 => "[A-Z0-9/.]{1,10}"
            .prop_filter("not a valid version", |v| v != "HTTP/1.1" && v != "HTTP/1.0")
            .prop_map(|v| (v.into_bytes(), false)),
    ]
    .boxed()
}

fn method() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"
        ])
        .prop_map(str::to_owned),
        // Extension methods are tokens too.
        "[A-Z][A-Z_-]{0,11}".prop_filter("not CONNECT or PRI", |m| m != "CONNECT" && m != "PRI"),
    ]
    .boxed()
}

#[test]
fn request_lines_get_200_when_well_formed_and_400_when_not() {
    let count = AtomicU64::new(0);
    let gap = prop_oneof![
        4 => Just((b" ".to_vec(), true)),
        1 => prop::sample::select(vec!["  ", "\t", " \t"]).prop_map(|g| (g.as_bytes().to_vec(), false)),
    ];
    let case = (method(), target(), gap, version());
    let result = runner(2000).run(
        &case,
        |(method, (target, t_ok), (gap, g_ok), (version, v_ok))| {
            let mut req = format!("{method} ").into_bytes();
            req.extend_from_slice(&target);
            req.extend_from_slice(&gap);
            req.extend_from_slice(&version);
            req.extend_from_slice(b"\r\nHost: a\r\nConnection: close\r\n\r\n");
            // HEAD's answer has no body to show the length in.
            let expect = match (t_ok && g_ok && v_ok, method.as_str()) {
                (false, _) => Expect::Status(400),
                (true, "HEAD") => return head_is_200(&req, &count),
                (true, _) => Expect::Ok(0),
            };
            check_h1(&req, &expect, &count)
        },
    );
    eprintln!("request lines: {} cases", count.load(Ordering::Relaxed));
    result.unwrap();
}

fn head_is_200(req: &[u8], count: &AtomicU64) -> Result<(), TestCaseError> {
    count.fetch_add(1, Ordering::Relaxed);
    let (status, _) = exchange(edge().addr, req).map_err(TestCaseError::fail)?;
    prop_assert_eq!(status, 200);
    Ok(())
}

#[test]
fn header_names_and_values_get_200_when_well_formed_and_400_when_not() {
    let count = AtomicU64::new(0);
    // `x-` keeps generated names off the headers with a meaning of their own (host, te, ...).
    let valid_name = "x-[!#$%&'*+.^_`|~0-9A-Za-z-]{0,20}";
    // Not a token character; `:` would only end the name early.
    let bad_name = bytes_except(|b| {
        b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-:".contains(&b) || b == b'\r' || b == b'\n'
    });
    let name = prop_oneof![
        4 => valid_name.prop_map(|n| (n.into_bytes(), true)),
        2 => corrupt(valid_name, bad_name, 2),
        1 => Just((Vec::new(), false)),
    ];
    // Visible ASCII, spaces and tabs inside, and obs-text (bytes >= 0x80), which RFC 9110
    // still allows in a value.
    let value_byte = prop_oneof![
        8 => 0x20u8..0x7f,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    let valid_value = prop::collection::vec(value_byte, 0..40).prop_map(|v| (v, true));
    let bad_value_byte = bytes_except(|b| b >= 0x20 || b == b'\t' || b == b'\r' || b == b'\n');
    let bad_value = (
        prop::collection::vec(0x21u8..0x7f, 0..20),
        prop::sample::select(bad_value_byte),
        prop::collection::vec(0x21u8..0x7f, 0..20),
    )
        .prop_map(|(mut a, b, c)| {
            a.push(b);
            a.extend(c);
            (a, false)
        });
    let value = prop_oneof![3 => valid_value, 1 => bad_value];
    let result = runner(2000).run(&(name, value), |((name, n_ok), (value, v_ok))| {
        let mut req = b"GET /h HTTP/1.1\r\nHost: a\r\n".to_vec();
        req.extend_from_slice(&name);
        req.extend_from_slice(b": ");
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let expect = if n_ok && v_ok {
            Expect::Ok(0)
        } else {
            Expect::Status(400)
        };
        check_h1(&req, &expect, &count)
    });
    eprintln!(
        "header names and values: {} cases",
        count.load(Ordering::Relaxed)
    );
    result.unwrap();
}

/// One chunk: its data and the size line announcing it, or a malformed size line.
fn chunk() -> BoxedStrategy<(Vec<u8>, Vec<u8>, bool)> {
    let data = prop::collection::vec(any::<u8>(), 1..64);
    let well_formed = (
        data.clone(),
        any::<bool>(),
        0usize..3,
        prop::option::of("[a-z]{1,5}(=[a-z0-9]{1,5})?"),
    )
        .prop_map(|(d, upper, zeros, ext)| {
            let hex = format!("{}{:x}", "0".repeat(zeros), d.len());
            let mut line = if upper { hex.to_uppercase() } else { hex };
            if let Some(e) = ext {
                line = format!("{line};{e}");
            }
            (d, line.into_bytes(), true)
        });
    let bad_line = prop_oneof![
        // Not hexadecimal, empty, signed, prefixed, or past 64 bits.
        prop::sample::select(vec![
            "",
            "g",
            "zz",
            "-1",
            "+3",
            "0x3",
            "3x",
            "1 2",
            "ffffffffffffffffff",
            "\t"
        ])
        .prop_map(|l| l.as_bytes().to_vec()),
        "[g-zG-Z]{1,4}".prop_map(String::into_bytes),
    ];
    let malformed = (data.clone(), bad_line).prop_map(|(d, l)| (d, l, false));
    // Announcing fewer bytes than sent: the chunk's data is not followed by its CRLF.
    let short = data
        .prop_filter("two bytes at least", |d| d.len() >= 2)
        .prop_map(|d| {
            let line = format!("{:x}", d.len() - 1).into_bytes();
            (d, line, false)
        });
    prop_oneof![6 => well_formed, 2 => malformed, 1 => short].boxed()
}

#[test]
fn chunk_size_lines_get_200_when_well_formed_and_400_when_not() {
    let count = AtomicU64::new(0);
    let chunks = prop::collection::vec(chunk(), 1..5);
    let result = runner(2000).run(&chunks, |chunks| {
        let mut req =
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_vec();
        let mut len = 0;
        let mut ok = true;
        for (data, line, well_formed) in &chunks {
            req.extend_from_slice(line);
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(data);
            req.extend_from_slice(b"\r\n");
            len += data.len();
            ok &= well_formed;
            if !well_formed {
                break;
            }
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let expect = if ok {
            Expect::Ok(len)
        } else {
            Expect::Status(400)
        };
        check_h1(&req, &expect, &count)
    });
    eprintln!("chunked bodies: {} cases", count.load(Ordering::Relaxed));
    result.unwrap();
}

#[test]
fn a_chunked_body_past_the_limit_gets_413_and_a_bad_chunk_400_not_502() {
    let edge = edge();
    let head =
        b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let mut req = head.to_vec();
    for _ in 0..3 {
        req.extend_from_slice(format!("{:x}\r\n", MAX_BODY / 2).as_bytes());
        req.extend(std::iter::repeat_n(b'a', MAX_BODY / 2));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = exchange(edge.addr, &req).unwrap();
    assert_eq!(status, 413, "{body}");
    let mut req = head.to_vec();
    req.extend_from_slice(b"zz\r\nabc\r\n0\r\n\r\n");
    let (status, body) = exchange(edge.addr, &req).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("request body"), "{body}");
}
