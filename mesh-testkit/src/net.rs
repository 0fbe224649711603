//! Free loopback ports and bounded waiting.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports already handed out by this process, so two calls never collide.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Where test ports are drawn from: below Linux's ephemeral range (32768–60999 by default), so
/// the source port of some other process's outgoing connection can never take a port we handed
/// out, and spread at random, so parallel test processes (nextest runs one per test) rarely pick
/// the same one.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A TCP port on 127.0.0.1 that was free a moment ago. Never returns the same port twice in
/// one process.
///
/// Another process may still grab it before you bind it; when the program under test can bind
/// port 0 and report its address (Envoy can, see [`crate::EnvoyProcess::listener_addr`]),
/// prefer that.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free TCP ports on 127.0.0.1 (all held open together while they are picked,
/// then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::collections::hash_map::RandomState::new();
    let span = u64::from(RANGE.end - RANGE.start);
    let mut attempt = 0u64;
    while ports.len() < n {
        attempt += 1;
        let listener = if attempt < 10_000 {
            let mut h = seed.build_hasher();
            h.write_u64(attempt);
            h.write_u32(std::process::id());
            let port = RANGE.start + u16::try_from(h.finish() % span).unwrap_or(0);
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => l,
                Err(_) => continue,
            }
        } else {
            // The range is exhausted (unlikely): fall back to the kernel's choice.
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
        };
        let port = listener.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    ports
}

/// Calls `f` every `interval` until it returns `Some`, for at most
/// `timeout`; returns that value, or `None` on time-out.
pub fn wait_for<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}
