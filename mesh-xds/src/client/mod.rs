//! The ADS client: subscribes to a control plane over one aggregated stream (state-of-the-world
//! or delta), converts and validates what arrives, feeds the layers' [`Reload`](mesh_core::Reload) sinks, and ACKs
//! or NACKs each update the way Envoy's own xDS client does.
//!
//! - Resource chains as in Envoy: wildcard LDS and CDS; RDS for the route tables the listeners
//!   reference; EDS for the EDS clusters. Subscriptions follow config changes.
//! - An update is applied whole or not at all: a resource that does not convert or validate, or
//!   a sink that refuses it, NACKs the response (with `error_detail` naming the resource, the
//!   field path and the reason) and the previous config keeps serving. A rejected version resent
//!   by the control plane is not re-applied and its NACK is held back (no tight NACK loop).
//! - Resilient: reconnects with capped exponential backoff and jitter, fails over across the
//!   address list, resubscribes with the versions it holds, keeps serving while disconnected, can
//!   re-request periodically (pull, on top of the push), and can persist the last accepted config
//!   so that a restart while the control plane is down serves at once.
//! - Shape: [`AdsState`] is the protocol state machine and does no I/O; the tonic driver around
//!   it is thin. Sinks are `Arc<dyn Reload<_>>`, and every type is also published on a
//!   `tokio::sync::watch` channel ([`XdsClient::watch`]).
//!
//! Wiring the layers (what the sidecar does):
//!
//! | sink | registration |
//! |---|---|
//! | mesh-router's `RouterLayer` (`Reload<RouteConfiguration>`) | [`sink_named`](XdsClientBuilder::sink_named)`::<RouteConfiguration>(listener's route table name, ..)` |
//! | mesh-lb's `ClusterManager`, clusters (`Reload<Vec<Cluster>>`) | [`sink_all`](XdsClientBuilder::sink_all)`::<Cluster>(..)` |
//! | mesh-lb's `ClusterManager`, endpoints (`Reload<ClusterLoadAssignment>`) | [`sink_each`](XdsClientBuilder::sink_each)`::<ClusterLoadAssignment>(..)` plus [`on_removed`](XdsClientBuilder::on_removed)`::<ClusterLoadAssignment>` sending its `RemoveLoadAssignment` |
//! | mesh-ratelimit's `RateLimitLayer` (`Reload<RateLimitConfig>`) | [`sink_rate_limits`](XdsClientBuilder::sink_rate_limits)`(listener name, ..)` |
//!
//! TLS to the control plane: give [`XdsClientBuilder::tls`] an [`XdsTls`] (the CA, optionally a
//! client certificate for mTLS) and `https://` addresses; see [`crate::tls`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mesh_core::{Cluster, Reload, ReloadError, Shared};
//! use mesh_xds::client::{AdsMode, XdsClient};
//!
//! struct Clusters(Shared<Vec<Cluster>>);
//! impl Reload<Vec<Cluster>> for Clusters {
//!     fn reload(&self, update: Vec<Cluster>) -> Result<(), ReloadError> {
//!         self.0.store(update);
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let clusters = Arc::new(Clusters(Shared::default()));
//! let client = XdsClient::builder()
//!     .address("http://127.0.0.1:18000")
//!     .node_id("sidecar-1")
//!     .node_cluster("reviews")
//!     .mode(AdsMode::Delta)
//!     .sink_all::<Cluster>(clusters.clone())
//!     .start()?;
//! client.wait_ready(Duration::from_secs(10)).await?;
//! println!("{:?}", client.status());
//! # Ok(()) }
//! ```

use crate::ResourceType;

mod builder;
mod delta;
mod driver;
mod persist;
mod refresh;
mod state;
mod stats;
mod store;
mod versions;

pub use crate::tls::XdsTls;
pub use builder::{ConfigWatch, XdsClient, XdsClientBuilder, XdsClientError};
pub use refresh::Refresh;
pub use state::{AdsState, Outbound, Outgoing};
pub use stats::{ConnectionState, TypeStatus, XdsStatus};
pub use store::{ResourceMap, StoredResource, XdsConfig};
pub use versions::{ResourceVersion, ResourceVersions};

/// Which ADS variant the client speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdsMode {
    /// State of the world: `StreamAggregatedResources`.
    #[default]
    Sotw,
    /// Incremental: `DeltaAggregatedResources`.
    Delta,
}

/// The type a response's type URL names, if the client subscribes to that type.
pub(crate) fn subscribed_type(type_url: &str) -> Option<ResourceType> {
    ResourceType::from_type_url(type_url).filter(|t| ResourceType::CLIENT.contains(t))
}

#[cfg(test)]
mod tests;
