//! Request targets with a fragment (`GET /x#frag HTTP/1.1`), which Envoy answers with 400.
//!
//! A fragment is not part of a request target (RFC 9112 §3.2), but hyper hands the service a
//! `Uri` with the fragment already dropped (the `http` crate truncates at `#`), so the edge
//! cannot see it in the request. This module spots such request lines in the bytes an HTTP/1
//! connection reads (a `#` in a read is rare, so the common cost is one `memchr` per read) and
//! queues their targets; the edge then answers the request with that target 400.
//!
//! Best effort, and documented as such: a request line split across two reads with the `#` in
//! the second one is not seen, and HTTP/2 `:path`s are HPACK-encoded (their fragment is dropped
//! the same way). A body line that looks exactly like a request line with a fragment is
//! queued too, and only matters if the connection's next request has that very target.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// At most this many targets wait for their request (pipelined requests, or false positives).
const MAX_QUEUED: usize = 8;

/// The fragment-bearing targets seen on one connection, in order.
#[derive(Debug, Default)]
pub(crate) struct Fragments {
    /// Set while `queue` is not empty: the per-request check is one atomic load.
    pending: AtomicBool,
    /// Each target as hyper will show it (cut at the `#`).
    queue: Mutex<VecDeque<Box<[u8]>>>,
}

impl Fragments {
    /// Scans `read`, bytes just read; `at_line_start` says whether they begin a line (the
    /// connection's first bytes, or the previous read ended with `\n`).
    pub(crate) fn scan(&self, read: &[u8], at_line_start: bool) {
        if !read.contains(&b'#') {
            return;
        }
        let mut lines = read.split(|b| *b == b'\n');
        if !at_line_start {
            // The first piece continues a line begun in an earlier read.
            lines.next();
        }
        for line in lines {
            if let Some(target) = fragment_target(line) {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if q.len() == MAX_QUEUED {
                    q.pop_front();
                }
                q.push_back(target.into());
                self.pending.store(true, Ordering::Release);
            }
        }
    }

    /// Whether the request whose target hyper parsed as `uri` carried a fragment. The matching
    /// queued target is removed with those queued before it (requests are served in order);
    /// without a match the queue stays as it is (the targets of later pipelined requests).
    pub(crate) fn take(&self, uri: &http::Uri) -> bool {
        if !self.pending.load(Ordering::Acquire) {
            return false;
        }
        // Origin form is shown as its path and query, absolute form as the whole URI.
        let target = uri.to_string();
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(at) = q.iter().position(|t| **t == *target.as_bytes()) else {
            return false;
        };
        q.drain(..=at);
        self.pending.store(!q.is_empty(), Ordering::Release);
        true
    }
}

/// The target cut at its `#` when `line` is an HTTP/1 request line whose target has a
/// fragment: `METHOD SP target SP HTTP/1.x` (the version may be cut off by the read's end).
fn fragment_target(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let sp = line.iter().position(|b| *b == b' ')?;
    let (method, rest) = (&line[..sp], &line[sp + 1..]);
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let end = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
    let (target, version) = (&rest[..end], rest.get(end + 1..).unwrap_or_default());
    let plausible_version = b"HTTP/1.".iter().zip(version).all(|(a, b)| a == b);
    if !plausible_version || target.is_empty() {
        return None;
    }
    let hash = target.iter().position(|b| *b == b'#')?;
    Some(&target[..hash])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().expect("a valid URI")
    }

    #[test]
    fn request_lines_with_a_fragment_are_queued_cut_at_the_hash() {
        let f = Fragments::default();
        f.scan(b"GET /exact#frag HTTP/1.1\r\nHost: a\r\n\r\n", true);
        f.scan(b"GET /clean HTTP/1.1\r\nHost: a#b\r\n\r\n", true);
        f.scan(b"POST /p?q=1#x HTTP/1.1\r\n", true);
        assert!(!f.take(&uri("/clean")));
        assert!(f.take(&uri("/p?q=1")), "drops /exact, queued before it");
        assert!(!f.take(&uri("/exact")));
        assert!(!f.take(&uri("/p?q=1")), "taken once");
        f.scan(b"GET /a#b HTTP/1.1\r\n", true);
        assert!(f.take(&uri("/a")));
    }

    #[test]
    fn only_request_lines_count() {
        let f = Fragments::default();
        f.scan(b"x-h: GET /a#b HTTP/1.1\r\n", true);
        f.scan(b"# a comment\n", true);
        f.scan(b"get /a#b HTTP/1.1\r\n", true);
        f.scan(b"GET /a#b SPDY/3\r\n", true);
        f.scan(b"GET /a#b HTTP/1.1\r\n", false);
        assert!(!f.take(&uri("/a")));
        f.scan(b"GET /a#b HT", true);
        assert!(
            f.take(&uri("/a")),
            "a version cut by the read's end is plausible"
        );
    }
}
