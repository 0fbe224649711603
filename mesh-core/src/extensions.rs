//! The request extensions the layers hand each other.
//!
//! An outer layer records what it decided; an inner layer reads it instead of re-deriving it.
//! The router inserts [`MatchedRoute`] and [`TargetCluster`]; the load balancer reads
//! [`TargetCluster`] (an SDK user may insert it directly, without a router) and records
//! [`PickedEndpoint`]; the listener inserts [`ClientAddr`] and [`ListenerName`].

use std::net::SocketAddr;
use std::sync::Arc;

use crate::Route;

/// The route the router matched, with the table it came from.
#[derive(Debug, Clone)]
pub struct MatchedRoute {
    /// The route configuration's name.
    pub route_config: Arc<str>,
    /// The virtual host's name.
    pub virtual_host: Arc<str>,
    /// The matched route (its policy: timeout, retries, rate limit, filters).
    pub route: Arc<Route>,
}

/// The cluster the request goes to (after a weighted or header-based choice).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetCluster(pub Arc<str>);

impl TargetCluster {
    /// A target cluster by name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }
}

/// The endpoint the load balancer picked for this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickedEndpoint {
    /// The cluster it belongs to.
    pub cluster: Arc<str>,
    /// Its address.
    pub address: SocketAddr,
}

/// The downstream client's address, as the listener accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The listener that accepted the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerName(pub Arc<str>);

/// A consistent-hash key computed from the route's hash policy, for ring hash and Maglev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHash(pub u64);

/// Marks a retry attempt (1 for the first retry), so the load balancer counts it against the
/// cluster's `max_retries` circuit breaker and can avoid the endpoint that just failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAttempt(pub u32);

/// When the router's time-out for this attempt fires: the route's time-out, or the per-try
/// time-out when that comes first. The router sets it; the load balancer reads it when a
/// request is dropped unanswered: dropped at or past its deadline, the endpoint timed out (a
/// gateway failure for outlier detection, as Envoy counts a route or per-try time-out against
/// the host); dropped before it, the caller went away, which says nothing about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub std::time::Instant);

/// The verified identity of the peer that opened the connection (the URI SAN of its client
/// certificate, a SPIFFE ID), inserted by a listener that terminated mTLS. Absent on a
/// plaintext connection; authorization treats that as unauthenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(pub Arc<str>);
