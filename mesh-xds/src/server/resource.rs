//! Resources as the server holds them: encoded once, named, versioned by their content hash.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::Resource as WireResource;
use envoy_types::pb::envoy::service::runtime::v3::Runtime;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::convert::{self, XdsResource};
use crate::ResourceType;

/// Why a resource could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The `Any`'s type URL is not one the server serves.
    #[error("unsupported resource type {0:?}")]
    UnsupportedType(String),
    /// The `Any`'s bytes do not decode as its type.
    #[error("{type_url}: cannot decode: {reason}")]
    Decode {
        /// The type URL.
        type_url: String,
        /// The decoder's message.
        reason: String,
    },
    /// The resource has no name.
    #[error("a {0} resource has an empty name")]
    Unnamed(ResourceType),
}

/// One encoded resource, shared (by `Arc`) by every snapshot and stream that holds it.
///
/// Its version is a hash of its type and bytes: the same content always has the same version,
/// on every replica and across restarts, so a reconnecting client that already holds it is not
/// sent it again.
#[derive(Clone)]
pub struct Resource {
    kind: ResourceType,
    /// Shared with the subscriptions that name it (see `stream::intern`).
    name: Arc<str>,
    hash: u64,
    any: Any,
    /// Encoded by this crate from a mesh-core value that passed `Validate` (see
    /// [`Resource::from_validated`]): the validator does not convert it back.
    validated: bool,
    /// Its entry in a `DiscoveryResponse` / `DeltaDiscoveryResponse`, encoded on first use and
    /// then shared by every stream that sends it.
    sotw: OnceLock<Bytes>,
    delta: OnceLock<Bytes>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        // The cached encodings follow from the rest.
        self.kind == other.kind
            && self.hash == other.hash
            && self.name == other.name
            && self.any == other.any
    }
}

/// Field number of `resources` in both `DiscoveryResponse` and `DeltaDiscoveryResponse`.
const RESOURCES_FIELD: u32 = 2;

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("type", &self.kind)
            .field("name", &self.name)
            .field("version", &self.version())
            .field("bytes", &self.any.value.len())
            .finish()
    }
}

impl Resource {
    /// Encodes `msg` once; its name is read from the message.
    pub fn encode<M: Message + Name + Named>(msg: &M) -> Result<Self, ResourceError> {
        let any = Any {
            type_url: M::type_url(),
            value: msg.encode_to_vec(),
        };
        Self::from_any(any)
    }

    /// Takes an already packed resource, reading its type from the type URL and its name from
    /// the message (a listener's, cluster's, route configuration's, secret's or runtime's
    /// `name`, an assignment's `cluster_name`).
    pub fn from_any(any: Any) -> Result<Self, ResourceError> {
        let kind = ResourceType::from_type_url(&any.type_url)
            .ok_or_else(|| ResourceError::UnsupportedType(any.type_url.clone()))?;
        let bytes = any.value.as_slice();
        let decoded = match kind {
            ResourceType::Listener => Listener::decode(bytes).map(|m| m.name),
            ResourceType::Route => RouteConfiguration::decode(bytes).map(|m| m.name),
            ResourceType::Cluster => Cluster::decode(bytes).map(|m| m.name),
            ResourceType::Endpoint => ClusterLoadAssignment::decode(bytes).map(|m| m.cluster_name),
            ResourceType::Secret => Secret::decode(bytes).map(|m| m.name),
            ResourceType::Runtime => Runtime::decode(bytes).map(|m| m.name),
        };
        let name = decoded.map_err(|e| ResourceError::Decode {
            type_url: any.type_url.clone(),
            reason: e.to_string(),
        })?;
        if name.is_empty() {
            return Err(ResourceError::Unnamed(kind));
        }
        Ok(Self::with_name(kind, name, any))
    }

    /// A resource whose name is given rather than decoded (the caller vouches that it matches).
    pub fn with_name(kind: ResourceType, name: impl Into<String>, any: Any) -> Self {
        let hash = content_hash(&any);
        Self {
            kind,
            name: Arc::from(name.into()),
            hash,
            any,
            validated: false,
            sotw: OnceLock::new(),
            delta: OnceLock::new(),
        }
    }

    /// Encodes a mesh-core value the caller has validated (the control plane's translation):
    /// named by the value, with no decode, and marked so that
    /// [`mesh_core_validator`](super::mesh_core_validator) does not convert it back.
    pub(crate) fn from_validated<T: XdsResource>(model: &T) -> Self {
        let mut res = Self::with_name(T::TYPE, model.resource_name(), convert::encode(model));
        res.validated = true;
        res
    }

    /// Whether it was encoded from a validated mesh-core value.
    pub(crate) fn is_validated(&self) -> bool {
        self.validated
    }

