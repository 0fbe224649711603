//! Control-plane scale: 1,000 (or 10,000: `XDS_SCALE_SUBSCRIBERS=10000`) concurrent delta-ADS
//! subscribers (the load generator below, one HTTP/2 connection each, ACKing every response),
//! 10,000 endpoints (100 services × 100).
//!
//! The control plane runs in a child process (this binary re-executed with
//! `MESH_XDS_SCALE_SERVER=1`), so its memory and CPU are measured apart from the load generator:
//!
//! - criterion times one endpoint change: from the snapshot being set to all subscribers
//!   holding the new version of that one assignment (target < 1 s for 10,000);
//! - printed once: the server's memory per subscriber (RSS growth from 0 to 1,000 synced
//!   subscribers, / 1,000; target < 30 KB) and its CPU time per push (per subscriber).
//!
//! All subscribers run in this one process (one Tokio runtime, two workers): 10,000 connections
//! need 10,000 descriptors here and as many in the server, so the bench raises its
//! `RLIMIT_NOFILE` soft limit to the hard limit (the server child inherits it) and refuses to
//! start when that is too low. Connects are paced (at most `CONNECTING` at once) so the
//! listener's accept queue never overflows into SYN retries.
//!
//! `cargo bench -p mesh-benches --bench xds_scale -- --warm-up-time 1 --measurement-time 3`
//! (`XDS_SCALE_SUBSCRIBERS` overrides the 1,000; beyond 1,000 criterion takes 10 flat samples; `XDS_SCALE_SOTW=1` uses state-of-the-world
//! subscribers instead of delta ones; `XDS_SCALE_SERVER_WRAP="heaptrack -o /tmp/xds"` profiles
//! the server's live heap at sync; `XDS_SCALE_MALLOC_DEFAULTS=1` leaves glibc untuned.)
//! Figures and the heap profile: benches/XDS_SCALE.md.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use mesh_xds::server::{Snapshot, SnapshotCache, XdsServer};
use mesh_xds::source::{EndpointSpec, MeshSpec, ServiceSpec};
use mesh_xds::ResourceType;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

const SERVICES: usize = 100;
const ENDPOINTS_PER_SERVICE: usize = 100;
const CHANGED: &str = "svc-0";
/// Subscribers connecting (TCP + HTTP/2 handshake + first request) at once.
const CONNECTING: usize = 256;

/// The mesh: 100 services of 100 endpoints; `flip` moves one endpoint of `svc-0` to another
/// port.
fn spec(flip: bool) -> MeshSpec {
    let mut spec = MeshSpec::default();
    for s in 0..SERVICES {
        let mut svc = ServiceSpec::named(format!("svc-{s}"));
        for e in 0..ENDPOINTS_PER_SERVICE {
            let port = if flip && s == 0 && e == 0 { 8081 } else { 8080 };
            let ip = std::net::Ipv4Addr::new(10, 1, s as u8, e as u8 + 1);
            svc.endpoints.push(EndpointSpec {
                address: SocketAddr::from((ip, port)),
                weight: 1,
                zone: format!("zone-{}", e % 3),
                metadata: Default::default(),
            });
        }
        spec.services.push(svc);
    }
    spec
}

fn fallback(flip: bool) -> Snapshot {
    spec(flip).snapshots().expect("valid spec").fallback
}

fn changed_version(snap: &Snapshot) -> u64 {
    snap.of(ResourceType::Endpoint)
        .get(CHANGED)
        .map(|r| r.hash())
        .unwrap_or_default()
}

// ---- the control plane, in the child process ------------------------------------------------

