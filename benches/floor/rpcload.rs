//! `bench-rpcload`: the chain benchmark's load generator for bolt and dubbo (there is no wrk for
//! them). C connections each keep P requests in flight (pipelined, ids counted per connection);
//! every response is decoded with mesh-xprotocol's codec and checked: its kind, its id (one
//! this connection sent and is still waiting for) and its status (bolt `SUCCESS`, dubbo `OK`).
//! Anything else is an error, never a success.
//!
//! ```text
//! bench-rpcload bolt|dubbo ADDR [--connections C] [--in-flight P] [--duration SECS]
//!               [--requests N] [--hold SECS] [--body-bytes N]
//! ```
//!
//! With `--duration` (default 10 s) the connections are opened first, then load runs for that
//! long and only responses that arrive inside the window count; with `--requests N` each
//! connection sends N/C requests and the run ends when all are answered (the callgrind count;
//! `--requests 0` sends none). With `--hold SECS` every connection then stays open, idle, for
//! that long: once all are done it prints `holding` (the cue for chain.py to read the proxy's
//! RSS per idle connection). `--body-bytes N` makes the argument N characters long instead of
//! ~180 (a large request, to see what buffers a proxy keeps after one).
//! Prints one line: `requests=… errors=… seconds=… rps=… p50_ms=… p99_ms=…`, and the first
//! error seen, if any, on stderr. Worker threads: `TOKIO_WORKER_THREADS` (default 2, as chain.py
//! gives wrk two threads).
//!
//! Requests look like real ones: bolt as SOFARPC writes them (the `SofaRequest` class, the
//! `service` / `sofa_head_*` header map, a ~200-byte hessian2 body); dubbo as a dubbo 2.7
//! consumer writes them (dubbo version, path, version, method, parameter descriptor, one
//! ~180-character string argument, attachments map).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use mesh_xprotocol::bolt::{self, BoltRequest};
use mesh_xprotocol::dubbo::header::{Header, FLAG_REQUEST, FLAG_TWO_WAY, HESSIAN2};
use mesh_xprotocol::dubbo::hessian2::write_string;
use mesh_xprotocol::dubbo::{self, DubboCodec};
use mesh_xprotocol::{BoltCodec, FrameKind, Protocol, XCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

const SERVICE: &str = "com.example.bench.EchoService:1.0";
const INTERFACE: &str = "com.example.bench.EchoService";
/// The argument every request carries (~180 characters, so a body of ~200 bytes).
const ARGUMENT: &str = "The quick brown fox jumps over the lazy dog; the lazy dog sleeps on. \
                        Pack my box with five dozen liquor jugs. How vexingly quick daft zebras \
                        jump! Sphinx of black quartz, judge my vow.";
/// Responses accepted from the peer (the proxy's own limit is its config's).
const MAX_FRAME: usize = 1 << 20;

struct Opts {
    protocol: Protocol,
    addr: SocketAddr,
    connections: usize,
    in_flight: usize,
    duration: Duration,
    requests: Option<u64>,
    hold: Option<Duration>,
    body_bytes: Option<usize>,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, n: u64, what: impl FnOnce() -> String) {
        self.errors += n;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// A request frame with id 0, and where its id sits (patched per request).
fn template(protocol: Protocol, body_bytes: Option<usize>) -> Bytes {
    let argument = body_bytes.map_or_else(|| ARGUMENT.to_owned(), |n| "x".repeat(n));
    match protocol {
        Protocol::Bolt => {
            // A hessian2 body shaped like SOFA's: the SofaRequest class definition, then the
            // method name, the target service and the argument.
            let mut content = BytesMut::new();
            content.put_u8(b'C');
            write_string(&mut content, "com.alipay.sofa.rpc.core.request.SofaRequest");
            content.put_u8(0x93);
            for field in ["targetServiceUniqueName", "methodName", "methodArgSigs"] {
                write_string(&mut content, field);
            }
            content.put_u8(0x60);
            write_string(&mut content, SERVICE);
            write_string(&mut content, "echo");
            write_string(&mut content, &argument);
            bolt::request(&BoltRequest {
                id: 0,
                codec: bolt::CODEC_HESSIAN2,
                timeout_ms: 3000,
                oneway: false,
                class: "com.alipay.sofa.rpc.core.request.SofaRequest",
                headers: &[
                    ("service", SERVICE),
                    ("sofa_head_target_service", SERVICE),
                    ("sofa_head_method_name", "echo"),
                    ("sofa_head_target_app", "bench"),
                ],
                content: &content,
            })
        }
        Protocol::Dubbo => {
            let mut body = BytesMut::new();
            for s in [
                "2.0.2",
                INTERFACE,
                "1.0.0",
                "echo",
                "Ljava/lang/String;",
                &argument,
            ] {
                write_string(&mut body, s);
            }
            body.put_u8(b'H');
            for (k, v) in [
                ("path", INTERFACE),
                ("interface", INTERFACE),
                ("version", "1.0.0"),
                ("timeout", "3000"),
            ] {
                write_string(&mut body, k);
                write_string(&mut body, v);
            }
            body.put_u8(b'Z');
            let header = Header {
                flag: FLAG_REQUEST | FLAG_TWO_WAY | HESSIAN2,
                status: 0,
                request_id: 0,
                body_len: body.len(),
            };
            let mut out = BytesMut::with_capacity(16 + body.len());
            out.put_slice(&header.encode());
            out.put_slice(&body);
            out.freeze()
        }
    }
}

/// Appends the template with request id `id`.
fn put_request(protocol: Protocol, template: &[u8], id: u64, out: &mut BytesMut) {
    let at = out.len();
    out.put_slice(template);
    match protocol {
        // Bolt ids are 32 bits; a connection never sends 2^32 requests in a run.
        Protocol::Bolt => out[at + 5..at + 9].copy_from_slice(&(id as u32).to_be_bytes()),
        Protocol::Dubbo => out[at + 4..at + 12].copy_from_slice(&id.to_be_bytes()),
    }
}

fn success(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Bolt => bolt::status::SUCCESS,
        Protocol::Dubbo => u16::from(dubbo::status::OK),
    }
}

/// One connection: connect, wait for the others, load, then (with `--hold`) wait until every
/// connection is done and stay open, idle, for the hold time.
async fn connection(
    opts: Arc<Opts>,
    template: Bytes,
    start: Arc<Barrier>,
    done: Arc<Barrier>,
) -> Tally {
    let stream = TcpStream::connect(opts.addr).await;
    start.wait().await;
    let mut t = Tally::default();
    let kept = match stream {
        Ok(s) => load(&opts, &template, s, &mut t).await,
        Err(e) => {
            t.error(1, || format!("connect {}: {e}", opts.addr));
            None
        }
    };
    if let Some(hold) = opts.hold {
        done.wait().await;
        tokio::time::sleep(hold).await;
    }
    drop(kept);
    t
}

/// Keeps `in_flight` requests outstanding until the window closes (or this connection's share
/// of `--requests` is answered); gives the stream back if it is still usable.
async fn load(
    opts: &Opts,
    template: &[u8],
    mut stream: TcpStream,
    t: &mut Tally,
) -> Option<TcpStream> {
    let _ = stream.set_nodelay(true);
    let codec: &dyn XCodec = match opts.protocol {
        Protocol::Bolt => &BoltCodec,
        Protocol::Dubbo => &DubboCodec,
    };
    let ok_status = success(opts.protocol);
    let budget = opts
        .requests
        .map(|n| n.div_ceil(opts.connections as u64))
        .unwrap_or(u64::MAX);
    // In --requests mode the window is a guard against a hang, not a measurement.
    let window = opts
        .requests
        .map_or(opts.duration, |_| Duration::from_secs(120));
    let stop_at = Instant::now() + window;
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(opts.in_flight);
    let (mut next_id, mut sent) = (1u64, 0u64);
    let mut wbuf = BytesMut::with_capacity(template.len() * opts.in_flight);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut now = Instant::now();
    loop {
        while pending.len() < opts.in_flight && sent < budget && now < stop_at {
            put_request(opts.protocol, template, next_id, &mut wbuf);
            pending.insert(next_id, now);
            next_id += 1;
            sent += 1;
        }
        if !wbuf.is_empty() {
            if let Err(e) = stream.write_all(&wbuf).await {
                t.error(pending.len() as u64, || format!("write: {e}"));
                return None;
            }
            wbuf.clear();
        }
        if pending.is_empty() {
            return Some(stream);
        }
        let read = tokio::time::timeout_at(stop_at.into(), stream.read_buf(&mut rbuf)).await;
        now = Instant::now();
        match read {
            // The window closed: what is still in flight is neither success nor error.
            Err(_) => {
                if opts.requests.is_some() {
                    t.error(pending.len() as u64, || "no response in 120 s".into());
                }
                return None;
            }
            Ok(Ok(0)) => {
                t.error(pending.len() as u64, || {
                    "connection closed by the peer".into()
                });
                return None;
            }
            Ok(Err(e)) => {
                t.error(pending.len() as u64, || format!("read: {e}"));
                return None;
            }
            Ok(Ok(_)) => {}
        }
        loop {
            let frame = match codec.decode(&mut rbuf, MAX_FRAME) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    t.error(pending.len() as u64, || {
                        format!("undecodable response: {e}")
                    });
                    return None;
                }
            };
            if frame.kind != FrameKind::Response {
                t.error(1, || format!("unexpected {:?} frame", frame.kind));
                continue;
            }
            let Some(sent_at) = pending.remove(&frame.request_id) else {
                t.error(1, || format!("response to unknown id {}", frame.request_id));
                continue;
            };
            if frame.status != Some(ok_status) {
                t.error(1, || format!("status {:?}", frame.status));
                continue;
            }
            t.ok += 1;
            let us = now.saturating_duration_since(sent_at).as_micros();
            t.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench-rpcload bolt|dubbo ADDR [--connections C] [--in-flight P] \
                 [--duration SECS] [--requests N] [--hold SECS] [--body-bytes N]";
    let protocol = match args.next().as_deref() {
        Some("bolt") => Protocol::Bolt,
        Some("dubbo") => Protocol::Dubbo,
        _ => return Err(usage.into()),
    };
    let addr = args
        .next()
        .ok_or(usage)?
        .parse()
        .map_err(|e| format!("ADDR: {e}"))?;
    let mut o = Opts {
        protocol,
        addr,
        connections: 32,
        in_flight: 1,
        duration: Duration::from_secs(10),
        requests: None,
        hold: None,
        body_bytes: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--connections" => o.connections = value.parse().map_err(|e| bad(&e))?,
            "--in-flight" => o.in_flight = value.parse().map_err(|e| bad(&e))?,
            "--duration" => {
                let secs: f64 = value.parse().map_err(|e| bad(&e))?;
                o.duration = Duration::try_from_secs_f64(secs).map_err(|e| bad(&e))?;
            }
            "--requests" => o.requests = Some(value.parse().map_err(|e| bad(&e))?),
            "--body-bytes" => o.body_bytes = Some(value.parse().map_err(|e| bad(&e))?),
            "--hold" => {
                let secs: f64 = value.parse().map_err(|e| bad(&e))?;
                o.hold = Some(Duration::try_from_secs_f64(secs).map_err(|e| bad(&e))?);
            }
            _ => return Err(usage.into()),
        }
    }
    if o.connections == 0 || o.in_flight == 0 {
        return Err("--connections and --in-flight must be at least 1".into());
    }
    Ok(o)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(f64::NAN, |&us| f64::from(us) / 1000.0)
}

