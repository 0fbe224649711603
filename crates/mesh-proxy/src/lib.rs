//! # mesh-proxy
//!
//! Assembly only: the `mesh-sidecar` binary's two listeners (outbound for the local app's calls
//! out, inbound for calls to the local app), protocol detection, the layer stack of the design
//! (rate limit → router → per-route policy → load balancer → pooled upstream), the admin endpoint
//! with Prometheus metrics, and the registration API. Policy lives in the layer crates.
//!
//! This crate is filled by the sidecar issue; until then it only states what it owns.
