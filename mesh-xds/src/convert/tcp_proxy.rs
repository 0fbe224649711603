//! Envoy's `tcp_proxy` network filter ↔ [`mesh_core::TcpProxy`], and the filter-chain shapes
//! a listener may take: one HTTP chain, one TCP chain, or an HTTP chain matched by Envoy's
//! `http_inspector` (`application_protocols`) with the TCP chain as the fallback.

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::v3::GenericProxy;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::{TcpDestination, TcpProxy, WeightedCluster};
use prost::Name;

use super::xprotocol::{chain_protocol, is_generic_proxy, GENERIC_PROXY_FILTER};
use super::{duration_to, opt_duration, pack, u32_from, u32_to, unpack, ConvertError};

/// Network filter name of the TCP proxy.
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// Listener filter that tells HTTP from other bytes (it sets `application_protocols`).
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
/// What `http_inspector` reports for HTTP: the values an HTTP chain's match may list.
const HTTP_PROTOCOLS: [&str; 3] = ["http/1.1", "http/1.0", "h2c"];

/// Converts a `tcp_proxy` filter config; `at` is its path, for errors.
pub(super) fn tcp_proxy_from(p: &tcp::TcpProxy, at: &str) -> Result<TcpProxy, ConvertError> {
    use tcp::tcp_proxy::ClusterSpecifier;
    let refuse =
        |field: &str, what: &str| Err(ConvertError::unsupported(format!("{at}.{field}"), what));
    if p.on_demand.is_some() {
        return refuse("on_demand", "on-demand cluster discovery");
    }
    if p.tunneling_config.is_some() {
        return refuse("tunneling_config", "tunneling TCP over HTTP");
    }
    if p.metadata_match.is_some() {
        return refuse("metadata_match", "subset load balancing");
    }
    if !p.hash_policy.is_empty() {
        return refuse("hash_policy", "hash policies for TCP");
    }
    if p.downstream_idle_timeout.is_some() || p.upstream_idle_timeout.is_some() {
        return refuse(
            "downstream_idle_timeout",
            "per-side idle timeouts (idle_timeout covers both)",
        );
    }
    if p.max_downstream_connection_duration.is_some() {
        return refuse(
            "max_downstream_connection_duration",
            "a connection lifetime limit",
        );
    }
    if !p.proxy_protocol_tlvs.is_empty() {
        return refuse("proxy_protocol_tlvs", "PROXY protocol");
    }
    let destination = match &p.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => TcpDestination::Cluster(c.clone()),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                if c.metadata_match.is_some() {
                    return refuse(
                        &format!("weighted_clusters.clusters[{i}].metadata_match"),
                        "subset load balancing",
                    );
                }
                out.push(WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight,
                });
            }
            TcpDestination::WeightedClusters(out)
        }
        None => {
            return Err(ConvertError::new(
                format!("{at}.cluster_specifier"),
                "missing (cluster or weighted_clusters)",
            ))
        }
    };
    let mut proxy = TcpProxy {
        destination,
        ..TcpProxy::to_cluster("")
    };
    if let Some(t) = opt_duration(p.idle_timeout.as_ref(), &format!("{at}.idle_timeout"))? {
        if t.is_zero() {
            // Envoy: 0 disables the idle timeout. We keep one, far out.
            proxy.idle_timeout = std::time::Duration::from_secs(365 * 24 * 3600);
        } else {
            proxy.idle_timeout = t;
        }
    }
    if let Some(n) = u32_from(p.max_connect_attempts) {
        proxy.max_connect_attempts = n;
    }
    Ok(proxy)
}

/// The `tcp_proxy` config real Envoy accepts for `p` (`stat_prefix` is required there).
pub(super) fn tcp_proxy_to(p: &TcpProxy, stat_prefix: &str) -> tcp::TcpProxy {
    use tcp::tcp_proxy::{weighted_cluster::ClusterWeight, ClusterSpecifier, WeightedCluster};
    let cluster_specifier = match &p.destination {
        TcpDestination::Cluster(c) => ClusterSpecifier::Cluster(c.clone()),
        TcpDestination::WeightedClusters(w) => {
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: w
                    .iter()
                    .map(|c| ClusterWeight {
                        name: c.name.clone(),
                        weight: c.weight,
                        ..Default::default()
                    })
                    .collect(),
            })
        }
    };
    tcp::TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(cluster_specifier),
        idle_timeout: Some(duration_to(p.idle_timeout)),
        max_connect_attempts: u32_to(p.max_connect_attempts),
        ..Default::default()
    }
}

