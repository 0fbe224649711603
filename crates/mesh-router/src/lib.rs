//! # mesh-router
//!
//! The routing tower Layer (`RouterLayer` / `Router<S>`): each request is matched against the
//! live `RouteConfiguration` (virtual host by authority, then the first route whose match holds)
//! and the decision (matched route, target cluster, per-route policy) goes into the request
//! extensions for the inner layers. Per-route policy (timeout, retries with a budget, rewrites,
//! header edits, named extra layers such as fault injection) wraps the inner service. The table
//! is reloaded through mesh-core's `Reload` contract (fed by RDS) and swapped atomically.
//!
//! This crate is filled by the router issue; until then it only states what it owns.
