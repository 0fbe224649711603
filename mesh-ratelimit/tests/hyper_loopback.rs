//! `RateLimit` around a hello service in a real hyper server on loopback, hit by a real hyper
//! client: 429 with `retry-after` and `x-ratelimit-*` headers, gRPC status 8, and wait mode.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mesh_core::extensions::ClientAddr;
use mesh_core::{body, Body, RateLimitConfig};
use mesh_ratelimit::RateLimitLayer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceBuilder};

/// A server on 127.0.0.1:0, stopped when dropped.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(config: &str) -> Server {
    let config: RateLimitConfig = serde_yaml::from_str(config).unwrap();
    let limit = RateLimitLayer::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let hello = service_fn(|_req: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(body::full("hello")))
            });
            let svc = ServiceBuilder::new()
                .map_request(move |req: Request<Incoming>| {
                    let mut req = req.map(body::boxed);
                    req.extensions_mut().insert(ClientAddr(peer));
                    req
                })
                .service(limit.layer(BoxCloneService::new(hello)));
            // Boxing erases the closure types, which spawned futures cannot otherwise prove
            // Send for (a rustc limitation with higher-ranked lifetimes in `dyn Error`).
            let svc = BoxCloneService::new(svc);
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    Server { addr, task }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn get(client: &HttpClient, server: &Server, grpc: bool) -> Response<Bytes> {
    let mut req = Request::builder().uri(format!("http://{}/pkg.Hello/Say", server.addr));
    if grpc {
        req = req
            .method("POST")
            .header("content-type", "application/grpc");
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

const TWO_PER_HOUR: &str = r#"
rules:
  - name: per-client
    scope: listener
    token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 1h }
    descriptor: client_address
"#;

#[tokio::test]
async fn over_the_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let server = serve(TWO_PER_HOUR).await;
    let client = http1();
    for _ in 0..2 {
        let ok = get(&client, &server, false).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.body(), "hello");
    }
    let refused = get(&client, &server, false).await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers();
    assert_eq!(h["retry-after"], "3600");
    assert_eq!(h["x-ratelimit-limit"], "2");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-ratelimit-reset"], "7200");
    let text = String::from_utf8_lossy(refused.body());
    assert!(text.contains("rate limited by per-client"), "{text}");
}

#[tokio::test]
async fn grpc_calls_over_the_limit_get_grpc_status_8() {
    let server = serve(TWO_PER_HOUR).await;
    let client = h2c();
    for _ in 0..2 {
        let ok = get(&client, &server, true).await;
        assert_eq!(ok.status(), 200);
        assert!(ok.headers().get("grpc-status").is_none());
    }
    let refused = get(&client, &server, true).await;
    assert_eq!(refused.status(), 200, "gRPC errors are trailers-only 200s");
    assert_eq!(refused.headers()["grpc-status"], "8");
    assert_eq!(refused.headers()["content-type"], "application/grpc");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
}

#[tokio::test]
async fn wait_mode_spaces_requests_instead_of_refusing() {
    let server = serve(
        r#"
rules:
  - name: paced
    scope: listener
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 150ms }
    mode: { wait: { max_wait: 2s, max_waiting: 8 } }
"#,
    )
    .await;
    let client = http1();
    let start = Instant::now();
    let calls = (0..3).map(|_| {
        let client = client.clone();
        let server_addr = server.addr;
        tokio::spawn(async move {
            let req = Request::builder()
                .uri(format!("http://{server_addr}/"))
                .body(Empty::new())
                .unwrap();
            client.request(req).await.unwrap().status()
        })
    });
    let calls: Vec<_> = calls.collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let took = start.elapsed();
    // Now, +150ms, +300ms: the last cannot finish before 300ms.
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
