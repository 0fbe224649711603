//! Real HTTP servers on loopback for the integration tests, and request helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_core::extensions::{RequestHash, RetryAttempt, TargetCluster};
use mesh_core::{body, Cluster, ClusterLoadAssignment, Endpoint, LbPolicy, MeshError, Reload};
use mesh_lb::{ClusterManager, LoadBalance, Upstream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// A hyper server (HTTP/1.1 and h2c) answering with its id; stopped on drop.
pub struct TestServer {
    pub id: usize,
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// Requests answered (health checks excluded).
    pub served: Arc<AtomicUsize>,
    /// Health-check requests answered.
    pub health_checks: Arc<AtomicUsize>,
    /// Status of ordinary requests.
    pub status: Arc<AtomicU16>,
    /// Status of `/health`.
    pub health: Arc<AtomicU16>,
    /// Delay before answering ordinary requests, in ms.
    pub delay_ms: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestServer {
    pub async fn start(id: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Self {
            id,
            addr,
            accepted: Default::default(),
            open: Default::default(),
            served: Default::default(),
            health_checks: Default::default(),
            status: Arc::new(AtomicU16::new(200)),
            health: Arc::new(AtomicU16::new(200)),
            delay_ms: Default::default(),
            stop: CancellationToken::new(),
        };
        let (accepted, open, served, hcs, status, health, delay, stop) = (
            s.accepted.clone(),
            s.open.clone(),
            s.served.clone(),
            s.health_checks.clone(),
            s.status.clone(),
            s.health.clone(),
            s.delay_ms.clone(),
            s.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (open, served, hcs, status, health, delay, stop) = (
                    open.clone(),
                    served.clone(),
                    hcs.clone(),
                    status.clone(),
                    health.clone(),
                    delay.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (served, hcs, status, health, delay) = (
                            served.clone(),
                            hcs.clone(),
                            status.clone(),
                            health.clone(),
                            delay.clone(),
                        );
                        async move {
                            let code = if req.uri().path() == "/health" {
                                hcs.fetch_add(1, Ordering::SeqCst);
                                health.load(Ordering::SeqCst)
                            } else {
                                let d = delay.load(Ordering::SeqCst);
                                if d > 0 {
                                    tokio::time::sleep(Duration::from_millis(d)).await;
                                }
                                served.fetch_add(1, Ordering::SeqCst);
                                status.load(Ordering::SeqCst)
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(id.to_string())));
                            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        s
    }
}

pub async fn servers(n: usize) -> Vec<TestServer> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(TestServer::start(i).await);
    }
    v
}

/// A static cluster over these servers with these weights.
pub fn cluster(name: &str, policy: LbPolicy, servers: &[TestServer], weights: &[u32]) -> Cluster {
    let mut c = Cluster::new(name);
    c.lb_policy = policy;
    c.load_assignment = Some(assignment(name, servers, weights));
    c
}

pub fn assignment(name: &str, servers: &[TestServer], weights: &[u32]) -> ClusterLoadAssignment {
    let mut la = ClusterLoadAssignment::from_addrs(name, servers.iter().map(|s| s.addr));
    for (e, w) in la.endpoints[0].lb_endpoints.iter_mut().zip(weights) {
        e.weight = *w;
    }
    la
}

pub fn endpoint(s: &TestServer) -> Endpoint {
    Endpoint::new(s.addr)
}

pub fn manager(clusters: Vec<Cluster>) -> ClusterManager {
    let m = ClusterManager::new();
    m.reload(clusters).unwrap();
    m
}

/// Options for one request.
#[derive(Default, Clone, Copy)]
pub struct Opts {
    pub hash: Option<u64>,
    pub retry: Option<u32>,
}

/// Sends one request to `cluster`; the server id on success, the mesh error otherwise.
pub async fn send(
    svc: &LoadBalance<Upstream>,
    cluster: &str,
    o: Opts,
) -> Result<(u16, usize), MeshError> {
    let svc = svc.clone();
    let mut req = Request::get("/work").body(body::empty()).unwrap();
    req.extensions_mut().insert(TargetCluster::new(cluster));
    if let Some(h) = o.hash {
        req.extensions_mut().insert(RequestHash(h));
    }
    if let Some(r) = o.retry {
        req.extensions_mut().insert(RetryAttempt(r));
    }
    let mut svc = svc;
    // A concrete future type (no `<S as Service<_>>::Future` projection held across an await)
    // sidesteps rustc's "not general enough" error on auto-trait inference.
    let fut: mesh_lb::ResponseFuture<mesh_lb::UpstreamFuture> = svc.call(req);
    let resp = fut.await.map_err(MeshError::from_boxed)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(MeshError::from_boxed)?
        .to_bytes();
    let id = std::str::from_utf8(&body).unwrap().parse().unwrap();
    Ok((status, id))
}

/// Sends `n` requests one after the other; counts per server id.
pub async fn tally(
    svc: &LoadBalance<Upstream>,
    cluster: &str,
    n: usize,
    servers: usize,
) -> Vec<usize> {
    let mut c = vec![0; servers];
    for _ in 0..n {
        let (_, id) = send(svc, cluster, Opts::default()).await.unwrap();
        c[id] += 1;
    }
    c
}

/// Polls `f` every 10 ms for at most `secs` seconds.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
