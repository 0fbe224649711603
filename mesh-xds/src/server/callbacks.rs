//! Hooks the discovery server calls on stream and protocol events, e.g. for metrics.

use std::time::Duration;

use crate::ResourceType;

/// Identifies one discovery stream for the server's lifetime.
pub type StreamId = u64;

/// Which service a stream came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Aggregated, state of the world.
    Ads,
    /// Aggregated, delta.
    DeltaAds,
    /// One type's service, state of the world.
    Single(ResourceType),
    /// One type's service, delta.
    DeltaSingle(ResourceType),
}

/// Event hooks; every method has an empty default. Called inline on the stream's task, so they
/// must be cheap (count, don't block).
pub trait Callbacks: Send + Sync + 'static {
    /// A stream opened.
    fn stream_opened(&self, _id: StreamId, _kind: StreamKind) {}
    /// A stream closed (client gone, error, or server shutdown).
    fn stream_closed(&self, _id: StreamId) {}
    /// A request arrived (including ACKs and NACKs).
    fn request(&self, _id: StreamId, _node: &str, _kind: ResourceType) {}
    /// A response was sent.
    fn response(
        &self,
        _id: StreamId,
        _node: &str,
        _kind: ResourceType,
        _version: &str,
        _resources: usize,
    ) {
    }
    /// The node ACKed `version`, `since_set` after the snapshot it came from was set.
    fn ack(&self, _node: &str, _kind: ResourceType, _version: &str, _since_set: Duration) {}
    /// The node NACKed `version` with `error`.
    fn nack(&self, _node: &str, _kind: ResourceType, _version: &str, _error: &str) {}
}

/// Callbacks that do nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCallbacks;

impl Callbacks for NoCallbacks {}
