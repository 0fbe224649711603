//! `Cluster` (CDS) ↔ [`mesh_core::Cluster`].

use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as uhttp;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf as pbw;
use mesh_core::{Cluster, ClusterLoadAssignment, Discovery, LbPolicy, UpstreamProtocol};

use super::cluster_policy::{
    circuit_breakers_from, circuit_breakers_to, health_check_from, health_check_to, outlier_from,
    outlier_to,
};
use super::{
    ads_config_source, check_ads_source, duration_to, opt_duration, pack, u32_from, u32_to, unpack,
    ConvertError, XdsResource,
};

/// The `typed_extension_protocol_options` key of the upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

impl XdsResource for Cluster {
    type Proto = cpb::Cluster;
    const TYPE: crate::ResourceType = crate::ResourceType::Cluster;
    const TYPE_URL: &'static str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const KIND: &'static str = "cluster";

    fn resource_name(&self) -> &str {
        &self.name
    }

    fn proto_name(proto: &Self::Proto) -> &str {
        &proto.name
    }

    fn from_proto(p: Self::Proto) -> Result<Self, ConvertError> {
        refuse_unsupported(&p)?;
        let mut c = Cluster::new(p.name.clone());
        c.discovery = discovery_from(p.cluster_discovery_type.as_ref())?;
        if let Some(eds) = &p.eds_cluster_config {
            check_ads_source(eds.eds_config.as_ref(), "eds_cluster_config.eds_config")?;
            if !eds.service_name.is_empty() {
                c.eds_service_name = Some(eds.service_name.clone());
            }
        }
        if let Some(t) = opt_duration(p.connect_timeout.as_ref(), "connect_timeout")? {
            c.connect_timeout = t;
        }
        c.lb_policy = lb_policy_from(&p)?;
        c.protocol = protocol_from(&p)?;
        if let Some(cb) = &p.circuit_breakers {
            c.circuit_breakers = circuit_breakers_from(cb)?;
        }
        c.health_check = health_check_from(&p.health_checks)?;
        if let Some(od) = &p.outlier_detection {
            c.outlier_detection =
                Some(outlier_from(od).map_err(|e| e.within("outlier_detection"))?);
        }
        if let Some(common) = &p.common_lb_config {
            use cpb::cluster::common_lb_config::LocalityConfigSpecifier as L;
            if let Some(t) = &common.healthy_panic_threshold {
                c.healthy_panic_threshold = t.value;
            }
            match &common.locality_config_specifier {
                Some(L::LocalityWeightedLbConfig(_)) => c.locality_weighted = true,
                Some(L::ZoneAwareLbConfig(_)) => {
                    return Err(ConvertError::unsupported(
                        "common_lb_config.zone_aware_lb_config",
                        "zone-aware routing",
                    ))
                }
                None => {}
            }
        }
        if let Some(ts) = &p.transport_socket {
            c.tls = Some(super::tls::upstream_from(ts)?);
        }
        if let Some(la) = p.load_assignment {
            c.load_assignment = Some(
                ClusterLoadAssignment::from_proto(la).map_err(|e| e.within("load_assignment"))?,
            );
        }
        Ok(c)
    }

    fn to_proto(&self) -> Self::Proto {
        use cpb::cluster::{ClusterDiscoveryType, DiscoveryType};
        let (kind, eds) = match self.discovery {
            Discovery::Static => (DiscoveryType::Static, None),
            Discovery::Eds => (
                DiscoveryType::Eds,
                Some(cpb::cluster::EdsClusterConfig {
                    eds_config: Some(ads_config_source()),
                    service_name: self.eds_service_name.clone().unwrap_or_default(),
                }),
            ),
        };
        let (lb_policy, lb_config) = lb_policy_to(&self.lb_policy);
        let mut out = cpb::Cluster {
            name: self.name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
            eds_cluster_config: eds,
            connect_timeout: Some(duration_to(self.connect_timeout)),
            lb_policy: lb_policy as i32,
            lb_config,
            circuit_breakers: Some(circuit_breakers_to(&self.circuit_breakers)),
            health_checks: self.health_check.iter().map(health_check_to).collect(),
            outlier_detection: self.outlier_detection.as_ref().map(outlier_to),
            common_lb_config: Some(cpb::cluster::CommonLbConfig {
                healthy_panic_threshold: Some(Percent {
                    value: self.healthy_panic_threshold,
                }),
                locality_config_specifier: self.locality_weighted.then_some(
                    cpb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            }),
            load_assignment: self.load_assignment.as_ref().map(|la| {
                let mut la = la.to_proto();
                if la.cluster_name.is_empty() {
                    // Envoy requires it (min_len 1) even for inline assignments.
                    la.cluster_name = self.name.clone();
                }
                la
            }),
            ..Default::default()
        };
        out.transport_socket = self.tls.as_ref().map(super::tls::upstream_to);
        if let Some(opts) = protocol_to(self.protocol) {
            out.typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS_KEY.to_string(), pack(&opts));
        }
        out
    }
}

