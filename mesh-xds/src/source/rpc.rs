//! RPC services in `mesh.yaml` (`protocol: bolt | dubbo`), as a MOSN or Envoy user would lay
//! them out: every sidecar gets one outbound RPC listener per protocol in use
//! (`outbound_bolt`, `outbound_dubbo`) whose route table sends each service's `interfaces`
//! (`POST /{interface}/{method}` in the RPC route semantics of `mesh_core::xprotocol`) to the
//! service's cluster, or follows the service's own `routes:`; the service's own nodes get an
//! RPC-only inbound listener forwarding to their app (`local_app`). Over LDS these are Envoy
//! `generic_proxy` listeners (see `convert::xprotocol`).

use std::collections::HashSet;
use std::net::SocketAddr;

use mesh_core::{
    Direction, HttpProtocolOptions, Listener, PathMatch, Route, RouteAction, RouteConfiguration,
    RouteMatch, RpcProtocol, VirtualHost, XProtocolProxy,
};

use super::spec::{ListenerAddrs, MeshSpec, NodeSpec, ServiceSpec};
use super::translate::{TranslateError, LOCAL_APP};

/// Name of the outbound bolt listener (and its route table).
pub const OUTBOUND_BOLT: &str = "outbound_bolt";
/// Name of the outbound dubbo listener (and its route table).
pub const OUTBOUND_DUBBO: &str = "outbound_dubbo";

fn outbound_name(p: RpcProtocol) -> &'static str {
    match p {
        RpcProtocol::Bolt => OUTBOUND_BOLT,
        RpcProtocol::Dubbo => OUTBOUND_DUBBO,
    }
}

fn outbound_addr(p: RpcProtocol, addrs: ListenerAddrs) -> SocketAddr {
    match p {
        RpcProtocol::Bolt => addrs.outbound_bolt,
        RpcProtocol::Dubbo => addrs.outbound_dubbo,
    }
}

/// The interfaces `s` provides (its name when none are listed).
fn interfaces(s: &ServiceSpec) -> Vec<String> {
    if s.interfaces.is_empty() {
        vec![s.name.clone()]
    } else {
        s.interfaces.clone()
    }
}

/// The routes of `s` on its protocol's outbound listener.
fn service_routes(s: &ServiceSpec) -> Vec<Route> {
    if !s.routes.is_empty() {
        return s.routes.clone();
    }
    interfaces(s)
        .into_iter()
        .map(|i| {
            let mut action = RouteAction::to_cluster(&s.name);
            if let Some(t) = s.timeout {
                action.timeout = t;
            }
            Route {
                name: format!("{}/{i}", s.name),
                matcher: RouteMatch {
                    path: PathMatch::Prefix(format!("/{i}/")),
                    ..RouteMatch::default()
                },
                action,
                filters: Vec::new(),
            }
        })
        .collect()
}

/// The protocols the mesh's services use, in a fixed order.
fn protocols(spec: &MeshSpec) -> Vec<RpcProtocol> {
    let used: HashSet<RpcProtocol> = spec
        .services
        .iter()
        .filter_map(|s| s.protocol.rpc())
        .collect();
    [RpcProtocol::Bolt, RpcProtocol::Dubbo]
        .into_iter()
        .filter(|p| used.contains(p))
        .collect()
}

fn rpc_listener(
    name: &str,
    address: SocketAddr,
    direction: Direction,
    proxy: XProtocolProxy,
) -> Listener {
    Listener {
        tls: None,
        rbac: None,
        xprotocol: Some(proxy),
        name: name.to_owned(),
        address,
        direction,
        route_config_name: String::new(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    }
}

/// A sidecar's outbound RPC listeners, one per protocol in use, at the node's addresses.
pub(super) fn rpc_listeners(spec: &MeshSpec, addrs: ListenerAddrs) -> Vec<Listener> {
    protocols(spec)
        .into_iter()
        .map(|p| {
            let name = outbound_name(p);
            let routes = spec
                .services
                .iter()
                .filter(|s| s.protocol.rpc() == Some(p))
                .flat_map(service_routes)
                .collect();
            let table = RouteConfiguration {
                name: name.to_owned(),
                virtual_hosts: vec![VirtualHost {
                    name: name.to_owned(),
                    domains: vec!["*".into()],
                    routes,
                }],
                ignore_port_in_host_matching: false,
            };
            rpc_listener(
                name,
                outbound_addr(p, addrs),
                Direction::Outbound,
                XProtocolProxy::new(p, table),
            )
        })
        .collect()
}

/// Turns the inbound listener of an RPC service's node into an RPC proxy to the local app.
pub(super) fn make_rpc(l: &mut Listener, s: &ServiceSpec, protocol: RpcProtocol) {
    let mut action = RouteAction::to_cluster(LOCAL_APP);
    if let Some(t) = s.timeout {
        action.timeout = t;
    }
    let table = RouteConfiguration {
        name: l.name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: l.name.clone(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: l.name.clone(),
                action,
                ..Route::default()
            }],
        }],
        ignore_port_in_host_matching: false,
    };
    *l = Listener {
        access_log: Vec::new(),
        ..rpc_listener(
            &l.name,
            l.address,
            l.direction,
            XProtocolProxy::new(protocol, table),
        )
    };
}

