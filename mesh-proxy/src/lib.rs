//! # mesh-proxy
//!
//! Assembly only: the `mesh-sidecar` binary's two listeners (outbound for the local app's calls
//! out, inbound for calls to the local app), protocol detection, the layer stack of the design
//! (rate limit → router → per-route policy → load balancer → pooled upstream), the admin endpoint
//! with Prometheus metrics, and the registration API. Policy lives in the layer crates.
//!
//! Landed so far: the per-hop header handling ([`headers`]) and the metrics ([`metrics`]). The
//! listeners, admin endpoint and binary land with the sidecar issue.

pub mod admin;
pub mod bootstrap;
mod conn;
pub mod dynamic;
pub mod headers;
pub mod listeners;
pub mod metrics;
pub mod registration;
pub mod server;
pub mod sidecar;
pub mod stack;