    /// Its type.
    pub fn kind(&self) -> ResourceType {
        self.kind
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its name, shared.
    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The content hash (the version as a number).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The version sent on the wire: the content hash in hex.
    pub fn version(&self) -> String {
        format!("{:016x}", self.hash)
    }

    /// The packed message.
    pub fn any(&self) -> &Any {
        &self.any
    }

    /// Its `resources` entry of a `DiscoveryResponse` (key, length, the `Any`).
    pub(crate) fn sotw_entry(&self) -> &Bytes {
        self.sotw.get_or_init(|| {
            let mut buf = Vec::with_capacity(self.any.encoded_len() + 8);
            prost::encoding::message::encode(RESOURCES_FIELD, &self.any, &mut buf);
            buf.into()
        })
    }

    /// Its `resources` entry of a `DeltaDiscoveryResponse` (a `Resource` with name, version
    /// and the `Any`).
    pub(crate) fn delta_entry(&self) -> &Bytes {
        self.delta.get_or_init(|| {
            let wire = WireResource {
                name: self.name.to_string(),
                version: self.version(),
                resource: Some(self.any.clone()),
                ..WireResource::default()
            };
            let mut buf = Vec::with_capacity(wire.encoded_len() + 8);
            prost::encoding::message::encode(RESOURCES_FIELD, &wire, &mut buf);
            buf.into()
        })
    }
}

/// A message type with a resource name (implemented for the six served types).
pub trait Named {
    /// The resource name.
    fn resource_name(&self) -> &str;
}

macro_rules! named {
    ($($t:ty => $f:ident),*) => {$(
        impl Named for $t {
            fn resource_name(&self) -> &str {
                &self.$f
            }
        }
    )*};
}
named!(Listener => name, RouteConfiguration => name, Cluster => name,
    ClusterLoadAssignment => cluster_name, Secret => name, Runtime => name);

/// FNV-1a over the type URL and the bytes: a stable hash (unlike std's `DefaultHasher`, whose
/// algorithm may change between Rust releases), so versions agree across builds and replicas.
fn content_hash(any: &Any) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(any.type_url.as_bytes());
    h.write(&[0]);
    h.write(&any.value);
    h.finish()
}

/// Combines versions (e.g. of every resource of a type) into one, order-independently of how
/// the caller iterates as long as it passes them sorted by name.
pub(crate) fn combine<'a>(parts: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    let mut h = fnv::FnvHasher::default();
    for (name, v) in parts {
        h.write(name.as_bytes());
        h.write(&[0]);
        h.write(&v.to_le_bytes());
    }
    h.finish()
}

/// Interns resources by content hash so identical resources of many nodes' snapshots are held
/// once: memory grows with unique resources, not with nodes.
#[derive(Debug, Default)]
pub(crate) struct ResourceStore {
    by_hash: HashMap<u64, Weak<Resource>>,
    sweep_at: usize,
}

impl ResourceStore {
    /// The shared copy of `res` (an existing one with the same content and name, or `res`).
    pub(crate) fn intern(&mut self, res: Arc<Resource>) -> Arc<Resource> {
        if let Some(existing) = self.by_hash.get(&res.hash).and_then(Weak::upgrade) {
            if existing.name == res.name && existing.any == res.any {
                return existing;
            }
            // A hash collision (or the same bytes under another name): keep both distinct.
            return res;
        }
        self.by_hash.insert(res.hash, Arc::downgrade(&res));
        if self.by_hash.len() > self.sweep_at {
            self.by_hash.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.by_hash.len() * 2).max(1024);
        }
        res
    }

    /// Number of live unique resources.
    pub(crate) fn live(&self) -> usize {
        self.by_hash
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn name_and_version_come_from_the_content() {
        let c = Cluster {
            name: "orders".into(),
            ..Cluster::default()
        };
        let a = Resource::encode(&c).unwrap();
        let b = Resource::encode(&c.clone()).unwrap();
        assert_eq!(a.name(), "orders");
        assert_eq!(a.kind(), ResourceType::Cluster);
        assert_eq!(a.version(), b.version(), "same content, same version");
        let other = Resource::encode(&Cluster {
            name: "payments".into(),
            ..Cluster::default()
        })
        .unwrap();
        assert_ne!(a.version(), other.version());
    }

    #[test]
    fn unnamed_and_unknown_resources_are_refused() {
        let err = Resource::encode(&Cluster::default()).unwrap_err();
        assert_eq!(err, ResourceError::Unnamed(ResourceType::Cluster));
        let err = Resource::from_any(Any {
            type_url: "type.googleapis.com/foo.Bar".into(),
            value: vec![],
        })
        .unwrap_err();
        assert!(matches!(err, ResourceError::UnsupportedType(_)));
    }

    #[test]
    fn the_store_shares_identical_resources() {
        let mut store = ResourceStore::default();
        let c = Cluster {
            name: "orders".into(),
            ..Cluster::default()
        };
        let a = store.intern(Arc::new(Resource::encode(&c).unwrap()));
        let b = store.intern(Arc::new(Resource::encode(&c).unwrap()));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(store.live(), 1);
        drop((a, b));
        assert_eq!(store.live(), 0);
    }
}
