//! What a config dump shows of each held resource: the version it last changed with and when,
//! as Envoy's config dump does (`version_info` and `last_updated` of each dynamic resource).
//!
//! Envoy's rule, kept here: a resource's version is the one of the update that last *changed*
//! it. A SotW response that resends a resource unchanged under a new `version_info` leaves the
//! resource's version and time as they were, while the type's version moves on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_core::ReloadError;
use serde::{Deserialize, Serialize};

use super::state::AdsState;
use super::store::{Resources, StoredResource};

/// The version a held resource last changed with, and when that change was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceVersion {
    /// SotW: the `version_info` of the response that last changed the resource; delta: the
    /// resource's own `version` (the response's `system_version_info` when that is empty).
    pub version: String,
    /// When the change was accepted.
    pub last_updated: SystemTime,
}

/// Per resource name, shared by the status snapshots (a snapshot clones the pointer).
pub type ResourceVersions = Arc<BTreeMap<String, ResourceVersion>>;

impl AdsState {
    /// Applies `next` to the store (feeding the sinks) and records `version_of(name)` and the
    /// time for every resource it added or changed; drops the records of removed resources.
    pub(crate) fn apply_recording<T: StoredResource>(
        &mut self,
        next: Resources<T>,
        version_of: &dyn Fn(&str) -> String,
    ) -> Result<(), ReloadError> {
        let Some(updated) = self.store.apply(next)? else {
            return Ok(());
        };
        let held = T::map(&self.store.config);
        let now = SystemTime::now();
        let versions = Arc::make_mut(&mut self.types[T::TYPE.index()].versions);
        versions.retain(|name, _| held.contains_key(name));
        for name in updated {
            let version = version_of(&name);
            versions.insert(
                name,
                ResourceVersion {
                    version,
                    last_updated: now,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use mesh_core::Cluster;

    use super::super::{AdsMode, XdsClient};
    use crate::convert::encode;
    use crate::ResourceType;

    fn cds(version: &str, clusters: &[Cluster]) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            resources: clusters.iter().map(encode).collect(),
            type_url: ResourceType::Cluster.type_url().into(),
            nonce: version.into(),
            ..Default::default()
        }
    }

    fn versions(status: &super::super::XdsStatus) -> Vec<(String, String)> {
        status.types[ResourceType::Cluster.type_url()]
            .resource_versions
            .iter()
            .map(|(k, v)| (k.clone(), v.version.clone()))
            .collect()
    }

    #[test]
    fn sotw_versions_move_only_for_what_changed_and_removals_drop_out() {
        let mut s = XdsClient::builder().into_state();
        s.on_connect();
        let (a, b) = (Cluster::new("a"), Cluster::new("b"));
        s.on_response(cds("1", &[a.clone(), b.clone()]));
        let first =
            s.status().types[ResourceType::Cluster.type_url()].resource_versions["b"].last_updated;
        let mut a2 = a.clone();
        a2.connect_timeout = std::time::Duration::from_secs(9);
        s.on_response(cds("2", &[a2.clone(), b.clone()]));
        let status = s.status();
        assert_eq!(
            versions(&status),
            [("a".into(), "2".into()), ("b".into(), "1".into())],
            "b came again unchanged: it keeps the version it changed with"
        );
        let t = &status.types[ResourceType::Cluster.type_url()];
        assert_eq!(t.version, "2", "the type's version moves on");
        assert_eq!(t.resource_versions["b"].last_updated, first);
        s.on_response(cds("3", &[a2]));
        assert_eq!(versions(&s.status()), [("a".into(), "2".into())]);
        // A refused update records nothing.
        let mut bad = Cluster::new("c");
        bad.connect_timeout = std::time::Duration::ZERO;
        s.on_response(cds("4", &[bad]));
        assert_eq!(versions(&s.status()), [("a".into(), "2".into())]);
    }

    #[test]
    fn versions_survive_persistence_and_a_restart() {
        let mut s = XdsClient::builder().into_state();
        s.on_connect();
        s.on_response(cds("7", &[Cluster::new("a")]));
        let before = s.status().types[ResourceType::Cluster.type_url()]
            .resource_versions
            .clone();
        let json = serde_json::to_string(&super::super::persist::Persisted::of(&s)).unwrap();
        let persisted: super::super::persist::Persisted = serde_json::from_str(&json).unwrap();
        // A delta client restarting from a SotW file still shows what it serves and since when.
        let mut restarted = XdsClient::builder().mode(AdsMode::Delta).into_state();
        persisted.restore_versions(&mut restarted);
        let after = restarted.status().types[ResourceType::Cluster.type_url()]
            .resource_versions
            .clone();
        assert_eq!(*after, *before);
        assert_eq!(after["a"].version, "7");
    }

    #[test]
    fn delta_versions_are_each_resources_own() {
        let mut s = XdsClient::builder().mode(AdsMode::Delta).into_state();
        s.on_connect();
        let resource = |name: &str, version: &str| Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(encode(&Cluster::new(name))),
            ..Default::default()
        };
        s.on_delta_response(DeltaDiscoveryResponse {
            type_url: ResourceType::Cluster.type_url().into(),
            nonce: "n1".into(),
            system_version_info: "sys-1".into(),
            resources: vec![resource("a", "va"), resource("b", "")],
            ..Default::default()
        });
        assert_eq!(
            versions(&s.status()),
            [("a".into(), "va".into()), ("b".into(), "sys-1".into())],
            "an empty resource version falls back to system_version_info"
        );
    }
}
