//! Layer 4 in `mesh.yaml`: a `protocol: tcp` service gets an opaque outbound listener on every
//! sidecar, and its own nodes' inbound listener is opaque (no detection: server-first
//! protocols, where the client waits for the server's greeting, work).

use mesh_core::{Direction, HttpProtocolOptions, Listener, TcpProxy};

use super::spec::{ListenerAddrs, MeshSpec, NodeSpec, ServiceProtocol};

/// Prefix of the opaque outbound listener of a `protocol: tcp` service (`outbound_tcp_NAME`).
pub const OUTBOUND_TCP: &str = "outbound_tcp_";

/// A sidecar's opaque outbound listener per `protocol: tcp` service: at the node's
/// `tcp_listeners` address for it, else the outbound listener's IP and the service's port.
pub(super) fn tcp_listeners(
    spec: &MeshSpec,
    node: Option<&NodeSpec>,
    addrs: ListenerAddrs,
) -> Vec<Listener> {
    spec.services
        .iter()
        .filter(|s| s.protocol == ServiceProtocol::Tcp)
        .filter_map(|s| {
            let address = node
                .and_then(|n| n.tcp_listeners.get(&s.name).copied())
                .or_else(|| s.port.map(|p| (addrs.outbound.ip(), p).into()))?;
            Some(Listener {
                tls: None,
                rbac: None,
                xprotocol: None,
                name: format!("{OUTBOUND_TCP}{}", s.name),
                address,
                direction: Direction::Outbound,
                route_config_name: String::new(),
                route_config: None,
                http: HttpProtocolOptions::default(),
                rate_limit: None,
                http_filters: Vec::new(),
                tcp_proxy: Some(TcpProxy::to_cluster(&s.name)),
                detection: Default::default(),
                access_log: Vec::new(),
            })
        })
        .collect()
}

/// Turns an HTTP listener into an opaque one relaying to `cluster`.
pub(super) fn make_opaque(l: &mut Listener, cluster: &str) {
    l.route_config_name.clear();
    l.route_config = None;
    l.tcp_proxy = Some(TcpProxy::to_cluster(cluster));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mesh_core::TcpDestination;

    use crate::server::Resource;
    use crate::source::MeshSpec;
    use crate::ResourceType;

    fn listeners(r: &crate::server::Snapshot) -> Vec<mesh_core::Listener> {
        r.of(ResourceType::Listener)
            .items()
            .values()
            .map(|r: &std::sync::Arc<Resource>| crate::convert::decode(r.any()).unwrap())
            .collect()
    }

    const SPEC: &str = r#"
services:
  - name: redis
    protocol: tcp
    port: 16379
    endpoints: [{ address: 127.0.0.1:6379 }]
  - name: web
    endpoints: [{ address: 127.0.0.1:8080 }]
nodes:
  - id: redis-1
    service: redis
  - id: web-1
    service: web
    listeners: { outbound: 127.0.0.2:8082 }
  - id: web-2
    service: web
    tcp_listeners: { redis: 127.0.0.1:26379 }
"#;

    #[test]
    fn tcp_services_get_opaque_listeners() {
        let spec = MeshSpec::from_yaml(SPEC).unwrap();
        let snaps = spec.snapshots().unwrap();
        let find = |node: &str, name: &str| {
            listeners(&snaps.nodes[node])
                .into_iter()
                .find(|l| l.name == name)
                .unwrap()
        };
        // Every sidecar: an opaque outbound listener on the service's port.
        for (node, addr) in [
            ("redis-1", "127.0.0.1:16379"),
            ("web-1", "127.0.0.2:16379"),
            ("web-2", "127.0.0.1:26379"),
        ] {
            let l = find(node, "outbound_tcp_redis");
            assert_eq!(l.address.to_string(), addr, "{node}");
            assert!(!l.serves_http());
            assert_eq!(
                l.tcp_proxy.unwrap().destination,
                TcpDestination::Cluster("redis".into())
            );
        }
        // The TCP service's own inbound side is opaque, to its app; the others' stay HTTP,
        // with WebSocket upgrades.
        let inbound = find("redis-1", "inbound");
        assert!(!inbound.serves_http());
        assert_eq!(
            inbound.tcp_proxy.unwrap().destination,
            TcpDestination::Cluster("local_app".into())
        );
        let web = find("web-1", "inbound");
        assert!(web.serves_http() && web.tcp_proxy.is_none());
        assert_eq!(web.http.upgrades, ["websocket"]);
    }

    #[test]
    fn a_tcp_service_without_a_port_is_refused() {
        let spec = MeshSpec::from_yaml(&SPEC.replace("    port: 16379\n", "")).unwrap();
        let err = spec.snapshots().unwrap_err();
        assert_eq!(err.at, "services[redis].port");
    }
}