/// Checks what is particular to RPC services: interfaces only on them, routes naming known
/// clusters, and no HTTP-only policies.
pub(super) fn check_rpc(spec: &MeshSpec, s: &ServiceSpec) -> Result<(), TranslateError> {
    let at = |f: &str| format!("services[{}].{f}", s.name);
    let err = |f: &str, why: String| Err(TranslateError::new(at(f), Some(&s.name), why));
    let Some(p) = s.protocol.rpc() else {
        if !s.interfaces.is_empty() {
            return err(
                "interfaces",
                "only `protocol: bolt` or `dubbo` services provide RPC interfaces".into(),
            );
        }
        return Ok(());
    };
    for (field, set) in [
        ("authz", s.authz.is_some()),
        ("rate_limit", s.rate_limit.is_some()),
        ("retry_policy", s.retry_policy.is_some()),
    ] {
        if set {
            return err(
                field,
                format!("not supported for `protocol: {}` services", p.as_str()),
            );
        }
    }
    if spec.security.is_some() {
        return err(
            "protocol",
            "RPC services under `security:` (mTLS of RPC listeners) are not supported yet".into(),
        );
    }
    for (i, iface) in s.interfaces.iter().enumerate() {
        if iface.is_empty() || iface.contains('/') || iface.chars().any(char::is_whitespace) {
            return err(
                &format!("interfaces[{i}]"),
                format!("{iface:?} is not an RPC service name"),
            );
        }
    }
    for (r, route) in s.routes.iter().enumerate() {
        for name in route.action.destination.cluster_names() {
            if spec.service(name).and_then(|o| o.protocol.rpc()) != Some(p) {
                return err(
                    &format!("routes[{r}].route"),
                    format!("{name:?} is not a `protocol: {}` service", p.as_str()),
                );
            }
        }
    }
    Ok(())
}

