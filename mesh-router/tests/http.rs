//! A real hyper client's requests through a real hyper server on loopback whose service is the
//! `Router` wrapping an inner service that echoes the decision: every matcher kind, errors as
//! responses, and reloads under load, all over HTTP/1.1 and h2c.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::extensions::{MatchedRoute, TargetCluster};
use mesh_core::{body, Body, BoxError, Reload, RouteConfiguration};
use mesh_router::{HttpService, Router, RouterLayer};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

const TABLE: &str = r#"
name: main
virtual_hosts:
  - name: api
    domains: ["api.example.com"]
    routes:
      - { name: exact, match: { path: "/exact" }, route: { cluster: c-exact } }
      - { name: regex, match: { regex: "/items/[0-9]+" }, route: { cluster: c-regex } }
      - { name: grpc-method, match: { grpc: { service: pkg.Greeter, method: Hello } }, route: { cluster: c-grpc-hello } }
      - { name: grpc-service, match: { grpc: { service: pkg.Greeter } }, route: { cluster: c-grpc } }
      - name: h-exact
        match: { prefix: "/h", headers: [ { name: x-env, exact: canary } ] }
        route: { cluster: c-h-exact }
      - name: h-prefix
        match: { prefix: "/h", headers: [ { name: x-env, prefix: blue } ] }
        route: { cluster: c-h-prefix }
      - name: h-regex
        match: { prefix: "/h", headers: [ { name: x-ver, regex: "v[0-9]+" } ] }
        route: { cluster: c-h-regex }
      - name: h-present
        match: { prefix: "/h", headers: [ { name: x-debug, present: true } ] }
        route: { cluster: c-h-present }
      - name: h-inverted
        match: { prefix: "/h", headers: [ { name: x-user, exact: bot, invert: true } ] }
        route: { cluster: c-h-inverted }
      - name: query
        match: { prefix: "/q", query_parameters: [ { name: mode, exact: fast } ] }
        route: { cluster: c-query }
      - { name: ci-prefix, match: { prefix: "/Case", case_sensitive: false }, route: { cluster: c-ci } }
      - { name: by-header, match: { prefix: "/bg" }, route: { cluster_header: x-color } }
      - name: fault
        match: { prefix: "/fault" }
        route: { cluster: c-fault }
        filters: [ !fault { abort: { http_status: 503, percentage: 100 } } ]
      - name: rewrite
        match: { prefix: "/old/" }
        route: { cluster: c-rewrite, prefix_rewrite: "/new/" }
      - { name: prefix, match: { prefix: "/p/" }, route: { cluster: c-prefix } }
  - name: wild
    domains: ["*.example.com"]
    routes:
      - { name: wild, route: { cluster: c-wild } }
"#;

/// Echoes the decision: `cluster route path` in the body.
fn echo() -> HttpService {
    BoxCloneService::new(tower::service_fn(|req: Request<Body>| async move {
        let cluster = req.extensions().get::<TargetCluster>().unwrap().0.clone();
        let route = req
            .extensions()
            .get::<MatchedRoute>()
            .unwrap()
            .route
            .name
            .clone();
        let text = format!("{cluster} {route} {}", req.uri().path());
        Ok::<_, BoxError>(Response::new(body::full(text)))
    }))
}

fn call(router: &Router<HttpService>, req: Request<Incoming>) -> BoxFuture {
    Box::pin(router.clone().oneshot(req.map(body::boxed)))
}

/// One connection's future, built and boxed in a plain function: written inside the `async`
/// block that spawns it, rustc cannot prove it `Send` ("`From` is not general enough" on the
/// boxed error's lifetime), a known compiler limitation with `Box<dyn Error + Send + Sync>`.
fn connection(
    stream: tokio::net::TcpStream,
    router: Router<HttpService>,
) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> {
    let svc = hyper::service::service_fn(move |req| call(&router, req));
    Box::pin(
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned(),
    )
}

/// Serves `router` on a free loopback port (HTTP/1.1 and h2c); the task is aborted by the test.
async fn serve(router: Router<HttpService>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(connection(stream, router.clone()));
        }
    });
    (addr, task)
}

struct Answer {
    status: u16,
    body: String,
    grpc_status: Option<String>,
}

