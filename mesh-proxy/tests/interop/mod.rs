//! Shared by the mTLS interop tests: our control plane in-process on a mesh.yaml, our dynamic
//! sidecars and real Envoys fed by it, an app speaking HTTP/1.1, h2c and gRPC, and clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_testkit::IssuedCert;
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Our control plane serving `yaml` (file source, ADS), on the current runtime.
pub struct ControlPlane {
    pub addr: SocketAddr,
    pub cache: SnapshotCache,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
        let cache = SnapshotCache::new();
        cache.set_validator(mesh_core_validator());
        let source = FileSource::new(&path, cache.clone());
        let status = source.status();
        source.spawn(Duration::from_millis(50)).unwrap();
        assert!(
            status.borrow().last_error.is_none(),
            "{:?}",
            status.borrow()
        );
        let (addr, _task) = XdsServer::new(cache.clone())
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Self {
            addr,
            cache,
            path,
            _dir: dir,
        }
    }

    /// Our dynamic sidecar for node `node`, ready.
    pub async fn sidecar(&self, node: &str) -> Sidecar {
        let mut o = DynamicOptions::new(vec![format!("http://{}", self.addr)], node);
        o.admin = SocketAddr::from(([127, 0, 0, 1], mesh_testkit::free_port()));
        o.drain_timeout = Duration::from_secs(1);
        let s = Sidecar::start_dynamic(o).await.unwrap();
        let admin = s.admin_addr();
        let ready = tokio::task::spawn_blocking(move || {
            mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
                matches!(mesh_testkit::http_get(admin, "/ready"), Ok((200, _))).then_some(())
            })
        })
        .await
        .unwrap();
        assert!(ready.is_some(), "{node} never became ready");
        s
    }

    /// A real Envoy for node `node` (callers check `envoy_or_skip!` first).
    pub fn envoy(&self, node: &str) -> mesh_testkit::EnvoyProcess {
        mesh_testkit::EnvoyProcess::start(&mesh_testkit::ads_bootstrap(node, self.addr, "GRPC"))
            .unwrap()
    }
}

/// An app answering `<name> <version>` on any path, and the gRPC health service (`mesh.Hello`
/// SERVING) under `/grpc.health.v1.Health/`; HTTP/1.1 and h2c on one port.
pub async fn start_app(name: &'static str) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("mesh.Hello", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        while let Ok((s, _)) = listener.accept().await {
            let health = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut health = health.clone();
                    async move {
                        let resp: Response<UnsyncBoxBody<Bytes, BoxError>> =
                            if req.uri().path().starts_with("/grpc.health.v1.Health/") {
                                let r = tower::Service::call(&mut health, req).await?;
                                r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
                            } else {
                                let body = format!("{name} {:?}", req.version());
                                Response::new(
                                    Full::new(Bytes::from(body))
                                        .map_err(|n: Infallible| match n {})
                                        .boxed_unsync(),
                                )
                            };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// GET `/` with `Host: host` to `port` over HTTP/1.1: (status, body) or the error.
pub async fn get_h1(port: u16, host: &str) -> Result<(u16, String), String> {
    let host = host.to_owned();
    tokio::task::spawn_blocking(move || {
        mesh_testkit::http_request(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "GET",
            "/",
            &[("Host", &host)],
            b"",
        )
        .map(|r| (r.status, r.text()))
        .map_err(|e| format!("{e:#}"))
    })
    .await
    .unwrap()
}

/// GET `http://host/` to `port` over prior-knowledge HTTP/2: (status, body) or the error.
pub async fn get_h2(port: u16, host: &str) -> Result<(u16, String), String> {
    let run = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = Request::get(format!("http://{host}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A gRPC health check of `mesh.Hello` through `port` with authority `host`: the serving
/// status, or the gRPC status.
pub async fn grpc_check(port: u16, host: &str) -> Result<i32, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mesh.Hello".into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// Polls `f` every 50 ms until it returns Some, for at most `limit`.
pub async fn until<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Our sidecar's `/metrics` text.
pub async fn metrics(s: &Sidecar) -> String {
    let admin = s.admin_addr();
    tokio::task::spawn_blocking(move || mesh_testkit::http_get(admin, "/metrics").unwrap().1)
        .await
        .unwrap()
}

/// Accepts the server's chain as presented: the test reads the certificate, the sidecars check
/// identities themselves.
#[derive(Debug)]
pub struct AnyServer(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An mTLS HTTP/1.1 connection to `port` with `cert`: the sender and the certificate the server
/// presented in this handshake.
pub async fn connect(port: u16, cert: &IssuedCert) -> (Sender, CertificateDer<'static>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("web.mesh").unwrap(), tcp)
        .await
        .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, served)
}

/// GET / with `Host: host` on an established connection: the status.
pub async fn get_on(send: &mut Sender, host: &str) -> u16 {
    let req = Request::get("/")
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("timed out")
        .unwrap()
        .status()
        .as_u16()
}

/// Loops of HTTP/1.1 requests (`Host: host`) to `port` on threads, each bounded to 30 s.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, host: &'static str, loops: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads = (0..loops)
            .map(|_| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(30)
                    {
                        match mesh_testkit::http_request(addr, "GET", "/", &[("Host", host)], b"") {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            other => {
                                eprintln!("failed request to {host}: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the loops: (succeeded, failed).
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