fn main() -> std::process::ExitCode {
    let opts = match parse() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (tallies, seconds) = rt.block_on(async {
        let template = template(opts.protocol, opts.body_bytes);
        let start = Arc::new(Barrier::new(opts.connections + 1));
        let done = Arc::new(Barrier::new(opts.connections + 1));
        let tasks: Vec<_> = (0..opts.connections)
            .map(|_| {
                tokio::spawn(connection(
                    Arc::clone(&opts),
                    template.clone(),
                    Arc::clone(&start),
                    Arc::clone(&done),
                ))
            })
            .collect();
        start.wait().await;
        let began = Instant::now();
        if opts.hold.is_some() {
            done.wait().await;
            let seconds = began.elapsed().as_secs_f64();
            println!(
                "holding {} connections (load done in {seconds:.3} s)",
                opts.connections
            );
        }
        let mut tallies = Vec::with_capacity(tasks.len());
        for task in tasks {
            tallies.push(task.await.unwrap_or_else(|e| {
                let mut t = Tally::default();
                t.error(1, || format!("connection task: {e}"));
                t
            }));
        }
        let seconds = match opts.requests {
            Some(_) => began.elapsed().as_secs_f64(),
            None => opts.duration.as_secs_f64(),
        };
        (tallies, seconds)
    });
    let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
    let mut first_error = None;
    for t in tallies {
        ok += t.ok;
        errors += t.errors;
        lat.extend(t.latencies_us);
        first_error = first_error.or(t.first_error);
    }
    lat.sort_unstable();
    println!(
        "requests={ok} errors={errors} seconds={seconds:.3} rps={:.1} p50_ms={:.3} p99_ms={:.3}",
        ok as f64 / seconds,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    std::process::ExitCode::SUCCESS
}