fn run_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let snaps = [fallback(false), fallback(true)];
    let cache = SnapshotCache::new();
    cache.set_fallback(snaps[0].clone()).expect("set");
    let (addr, _task) = rt
        .block_on(
            XdsServer::new(cache.clone())
                .max_concurrent_streams(100_000)
                .spawn("127.0.0.1:0".parse().expect("addr")),
        )
        .expect("serve");
    println!("{addr}");
    let mut flip = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "exit" {
            // Exit with everything still allocated, so a heap profiler wrapping this process
            // (XDS_SCALE_SERVER_WRAP) reports what 1,000 synced subscribers hold as "leaked".
            std::process::exit(0);
        }
        if line.trim() == "flip" {
            flip = !flip;
            cache
                .set_fallback(snaps[usize::from(flip)].clone())
                .expect("set");
            println!("ok");
        }
    }
}

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Server {
    fn start() -> Self {
        let exe = std::env::current_exe().expect("exe");
        // XDS_SCALE_SERVER_WRAP runs the server under a profiler, e.g. "heaptrack -o /tmp/xds".
        let wrap = std::env::var("XDS_SCALE_SERVER_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut c = Command::new(first);
                c.args(words).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.env("MESH_XDS_SCALE_SERVER", "1");
        // glibc keeps freed memory in its arenas, so RSS would count the transient
        // initial-sync buffers as if live; serve big blocks from mmap and trim eagerly so
        // RSS reflects what the server holds (also a sensible production setting).
        // XDS_SCALE_MALLOC_DEFAULTS=1 leaves glibc as it is, to see what fragmentation adds.
        if std::env::var_os("XDS_SCALE_MALLOC_DEFAULTS").is_none() {
            cmd.env(
                "MALLOC_MMAP_THRESHOLD_",
                std::env::var("XDS_SCALE_MMAP").unwrap_or("65536".into()),
            )
            .env("MALLOC_TRIM_THRESHOLD_", "65536")
            .env("MALLOC_ARENA_MAX", "2");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        // The first line that parses as an address (a profiler may print its own lines first).
        let addr = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).expect("server address") == 0 {
                panic!("the server exited before printing its address");
            }
            if let Ok(addr) = line.trim().parse() {
                break addr;
            }
        };
        Self {
            child,
            stdin,
            stdout,
            addr,
        }
    }

    /// Asks the server to exit at once, holding everything (for a heap profiler's leak report).
    fn exit(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }

    fn flip(&mut self) {
        writeln!(self.stdin, "flip").expect("flip");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("ok");
    }

    /// Resident set size in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// User + system CPU time.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the ")" of the command name: utime and stime are the 12th and 13th.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10) // USER_HZ = 100 on Linux
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the load generator -----------------------------------------------------------------------

/// What every subscriber reports to: the version of `svc-0` to wait for, and how many have it.
#[derive(Default)]
struct Progress {
    target: AtomicU64,
    have: AtomicUsize,
}

fn delta_request(kind: ResourceType, subscribe: Vec<String>, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: kind.type_url().to_owned(),
        resource_names_subscribe: subscribe,
        response_nonce: nonce.to_owned(),
        ..DeltaDiscoveryRequest::default()
    }
}

