//! # mesh-lb
//!
//! Clusters at run time: endpoint sets, load-balancing policies (round robin, random, least
//! request, ring hash, Maglev, locality- and priority-aware), active health checks and outlier
//! detection, circuit breakers, and the pooled upstream client.
//!
//! - [`ClusterManager`] holds the clusters; it is the `Reload` sink for CDS
//!   (`Vec<mesh_core::Cluster>`) and EDS (`mesh_core::ClusterLoadAssignment`,
//!   [`RemoveLoadAssignment`]).
//! - [`LoadBalanceLayer`] reads [`mesh_core::extensions::TargetCluster`] from the request,
//!   applies the cluster's circuit breakers, picks an endpoint (recording
//!   [`mesh_core::extensions::PickedEndpoint`]) and calls its inner service with the URI pointed
//!   at the endpoint; [`LoadBalance::upstream`] puts it in front of our pooled hyper client
//!   (HTTP/1.1: our own keep-alive pool on hyper's connection API, a LIFO stack of idle
//!   connections per endpoint behind one short mutex held for a push or a pop; HTTP/2:
//!   hyper-util's client, one multiplexed connection per endpoint).
//!
//! The data path loads the cluster map and the cluster's precomputed [`EndpointSet`] with one
//! arc-swap load each, takes no lock and does not allocate to pick. Health changes (outlier
//! ejection, health checks, EDS) rebuild the set off the data path and swap it in.
//!
//! Failures are returned as boxed [`mesh_core::MeshError`]s (see [`LoadBalance`]).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod circuit_breaker;
mod cluster;
mod connector;
mod endpoint;
mod h1_pool;
mod health;
mod health_check;
mod layer;
mod manager;
mod outlier;
mod policy;
mod pool;
mod set;
pub mod tls;
mod upstream;

pub use circuit_breaker::{BreakerStats, CircuitBreaker};
pub use cluster::ClusterState;
pub use connector::EndpointMap;
pub use endpoint::{EndpointState, InFlightGuard};
pub use layer::{LoadBalance, LoadBalanceLayer, ResponseFuture};
pub use manager::{ClusterManager, RemoveLoadAssignment};
pub use outlier::Outcome;
pub use set::EndpointSet;
pub use upstream::{Upstream, UpstreamFuture};
