//! What each node has ACKed and NACKed, for NACK parking and the admin dump.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::ResourceType;

/// ACK/NACK record of one node key.
///
/// One per node (so per Envoy when nodes are keyed by id): the types are a small vector
/// sorted by type and the rare NACK is boxed, 56 bytes a type, where a `BTreeMap` node cost
/// 1.2 KB per node.
#[derive(Debug, Default)]
pub(crate) struct NodeStatus {
    set_at: Option<SystemTime>,
    types: Vec<(ResourceType, TypeStatus)>,
}

#[derive(Debug, Default, Clone)]
struct TypeStatus {
    acked: Option<(String, SystemTime)>,
    nacked: Option<Box<Nack>>,
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

    fn get(&self, kind: ResourceType) -> Option<&TypeStatus> {
        let i = self.types.binary_search_by_key(&kind, |(k, _)| *k).ok()?;
        self.types.get(i).map(|(_, t)| t)
    }

    fn entry(&mut self, kind: ResourceType) -> &mut TypeStatus {
        let i = match self.types.binary_search_by_key(&kind, |(k, _)| *k) {
            Ok(i) => i,
            Err(i) => {
                self.types.insert(i, (kind, TypeStatus::default()));
                i
            }
        };
        &mut self.types[i].1
    }

    pub(crate) fn ack(&mut self, kind: ResourceType, version: &str) {
        let t = self.entry(kind);
        t.acked = Some((version.to_owned(), SystemTime::now()));
        if t.nacked.as_ref().is_some_and(|n| n.version == version) {
            t.nacked = None;
        }
    }

    pub(crate) fn nack(&mut self, kind: ResourceType, version: &str, error: &str) {
        self.entry(kind).nacked = Some(Box::new(Nack {
            version: version.to_owned(),
            error: error.to_owned(),
            at: SystemTime::now(),
        }));
    }

    /// A NACKed version is parked: not sent again (on this or a new stream of the node) while
    /// it is still the version set.
    pub(crate) fn is_parked(&self, kind: ResourceType, version: &str) -> bool {
        self.get(kind)
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