/// A listener's filter chains, sorted by what they do.
#[derive(Debug, Default)]
pub(super) struct Chains {
    /// The HTTP chain's connection manager and its path.
    pub(super) http: Option<(String, hcm::HttpConnectionManager)>,
    /// The TCP chain's proxy and its path.
    pub(super) tcp: Option<(String, tcp::TcpProxy)>,
    /// The RPC chain's generic proxy and its path.
    pub(super) rpc: Option<(String, GenericProxy)>,
}

/// Sorts a listener's chains into one HTTP and one TCP chain; refuses shapes the mesh cannot
/// serve (two chains of a kind, matching on anything but the HTTP inspector's protocols, TLS).
pub(super) fn chains_from(p: &lpb::Listener) -> Result<Chains, ConvertError> {
    let all = p
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            p.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_owned(), c)),
        );
    let mut chains = Chains::default();
    let mut http_matched = false;
    for (at, chain) in all {
        if chain.transport_socket.is_some() {
            return Err(ConvertError::unsupported(
                format!("{at}.transport_socket"),
                "downstream TLS",
            ));
        }
        let [filter] = chain.filters.as_slice() else {
            return Err(ConvertError::unsupported(
                format!("{at}.filters"),
                "network filters other than one http_connection_manager or tcp_proxy",
            ));
        };
        let any = match &filter.config_type {
            Some(lpb::filter::ConfigType::TypedConfig(any)) => any,
            _ => {
                return Err(ConvertError::new(
                    format!("{at}.filters[0].typed_config"),
                    "missing",
                ))
            }
        };
        let cfg_at = format!("{at}.filters[0].typed_config");
        if is_generic_proxy(any) {
            if chains.rpc.is_some() {
                return Err(ConvertError::unsupported(
                    at,
                    "more than one RPC (generic_proxy) filter chain",
                ));
            }
            rpc_match_of(chain, &at)?;
            chains.rpc = Some((cfg_at.clone(), unpack(any, &cfg_at)?));
            continue;
        }
        let matched = match_of(chain, &at)?;
        if any.type_url == hcm::HttpConnectionManager::type_url() {
            if chains.http.is_some() {
                return Err(ConvertError::unsupported(
                    at,
                    "more than one HTTP filter chain",
                ));
            }
            http_matched = matched;
            chains.http = Some((cfg_at.clone(), unpack(any, &cfg_at)?));
        } else if any.type_url == tcp::TcpProxy::type_url() {
            if chains.tcp.is_some() {
                return Err(ConvertError::unsupported(
                    at,
                    "more than one TCP filter chain",
                ));
            }
            if matched {
                return Err(ConvertError::unsupported(
                    format!("{at}.filter_chain_match"),
                    "matching a TCP chain (it is the fallback for what is not HTTP)",
                ));
            }
            chains.tcp = Some((cfg_at.clone(), unpack(any, &cfg_at)?));
        } else {
            return Err(ConvertError::unsupported(
                format!("{at}.filters[0]"),
                format!("network filter {:?} ({})", filter.name, any.type_url),
            ));
        }
    }
    match (&chains.http, &chains.tcp) {
        (None, None) if chains.rpc.is_none() => Err(ConvertError::new("filter_chains", "missing")),
        // Both unmatched: Envoy itself refuses two chains with the same match.
        (Some(_), Some(_)) if !http_matched && p.default_filter_chain.is_none() => {
            Err(ConvertError::unsupported(
                "filter_chains",
                "an HTTP and a TCP chain without an application_protocols match telling them apart",
            ))
        }
        _ => Ok(chains),
    }
}

/// Whether the chain matches on `application_protocols` (only the HTTP inspector's values);
/// any other match is refused.
fn match_of(chain: &lpb::FilterChain, at: &str) -> Result<bool, ConvertError> {
    let Some(m) = &chain.filter_chain_match else {
        return Ok(false);
    };
    let protocols_only = lpb::FilterChainMatch {
        application_protocols: m.application_protocols.clone(),
        ..Default::default()
    };
    if m != &protocols_only {
        return Err(ConvertError::unsupported(
            format!("{at}.filter_chain_match"),
            "filter chain matching other than application_protocols",
        ));
    }
    if let Some((i, p)) = m
        .application_protocols
        .iter()
        .enumerate()
        .find(|(_, p)| !HTTP_PROTOCOLS.contains(&p.as_str()))
    {
        return Err(ConvertError::unsupported(
            format!("{at}.filter_chain_match.application_protocols[{i}]"),
            format!("{p:?} (only {HTTP_PROTOCOLS:?} are detected)"),
        ));
    }
    Ok(!m.application_protocols.is_empty())
}

