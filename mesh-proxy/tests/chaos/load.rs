//! The load generator: worker threads sending requests for a scenario's whole duration, every
//! outcome counted.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A time-out per I/O step: longer than any route time-out the scenarios configure, so that a
/// stalled request shows as the proxy's answer, not the client's.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// What the load sends, and whether it retries a refused connect on the next target.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Sidecar listeners to send to; worker `i` starts at `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    /// The `Host` header (the service routed to).
    pub host: String,
    /// Concurrent workers.
    pub workers: usize,
    /// Pause between one worker's requests (keeps the TIME_WAIT count and CPU bounded).
    pub pause: Duration,
    /// Retry a request whose connect was refused (it reached no one) on the next target, at
    /// most this many times; 0 for no retries. Nothing else is retried.
    pub retry_refused: u32,
}

/// Counts by outcome: `200`, `504`, `connect refused`, `reset`, `timeout`, ...
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Outcome → count.
    pub by_outcome: BTreeMap<String, u64>,
    /// Connects refused and retried on the next target (not failures: nothing was sent).
    pub retried_refused: u64,
}

impl Tally {
    /// All requests with an outcome (retries of refused connects count once, by their end).
    pub fn sent(&self) -> u64 {
        self.by_outcome.values().sum()
    }

    /// Requests that did not end in `200`.
    pub fn failed(&self) -> u64 {
        self.sent() - self.by_outcome.get("200").copied().unwrap_or(0)
    }

    /// One line for the report: `sent N, failed M, {outcome: count}`.
    pub fn line(&self) -> String {
        format!(
            "sent {}, failed {}, retried refused connects {}, outcomes {:?}",
            self.sent(),
            self.failed(),
            self.retried_refused,
            self.by_outcome
        )
    }

    fn add(&mut self, other: &Tally) {
        for (k, v) in &other.by_outcome {
            *self.by_outcome.entry(k.clone()).or_default() += v;
        }
        self.retried_refused += other.retried_refused;
    }
}

/// Load running in the background until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
    live: Arc<Mutex<Tally>>,
}

impl Load {
    /// Starts `spec.workers` threads.
    pub fn start(spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Tally::default()));
        let workers = (0..spec.workers)
            .map(|i| {
                let (spec, stop, live) = (spec.clone(), stop.clone(), live.clone());
                std::thread::spawn(move || worker(i, &spec, &stop, &live))
            })
            .collect();
        Load {
            stop,
            workers,
            live,
        }
    }

    /// The counts so far (updated after every request).
    pub fn snapshot(&self) -> Tally {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the workers, lets their in-flight requests finish, and returns the counts.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Release);
        let mut total = Tally::default();
        for w in self.workers {
            if let Ok(t) = w.join() {
                total.add(&t);
            }
        }
        total
    }
}

fn worker(i: usize, spec: &LoadSpec, stop: &AtomicBool, live: &Mutex<Tally>) -> Tally {
    let mut mine = Tally::default();
    let mut next = i;
    while !stop.load(Ordering::Acquire) {
        let mut retries = 0;
        let outcome = loop {
            let target = spec.targets[next % spec.targets.len()];
            next += 1;
            match one_request(target, &spec.host) {
                Err(Failure::Refused) if retries < spec.retry_refused => {
                    retries += 1;
                    mine.retried_refused += 1;
                    live.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retried_refused += 1;
                }
                Ok(status) => break status.to_string(),
                Err(f) => break f.to_string(),
            }
        };
        *mine.by_outcome.entry(outcome.clone()).or_default() += 1;
        *live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_outcome
            .entry(outcome)
            .or_default() += 1;
        std::thread::sleep(spec.pause);
    }
    mine
}

#[derive(Debug)]
enum Failure {
    /// The connect was refused: the request reached no one.
    Refused,
    /// Any other error, after the connect succeeded or while connecting.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => f.write_str("connect refused"),
            Failure::Other(what) => f.write_str(what),
        }
    }
}

/// One `GET /` on a fresh connection (`Connection: close`), so that every failure belongs to
/// exactly one request and a refused connect provably sent nothing.
fn one_request(target: SocketAddr, host: &str) -> Result<u16, Failure> {
    let mut s = TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(|e| match e.kind() {
        ErrorKind::ConnectionRefused => Failure::Refused,
        k => Failure::Other(format!("connect {k:?}")),
    })?;
    let io = |e: std::io::Error| Failure::Other(format!("io {:?}", e.kind()));
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut buf = Vec::with_capacity(512);
    s.read_to_end(&mut buf).map_err(io)?;
    let head = String::from_utf8_lossy(&buf);
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(s) => Ok(s),
        None if buf.is_empty() => Err(Failure::Other("closed without a response".into())),
        None => Err(Failure::Other("malformed response".into())),
    }
}
