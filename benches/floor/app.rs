//! `bench-app`: the benchmark's upstream app, a multi-threaded hyper server answering every
//! request with a fixed 13-byte body over HTTP/1.1 or h2c (prior knowledge).
//!
//! `bench-app 127.0.0.1:18600` (worker threads: `TOKIO_WORKER_THREADS`, default one per core).
//! Written apart from `mesh_examples::hello_app` so that it stays as cheap as hyper allows and is
//! never the bottleneck of `./scripts/bench`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

const HELLO: &[u8] = b"Hello, mesh!\n";

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(HELLO))))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18600".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("bench-app listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello))
                .await;
        });
    }
}
