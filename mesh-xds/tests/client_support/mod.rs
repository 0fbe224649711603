//! A scripted ADS server for the client tests: each stream the client opens is handed to the
//! test, which reads the client's requests and writes the responses itself, so every test states
//! the exact message sequence.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use mesh_core::{Reload, ReloadError, Shared};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// Upper bound on every wait of the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// One stream as the test sees it.
pub struct ScriptedStream<Req, Resp> {
    requests: mpsc::UnboundedReceiver<Req>,
    responses: mpsc::UnboundedSender<Result<Resp, Status>>,
}

impl<Req, Resp> ScriptedStream<Req, Resp> {
    /// The client's next request (panics after [`WAIT`]).
    pub async fn recv(&mut self) -> Req {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("no request from the client in time")
            .expect("the client closed the stream")
    }

    /// Sends a response to the client.
    pub fn send(&self, resp: Resp) {
        self.responses.send(Ok(resp)).unwrap();
    }

    /// Whether no request is pending right now (after a short grace period).
    pub async fn quiet(&mut self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.requests.recv())
            .await
            .is_err()
    }
}

pub type SotwStream = ScriptedStream<DiscoveryRequest, DiscoveryResponse>;
pub type DeltaStream = ScriptedStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

#[derive(Clone)]
struct Service {
    sotw: mpsc::UnboundedSender<SotwStream>,
    delta: mpsc::UnboundedSender<DeltaStream>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn hand_over<Req: Send + 'static, Resp>(
    mut inbound: Streaming<Req>,
    to_test: &mpsc::UnboundedSender<ScriptedStream<Req, Resp>>,
) -> UnboundedReceiverStream<Result<Resp, Status>> {
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (resp_tx, resp_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(req)) = inbound.next().await {
            if req_tx.send(req).is_err() {
                break;
            }
        }
    });
    let _ = to_test.send(ScriptedStream {
        requests: req_rx,
        responses: resp_tx,
    });
    UnboundedReceiverStream::new(resp_rx)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let out = hand_over(request.into_inner(), &self.sotw);
        Ok(Response::new(Box::pin(out)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let out = hand_over(request.into_inner(), &self.delta);
        Ok(Response::new(Box::pin(out)))
    }
}

/// A running scripted server; `kill` drops it with every connection, as a crash would.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    sotw: mpsc::UnboundedReceiver<SotwStream>,
    delta: mpsc::UnboundedReceiver<DeltaStream>,
    task: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (a restart on the port of a killed server).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sotw_tx, sotw) = mpsc::unbounded_channel();
        let (delta_tx, delta) = mpsc::unbounded_channel();
        let svc = Service {
            sotw: sotw_tx,
            delta: delta_tx,
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            addr,
            sotw,
            delta,
            task: Some(task),
        }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next SotW stream the client opens.
    pub async fn sotw_stream(&mut self) -> SotwStream {
        tokio::time::timeout(WAIT, self.sotw.recv())
            .await
            .expect("the client did not open a stream in time")
            .unwrap()
    }

    /// The next delta stream the client opens.
    pub async fn delta_stream(&mut self) -> DeltaStream {
        tokio::time::timeout(WAIT, self.delta.recv())
            .await
            .expect("the client did not open a stream in time")
            .unwrap()
    }

    /// Stops accepting connections (drop the open [`ScriptedStream`]s first: established
    /// connections live in tasks of their own, as after a crash their peers see them end).
    pub async fn kill(mut self) -> SocketAddr {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.addr
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A test sink: stores what the data path would read in a `Shared`, counts reloads, and refuses
/// updates for which `refuse` holds.
pub struct Sink<T> {
    pub current: Shared<Option<T>>,
    pub reloads: Mutex<u32>,
    refuse: Box<dyn Fn(&T) -> bool + Send + Sync>,
}

impl<T> Sink<T> {
    pub fn new() -> Arc<Self> {
        Self::refusing(|_| false)
    }

    pub fn refusing(f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            current: Shared::new(None),
            reloads: Mutex::new(0),
            refuse: Box::new(f),
        })
    }

    /// What the sink holds now (panics if it was never fed).
    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.current
            .load()
            .as_ref()
            .clone()
            .expect("the sink was never fed")
    }

    pub fn reloads(&self) -> u32 {
        *self.reloads.lock().unwrap()
    }
}

impl<T: Send + Sync> Reload<T> for Sink<T> {
    fn reload(&self, update: T) -> Result<(), ReloadError> {
        if (self.refuse)(&update) {
            return Err(ReloadError::new("test", "sink", "refused by the test sink"));
        }
        self.current.store(Some(update));
        *self.reloads.lock().unwrap() += 1;
        Ok(())
    }
}

/// Polls `cond` every 10 ms until it holds (panics after [`WAIT`]).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
