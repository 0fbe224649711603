//! Dumps of what a sidecar holds: a static bootstrap's [`MeshConfig`], or what the xDS client
//! accepted ([`XdsConfig`] and the per-resource versions of its [`XdsStatus`]).

use std::time::SystemTime;

use mesh_core::MeshConfig;

use super::{ConfigDump, DumpEntry, TypeDump};
use crate::client::{ResourceMap, StoredResource, XdsConfig, XdsStatus};

impl ConfigDump {
    /// The static entries of a bootstrap loaded at `loaded`.
    pub fn from_static(mesh: &MeshConfig, loaded: SystemTime) -> Self {
        fn statics<T: serde::Serialize>(
            items: &[T],
            name: impl Fn(&T) -> &str,
            loaded: SystemTime,
        ) -> TypeDump {
            TypeDump {
                static_entries: items
                    .iter()
                    .map(|r| DumpEntry::of(name(r), r, None, Some(loaded)))
                    .collect(),
                ..TypeDump::default()
            }
        }
        Self {
            listeners: statics(&mesh.listeners, |l| &l.name, loaded),
            routes: statics(&mesh.route_configs, |r| &r.name, loaded),
            clusters: statics(&mesh.clusters, |c| &c.name, loaded),
            endpoints: statics(&mesh.endpoints, |e| &e.cluster_name, loaded),
        }
    }

    /// The dynamic entries of what an xDS client holds, each with the version it last changed
    /// with and when (from `status`, see [`crate::client::ResourceVersion`]).
    pub fn from_xds(config: &XdsConfig, status: &XdsStatus) -> Self {
        Self {
            listeners: dynamic(&config.listeners, status),
            routes: dynamic(&config.routes, status),
            clusters: dynamic(&config.clusters, status),
            endpoints: dynamic(&config.endpoints, status),
        }
    }
}

fn dynamic<T: StoredResource + serde::Serialize>(
    map: &ResourceMap<T>,
    status: &XdsStatus,
) -> TypeDump {
    let ty = status.types.get(T::TYPE.type_url());
    TypeDump {
        version_info: ty.map(|t| t.version.clone()).filter(|v| !v.is_empty()),
        static_entries: Vec::new(),
        dynamic_entries: map
            .iter()
            .map(|(name, r)| {
                let v = ty.and_then(|t| t.resource_versions.get(name));
                DumpEntry::of(
                    name.clone(),
                    &***r,
                    v.map(|v| v.version.clone()),
                    v.map(|v| v.last_updated),
                )
            })
            .collect(),
        warming_entries: Vec::new(),
    }
}