fn refuse_unsupported(p: &cpb::Cluster) -> Result<(), ConvertError> {
    let checks: [(bool, &str, &str); 7] = [
        (
            !p.transport_socket_matches.is_empty(),
            "transport_socket_matches",
            "transport socket matches (one transport_socket per cluster)",
        ),
        (
            p.lb_subset_config.is_some(),
            "lb_subset_config",
            "subset load balancing",
        ),
        (!p.filters.is_empty(), "filters", "upstream network filters"),
        (
            p.load_balancing_policy.is_some(),
            "load_balancing_policy",
            "extension load-balancing policies (use lb_policy)",
        ),
        (
            p.upstream_bind_config.is_some(),
            "upstream_bind_config",
            "source address binding",
        ),
        (
            p.upstream_config.is_some(),
            "upstream_config",
            "custom upstreams",
        ),
        (p.lrs_server.is_some(), "lrs_server", "load reporting (LRS)"),
    ];
    match checks.into_iter().find(|(bad, _, _)| *bad) {
        Some((_, path, what)) => Err(ConvertError::unsupported(path, what)),
        None => Ok(()),
    }
}

fn discovery_from(
    d: Option<&cpb::cluster::ClusterDiscoveryType>,
) -> Result<Discovery, ConvertError> {
    use cpb::cluster::{ClusterDiscoveryType as T, DiscoveryType};
    match d {
        None => Ok(Discovery::Static),
        Some(T::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(DiscoveryType::Static) => Ok(Discovery::Static),
            Ok(DiscoveryType::Eds) => Ok(Discovery::Eds),
            Ok(other) => Err(ConvertError::unsupported(
                "type",
                format!("{} clusters (STATIC and EDS only)", other.as_str_name()),
            )),
            Err(_) => Err(ConvertError::new("type", format!("unknown value {t}"))),
        },
        Some(T::ClusterType(ct)) => Err(ConvertError::unsupported(
            "cluster_type",
            format!("custom cluster type {:?}", ct.name),
        )),
    }
}

fn lb_policy_from(p: &cpb::Cluster) -> Result<LbPolicy, ConvertError> {
    use cpb::cluster::LbConfig as C;
    use cpb::cluster::LbPolicy as P;
    let policy = P::try_from(p.lb_policy)
        .map_err(|_| ConvertError::new("lb_policy", format!("unknown value {}", p.lb_policy)))?;
    let config = p.lb_config.as_ref();
    let mismatch = || {
        ConvertError::new(
            "lb_config",
            format!("does not match lb_policy {}", policy.as_str_name()),
        )
    };
    Ok(match policy {
        P::RoundRobin => match config {
            None | Some(C::RoundRobinLbConfig(_)) => LbPolicy::RoundRobin,
            Some(_) => return Err(mismatch()),
        },
        P::Random => match config {
            None => LbPolicy::Random,
            Some(_) => return Err(mismatch()),
        },
        P::LeastRequest => match config {
            None => LbPolicy::LeastRequest { choice_count: 2 },
            Some(C::LeastRequestLbConfig(c)) => {
                if c.active_request_bias.is_some() || c.slow_start_config.is_some() {
                    return Err(ConvertError::unsupported(
                        "least_request_lb_config",
                        "active_request_bias and slow_start_config",
                    ));
                }
                LbPolicy::LeastRequest {
                    choice_count: u32_from(c.choice_count).unwrap_or(2),
                }
            }
            Some(_) => return Err(mismatch()),
        },
        P::RingHash => match config {
            None => LbPolicy::RingHash {
                minimum_ring_size: 1024,
                maximum_ring_size: 8 * 1024 * 1024,
            },
            Some(C::RingHashLbConfig(c)) => LbPolicy::RingHash {
                minimum_ring_size: c.minimum_ring_size.map_or(1024, |v| v.value),
                maximum_ring_size: c.maximum_ring_size.map_or(8 * 1024 * 1024, |v| v.value),
            },
            Some(_) => return Err(mismatch()),
        },
        P::Maglev => match config {
            None => LbPolicy::Maglev { table_size: 65537 },
            Some(C::MaglevLbConfig(c)) => LbPolicy::Maglev {
                table_size: c.table_size.map_or(65537, |v| v.value),
            },
            Some(_) => return Err(mismatch()),
        },
        other => {
            return Err(ConvertError::unsupported(
                "lb_policy",
                other.as_str_name().to_string(),
            ))
        }
    })
}

