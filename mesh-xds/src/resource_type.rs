//! The xDS resource types, as the client subscribes to them and the control plane serves them.

use std::fmt;

use crate::convert::XdsResource;

/// An xDS resource type. The variants are in ADS push order: what others reference goes first
/// (secrets and runtimes, then clusters before their endpoints, listeners before their routes),
/// so a client never sees a reference to something it has not got yet. That is also Envoy's
/// subscription order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS): [`mesh_core::Secret`]; the
    /// client subscribes by name to the secrets its listeners' and clusters' TLS names.
    Secret,
    /// `envoy.service.runtime.v3.Runtime` (RTDS); served, not subscribed to.
    Runtime,
    /// `envoy.config.cluster.v3.Cluster` (CDS): [`mesh_core::Cluster`].
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS):
    /// [`mesh_core::ClusterLoadAssignment`].
    Endpoint,
    /// `envoy.config.listener.v3.Listener` (LDS): [`mesh_core::Listener`].
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS): [`mesh_core::RouteConfiguration`].
    Route,
}

impl ResourceType {
    /// Every type, in push (dependency) order.
    pub const ALL: [ResourceType; 6] = [
        Self::Secret,
        Self::Runtime,
        Self::Cluster,
        Self::Endpoint,
        Self::Listener,
        Self::Route,
    ];

    /// The four types mesh-core has a model of, which the ADS client subscribes to, in the same
    /// order.
    pub const CLIENT: [ResourceType; 5] = [
        Self::Secret,
        Self::Cluster,
        Self::Endpoint,
        Self::Listener,
        Self::Route,
    ];

    /// The type URL on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            Self::Runtime => "type.googleapis.com/envoy.service.runtime.v3.Runtime",
            Self::Cluster => mesh_core::Cluster::TYPE_URL,
            Self::Endpoint => mesh_core::ClusterLoadAssignment::TYPE_URL,
            Self::Listener => mesh_core::Listener::TYPE_URL,
            Self::Route => mesh_core::RouteConfiguration::TYPE_URL,
        }
    }

    /// The type a type URL names, if it is one of these.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Position in [`ResourceType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the type is subscribed to by wildcard (LDS, CDS). A state-of-the-world response
    /// of such a type carries the whole set (what is absent is removed); one of the others
    /// (RDS, EDS) carries only names the client asked for.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Secret => "secret",
            Self::Runtime => "runtime",
            Self::Cluster => "cluster",
            Self::Endpoint => "endpoint",
            Self::Listener => "listener",
            Self::Route => "route",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_in_dependency_order() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(ResourceType::ALL[t.index()], t);
        }
        assert!(ResourceType::Cluster < ResourceType::Endpoint);
        assert!(ResourceType::Listener < ResourceType::Route);
        assert!(ResourceType::CLIENT.windows(2).all(|w| w[0] < w[1]));
    }

    fn urls_agree<T: XdsResource>() {
        assert_eq!(T::TYPE.type_url(), T::TYPE_URL);
        assert_eq!(<T::Proto as prost::Name>::type_url(), T::TYPE_URL);
    }

    #[test]
    fn the_models_type_urls_are_their_protos() {
        urls_agree::<mesh_core::Cluster>();
        urls_agree::<mesh_core::ClusterLoadAssignment>();
        urls_agree::<mesh_core::Listener>();
        urls_agree::<mesh_core::RouteConfiguration>();
    }
}
