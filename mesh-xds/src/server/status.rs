//! What each node has ACKed and NACKed, for NACK parking and the admin dump.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ResourceType;

/// ACK/NACK record of one node key.
#[derive(Debug, Default)]
pub(crate) struct NodeStatus {
    set_at: Option<SystemTime>,
    types: BTreeMap<ResourceType, TypeStatus>,
}

#[derive(Debug, Default, Clone)]
struct TypeStatus {
    acked: Option<(String, SystemTime)>,
    nacked: Option<Nack>,
}

#[derive(Debug, Clone)]
struct Nack {
    version: String,
    error: String,
    at: SystemTime,
}

impl NodeStatus {
    pub(crate) fn snapshot_set(&mut self, at: SystemTime) {
        self.set_at = Some(at);
    }

    /// When the node's own snapshot was last set.
    pub(crate) fn set_at(&self) -> Option<SystemTime> {
        self.set_at
    }

    pub(crate) fn ack(&mut self, kind: ResourceType, version: &str) {
        let t = self.types.entry(kind).or_default();
        t.acked = Some((version.to_owned(), SystemTime::now()));
        if t.nacked.as_ref().is_some_and(|n| n.version == version) {
            t.nacked = None;
        }
    }

    pub(crate) fn nack(&mut self, kind: ResourceType, version: &str, error: &str) {
        self.types.entry(kind).or_default().nacked = Some(Nack {
            version: version.to_owned(),
            error: error.to_owned(),
            at: SystemTime::now(),
        });
    }

    /// A NACKed version is parked: not sent again (on this or a new stream of the node) while
    /// it is still the version set.
    pub(crate) fn is_parked(&self, kind: ResourceType, version: &str) -> bool {
        self.types
            .get(&kind)
            .and_then(|t| t.nacked.as_ref())
            .is_some_and(|n| n.version == version)
    }

    pub(crate) fn dump(&self) -> StatusDump {
        StatusDump {
            snapshot_set_at: self.set_at.map(unix),
            types: self
                .types
                .iter()
                .map(|(k, t)| TypeStatusDump {
                    kind: *k,
                    acked_version: t.acked.as_ref().map(|a| a.0.clone()),
                    acked_at: t.acked.as_ref().map(|a| unix(a.1)),
                    nacked_version: t.nacked.as_ref().map(|n| n.version.clone()),
                    nack_error: t.nacked.as_ref().map(|n| n.error.clone()),
                    nacked_at: t.nacked.as_ref().map(|n| unix(n.at)),
                })
                .collect(),
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A node's ACK/NACK record, as dumped (times in seconds since the Unix epoch).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusDump {
    /// When the node's snapshot was last set.
    pub snapshot_set_at: Option<f64>,
    /// Per type.
    pub types: Vec<TypeStatusDump>,
}

/// One type of a [`StatusDump`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TypeStatusDump {
    /// The type.
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// Last version the node ACKed.
    pub acked_version: Option<String>,
    /// When.
    pub acked_at: Option<f64>,
    /// A version the node NACKed and that is still parked.
    pub nacked_version: Option<String>,
    /// The node's error detail.
    pub nack_error: Option<String>,
    /// When.
    pub nacked_at: Option<f64>,
}
