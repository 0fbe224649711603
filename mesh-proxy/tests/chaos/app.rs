//! The tiny apps behind the sidecars: answering (at once or after a stall) or a black hole.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

/// How an app answers.
#[derive(Clone, Copy, Debug)]
pub enum AppMode {
    /// 200 after `delay`.
    Answer(Duration),
    /// Accepts and reads, never answers (a black hole).
    BlackHole,
}

/// A tiny HTTP app (hyper) on its own runtime; stops on drop.
pub struct App {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests it received.
    pub hits: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl App {
    /// Starts an app answering as `mode` says.
    pub fn start(mode: AppMode) -> App {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = StdListener::bind("127.0.0.1:0").expect("bind app");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let hits = counted.clone();
                tokio::spawn(async move {
                    match mode {
                        AppMode::BlackHole => {
                            hits.fetch_add(1, Ordering::Relaxed);
                            // Hold the connection open, read nothing more, answer nothing.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(stream);
                        }
                        AppMode::Answer(delay) => {
                            let svc = hyper::service::service_fn(move |_req: Request<_>| {
                                let hits = hits.clone();
                                async move {
                                    hits.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(delay).await;
                                    Ok::<_, Infallible>(Response::new(Full::new(
                                        Bytes::from_static(b"ok"),
                                    )))
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        App {
            addr,
            hits,
            _rt: rt,
        }
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}
