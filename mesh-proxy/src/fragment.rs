//! Request targets with a fragment (`GET /x#frag HTTP/1.1`), which Envoy answers with 400.
//!
//! A fragment is not part of a request target (RFC 9112 §3.2), but hyper hands the service a
//! `Uri` with the fragment already dropped (the `http` crate truncates at `#`), so the edge
//! cannot see it in the request. This module spots such request lines in the bytes an HTTP/1
//! connection reads (a `#` in a read is rare, so the common cost is one `memchr` per read) and
//! queues their targets; the edge then answers the request with that target 400.
//!
//! Best effort, and documented as such: a request line split across reads is pieced together
//! (up to 64 KiB), but HTTP/2 `:path`s are HPACK-encoded (their fragment is dropped the same
//! way). A body line that looks exactly like a request line with a fragment is
//! queued too, and only matters if the connection's next request has that very target.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// At most this many targets wait for their request (pipelined requests, or false positives).
const MAX_QUEUED: usize = 8;

/// The longest unfinished request line kept across reads; a longer one is not scanned.
const MAX_CARRIED: usize = 64 * 1024;

/// The fragment-bearing targets seen on one connection, in order.
#[derive(Debug, Default)]
pub(crate) struct Fragments {
    /// Set while `queue` is not empty: the per-request check is one atomic load.
    pending: AtomicBool,
    /// Each target as hyper will show it (cut at the `#`).
    queue: Mutex<VecDeque<Box<[u8]>>>,
    /// Set while `carry` holds the start of a line that may be a request line: a read that ends
    /// mid-line (hyper-util reads the first 24 bytes alone, to tell HTTP/2 from HTTP/1) keeps
    /// it for the next. The common read, which ends a line, takes no lock.
    carrying: AtomicBool,
    carry: Mutex<Vec<u8>>,
}

impl Fragments {
    /// Scans `read`, bytes just read; `at_line_start` says whether they begin a line (the
    /// connection's first bytes, or the previous read ended with `\n`).
    pub(crate) fn scan(&self, read: &[u8], at_line_start: bool) {
        let carrying = self.carrying.load(Ordering::Acquire);
        let ends_line = read.last() == Some(&b'\n');
        if !carrying && ends_line && !read.contains(&b'#') {
            return;
        }
        let mut carried = if carrying { self.take_carry() } else { None };
        // A read that does not begin a line continues one: the carried start, or a line not
        // kept (not a request line), which is skipped.
        let mut skip = !at_line_start && carried.is_none();
        let mut pieces = read.split(|b| *b == b'\n').peekable();
        while let Some(piece) = pieces.next() {
            let line: std::borrow::Cow<'_, [u8]> = match carried.take() {
                Some(mut start) => {
                    start.extend_from_slice(piece);
                    start.into()
                }
                None => piece.into(),
            };
            if std::mem::take(&mut skip) {
                continue;
            }
            let unfinished = pieces.peek().is_none() && !ends_line;
            if let Some(target) = fragment_target(&line) {
                // A target whose `#` is in (even if the line is not finished) is known.
                self.queue(target);
            } else if unfinished && line.len() <= MAX_CARRIED && may_be_request_line(&line) {
                // Kept for the next read, which may bring the `#`.
                self.store_carry(line.into_owned());
            }
        }
    }

    fn queue(&self, target: &[u8]) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() == MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(target.into());
        self.pending.store(true, Ordering::Release);
    }

    fn take_carry(&self) -> Option<Vec<u8>> {
        let mut c = self.carry.lock().unwrap_or_else(PoisonError::into_inner);
        self.carrying.store(false, Ordering::Release);
        Some(std::mem::take(&mut *c))
    }

    fn store_carry(&self, start: Vec<u8>) {
        *self.carry.lock().unwrap_or_else(PoisonError::into_inner) = start;
        self.carrying.store(true, Ordering::Release);
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

/// The bytes a method is made of (extension methods too: `PURGE`, `M-SEARCH`, `X_Y`), as
/// protocol detection takes them.
fn method_byte(b: &u8) -> bool {
    b.is_ascii_uppercase() || *b == b'-' || *b == b'_'
}

/// Whether the start of a line may still become a request line: a method so far, or a method
/// and a space.
fn may_be_request_line(start: &[u8]) -> bool {
    let method = start.split(|b| *b == b' ').next().unwrap_or_default();
    method.iter().all(method_byte) && (method.len() < start.len() || method.len() <= 32)
}

/// The target cut at its `#` when `line` is an HTTP/1 request line whose target has a
/// fragment: `METHOD SP target SP HTTP/1.x` (the version may be cut off by the read's end).
fn fragment_target(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let sp = line.iter().position(|b| *b == b' ')?;
    let (method, rest) = (&line[..sp], &line[sp + 1..]);
    if method.is_empty() || !method.iter().all(method_byte) {
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
        f.scan(b"M-SEARCH /m#b HTTP/1.1\r\nA_B /n# HTTP/1.1\r\n", true);
        assert!(f.take(&uri("/m")), "extension methods");
        assert!(f.take(&uri("/n")), "an empty fragment");
    }

    #[test]
    fn a_request_line_split_across_reads_is_pieced_together() {
        // hyper-util reads 24 bytes first (to tell HTTP/2's preface from HTTP/1).
        let f = Fragments::default();
        let req = b"GET /a-rather-long-target#frag HTTP/1.1\r\nHost: a\r\n\r\n";
        f.scan(&req[..24], true);
        f.scan(&req[24..30], false);
        f.scan(&req[30..], false);
        assert!(f.take(&uri("/a-rather-long-target")));
        // A body that ends mid-line is not kept, and does not hide the next request.
        f.scan(b"\x00\x01binary", true);
        f.scan(b"more#\r\n", false);
        assert!(!f.pending.load(Ordering::Acquire));
        f.scan(b"POST /b#", true);
        f.scan(b"x HTTP/1.1\r\n", false);
        assert!(f.take(&uri("/b")));
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
