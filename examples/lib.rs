//! Shared pieces of the runnable examples in this folder.
//!
//! - `grpc`: a tonic client whose channel is the mesh's layer stack (router → load balancer →
//!   pooled HTTP/2 upstream), calling two replicas of a tonic server, with no sidecar.
//!
//! The one-command demo mesh, the xDS-fed SDK client and the Envoy bootstraps land with the
//! sidecar issue.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Starts a multi-threaded hyper "hello world" app on `addr` (the demo's local app), answering
/// `hello world from <name>` on every path. Returns the bound address.
pub async fn hello_app(addr: SocketAddr, name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "hello world from {name}\n"
                        )))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
