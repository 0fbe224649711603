//! The protocol of the hop between two sidecars: HTTP/2 with prior knowledge by default, as
//! Linkerd runs it between its proxies, so that every request from one sidecar to another
//! rides one multiplexed connection instead of a pooled HTTP/1.1 connection per request in
//! flight.
//!
//! A service's cluster is marked HTTP/2 when every one of its endpoints is a sidecar's inbound
//! listener (those listeners accept h2c by prior knowledge and hand each request to their app
//! in the app's own protocol: the service's `protocol`, through the `local_app` cluster). The
//! control plane knows a sidecar's inbound listener from the spec: the `inbound` address of a
//! sidecar node listed under `nodes` or of the top-level `listeners` (every unlisted node's);
//! an inbound listener on an unspecified IP (`0.0.0.0:8083`) stands for that port on every
//! host. A registration (etcd, the sidecar's `/pub`) marks itself with the endpoint metadata
//! [`SIDECAR_METADATA`]` = "true"`. A service opts out with `mesh_protocol: http1`.

use std::collections::HashSet;
use std::net::SocketAddr;

use mesh_core::UpstreamProtocol;
use serde::{Deserialize, Serialize};

use super::spec::{EndpointSpec, MeshSpec, NodeKind, ServiceProtocol, ServiceSpec};

/// The endpoint metadata key saying "this endpoint is a mesh sidecar's inbound listener"
/// (value `"true"`), for endpoints the spec cannot recognise by address (registrations).
pub const SIDECAR_METADATA: &str = "mesh.sidecar";

/// The protocol spoken between sidecars to a service's endpoints, when they are sidecars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshProtocol {
    /// HTTP/2 with prior knowledge, multiplexed (the default).
    #[default]
    Http2,
    /// The service's own `protocol`, as if its endpoints were not sidecars (the opt-out).
    Http1,
}

impl MeshProtocol {
    /// Whether this is the default (left out when a spec is written back).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The inbound listener addresses of a spec's sidecars.
#[derive(Debug, Clone, Default)]
pub(super) struct SidecarInbounds {
    /// Inbound listeners on a specific IP.
    exact: HashSet<SocketAddr>,
    /// Ports of inbound listeners on an unspecified IP (any host's port is a sidecar's).
    any_ip: HashSet<u16>,
}

impl SidecarInbounds {
    /// The inbound listeners of `spec`'s sidecar nodes and of its default listeners.
    pub(super) fn of(spec: &MeshSpec) -> Self {
        let mut me = Self::default();
        let listed = spec
            .nodes
            .iter()
            .filter(|n| n.kind() == NodeKind::Sidecar)
            .map(|n| n.listeners.unwrap_or_default().over(spec.listeners).inbound);
        for addr in listed.chain([spec.listeners.inbound]) {
            if addr.ip().is_unspecified() {
                me.any_ip.insert(addr.port());
            } else {
                me.exact.insert(addr);
            }
        }
        me
    }

    /// Whether `e` is a sidecar's inbound listener.
    fn contains(&self, e: &EndpointSpec) -> bool {
        self.exact.contains(&e.address)
            || self.any_ip.contains(&e.address.port())
            || e.metadata.get(SIDECAR_METADATA).map(String::as_str) == Some("true")
    }
}

/// The protocol of `s`'s cluster: HTTP/2 when all its endpoints (at least one) are sidecars and
/// it has not opted out; otherwise the protocol its endpoints speak. An opaque TCP service is
/// never spoken HTTP to, and a `use_downstream` service keeps the caller's protocol on every
/// hop: its app speaks whatever its clients speak, which an HTTP/2 hop would hide from the
/// inbound sidecar (the app would get h2 from an HTTP/1.1 client).
pub(super) fn cluster_protocol(s: &ServiceSpec, sidecars: &SidecarInbounds) -> UpstreamProtocol {
    let via_sidecars = s.mesh_protocol == MeshProtocol::Http2
        && matches!(s.protocol, ServiceProtocol::Http1 | ServiceProtocol::Http2)
        && !s.endpoints.is_empty()
        && s.endpoints.iter().all(|e| sidecars.contains(e));
    if via_sidecars {
        UpstreamProtocol::Http2
    } else {
        s.protocol.upstream()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn protocols(yaml: &str) -> Vec<(String, UpstreamProtocol)> {
        let spec = MeshSpec::from_yaml(yaml).unwrap();
        let sidecars = SidecarInbounds::of(&spec);
        spec.services
            .iter()
            .map(|s| (s.name.clone(), cluster_protocol(s, &sidecars)))
            .collect()
    }

    #[test]
    fn endpoints_that_are_sidecar_inbound_listeners_get_http2() {
        use UpstreamProtocol::{Http1, Http2, UseDownstream};
        let got = protocols(
            r#"
listeners: { inbound: "127.0.0.1:8083" }
services:
  - { name: a, endpoints: [ { address: "127.0.0.1:7001" } ] }
  - { name: b, protocol: use_downstream, endpoints: [ { address: "127.0.0.1:7001" }, { address: "127.0.0.1:8083" } ] }
  - { name: c, endpoints: [ { address: "127.0.0.1:9000" } ] }
  - { name: d, mesh_protocol: http1, endpoints: [ { address: "127.0.0.1:7001" } ] }
  - { name: e, protocol: use_downstream, endpoints: [ { address: "127.0.0.1:7001" }, { address: "127.0.0.1:9000" } ] }
  - { name: f, endpoints: [ { address: "10.1.2.3:7002" }, { address: "10.1.2.4:7002" } ] }
  - { name: g, endpoints: [ { address: "10.1.2.3:9000", metadata: { mesh.sidecar: "true" } } ] }
  - { name: h }
  - { name: i, protocol: tcp, port: 5432, endpoints: [ { address: "127.0.0.1:7001" } ] }
  - { name: j, protocol: http2, endpoints: [ { address: "127.0.0.1:9000" } ] }
  - { name: k, endpoints: [ { address: "127.0.0.1:8083" } ] }
nodes:
  - { id: n1, service: a, listeners: { inbound: "127.0.0.1:7001" } }
  - { id: n2, listeners: { inbound: "0.0.0.0:7002" } }
  - { id: p, proxyless: true, listeners: { inbound: "127.0.0.1:9000" } }
"#,
        );
        let want = [
            ("a", Http2),         // a listed node's inbound listener
            ("b", UseDownstream), // sidecars, but the app speaks whatever its callers speak
            ("c", Http1),         // not a sidecar (a proxyless node has no inbound listener)
            ("d", Http1),         // opted out
            ("e", UseDownstream), // one endpoint is not a sidecar: the service's own protocol
            ("f", Http2),         // an inbound listener on 0.0.0.0 stands for every host
            ("g", Http2),         // a registration that says it is a sidecar
            ("h", Http1),         // no endpoints
            ("i", Http1),         // opaque TCP is never spoken HTTP to
            ("j", Http2),         // its own protocol anyway
            ("k", Http2),         // the default listeners' inbound (unlisted nodes')
        ];
        let want: Vec<_> = want.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        assert_eq!(got, want);
    }
}
