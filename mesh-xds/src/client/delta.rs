//! Incremental (delta) xDS on the same state machine: per-resource versions, `removed_resources`,
//! and subscribe/unsubscribe requests instead of whole name lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use mesh_core::{Cluster, ClusterLoadAssignment, Listener, RouteConfiguration, Secret};

use super::state::{nack_status, status, AdsState, Outbound, Outgoing};
use super::store::StoredResource;
use super::{subscribed_type, ResourceType};
use crate::convert::{decode_checked, ConvertError};

impl AdsState {
    /// Handles a delta response: applies its added/changed resources and `removed_resources` as
    /// one update (ACK), or none of it (NACK); then follows the resource chain.
    pub fn on_delta_response(&mut self, resp: DeltaDiscoveryResponse) -> Vec<Outgoing> {
        let Some(ty) = subscribed_type(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unknown type");
            return Vec::new();
        };
        let key = fingerprint(&resp);
        if let Some(rej) = &self.ty(ty).rejected {
            if rej.key == key {
                let error = rej.error.clone();
                self.types[ty.index()].stats.nacks += 1;
                return vec![Outgoing {
                    request: self.delta_ack(ty, &resp.nonce, Some(error)),
                    hold: true,
                }];
            }
        }
        let applied = match ty {
            ResourceType::Listener => self.delta_apply::<Listener>(&resp),
            ResourceType::Route => self.delta_apply::<RouteConfiguration>(&resp),
            ResourceType::Cluster => self.delta_apply::<Cluster>(&resp),
            ResourceType::Endpoint => self.delta_apply::<ClusterLoadAssignment>(&resp),
            // Not subscribed to (`subscribed_type` returned none of these).
            ResourceType::Secret => self.delta_apply::<Secret>(&resp),
            ResourceType::Runtime => Ok(()),
        };
        match applied {
            Ok(()) => {
                self.accepted(ty);
                let ts = &mut self.types[ty.index()];
                for name in &resp.removed_resources {
                    ts.resource_versions.remove(name);
                }
                // Versions of what is held only: a resource of a name not subscribed was dropped.
                for r in &resp.resources {
                    if ty.is_wildcard() || ts.names.contains(&r.name) {
                        ts.resource_versions
                            .insert(r.name.clone(), r.version.clone());
                    }
                }
                if !resp.system_version_info.is_empty() {
                    ts.stats.version = resp.system_version_info.clone();
                }
                let mut out = vec![Outgoing::now(self.delta_ack(ty, &resp.nonce, None))];
                out.extend(self.follow_chain(ty));
                out
            }
            Err(error) => {
                self.rejected(ty, key, &error);
                vec![Outgoing::now(self.delta_ack(ty, &resp.nonce, Some(error)))]
            }
        }
    }

    fn delta_apply<T: StoredResource>(
        &mut self,
        resp: &DeltaDiscoveryResponse,
    ) -> Result<(), Status> {
        let names = &self.ty(T::TYPE).names;
        let mut next = BTreeMap::new();
        let mut errors = Vec::new();
        for r in &resp.resources {
            let Some(any) = &r.resource else {
                // A resource without a body only refreshes its TTL: nothing to apply.
                continue;
            };
            match decode_checked::<T>(any) {
                Ok(v) if !r.name.is_empty() && v.resource_name() != r.name => {
                    errors.push(ConvertError::new(
                        format!("{}[{}]", T::KIND, r.name),
                        format!("the resource is named {:?}", v.resource_name()),
                    ));
                }
                Ok(v) => {
                    let name = v.resource_name().to_string();
                    if T::TYPE.is_wildcard() || names.contains(&name) {
                        next.insert(name, Arc::new(v));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(nack_status(&errors));
        }
        // The entries the response neither replaces nor removes are shared, not copied.
        let removed: std::collections::HashSet<&str> =
            resp.removed_resources.iter().map(String::as_str).collect();
        for (k, v) in T::map(&self.store.config) {
            if !removed.contains(k.as_str()) && !next.contains_key(k) {
                next.insert(k.clone(), Arc::clone(v));
            }
        }
        let versions: BTreeMap<&str, &str> = resp
            .resources
            .iter()
            .filter(|r| !r.version.is_empty())
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect();
        let system = &resp.system_version_info;
        self.apply_recording(next, &|name| {
            versions
                .get(name)
                .map_or_else(|| system.clone(), |v| (*v).to_owned())
        })
        .map_err(|e| status(e.to_string()))
    }

    fn delta_ack(&self, ty: ResourceType, nonce: &str, error: Option<Status>) -> Outbound {
        Outbound::Delta(DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: ty.type_url().to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error,
            ..Default::default()
        })
    }
}

/// Identifies a delta response's content (names, versions, removals), so that the same rejected
/// content resent under a new nonce is recognised.
fn fingerprint(resp: &DeltaDiscoveryResponse) -> String {
    use std::hash::{Hash, Hasher};
    let versions: BTreeMap<&str, String> = resp
        .resources
        .iter()
        .map(|r| {
            // A control plane that leaves versions empty is identified by content instead.
            let version = if r.version.is_empty() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                r.resource.as_ref().map(|a| &a.value).hash(&mut h);
                format!("#{:x}", h.finish())
            } else {
                r.version.clone()
            };
            (r.name.as_str(), version)
        })
        .collect();
    let mut key = String::new();
    for (name, version) in versions {
        key.push_str(name);
        key.push('@');
        key.push_str(&version);
        key.push('\n');
    }
    key.push('-');
    for name in &resp.removed_resources {
        key.push_str(name);
        key.push('\n');
    }
    key
}