/// An RPC chain may match only on `application_protocols: [<its protocol>]` (the form for a
/// listener that also serves HTTP, see `xprotocol`).
fn rpc_match_of(chain: &lpb::FilterChain, at: &str) -> Result<(), ConvertError> {
    let Some(m) = &chain.filter_chain_match else {
        return Ok(());
    };
    let ok = match m.application_protocols.as_slice() {
        [p] => ["bolt", "dubbo"].contains(&p.as_str()),
        _ => false,
    };
    let protocols_only = lpb::FilterChainMatch {
        application_protocols: m.application_protocols.clone(),
        ..Default::default()
    };
    if !ok || m != &protocols_only {
        return Err(ConvertError::unsupported(
            format!("{at}.filter_chain_match"),
            "RPC chain matching other than application_protocols: [\"bolt\"] or [\"dubbo\"]",
        ));
    }
    Ok(())
}

/// The chains for a listener: `http` is the packed connection manager when the listener serves
/// HTTP, `rpc` its generic proxy when it serves an RPC protocol. Returns (filter_chains,
/// default_filter_chain, listener_filters).
pub(super) fn chains_to(
    l: &mesh_core::Listener,
    http: Option<hcm::HttpConnectionManager>,
    rpc: Option<GenericProxy>,
) -> (
    Vec<lpb::FilterChain>,
    Option<lpb::FilterChain>,
    Vec<lpb::ListenerFilter>,
) {
    let chain = |name: &str, any: Any| lpb::FilterChain {
        filters: vec![lpb::Filter {
            name: name.to_owned(),
            config_type: Some(lpb::filter::ConfigType::TypedConfig(any)),
        }],
        ..Default::default()
    };
    let tcp = l
        .tcp_proxy
        .as_ref()
        .map(|t| chain(TCP_PROXY_FILTER, pack(&tcp_proxy_to(t, &l.name))));
    let serves_http = http.is_some();
    let (mut chains, mut default, mut filters) = http_tcp_chains(http, tcp, &chain);
    if let Some(g) = rpc {
        let mut c = chain(GENERIC_PROXY_FILTER, pack(&g));
        if serves_http {
            // HTTP on the same port: each chain is told apart by its application protocol.
            if chains[0].filter_chain_match.is_none() {
                chains[0].filter_chain_match = Some(http_match());
                filters.push(http_inspector());
            }
            let protocol = l
                .xprotocol
                .as_ref()
                .map_or("bolt", |x| chain_protocol(x.protocol));
            c.filter_chain_match = Some(lpb::FilterChainMatch {
                application_protocols: vec![protocol.to_owned()],
                ..Default::default()
            });
            chains.push(c);
        } else {
            // Without HTTP every connection is decoded as RPCs; a TCP proxy never runs.
            chains = vec![c];
            default = None;
        }
    }
    (chains, default, filters)
}

fn http_match() -> lpb::FilterChainMatch {
    lpb::FilterChainMatch {
        application_protocols: HTTP_PROTOCOLS.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

fn http_inspector() -> lpb::ListenerFilter {
    lpb::ListenerFilter {
        name: HTTP_INSPECTOR.to_owned(),
        config_type: Some(lpb::listener_filter::ConfigType::TypedConfig(pack(
            &envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The HTTP and TCP chains (see [`chains_to`]).
fn http_tcp_chains(
    http: Option<hcm::HttpConnectionManager>,
    tcp: Option<lpb::FilterChain>,
    chain: &dyn Fn(&str, Any) -> lpb::FilterChain,
) -> (
    Vec<lpb::FilterChain>,
    Option<lpb::FilterChain>,
    Vec<lpb::ListenerFilter>,
) {
    match (http, tcp) {
        (Some(m), None) => (vec![chain(super::HCM_FILTER, pack(&m))], None, Vec::new()),
        (None, Some(t)) => (vec![t], None, Vec::new()),
        (Some(m), Some(t)) => {
            let mut http = chain(super::HCM_FILTER, pack(&m));
            http.filter_chain_match = Some(http_match());
            (vec![http], Some(t), vec![http_inspector()])
        }
        // Validation refuses a listener with neither.
        (None, None) => (Vec::new(), None, Vec::new()),
    }
}
