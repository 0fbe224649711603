//! Free loopback ports and bounded waiting.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports already handed out by this process, so two calls never collide.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0,
/// read, released). Never returns the same port twice in one process.
///
/// Another process may still grab it before you bind it; when the program
/// under test can bind port 0 and report its address (Envoy can, see
/// [`crate::EnvoyProcess::listener_addr`]), prefer that.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free TCP ports on 127.0.0.1 (all held open together while
/// they are picked, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
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
