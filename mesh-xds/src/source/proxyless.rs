//! What proxyless gRPC clients get that differs from a sidecar's: API listeners named after the
//! services (so `xds:///SERVICE` resolves), and only what gRPC implements (it NACKs the rest).

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::{LbPolicy, Listener};
use prost::Message;

use crate::convert::{self, LOCAL_RATELIMIT_FILTER};

/// The policy a gRPC client gets instead of one it does not implement (gRPC's xDS client NACKs
/// a cluster whose `lb_policy` is `MAGLEV`, `LEAST_REQUEST` or `RANDOM`: "LB policy is not
/// supported"): Maglev becomes ring hash (consistent hashing on the same route hash policies),
/// least request and random become round robin. `None` when the policy is served as it is.
pub(super) fn grpc_lb_policy(p: &LbPolicy) -> Option<LbPolicy> {
    match p {
        LbPolicy::Maglev { .. } => Some(LbPolicy::RingHash {
            minimum_ring_size: 1024,
            maximum_ring_size: 8 * 1024 * 1024,
        }),
        LbPolicy::LeastRequest { .. } | LbPolicy::Random => Some(LbPolicy::RoundRobin),
        LbPolicy::RoundRobin | LbPolicy::RingHash { .. } => None,
    }
}

/// The connection manager of proxyless gRPC's API listeners (packed): the outbound listener's
/// (RDS `outbound`), without the local rate-limit filter, which gRPC clients do not implement
/// and would NACK. Built once per node and shared by every service's API listener.
pub(super) fn api_manager(outbound: &Listener) -> Any {
    let mut proto = convert::XdsResource::to_proto(outbound);
    let manager = proto
        .filter_chains
        .pop()
        .and_then(|fc| fc.filters.into_iter().next())
        .and_then(|f| match f.config_type {
            Some(lpb::filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        })
        .and_then(|any| hcm::HttpConnectionManager::decode(any.value.as_slice()).ok())
        .map(|mut m| {
            m.http_filters.retain(|f| f.name != LOCAL_RATELIMIT_FILTER);
            m
        })
        .unwrap_or_default();
    convert::pack(&manager)
}

/// An API listener named after a service, for proxyless gRPC (`xds:///SERVICE`), with the
/// connection manager from [`api_manager`].
pub(super) fn api_listener(service: &str, manager: &Any) -> Any {
    let listener = lpb::Listener {
        name: service.to_owned(),
        api_listener: Some(lpb::ApiListener {
            api_listener: Some(manager.clone()),
        }),
        ..lpb::Listener::default()
    };
    convert::pack(&listener)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn api_listeners_carry_the_outbound_manager_without_the_rate_limit_filter() {
        let out = Listener {
            tls: None,
            rbac: None,
            xprotocol: None,
            name: "outbound".into(),
            address: "127.0.0.1:8082".parse().unwrap(),
            direction: mesh_core::Direction::Outbound,
            route_config_name: "outbound".into(),
            route_config: None,
            http: Default::default(),
            rate_limit: None,
            http_filters: Vec::new(),
            tcp_proxy: None,
            detection: Default::default(),
            access_log: Vec::new(),
        };
        let any = api_listener("hello", &api_manager(&out));
        let l = lpb::Listener::decode(any.value.as_slice()).unwrap();
        assert_eq!(l.name, "hello");
        assert!(l.address.is_none());
        let manager = l.api_listener.unwrap().api_listener.unwrap();
        let m = hcm::HttpConnectionManager::decode(manager.value.as_slice()).unwrap();
        assert!(m
            .http_filters
            .iter()
            .all(|f| f.name != LOCAL_RATELIMIT_FILTER));
        assert!(!m.http_filters.is_empty());
        match m.route_specifier {
            Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) => {
                assert_eq!(rds.route_config_name, "outbound")
            }
            other => panic!("expected RDS, got {other:?}"),
        }
    }

    #[test]
    fn policies_grpc_lacks_become_ones_it_has() {
        let maglev = LbPolicy::Maglev { table_size: 65537 };
        assert!(matches!(
            grpc_lb_policy(&maglev),
            Some(LbPolicy::RingHash { .. })
        ));
        assert_eq!(
            grpc_lb_policy(&LbPolicy::Random),
            Some(LbPolicy::RoundRobin)
        );
        assert_eq!(grpc_lb_policy(&LbPolicy::RoundRobin), None);
    }
}
