//! The plaintext accept loop of [`XdsServer::serve`](super::XdsServer::serve): every
//! connection is served by hyper's HTTP/2 server directly.
//!
//! tonic's transport server serves each connection through hyper-util's auto (HTTP/1 or
//! HTTP/2) connection and a per-connection boxed service stack (connect info, timeouts, error
//! recovery, tracing), and holds every connection's task for the life of the stream: with
//! 10,000 subscribers that is 10,000 of each. A control plane only speaks gRPC over HTTP/2,
//! so the task here holds hyper's HTTP/2 connection and the routes, nothing else.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::Service;

/// A stream's service future, boxed.
type RouteFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

/// HTTP/2 PING interval: dead clients (a host gone without a FIN) are found within about
/// twice this (hyper closes the connection after an unanswered PING's 20 s timeout).
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Pause after a failed accept (out of descriptors, mostly), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `routes` on `listener` until `shutdown` completes, then drains: every connection
/// gets a GOAWAY and the call returns once all of them have closed.
pub(crate) async fn serve(
    routes: tonic::service::Routes,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE);
    let routes = routes.prepare();
    // hyper keeps each stream's service future inline in the stream's task for the stream's
    // life (an enum of the future and the response body): tower's adapter would make that
    // slot as large as the request plus the routes plus the router's future. A boxed future
    // keeps it at a pointer, and the box is freed once the response starts.
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let mut routes = routes.clone();
        // The router is always ready (axum's `Router::poll_ready` returns at once).
        let fut: RouteFuture = Box::pin(routes.call(req.map(Body::new)));
        fut
    });
    // Dropped receivers tell the drain below that their connection closed.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Nagle and delayed ACKs would hold back large responses.
        let _ = stream.set_nodelay(true);
        let conn = http2.serve_connection(TokioIo::new(stream), svc.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut conn = pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "xDS connection ended");
                    }
                    return;
                }
                _ = stop.changed() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "xDS connection ended");
            }
        });
    }
    // Stop accepting at once (the listener closes), then drain.
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(());
    stop_tx.closed().await;
}
