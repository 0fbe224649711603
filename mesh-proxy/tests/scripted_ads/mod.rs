//! A scripted ADS server (state of the world) and the dynamic sidecar it feeds: the test
//! sends each response itself, in the order it chooses, and waits for the client's
//! subscriptions.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::convert::{encode, XdsResource};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Upper bound on every wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// One SotW stream as the test drives it.
pub struct AdsStream {
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    version: u32,
}

impl AdsStream {
    /// Sends the whole set of one type (state of the world).
    pub fn send<T: XdsResource>(&mut self, resources: &[T]) {
        self.version += 1;
        let resp = DiscoveryResponse {
            version_info: format!("v{}", self.version),
            nonce: format!("n{}", self.version),
            type_url: T::TYPE_URL.to_string(),
            resources: resources.iter().map(encode).collect(),
            ..Default::default()
        };
        self.responses.send(Ok(resp)).unwrap();
    }

    /// Sends raw resources of `type_url` (to script what our types cannot express).
    pub fn send_raw(
        &mut self,
        type_url: &str,
        resources: Vec<envoy_types::pb::google::protobuf::Any>,
    ) {
        self.version += 1;
        let resp = DiscoveryResponse {
            version_info: format!("v{}", self.version),
            nonce: format!("n{}", self.version),
            type_url: type_url.to_string(),
            resources,
            ..Default::default()
        };
        self.responses.send(Ok(resp)).unwrap();
    }

    /// Waits for the client to NACK `type_url`; returns the error detail's message.
    pub async fn nacked(&mut self, type_url: &str) -> String {
        let wait = async {
            while let Some(r) = self.requests.recv().await {
                if r.type_url == type_url {
                    if let Some(e) = r.error_detail {
                        return e.message;
                    }
                }
            }
            panic!("the client closed the stream");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no NACK of {type_url} in time"))
    }

    /// Waits for the client to subscribe to `name` of type `T` (it follows LDS → RDS and
    /// CDS → EDS once it accepted the parent).
    pub async fn subscribed<T: XdsResource>(&mut self, name: &str) {
        let wait = async {
            while let Some(r) = self.requests.recv().await {
                if r.type_url == T::TYPE_URL && r.resource_names.iter().any(|n| n == name) {
                    return;
                }
            }
            panic!("the client closed the stream");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no subscription to {name} in time"));
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
struct Ads(mpsc::UnboundedSender<AdsStream>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (responses, resp_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let _ = self.0.send(AdsStream {
            requests,
            responses,
            version: 0,
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            resp_rx,
        ))))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("this script speaks SotW"))
    }
}

/// A scripted ADS server and the dynamic sidecar it feeds.
pub struct Setup {
    pub sidecar: Sidecar,
    pub ads: AdsStream,
    server: tokio::task::JoinHandle<()>,
}

impl Setup {
    pub async fn start(initial_fetch_timeout: Option<Duration>) -> Self {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, mut streams) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(Ads(tx)))
                .serve_with_incoming(TcpListenerStream::new(socket))
                .await;
        });
        let mut o = DynamicOptions::new(vec![format!("http://{addr}")], "warm-1");
        o.admin = SocketAddr::from(([127, 0, 0, 1], 0));
        o.drain_timeout = Duration::from_secs(1);
        o.initial_fetch_timeout = initial_fetch_timeout;
        let sidecar = Sidecar::start_dynamic(o).await.unwrap();
        let ads = tokio::time::timeout(WAIT, streams.recv())
            .await
            .unwrap()
            .unwrap();
        Self {
            sidecar,
            ads,
            server,
        }
    }

    pub async fn admin(&self, path: &'static str) -> (u16, String) {
        let admin = self.sidecar.admin_addr();
        tokio::task::spawn_blocking(move || mesh_testkit::http_get(admin, path).unwrap())
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.sidecar.shutdown().await;
        self.server.abort();
    }
}
