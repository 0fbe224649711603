//! The control plane: a per-node snapshot cache and the discovery services that serve it.
//!
//! - [`SnapshotCache`] holds a [`Snapshot`] per node key (the node id by default, or any
//!   function of the node, e.g. its cluster, for groups). Resources are encoded once, interned
//!   by content hash and versioned by it; a snapshot is checked for consistency (and by an
//!   optional validator) before it may serve.
//! - [`XdsServer`] serves the cache over ADS (state of the world and delta) and the per-type
//!   services, with nonce/version handling, NACK parking and dependency-ordered pushes.

pub mod admin;
mod cache;
mod callbacks;
mod delta;
mod diff;
mod grpc;
mod held;
mod identity;
mod metrics;
mod names;
mod request;
mod resource;
mod serve;
mod snapshot;
mod sotw;
mod status;
mod stream;
mod validate;
mod wire;
mod xds;

pub use cache::{
    CacheDump, CheckedSnapshot, Current, NodeDump, NodeHash, SnapshotCache, TypeDump, Validator,
};
pub use callbacks::{Callbacks, NoCallbacks, StreamId, StreamKind};
pub use metrics::Metrics;
pub use resource::{Named, Resource, ResourceError};
pub use snapshot::{Snapshot, SnapshotError, TypeSnapshot};
pub use status::{StatusDump, TypeStatusDump};
pub use validate::mesh_core_validator;
pub use xds::XdsServer;

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod tests;
