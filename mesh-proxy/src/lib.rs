//! # mesh-proxy
//!
//! Assembly only: the `mesh-sidecar` binary's two listeners (outbound for the local app's calls
//! out, inbound for calls to the local app), protocol detection, the layer stack of the design
//! (rate limit → router → per-route policy → load balancer → pooled upstream), access logs, the
//! admin endpoint with Prometheus metrics, and the registration API. Policy lives in the layer crates.
//!
//! Features: `etcd` backs the registration API with an etcd registry (etcd-client's build
//! script runs `protoc`); `cli` builds the `mesh-sidecar` binary (clap, tracing-subscriber).
//! Neither is on by default, so a program that embeds the sidecar needs neither.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod bootstrap;
mod conn;
mod connect;
mod decision;
pub mod detect;
pub mod dynamic;
pub mod filters;
mod fragment;
mod header_timer;
pub mod headers;
mod http_io;
pub mod limit;
pub mod listeners;
pub mod metrics;
pub mod metrics_l4;
pub mod metrics_rpc;
#[cfg(feature = "etcd")]
pub mod registration;
mod rewind;
pub mod server;
pub mod sidecar;
pub mod stack;
pub mod tcp;
pub mod tls;
mod upgrade;
pub mod warmer;
pub mod warming;
pub mod xproto;
