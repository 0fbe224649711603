//! The dump of a control plane's snapshot for one node: what the node is served, converted to
//! mesh-core's model the way our client converts it.

use std::time::SystemTime;

use mesh_core::{Cluster, ClusterLoadAssignment, Listener, RouteConfiguration};
use serde_json::json;

use super::{ConfigDump, DumpEntry, TypeDump};
use crate::convert::{decode, XdsResource};
use crate::server::{Snapshot, TypeSnapshot};

impl ConfigDump {
    /// The dynamic entries of `snap`, set at `set_at`: each resource's `version_info` is its own
    /// version (the content hash a delta stream sends), the section's is the type's version
    /// (what a state-of-the-world stream sends). A resource our client would not take (e.g. an
    /// Envoy-only feature) is dumped as `{"error": ...}` with the conversion's reason. Secrets
    /// are never dumped.
    pub fn from_snapshot(snap: &Snapshot, set_at: Option<SystemTime>) -> Self {
        Self {
            listeners: of::<Listener>(snap, set_at),
            routes: of::<RouteConfiguration>(snap, set_at),
            clusters: of::<Cluster>(snap, set_at),
            endpoints: of::<ClusterLoadAssignment>(snap, set_at),
        }
    }
}

fn of<T: XdsResource + serde::Serialize>(snap: &Snapshot, set_at: Option<SystemTime>) -> TypeDump {
    let ty: &TypeSnapshot = snap.of(T::TYPE);
    TypeDump {
        version_info: (!ty.items().is_empty()).then(|| ty.version()),
        static_entries: Vec::new(),
        dynamic_entries: ty
            .items()
            .iter()
            .map(|(name, r)| {
                let version = Some(r.version());
                match decode::<T>(r.any()) {
                    Ok(v) => DumpEntry::of(name.clone(), &v, version, set_at),
                    Err(e) => DumpEntry {
                        name: name.clone(),
                        version,
                        last_updated: set_at,
                        body: json!({ "error": e.to_string() }),
                    },
                }
            })
            .collect(),
        warming_entries: Vec::new(),
    }
}
