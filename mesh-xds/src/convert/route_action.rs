//! A route's action and per-route policy: `RouteAction`, retries, hash policies, header
//! mutations and `typed_per_filter_config` (local_ratelimit, fault, custom) ↔ mesh-core.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::{
    ClusterSpecifier, FilterConfig, PathMatch, RetryBudget, Route, RouteAction, WeightedCluster,
};
use prost::Name;

use super::custom;
use super::filters::{fault_from, fault_to, rate_limit_from, rate_limit_to, RateLimitExtras};
use super::route_policy::{
    hash_from, hash_to, header_add_to, header_adds_from, retry_from, retry_to, upgrade_from,
    upgrade_to,
};
use super::{
    duration_to, mesh_meta_get, mesh_meta_set, opt_duration, pack, u32_from, u32_to, unpack,
    ConvertError, FAULT_FILTER, LOCAL_RATELIMIT_FILTER,
};

/// The regex Envoy's `regex_rewrite` uses to replace a whole path.
const WHOLE_PATH: &str = "^.*$";

/// Converts a route's action plus its route-level fields (header mutations, per-filter configs,
/// `io.mesh` metadata) into the mesh's action and extra filters.
#[allow(deprecated)] // deprecated fields are read to refuse them
pub(crate) fn action_from(
    r: &rpb::Route,
    a: &rpb::RouteAction,
    vh_retry: Option<&rpb::RetryPolicy>,
    path_match: &PathMatch,
) -> Result<(RouteAction, Vec<FilterConfig>), ConvertError> {
    use rpb::route_action::ClusterSpecifier as C;
    use rpb::route_action::HostRewriteSpecifier as H;
    let refuse = [
        (
            !a.request_mirror_policies.is_empty(),
            "request_mirror_policies",
            "mirroring",
        ),
        (
            !a.rate_limits.is_empty(),
            "rate_limits",
            "global rate limiting",
        ),
        (a.cors.is_some(), "cors", "CORS"),
        (a.hedge_policy.is_some(), "hedge_policy", "hedging"),
        (
            a.internal_redirect_policy.is_some(),
            "internal_redirect_policy",
            "internal redirects",
        ),
        (
            a.metadata_match.is_some(),
            "metadata_match",
            "subset load balancing",
        ),
        (
            a.retry_policy_typed_config.is_some(),
            "retry_policy_typed_config",
            "typed retry policies",
        ),
        (
            a.path_rewrite_policy.is_some() || !a.path_rewrite.is_empty(),
            "path_rewrite",
            "path templates",
        ),
        (
            a.cluster_not_found_response_code != 0,
            "cluster_not_found_response_code",
            "a status other than 503",
        ),
    ];
    if let Some((_, path, what)) = refuse.into_iter().find(|(bad, _, _)| *bad) {
        return Err(ConvertError::unsupported(format!("route.{path}"), what));
    }
    let destination = match &a.cluster_specifier {
        Some(C::Cluster(c)) => ClusterSpecifier::Cluster(c.clone()),
        Some(C::ClusterHeader(h)) => ClusterSpecifier::ClusterHeader(h.clone()),
        Some(C::WeightedClusters(w)) => weighted_from(w)?,
        Some(_) => {
            return Err(ConvertError::unsupported(
                "route.cluster_specifier_plugin",
                "cluster specifier plugins",
            ))
        }
        None => return Err(ConvertError::new("route.cluster", "missing")),
    };
    let mut out = RouteAction::to_cluster("");
    out.destination = destination;
    if let Some(t) = opt_duration(a.timeout.as_ref(), "route.timeout")? {
        out.timeout = t;
    }
    let budget: Option<RetryBudget> = mesh_meta_get(r.metadata.as_ref(), "retry_budget")?;
    out.retry_policy = match a.retry_policy.as_ref().or(vh_retry) {
        Some(rp) => Some(retry_from(rp, budget).map_err(|e| e.within("route.retry_policy"))?),
        None => None,
    };
    if !a.prefix_rewrite.is_empty() {
        out.prefix_rewrite = Some(a.prefix_rewrite.clone());
    }
    if let Some(rw) = &a.regex_rewrite {
        let pattern = rw.pattern.as_ref().map(|p| p.regex.as_str());
        if !matches!(path_match, PathMatch::Regex(_)) || !matches!(pattern, Some(WHOLE_PATH | ".*"))
        {
            return Err(ConvertError::unsupported(
                "route.regex_rewrite",
                "regex rewrites other than replacing the whole path of a regex route",
            ));
        }
        out.prefix_rewrite = Some(rw.substitution.clone());
    }
    out.host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(H::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(_) => {
            return Err(ConvertError::unsupported(
                "route.host_rewrite_specifier",
                "host rewrites other than a literal",
            ))
        }
    };
    out.hash_policy = a
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| hash_from(h).map_err(|e| e.within(format!("route.hash_policy[{i}]"))))
        .collect::<Result<_, _>>()?;
    out.upgrade_configs = a
        .upgrade_configs
        .iter()
        .enumerate()
        .map(|(i, u)| upgrade_from(u).map_err(|e| e.within(format!("route.upgrade_configs[{i}]"))))
        .collect::<Result<_, _>>()?;
    out.request_headers_to_add =
        header_adds_from(&r.request_headers_to_add, "request_headers_to_add")?;
    out.request_headers_to_remove = r.request_headers_to_remove.clone();
    out.response_headers_to_add =
        header_adds_from(&r.response_headers_to_add, "response_headers_to_add")?;
    out.response_headers_to_remove = r.response_headers_to_remove.clone();
    let extras: Option<RateLimitExtras> = mesh_meta_get(r.metadata.as_ref(), "rate_limit")?;
    let optional_filters: Vec<String> =
        mesh_meta_get(r.metadata.as_ref(), "optional_filters")?.unwrap_or_default();
    let mut filters = Vec::new();
    // Sorted, so the mesh's filter order does not depend on a hash map's.
    let per_filter: BTreeMap<_, _> = r.typed_per_filter_config.iter().collect();
    for (name, any) in per_filter {
        let at = format!("typed_per_filter_config[{name}]");
        let (any, optional) = unwrap_filter_config(any, &at)?;
        let Some(any) = &any else { continue };
        if any.type_url == lrl::LocalRateLimit::type_url() {
            out.rate_limit = rate_limit_from(&unpack(any, &at)?, extras.clone(), &at)?;
        } else if any.type_url == fault::HttpFault::type_url() {
            filters.push(FilterConfig::Fault(fault_from(&unpack(any, &at)?, &at)?));
        } else if custom::is_custom(any) && optional {
            // Always wrapped optional for Envoy's sake (see `action_to`); the mesh's own flag
            // travels in the route's metadata.
            let optional = optional_filters.iter().any(|n| n == name);
            filters.push(custom::custom_from(name, any, optional, &at)?);
        } else if !optional {
            return Err(ConvertError::unsupported(
                at,
                format!("filter config {}", any.type_url),
            ));
        }
    }
    Ok((out, filters))
}