fn lb_policy_to(p: &LbPolicy) -> (cpb::cluster::LbPolicy, Option<cpb::cluster::LbConfig>) {
    use cpb::cluster::LbConfig as C;
    use cpb::cluster::LbPolicy as P;
    let u64v = |value| Some(pbw::UInt64Value { value });
    match p {
        LbPolicy::RoundRobin => (P::RoundRobin, None),
        LbPolicy::Random => (P::Random, None),
        LbPolicy::LeastRequest { choice_count } => (
            P::LeastRequest,
            Some(C::LeastRequestLbConfig(
                cpb::cluster::LeastRequestLbConfig {
                    choice_count: u32_to(*choice_count),
                    ..Default::default()
                },
            )),
        ),
        LbPolicy::RingHash {
            minimum_ring_size,
            maximum_ring_size,
        } => (
            P::RingHash,
            Some(C::RingHashLbConfig(cpb::cluster::RingHashLbConfig {
                minimum_ring_size: u64v(*minimum_ring_size),
                maximum_ring_size: u64v(*maximum_ring_size),
                ..Default::default()
            })),
        ),
        LbPolicy::Maglev { table_size } => (
            P::Maglev,
            Some(C::MaglevLbConfig(cpb::cluster::MaglevLbConfig {
                table_size: u64v(*table_size),
            })),
        ),
    }
}

#[allow(deprecated)] // the deprecated fields are read so that old control planes are honoured
fn protocol_from(p: &cpb::Cluster) -> Result<UpstreamProtocol, ConvertError> {
    use uhttp::http_protocol_options::explicit_http_config::ProtocolConfig as E;
    use uhttp::http_protocol_options::UpstreamProtocolOptions as O;
    let mut proto = if p.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else if p.protocol_selection
        == cpb::cluster::ClusterProtocolSelection::UseDownstreamProtocol as i32
    {
        UpstreamProtocol::UseDownstream
    } else {
        UpstreamProtocol::Http1
    };
    for (key, any) in &p.typed_extension_protocol_options {
        let at = format!("typed_extension_protocol_options[{key}]");
        if key != HTTP_PROTOCOL_OPTIONS_KEY {
            return Err(ConvertError::unsupported(
                at,
                "protocol options other than HTTP",
            ));
        }
        let opts: uhttp::HttpProtocolOptions = unpack(any, &at)?;
        if !opts.http_filters.is_empty() {
            return Err(ConvertError::unsupported(
                format!("{at}.http_filters"),
                "upstream HTTP filters",
            ));
        }
        proto = match opts.upstream_protocol_options {
            None => proto,
            Some(O::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(E::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(E::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                Some(E::Http3ProtocolOptions(_)) => {
                    return Err(ConvertError::unsupported(at, "HTTP/3 upstreams"))
                }
            },
            Some(O::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::UseDownstream,
            Some(O::AutoConfig(_)) => {
                return Err(ConvertError::unsupported(
                    format!("{at}.auto_config"),
                    "ALPN protocol selection (no upstream TLS)",
                ))
            }
        };
    }
    Ok(proto)
}

fn protocol_to(p: UpstreamProtocol) -> Option<uhttp::HttpProtocolOptions> {
    use uhttp::http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
        UseDownstreamHttpConfig,
    };
    let options = match p {
        UpstreamProtocol::Http1 => return None,
        UpstreamProtocol::Http2 => {
            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            })
        }
        UpstreamProtocol::UseDownstream => {
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Default::default()),
                http2_protocol_options: Some(Default::default()),
                http3_protocol_options: None,
            })
        }
    };
    Some(uhttp::HttpProtocolOptions {
        upstream_protocol_options: Some(options),
        ..Default::default()
    })
}
