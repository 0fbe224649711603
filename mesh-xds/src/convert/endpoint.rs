//! `ClusterLoadAssignment` (EDS) ↔ [`mesh_core::ClusterLoadAssignment`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::google::protobuf as pbw;
use mesh_core::{ClusterLoadAssignment, Endpoint, HealthStatus, Locality, LocalityEndpoints};

use super::{u32_from, u32_to, ConvertError, XdsResource};

/// The filter-metadata namespace Envoy's subset load balancer reads endpoint labels from.
const LB_METADATA_KEY: &str = "envoy.lb";

impl XdsResource for ClusterLoadAssignment {
    type Proto = epb::ClusterLoadAssignment;
    const TYPE: crate::ResourceType = crate::ResourceType::Endpoint;
    const TYPE_URL: &'static str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    const KIND: &'static str = "cluster_load_assignment";

    fn resource_name(&self) -> &str {
        &self.cluster_name
    }

    fn proto_name(proto: &Self::Proto) -> &str {
        &proto.cluster_name
    }

    fn from_proto(p: Self::Proto) -> Result<Self, ConvertError> {
        if !p.named_endpoints.is_empty() {
            return Err(ConvertError::unsupported(
                "named_endpoints",
                "named endpoints",
            ));
        }
        let mut overprovisioning_factor = 140;
        if let Some(policy) = p.policy {
            if !policy.drop_overloads.is_empty() {
                return Err(ConvertError::unsupported(
                    "policy.drop_overloads",
                    "drop overloads",
                ));
            }
            if policy.endpoint_stale_after.is_some() {
                return Err(ConvertError::unsupported(
                    "policy.endpoint_stale_after",
                    "stale endpoint expiry",
                ));
            }
            if policy.weighted_priority_health {
                return Err(ConvertError::unsupported(
                    "policy.weighted_priority_health",
                    "weighted priority health",
                ));
            }
            overprovisioning_factor =
                u32_from(policy.overprovisioning_factor).unwrap_or(overprovisioning_factor);
        }
        let endpoints = p
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, g)| locality_from(g).map_err(|e| e.within(format!("endpoints[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cluster_name: p.cluster_name,
            endpoints,
            overprovisioning_factor,
        })
    }

