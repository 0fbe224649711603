//! `bench-floor`: the floor of `./scripts/bench`, a plain pooled HTTP forwarder with no mesh logic
//! (no routing, balancing, limits, metrics or header policy): a hyper server (HTTP/1.1 and h2c by
//! prior knowledge) handing each request to a hyper-util legacy pooled HTTP/1.1 client aimed at
//! one upstream. It is the least any Rust proxy on this stack (tokio + hyper) can cost per hop.
//!
//! `bench-floor 127.0.0.1:18631 127.0.0.1:18632 [h1|h2]` (listen, upstream, the upstream hop's
//! protocol: HTTP/1.1 keep-alive, the default, or HTTP/2 with prior knowledge over one shared
//! connection; worker threads: `TOKIO_WORKER_THREADS`). Hand-written on purpose: it must stay
//! minimal to be a floor.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

type Body = BoxBody<Bytes, hyper::Error>;

struct Forwarder {
    client: Client<HttpConnector, Incoming>,
    upstream: Authority,
    /// The upstream hop's version (HTTP/1.1 or HTTP/2 prior knowledge).
    version: http::Version,
}

impl Forwarder {
    async fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.upstream.clone());
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
        // The upstream hop speaks its own protocol whatever the downstream spoke.
        parts.version = self.version;
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => Ok(resp.map(BodyExt::boxed)),
            Err(_) => {
                let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                Ok(resp)
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-floor LISTEN_ADDR UPSTREAM_ADDR [h1|h2]");
        std::process::exit(2);
    };
    let h2 = match args.next().as_deref() {
        None | Some("h1") => false,
        Some("h2") => true,
        Some(other) => {
            eprintln!("bench-floor: upstream protocol must be h1 or h2, not {other}");
            std::process::exit(2);
        }
    };
    let listen: SocketAddr = listen.parse().map_err(std::io::Error::other)?;
    let upstream: Authority = upstream.parse().map_err(std::io::Error::other)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .http2_only(h2)
        .build(connector);
    let version = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let fwd = Arc::new(Forwarder {
        client,
        upstream,
        version,
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "bench-floor listening on {listen}, forwarding to {} over {:?}",
        fwd.upstream, fwd.version
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let fwd = fwd.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| fwd.clone().forward(req));
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
