//! The validator clients run, run at set time: every listener, route configuration, cluster and
//! assignment is converted to mesh-core's model and validated, exactly as our xDS client does
//! before it ACKs, so config it would NACK never leaves the server. Resources the control plane
//! encoded from mesh-core values it validated itself (the `mesh.yaml` and etcd translation) are
//! not converted back: the round trip is the conversion's own tested property.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use prost::Message;

use super::cache::Validator;
use super::resource::Resource;
use super::snapshot::{Snapshot, SnapshotError};
use crate::convert::{self, ConvertError};
use crate::ResourceType;

/// A [`Validator`] converting each resource with [`crate::convert::decode`] (which validates).
/// Each unique resource (by content hash) is checked once, whatever the number of nodes that
/// share it; one the translation built from a validated model is not checked again. API listeners (proxyless gRPC) are checked only as far as the proto decodes, since
/// mesh-core's listener is a socket listener.
pub fn mesh_core_validator() -> Validator {
    let seen = Arc::new(Mutex::new(HashSet::<u64>::new()));
    Arc::new(move |snap: &Snapshot| {
        for kind in [
            ResourceType::Cluster,
            ResourceType::Endpoint,
            ResourceType::Listener,
            ResourceType::Route,
        ] {
            for r in snap.of(kind).items().values() {
                if r.is_validated() {
                    continue;
                }
                if seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&r.hash())
                {
                    continue;
                }
                check(r).map_err(|e| SnapshotError::Invalid {
                    kind,
                    name: r.name().to_owned(),
                    reason: e.to_string(),
                })?;
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() > 1_000_000 {
                    seen.clear();
                }
                seen.insert(r.hash());
            }
        }
        Ok(())
    })
}

fn check(r: &Resource) -> Result<(), ConvertError> {
    match r.kind() {
        ResourceType::Cluster => convert::decode::<mesh_core::Cluster>(r.any()).map(drop),
        ResourceType::Endpoint => {
            convert::decode::<mesh_core::ClusterLoadAssignment>(r.any()).map(drop)
        }
        ResourceType::Route => convert::decode::<mesh_core::RouteConfiguration>(r.any()).map(drop),
        ResourceType::Listener => {
            let is_api = lpb::Listener::decode(r.any().value.as_slice())
                .map(|l| l.api_listener.is_some())
                .unwrap_or(false);
            if is_api {
                Ok(())
            } else {
                convert::decode::<mesh_core::Listener>(r.any()).map(drop)
            }
        }
        ResourceType::Secret => convert::decode::<mesh_core::Secret>(r.any()).map(drop),
        ResourceType::Runtime => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::server::SnapshotCache;

    #[test]
    fn config_a_client_would_nack_is_refused_at_set_time() {
        let cache = SnapshotCache::new();
        cache.set_validator(mesh_core_validator());
        let mut c = mesh_core::Cluster::new("c");
        c.lb_policy = mesh_core::LbPolicy::Maglev { table_size: 1000 };
        let bad = Snapshot::from_anys([convert::encode(&c)]).unwrap();
        let err = cache.set_snapshot("n", bad).unwrap_err().to_string();
        assert!(err.contains("not a prime"), "{err}");
        let good = Snapshot::from_anys([convert::encode(&mesh_core::Cluster::new("c"))]).unwrap();
        cache.set_snapshot("n", good).unwrap();
    }
}