    fn to_proto(&self) -> Self::Proto {
        epb::ClusterLoadAssignment {
            cluster_name: self.cluster_name.clone(),
            endpoints: self.endpoints.iter().map(locality_to).collect(),
            policy: Some(epb::cluster_load_assignment::Policy {
                overprovisioning_factor: u32_to(self.overprovisioning_factor),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn locality_from(g: epb::LocalityLbEndpoints) -> Result<LocalityEndpoints, ConvertError> {
    if g.lb_config.is_some() {
        return Err(ConvertError::unsupported(
            "lb_config",
            "LEDS / endpoint lists by reference (list endpoints in lb_endpoints)",
        ));
    }
    let locality = g.locality.map(|l| Locality {
        region: l.region,
        zone: l.zone,
        sub_zone: l.sub_zone,
    });
    let mut lb_endpoints: Vec<Endpoint> = g
        .lb_endpoints
        .into_iter()
        .enumerate()
        .map(|(j, e)| endpoint_from(e).map_err(|err| err.within(format!("lb_endpoints[{j}]"))))
        .collect::<Result<_, _>>()?;
    // The collect reuses the protobuf vector in place, and an `LbEndpoint` is about 5x the size
    // of an `Endpoint`: give the excess back rather than keep it alive in the stored config.
    // (Converting by reference into a fresh vector instead freed the whole protobuf vector at
    // the top of the heap, which the allocator trimmed, and each update page-faulted it back.)
    lb_endpoints.shrink_to_fit();
    Ok(LocalityEndpoints {
        locality: locality.unwrap_or_default(),
        priority: g.priority,
        load_balancing_weight: u32_from(g.load_balancing_weight),
        lb_endpoints,
    })
}

fn locality_to(g: &LocalityEndpoints) -> epb::LocalityLbEndpoints {
    let l = &g.locality;
    epb::LocalityLbEndpoints {
        // Always present, even when empty: gRPC's xDS client NACKs a locality group without
        // one ("endpoints[0].locality: field not present"); Envoy accepts either.
        locality: Some(core::Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        }),
        lb_endpoints: g.lb_endpoints.iter().map(endpoint_to).collect(),
        load_balancing_weight: g.load_balancing_weight.and_then(u32_to),
        priority: g.priority,
        ..Default::default()
    }
}

fn endpoint_from(e: epb::LbEndpoint) -> Result<Endpoint, ConvertError> {
    use epb::lb_endpoint::HostIdentifier;
    let inner = match e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => ep,
        Some(HostIdentifier::EndpointName(_)) => {
            return Err(ConvertError::unsupported(
                "endpoint_name",
                "named endpoints",
            ))
        }
        None => return Err(ConvertError::new("endpoint", "missing")),
    };
    if !inner.additional_addresses.is_empty() {
        return Err(ConvertError::unsupported(
            "endpoint.additional_addresses",
            "additional addresses (happy eyeballs)",
        ));
    }
    if let Some(hc) = &inner.health_check_config {
        if hc.port_value != 0 || hc.address.is_some() || hc.disable_active_health_check {
            return Err(ConvertError::unsupported(
                "endpoint.health_check_config",
                "per-endpoint health-check overrides",
            ));
        }
    }
    let address = socket_addr_from(inner.address.as_ref(), "endpoint.address")?;
    let health = match core::HealthStatus::try_from(e.health_status) {
        Ok(core::HealthStatus::Unknown) => HealthStatus::Unknown,
        Ok(core::HealthStatus::Healthy) => HealthStatus::Healthy,
        Ok(core::HealthStatus::Unhealthy) => HealthStatus::Unhealthy,
        Ok(core::HealthStatus::Draining) => HealthStatus::Draining,
        Ok(core::HealthStatus::Timeout) => HealthStatus::Timeout,
        Ok(core::HealthStatus::Degraded) => HealthStatus::Degraded,
        Err(_) => {
            return Err(ConvertError::new(
                "health_status",
                format!("unknown value {}", e.health_status),
            ))
        }
    };
    Ok(Endpoint {
        address,
        weight: u32_from(e.load_balancing_weight).unwrap_or(1),
        health,
        hostname: (!inner.hostname.is_empty()).then_some(inner.hostname),
        metadata: lb_metadata_from(e.metadata.as_ref()),
    })
}

fn endpoint_to(e: &Endpoint) -> epb::LbEndpoint {
    let health = match e.health {
        HealthStatus::Unknown => core::HealthStatus::Unknown,
        HealthStatus::Healthy => core::HealthStatus::Healthy,
        HealthStatus::Unhealthy => core::HealthStatus::Unhealthy,
        HealthStatus::Draining => core::HealthStatus::Draining,
        HealthStatus::Timeout => core::HealthStatus::Timeout,
        HealthStatus::Degraded => core::HealthStatus::Degraded,
    };
    epb::LbEndpoint {
        health_status: health as i32,
        metadata: lb_metadata_to(&e.metadata),
        load_balancing_weight: u32_to(e.weight),
        host_identifier: Some(epb::lb_endpoint::HostIdentifier::Endpoint(epb::Endpoint {
            address: Some(socket_addr_to(e.address)),
            hostname: e.hostname.clone().unwrap_or_default(),
            ..Default::default()
        })),
    }
}

/// A socket address with a literal IP and a numeric TCP port (the mesh resolves no names).
pub(crate) fn socket_addr_from(
    a: Option<&core::Address>,
    path: &str,
) -> Result<SocketAddr, ConvertError> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    let sa = match a.and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(sa)) => sa,
        Some(_) => {
            return Err(ConvertError::unsupported(
                path,
                "pipe and internal addresses (socket addresses only)",
            ))
        }
        None => return Err(ConvertError::new(path, "missing")),
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(ConvertError::unsupported(
            format!("{path}.socket_address.protocol"),
            "UDP",
        ));
    }
    if !sa.resolver_name.is_empty() {
        return Err(ConvertError::unsupported(
            format!("{path}.socket_address.resolver_name"),
            "custom resolvers",
        ));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ConvertError::unsupported(
            format!("{path}.socket_address.address"),
            format!(
                "{:?} is not an IP literal (DNS names are not resolved)",
                sa.address
            ),
        )
    })?;
    let port = match &sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(*p).map_err(|_| {
            ConvertError::new(format!("{path}.socket_address.port_value"), "above 65535")
        })?,
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(ConvertError::unsupported(
                format!("{path}.socket_address.named_port"),
                "named ports",
            ))
        }
        None => 0,
    };
    Ok(SocketAddr::new(ip, port))
}

/// The Envoy address of a socket address.
pub(crate) fn socket_addr_to(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn lb_metadata_from(m: Option<&core::Metadata>) -> BTreeMap<String, String> {
    use pbw::value::Kind;
    let Some(s) = m.and_then(|m| m.filter_metadata.get(LB_METADATA_KEY)) else {
        return BTreeMap::new();
    };
    s.fields
        .iter()
        .filter_map(|(k, v)| {
            let v = match v.kind.as_ref()? {
                Kind::StringValue(s) => s.clone(),
                Kind::BoolValue(b) => b.to_string(),
                Kind::NumberValue(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect()
}

fn lb_metadata_to(m: &BTreeMap<String, String>) -> Option<core::Metadata> {
    if m.is_empty() {
        return None;
    }
    let fields = m
        .iter()
        .map(|(k, v)| {
            let value = pbw::Value {
                kind: Some(pbw::value::Kind::StringValue(v.clone())),
            };
            (k.clone(), value)
        })
        .collect();
    let mut meta = core::Metadata::default();
    meta.filter_metadata
        .insert(LB_METADATA_KEY.to_string(), pbw::Struct { fields });
    Some(meta)
}