/// A real hyper client connection: HTTP/1.1 (authority in `Host`) or h2c (in `:authority`).
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(addr: SocketAddr, h2: bool) -> Self {
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        if h2 {
            let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Self::H2(tx)
        } else {
            let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Self::H1(tx)
        }
    }

    async fn send(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = match self {
            Self::H1(_) => Request::get(path).header("host", host),
            Self::H2(_) => Request::get(format!("http://{host}{path}")),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::default()).unwrap();
        let resp = match self {
            Self::H1(tx) => {
                tx.ready().await.unwrap();
                tx.send_request(req).await.unwrap()
            }
            Self::H2(tx) => {
                tx.ready().await.unwrap();
                tx.send_request(req).await.unwrap()
            }
        };
        let status = resp.status().as_u16();
        let grpc_status = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            body: String::from_utf8(body.to_vec()).unwrap(),
            grpc_status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matcher_kind_over_real_http() {
    let config: RouteConfiguration = serde_yaml::from_str(TABLE).unwrap();
    let router = RouterLayer::new(&config).unwrap().layer(echo());
    let (addr, server) = serve(router).await;
    let mut h1 = Conn::open(addr, false).await;
    let mut h2 = Conn::open(addr, true).await;
    let grpc = [("content-type", "application/grpc")];
    let api = "api.example.com";
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(&str, &str, Headers, &str)] = &[
        (api, "/exact", &[], "c-exact exact /exact"),
        (api, "/exact?x=1", &[], "c-exact exact /exact"),
        (api, "/items/42", &[], "c-regex regex /items/42"),
        (api, "/h", &[("x-env", "canary")], "c-h-exact h-exact /h"),
        (api, "/h", &[("x-env", "blue-2")], "c-h-prefix h-prefix /h"),
        (api, "/h", &[("x-ver", "v3")], "c-h-regex h-regex /h"),
        (api, "/h", &[("x-debug", "1")], "c-h-present h-present /h"),
        (
            api,
            "/h",
            &[("x-user", "human")],
            "c-h-inverted h-inverted /h",
        ),
        (api, "/q?mode=fast", &[], "c-query query /q"),
        (api, "/CASE/x", &[], "c-ci ci-prefix /CASE/x"),
        (api, "/bg", &[("x-color", "green")], "green by-header /bg"),
        (api, "/old/thing", &[], "c-rewrite rewrite /new/thing"),
        (api, "/p/x", &[], "c-prefix prefix /p/x"),
        ("API.example.com", "/p/x", &[], "c-prefix prefix /p/x"),
        ("www.example.com", "/anything", &[], "c-wild wild /anything"),
    ];
    for client in [&mut h1, &mut h2] {
        for (host, path, headers, want) in cases {
            let a = client.send(host, path, headers).await;
            assert_eq!(
                (a.status, a.body.as_str()),
                (200, *want),
                "{host}{path} {headers:?}"
            );
        }
        let a = client.send(api, "/h", &[("x-user", "bot")]).await;
        assert_eq!(
            a.status, 404,
            "inverted header excludes; nothing else matches"
        );
        let a = client.send(api, "/h", &[]).await;
        assert_eq!(
            a.status, 404,
            "a value condition fails on an absent header, inverted or not (as in Envoy)"
        );
        let a = client.send("elsewhere.org", "/p/x", &[]).await;
        assert_eq!(a.status, 404, "no virtual host");
        let a = client.send("api.example.com:8080", "/p/x", &[]).await;
        assert_eq!(a.status, 404, "the port is part of the authority");
        let a = client.send(api, "/fault", &[]).await;
        assert_eq!(a.status, 503);
        assert!(a.body.contains("mesh fault"), "{}", a.body);
    }
    // gRPC over h2c: method, then service; a gRPC call with no route is UNIMPLEMENTED.
    let a = h2.send(api, "/pkg.Greeter/Hello", &grpc).await;
    assert_eq!(a.body, "c-grpc-hello grpc-method /pkg.Greeter/Hello");
    let a = h2.send(api, "/pkg.Greeter/Bye", &grpc).await;
    assert_eq!(a.body, "c-grpc grpc-service /pkg.Greeter/Bye");
    let a = h2.send(api, "/pkg.Other/Call", &grpc).await;
    assert_eq!((a.status, a.grpc_status.as_deref()), (200, Some("12")));
    server.abort();
}

/// A table with one route per generation `n`: route `route-n` to cluster `cluster-n`.
fn generation(n: u32) -> RouteConfiguration {
    serde_yaml::from_str(&format!(
        r#"
name: gen
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - {{ name: route-{n}, match: {{ prefix: "/" }}, route: {{ cluster: cluster-{n} }} }}
"#
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_without_dropping_a_request_and_refuses_bad_tables() {
    let layer = RouterLayer::new(&generation(0)).unwrap();
    let (addr, server) = serve(layer.layer(echo())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            tokio::spawn(async move {
                let mut client = Conn::open(addr, false).await;
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let a = client.send("any", "/x", &[]).await;
                    assert_eq!(a.status, 200, "{}", a.body);
                    let mut words = a.body.split(' ');
                    let (cluster, route) = (words.next().unwrap(), words.next().unwrap());
                    assert_eq!(
                        cluster.replace("cluster", "route"),
                        route,
                        "one table per request"
                    );
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for n in 1..=100 {
        layer.reload(generation(n)).unwrap();
        let mut bad = generation(n + 1000);
        bad.virtual_hosts[0].routes[0].matcher.path = mesh_core::PathMatch::Regex("(".into());
        let err = layer.reload(bad).unwrap_err();
        assert!(err.to_string().contains("route \"route-"), "{err}");
        // Bounded wait for a few requests to land on this generation.
        let before = ok.load(Ordering::Relaxed);
        for _ in 0..200 {
            if ok.load(Ordering::Relaxed) >= before + 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        ok.load(Ordering::Relaxed) >= 100,
        "{}",
        ok.load(Ordering::Relaxed)
    );
    let a = Conn::open(addr, true).await.send("any", "/x", &[]).await;
    assert_eq!(
        a.body, "cluster-100 route-100 /x",
        "the last good table serves"
    );
    server.abort();
}