/// Fills the action and the route-level fields of `out` from the mesh's route.
pub(crate) fn action_to(r: &Route, out: &mut rpb::Route) {
    use rpb::route_action::ClusterSpecifier as C;
    let a = &r.action;
    let cluster_specifier = match &a.destination {
        ClusterSpecifier::Cluster(c) => C::Cluster(c.clone()),
        ClusterSpecifier::ClusterHeader(h) => C::ClusterHeader(h.clone()),
        ClusterSpecifier::WeightedClusters(w) => C::WeightedClusters(rpb::WeightedCluster {
            clusters: w
                .iter()
                .map(|c| rpb::weighted_cluster::ClusterWeight {
                    name: c.name.clone(),
                    weight: u32_to(c.weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let (prefix_rewrite, regex_rewrite) = match (&a.prefix_rewrite, &r.matcher.path) {
        (Some(p), PathMatch::Regex(_)) => (
            String::new(),
            Some(matcher::RegexMatchAndSubstitute {
                pattern: Some(matcher::RegexMatcher {
                    regex: WHOLE_PATH.to_string(),
                    engine_type: None,
                }),
                substitution: p.clone(),
            }),
        ),
        (p, _) => (p.clone().unwrap_or_default(), None),
    };
    out.action = Some(rpb::route::Action::Route(rpb::RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: Some(duration_to(a.timeout)),
        retry_policy: a.retry_policy.as_ref().map(retry_to),
        prefix_rewrite,
        regex_rewrite,
        host_rewrite_specifier: a
            .host_rewrite
            .clone()
            .map(rpb::route_action::HostRewriteSpecifier::HostRewriteLiteral),
        hash_policy: a.hash_policy.iter().map(hash_to).collect(),
        upgrade_configs: a.upgrade_configs.iter().map(upgrade_to).collect(),
        ..Default::default()
    }));
    out.request_headers_to_add = a.request_headers_to_add.iter().map(header_add_to).collect();
    out.request_headers_to_remove = a.request_headers_to_remove.clone();
    out.response_headers_to_add = a
        .response_headers_to_add
        .iter()
        .map(header_add_to)
        .collect();
    out.response_headers_to_remove = a.response_headers_to_remove.clone();
    if let Some(rl) = &a.rate_limit {
        let cfg = rate_limit_to(Some(rl), &format!("route_{}", r.name));
        // Wrapped as optional: Envoy and our sidecar have the filter and enforce it, while a
        // proxyless gRPC client, which has no local rate limiter, skips it instead of NACKing
        // the whole route table ("unsupported filter type").
        let wrapped = rpb::FilterConfig {
            config: Some(pack(&cfg)),
            is_optional: true,
            disabled: false,
        };
        out.typed_per_filter_config
            .insert(LOCAL_RATELIMIT_FILTER.to_string(), pack(&wrapped));
        if let Some(x) = RateLimitExtras::of(rl) {
            mesh_meta_set(&mut out.metadata, "rate_limit", &x);
        }
    }
    if let Some(budget) = a.retry_policy.as_ref().and_then(|p| p.budget.as_ref()) {
        mesh_meta_set(&mut out.metadata, "retry_budget", budget);
    }
    let mut optional_filters = Vec::new();
    for f in &r.filters {
        let (name, any) = match f {
            FilterConfig::Fault(fc) => (FAULT_FILTER.to_string(), pack(&fault_to(fc))),
            FilterConfig::Custom {
                name,
                config,
                optional,
            } => {
                if *optional {
                    optional_filters.push(name.clone());
                }
                // Wrapped as optional, so real Envoy, which knows no such filter, skips it
                // instead of rejecting the route table.
                let wrapped = rpb::FilterConfig {
                    config: Some(custom::custom_to(config)),
                    is_optional: true,
                    disabled: false,
                };
                (name.clone(), pack(&wrapped))
            }
        };
        out.typed_per_filter_config.insert(name, any);
    }
    if !optional_filters.is_empty() {
        mesh_meta_set(&mut out.metadata, "optional_filters", &optional_filters);
    }
}

/// Unwraps `envoy.config.route.v3.FilterConfig` (its optional / disabled flags) when present.
fn unwrap_filter_config(any: &Any, at: &str) -> Result<(Option<Any>, bool), ConvertError> {
    if any.type_url != rpb::FilterConfig::type_url() {
        return Ok((Some(any.clone()), false));
    }
    let wrapper: rpb::FilterConfig = unpack(any, at)?;
    let config = if wrapper.disabled {
        None
    } else {
        wrapper.config
    };
    Ok((config, wrapper.is_optional))
}

fn weighted_from(w: &rpb::WeightedCluster) -> Result<ClusterSpecifier, ConvertError> {
    let clusters = w
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("route.weighted_clusters.clusters[{i}]");
            if !c.cluster_header.is_empty()
                || c.metadata_match.is_some()
                || !c.typed_per_filter_config.is_empty()
                || c.host_rewrite_specifier.is_some()
                || !c.request_headers_to_add.is_empty()
                || !c.response_headers_to_add.is_empty()
                || !c.request_headers_to_remove.is_empty()
                || !c.response_headers_to_remove.is_empty()
            {
                return Err(ConvertError::unsupported(
                    at,
                    "per-cluster settings in a weighted split (name and weight only)",
                ));
            }
            Ok(WeightedCluster {
                name: c.name.clone(),
                weight: u32_from(c.weight).unwrap_or(0),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ClusterSpecifier::WeightedClusters(clusters))
}
