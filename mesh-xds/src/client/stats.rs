//! What the admin endpoint shows of the client: connection state, and per type the version,
//! last update time, ACK/NACK counters and the last error.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

/// The state of the ADS stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Not started yet.
    #[default]
    Idle,
    /// Connecting to this control plane.
    Connecting(String),
    /// The stream to this control plane is open.
    Connected(String),
    /// Between attempts; the last good config keeps serving.
    Backoff {
        /// Why the last attempt or stream ended.
        error: String,
    },
    /// Shut down.
    Stopped,
}

/// Per resource type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeStatus {
    /// The accepted version (SotW `version_info`, or delta `system_version_info`).
    pub version: String,
    /// Resources held.
    pub resources: usize,
    /// Updates accepted.
    pub acks: u64,
    /// Updates rejected (each NACK sent, including repeats of a rejected version).
    pub nacks: u64,
    /// When the last update was accepted.
    pub last_update: Option<SystemTime>,
    /// Why the last update was rejected, until one is accepted.
    pub last_error: Option<String>,
    /// Per held resource: the version it last changed with, and when (for the config dump;
    /// left out of the status's JSON, which stays small).
    #[serde(skip)]
    pub resource_versions: super::ResourceVersions,
}

/// A snapshot of the client for the admin endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct XdsStatus {
    /// The stream's state.
    pub connection: ConnectionState,
    /// Streams opened so far.
    pub connects: u64,
    /// Whether the first full config has arrived (or a persisted one was loaded).
    pub ready: bool,
    /// Periodic re-requests made (SotW: on the stream; delta: by re-subscribing on a new one).
    pub refreshes: u64,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
}