/// One Envoy-like delta ADS subscriber on its own connection: CDS and LDS wildcard, EDS for every
/// cluster, RDS for the outbound routes; ACKs everything.
async fn subscriber(addr: SocketAddr, id: usize, progress: Arc<Progress>, pace: Arc<Semaphore>) {
    // Held until the stream is open (dropped on every early return too).
    let permit = pace.acquire_owned().await;
    let Ok(mut client) = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await
    else {
        return;
    };
    let (tx, rx) = mpsc::channel(16);
    // XDS_SCALE_BARE: only the listeners, to measure the transport's own cost per subscriber.
    let bare = std::env::var_os("XDS_SCALE_BARE").is_some();
    let first_kind = if bare {
        ResourceType::Listener
    } else {
        ResourceType::Cluster
    };
    let mut first = delta_request(first_kind, vec![], "");
    first.node = Some(Node {
        id: format!("load-{id}"),
        ..Node::default()
    });
    let _ = tx.send(first).await;
    let _ = tx
        .send(delta_request(ResourceType::Listener, vec![], ""))
        .await;
    let Ok(resp) = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    drop(permit);
    let mut stream = resp.into_inner();
    let mut held: HashMap<String, u64> = HashMap::new();
    while let Ok(Some(r)) = stream.message().await {
        let r: DeltaDiscoveryResponse = r;
        let kind = ResourceType::from_type_url(&r.type_url);
        let mut follow_up = None;
        match kind {
            Some(ResourceType::Cluster) => {
                let names = r.resources.iter().map(|x| x.name.clone()).collect();
                follow_up = Some(delta_request(ResourceType::Endpoint, names, ""));
            }
            Some(ResourceType::Listener) if bare => {
                progress.have.fetch_add(1, Ordering::AcqRel);
            }
            Some(ResourceType::Listener) => {
                follow_up = Some(delta_request(
                    ResourceType::Route,
                    vec!["outbound".into()],
                    "",
                ));
            }
            Some(ResourceType::Endpoint) => {
                for x in &r.resources {
                    let v = u64::from_str_radix(&x.version, 16).unwrap_or(0);
                    held.insert(x.name.clone(), v);
                    if x.name == CHANGED && v == progress.target.load(Ordering::Acquire) {
                        progress.have.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
            _ => {}
        }
        let mut ack = delta_request(kind.unwrap_or(ResourceType::Route), vec![], &r.nonce);
        ack.type_url = r.type_url.clone();
        if tx.send(ack).await.is_err() {
            return;
        }
        if let Some(f) = follow_up {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    }
}

/// One Envoy-like state-of-the-world ADS subscriber (`XDS_SCALE_SOTW`): same subscriptions,
/// every response ACKed with its version, nonce and names. It has the change when the EDS
/// response's version is the target type version.
async fn sotw_subscriber(
    addr: SocketAddr,
    id: usize,
    progress: Arc<Progress>,
    pace: Arc<Semaphore>,
) {
    // Held until the stream is open (dropped on every early return too).
    let permit = pace.acquire_owned().await;
    let Ok(mut client) = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await
    else {
        return;
    };
    let req = |kind: ResourceType, names: &[String], version: &str, nonce: &str| DiscoveryRequest {
        type_url: kind.type_url().to_owned(),
        resource_names: names.to_vec(),
        version_info: version.to_owned(),
        response_nonce: nonce.to_owned(),
        ..DiscoveryRequest::default()
    };
    let (tx, rx) = mpsc::channel(16);
    let mut first = req(ResourceType::Cluster, &[], "", "");
    first.node = Some(Node {
        id: format!("load-{id}"),
        ..Node::default()
    });
    let _ = tx.send(first).await;
    let _ = tx.send(req(ResourceType::Listener, &[], "", "")).await;
    let Ok(resp) = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    drop(permit);
    let mut stream = resp.into_inner();
    let mut names: HashMap<ResourceType, Vec<String>> = HashMap::new();
    while let Ok(Some(r)) = stream.message().await {
        let Some(kind) = ResourceType::from_type_url(&r.type_url) else {
            continue;
        };
        let mut follow_up = None;
        match kind {
            ResourceType::Cluster => {
                let eds: Vec<String> = r
                    .resources
                    .iter()
                    .filter_map(|a| mesh_xds::server::Resource::from_any(a.clone()).ok())
                    .map(|x| x.name().to_owned())
                    .collect();
                if names.get(&ResourceType::Endpoint) != Some(&eds) {
                    follow_up = Some(req(ResourceType::Endpoint, &eds, "", ""));
                    names.insert(ResourceType::Endpoint, eds);
                }
            }
            ResourceType::Listener if !names.contains_key(&ResourceType::Route) => {
                let rds = vec!["outbound".to_owned()];
                follow_up = Some(req(ResourceType::Route, &rds, "", ""));
                names.insert(ResourceType::Route, rds);
            }
            ResourceType::Endpoint => {
                let v = u64::from_str_radix(&r.version_info, 16).unwrap_or(0);
                if v == progress.target.load(Ordering::Acquire) {
                    progress.have.fetch_add(1, Ordering::AcqRel);
                }
            }
            _ => {}
        }
        let own = names.get(&kind).cloned().unwrap_or_default();
        if tx
            .send(req(kind, &own, &r.version_info, &r.nonce))
            .await
            .is_err()
        {
            return;
        }
        if let Some(f) = follow_up {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    }
}

fn wait_all(progress: &Progress, n: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while progress.have.load(Ordering::Acquire) < n {
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Some(start.elapsed())
}

fn subscribers() -> usize {
    std::env::var("XDS_SCALE_SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn bench(c: &mut Criterion) {
    let n = subscribers();
    let sotw = std::env::var_os("XDS_SCALE_SOTW").is_some();
    // Delta subscribers wait for the changed assignment's version, SotW ones for the EDS type
    // version: both are content hashes the load generator computes from the same spec.
    let version = |flip: bool| {
        let snap = fallback(flip);
        if sotw {
            snap.of(ResourceType::Endpoint).version_hash()
        } else {
            changed_version(&snap)
        }
    };
    let versions = [version(false), version(true)];
    let eds = fallback(false);
    let eds_bytes: usize = eds
        .of(ResourceType::Endpoint)
        .items()
        .values()
        .map(|r| r.any().value.len())
        .sum();
    eprintln!("xds_scale: the 100 endpoint assignments encode to {eds_bytes} bytes");
    let mut server = Server::start();
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = server.rss();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let progress = Arc::new(Progress::default());
    progress.target.store(versions[0], Ordering::Release);
    let start = Instant::now();
    let pace = Arc::new(Semaphore::new(CONNECTING));
    for id in 0..n {
        if sotw {
            rt.spawn(sotw_subscriber(
                server.addr,
                id,
                progress.clone(),
                pace.clone(),
            ));
        } else {
            rt.spawn(subscriber(server.addr, id, progress.clone(), pace.clone()));
        }
    }
    let synced = wait_all(&progress, n, Duration::from_secs(120 + n as u64 / 50));
    let Some(_) = synced else {
        panic!(
            "only {} of {n} subscribers synced",
            progress.have.load(Ordering::Acquire)
        );
    };
    eprintln!(
        "xds_scale: {n} subscribers synced 10,000 endpoints in {:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss_synced = server.rss();
    eprintln!(
        "xds_scale: server RSS idle {:.1} MiB (shared resources), with {n} subscribers {:.1} MiB: \
         {:.1} KB per subscriber",
        rss_idle as f64 / 1048576.0,
        rss_synced as f64 / 1048576.0,
        (rss_synced.saturating_sub(rss_idle)) as f64 / n as f64 / 1024.0
    );

    if std::env::var_os("XDS_SCALE_SERVER_WRAP").is_some() {
        server.exit();
        rt.shutdown_timeout(Duration::from_secs(1));
        return;
    }

    let mut flipped = false;
    let mut pushes = 0u64;
    let cpu_before = server.cpu();
    let mut group = c.benchmark_group("xds_scale");
    if n > 1000 {
        // A change to 10,000 takes about a second: criterion's default 100 samples of a
        // growing number of iterations would take many minutes.
        group
            .sample_size(10)
            .sampling_mode(criterion::SamplingMode::Flat);
    }
    group.bench_function(
        format!(
            "one_endpoint_change_to_{n}_{}_subscribers",
            if sotw { "sotw" } else { "delta" }
        ),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    flipped = !flipped;
                    progress
                        .target
                        .store(versions[usize::from(flipped)], Ordering::Release);
                    progress.have.store(0, Ordering::Release);
                    let t = Instant::now();
                    server.flip();
                    wait_all(&progress, n, Duration::from_secs(30))
                        .expect("every subscriber got the change");
                    total += t.elapsed();
                    pushes += 1;
                }
                total
            })
        },
    );
    group.finish();
    let cpu = server.cpu().saturating_sub(cpu_before);
    eprintln!(
        "xds_scale: server CPU {:?} for {pushes} changes to {n} subscribers: {:.1} µs per push \
         per subscriber, {:.2} ms per change",
        cpu,
        cpu.as_secs_f64() * 1e6 / (pushes.max(1) as f64 * n as f64),
        cpu.as_secs_f64() * 1e3 / pushes.max(1) as f64
    );
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn translate(c: &mut Criterion) {
    let spec = spec(false);
    c.bench_function("xds_scale/translate_mesh_10k_endpoints", |b| {
        b.iter(|| spec.snapshots().expect("valid"))
    });
}

/// Raises this process's open-file soft limit to its hard limit (children inherit it), and
/// returns the limit.
#[cfg(unix)]
fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            eprintln!("xds_scale: cannot raise RLIMIT_NOFILE: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(not(unix))]
fn raise_nofile() -> u64 {
    u64::MAX
}

fn main() {
    let nofile = raise_nofile();
    if std::env::var_os("MESH_XDS_SCALE_SERVER").is_some() {
        run_server();
        return;
    }
    // One descriptor per connection, plus headroom for the runtime, pipes and criterion.
    let need = subscribers() as u64 + 256;
    assert!(
        nofile >= need,
        "{} subscribers need an open-file limit of {need}; the hard limit is {nofile} \
         (raise it with `ulimit -Hn` as root, or lower XDS_SCALE_SUBSCRIBERS)",
        subscribers()
    );
    let mut c = Criterion::default().configure_from_args();
    translate(&mut c);
    bench(&mut c);
    c.final_summary();
}