/// The node's RPC service, if it runs one.
pub(super) fn node_rpc<'a>(
    spec: &'a MeshSpec,
    node: Option<&NodeSpec>,
) -> Option<(&'a ServiceSpec, RpcProtocol)> {
    let s = spec.service(node?.service.as_deref()?)?;
    Some((s, s.protocol.rpc()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mesh_core::{Cluster, ClusterSpecifier, Discovery, RouteConfiguration};

    use crate::server::{Resource, Snapshot};
    use crate::source::MeshSpec;
    use crate::ResourceType;

    use super::*;

    fn all<T: crate::convert::XdsResource>(s: &Snapshot, ty: ResourceType) -> Vec<T> {
        s.of(ty)
            .items()
            .values()
            .map(|r: &std::sync::Arc<Resource>| crate::convert::decode(r.any()).unwrap())
            .collect()
    }

    const SPEC: &str = r#"
listeners: { outbound_dubbo: 127.0.0.1:20990 }
services:
  - name: hello
    protocol: bolt
    interfaces: [com.example.Hello:1.0, com.example.Bye:1.0]
    lb_policy: { least_request: { choice_count: 2 } }
    outlier_detection: { consecutive_5xx: 3 }
    endpoints: [{ address: 127.0.0.1:12201 }]
  - name: greeter-v2
    protocol: dubbo
    endpoints: [{ address: 127.0.0.1:20891 }]
  - name: greeter
    protocol: dubbo
    interfaces: [org.apache.dubbo.Greeter]
    timeout: 2s
    routes:
      - match:
          prefix: /org.apache.dubbo.Greeter/
          headers: [{ name: version, exact: "2.0" }]
        route: { cluster: greeter-v2 }
      - match: { prefix: /org.apache.dubbo.Greeter/ }
        route: { cluster: greeter }
    endpoints: [{ address: 127.0.0.1:20881 }]
  - name: web
    endpoints: [{ address: 127.0.0.1:8080 }]
nodes:
  - id: hello-1
    service: hello
    listeners: { inbound: 127.0.0.1:12201, local_app: 127.0.0.1:12200, outbound_bolt: 127.0.0.1:12330 }
  - id: web-1
    service: web
"#;

    fn routes_of(l: &Listener) -> &RouteConfiguration {
        &l.xprotocol.as_ref().unwrap().route_config
    }

    #[test]
    fn rpc_services_get_rpc_listeners_and_clusters() {
        let snaps = MeshSpec::from_yaml(SPEC).unwrap().snapshots().unwrap();
        let listeners = |node: &str| all::<Listener>(&snaps.nodes[node], ResourceType::Listener);
        let find = |node: &str, name: &str| {
            listeners(node)
                .into_iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("{node} has no {name}"))
        };
        // Every sidecar: one outbound listener per protocol, at its address.
        let bolt = find("hello-1", OUTBOUND_BOLT);
        assert_eq!(bolt.address.to_string(), "127.0.0.1:12330");
        assert_eq!(
            find("web-1", OUTBOUND_BOLT).address.to_string(),
            "127.0.0.1:12220"
        );
        assert_eq!(
            find("web-1", OUTBOUND_DUBBO).address.to_string(),
            "127.0.0.1:20990"
        );
        let x = bolt.xprotocol.as_ref().unwrap();
        assert_eq!(x.protocol, RpcProtocol::Bolt);
        assert!(!bolt.serves_http());
        let routes = &routes_of(&bolt).virtual_hosts[0].routes;
        let paths: Vec<_> = routes.iter().map(|r| r.matcher.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathMatch::Prefix("/com.example.Hello:1.0/".into()),
                PathMatch::Prefix("/com.example.Bye:1.0/".into())
            ]
        );
        assert!(routes
            .iter()
            .all(|r| r.action.destination == ClusterSpecifier::Cluster("hello".into())));
        // Dubbo: the default interface (the name) for greeter-v2, greeter's own routes.
        let dubbo = find("web-1", OUTBOUND_DUBBO);
        let routes = &routes_of(&dubbo).virtual_hosts[0].routes;
        assert_eq!(routes.len(), 3);
        assert_eq!(
            routes[0].matcher.path,
            PathMatch::Prefix("/greeter-v2/".into())
        );
        assert_eq!(routes[1].matcher.headers[0].name, "version");
        assert_eq!(
            routes[1].action.destination,
            ClusterSpecifier::Cluster("greeter-v2".into())
        );
        // The RPC service's node: its inbound listener is a bolt proxy to its app.
        let inbound = find("hello-1", crate::source::INBOUND);
        assert!(!inbound.serves_http());
        assert_eq!(inbound.address.to_string(), "127.0.0.1:12201");
        let r = &routes_of(&inbound).virtual_hosts[0].routes[0];
        assert_eq!(
            r.action.destination,
            ClusterSpecifier::Cluster(LOCAL_APP.into())
        );
        // The HTTP service's inbound stays HTTP; the HTTP table has no RPC service in it.
        assert!(find("web-1", crate::source::INBOUND).serves_http());
        let tables = all::<RouteConfiguration>(&snaps.nodes["web-1"], ResourceType::Route);
        let outbound = tables.iter().find(|t| t.name == "outbound").unwrap();
        let hosts: Vec<_> = outbound
            .virtual_hosts
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(hosts, ["web"]);
        // Clusters as usual: EDS with the service's policies; an RPC cluster is never h2.
        let clusters = all::<Cluster>(&snaps.nodes["web-1"], ResourceType::Cluster);
        let hello = clusters.iter().find(|c| c.name == "hello").unwrap();
        assert_eq!(hello.discovery, Discovery::Eds);
        assert_eq!(
            hello.lb_policy,
            mesh_core::LbPolicy::LeastRequest { choice_count: 2 }
        );
        assert!(hello.outlier_detection.is_some());
        assert_eq!(hello.protocol, mesh_core::UpstreamProtocol::Http1);
    }

    #[test]
    fn rpc_mistakes_name_the_field() {
        let cases = [
            (
                SPEC.replace("route: { cluster: greeter-v2 }", "route: { cluster: web }"),
                "services[greeter].routes[0].route",
            ),
            (
                SPEC.replace(
                    "  - name: web\n",
                    "  - name: web\n    interfaces: [x]\n",
                ),
                "services[web].interfaces",
            ),
            (
                SPEC.replace("interfaces: [org.apache.dubbo.Greeter]", "interfaces: [\"a/b\"]"),
                "services[greeter].interfaces[0]",
            ),
            (
                SPEC.replace("    timeout: 2s\n", "    timeout: 2s\n    rate_limit: { token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 1s } }\n"),
                "services[greeter].rate_limit",
            ),
        ];
        for (yaml, at) in cases {
            let err = MeshSpec::from_yaml(&yaml).unwrap().snapshots().unwrap_err();
            assert_eq!(err.at, at, "{err}");
        }
    }
}
