//! A delta discovery stream (ADS or one type's service).

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use super::resource::ResourceType;
use super::xds::{Shared, StreamGuard};

/// Serves one delta stream until the client goes away.
pub(crate) async fn run<S>(
    _shared: Arc<Shared>,
    _guard: StreamGuard,
    _fixed: Option<ResourceType>,
    _requests: S,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) where
    S: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Unpin,
{
    let _ = tx
        .send(Err(Status::unimplemented("delta xDS: not yet")))
        .await;
}
