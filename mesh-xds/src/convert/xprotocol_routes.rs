//! The generic proxy's `RouteConfiguration` (virtual hosts holding an `xds.type.matcher.v3`
//! matcher of routes) ↔ an RPC listener's [`RouteConfiguration`], in the module-doc semantics
//! of `mesh_core::xprotocol`: an RPC is matched as `POST /{service}/{method}` with its header
//! fields and attachments as headers.
//!
//! Inputs, as Envoy's dubbo codec reports them: `envoy.matching.generic_proxy.input.service`
//! (and `.host` and `.path`, which that codec also sets to the service) match the service;
//! `.method` the method; `.property` (`property_name`) an attachment — Envoy's dubbo codec
//! answers `version` from the body's service version, ours from the attachments that start
//! with it. A route's predicate is one single predicate or an `and_matcher` of them, string
//! matchers exact / prefix / suffix / contains / safe_regex; the service and method matchers
//! become one path condition (`/S/` prefix, `/S/M` exact, or a regex), property matchers
//! become header matchers. The action is `envoy.matching.action.generic_proxy.route` with
//! `cluster` or `weighted_clusters` and `timeout`.
//!
//! Routes with conditions Envoy's inputs cannot say (a regex over the whole path, absent
//! attachments, inverted matchers, ...) travel as one predicate with our own input
//! [`RPC_REQUEST_INPUT`] and custom matcher [`RPC_ROUTE_MATCH`] (a `TypedStruct` holding the
//! route match as JSON); route actions with more than a destination and timeout carry the
//! whole action as JSON in the action's `metadata`. Real Envoy refuses the former and ignores
//! the latter. A catch-all route becomes the matcher's `on_no_match` (routes after it never
//! match). Only `*` virtual hosts are accepted: our RPC routing has no authority, so a host
//! list would never match (route on the service in the matcher instead).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::action::v3 as action;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::matcher::v3 as gm;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::v3 as gp;
use envoy_types::pb::google::protobuf as pbw;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xm;
use mesh_core::{
    ClusterSpecifier, PathMatch, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
use prost::Name;

use super::custom::{typed_struct_from, typed_struct_to};
use super::xprotocol_match::{predicate_from, predicate_to};
use super::{duration_to, mesh_meta_get, mesh_meta_set, opt_duration, pack, unpack, ConvertError};

/// Our matcher input: the whole RPC (as the route table sees it).
pub const RPC_REQUEST_INPUT: &str = "type.googleapis.com/mesh.xprotocol.v1.RequestInput";
/// Our custom matcher: a whole route match, as JSON in the `route_match` field.
pub const RPC_ROUTE_MATCH: &str = "type.googleapis.com/mesh.xprotocol.v1.RouteMatch";
/// Name of the generic proxy's route action.
pub const ROUTE_ACTION: &str = "envoy.matching.action.generic_proxy.route";

/// `rc` as the generic proxy's route configuration.
pub(super) fn routes_to(rc: &RouteConfiguration) -> gp::RouteConfiguration {
    gp::RouteConfiguration {
        name: rc.name.clone(),
        virtual_hosts: rc
            .virtual_hosts
            .iter()
            .map(|vh| gp::VirtualHost {
                name: vh.name.clone(),
                hosts: vh.domains.clone(),
                routes: matcher_to(&vh.routes),
            })
            .collect(),
        routes: None,
    }
}

fn matcher_to(routes: &[Route]) -> Option<xm::Matcher> {
    use xm::matcher::matcher_list::FieldMatcher;
    use xm::matcher::{MatcherList, MatcherType};
    let mut matchers = Vec::new();
    let mut on_no_match = None;
    for r in routes {
        let on_match = xm::matcher::OnMatch {
            on_match: Some(xm::matcher::on_match::OnMatch::Action(action_to(r))),
            keep_matching: false,
        };
        match predicate_to(&r.matcher) {
            Some(p) => matchers.push(FieldMatcher {
                predicate: Some(p),
                on_match: Some(on_match),
            }),
            None => {
                // Catch-all: what follows it never matches.
                on_no_match = Some(Box::new(on_match));
                break;
            }
        }
    }
    if matchers.is_empty() && on_no_match.is_none() {
        return None;
    }
    Some(xm::Matcher {
        on_no_match,
        matcher_type: (!matchers.is_empty())
            .then_some(MatcherType::MatcherList(MatcherList { matchers })),
    })
}

fn action_to(r: &Route) -> TypedExtensionConfig {
    use action::route_action::ClusterSpecifier as Cs;
    let native = RouteAction {
        destination: r.action.destination.clone(),
        timeout: r.action.timeout,
        ..RouteAction::default()
    };
    let mut metadata = None;
    let header = matches!(r.action.destination, ClusterSpecifier::ClusterHeader(_));
    if native != r.action || !r.filters.is_empty() || header {
        mesh_meta_set(&mut metadata, "route", &(&r.action, &r.filters));
    }
    let cluster_specifier = match &r.action.destination {
        ClusterSpecifier::Cluster(c) => Some(Cs::Cluster(c.clone())),
        ClusterSpecifier::WeightedClusters(w) => Some(Cs::WeightedClusters(rpb::WeightedCluster {
            clusters: w
                .iter()
                .map(|c| rpb::weighted_cluster::ClusterWeight {
                    name: c.name.clone(),
                    weight: Some(pbw::UInt32Value { value: c.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ClusterSpecifier::ClusterHeader(_) => None,
    };
    TypedExtensionConfig {
        name: ROUTE_ACTION.to_owned(),
        typed_config: Some(pack(&action::RouteAction {
            name: r.name.clone(),
            metadata,
            timeout: Some(duration_to(r.action.timeout)),
            cluster_specifier,
            ..Default::default()
        })),
    }
}

/// Converts the generic proxy's route configuration (paths relative to it).
pub(super) fn routes_from(rc: &gp::RouteConfiguration) -> Result<RouteConfiguration, ConvertError> {
    let mut virtual_hosts = Vec::new();
    if let Some(m) = &rc.routes {
        virtual_hosts.push(VirtualHost {
            name: "default".to_owned(),
            domains: vec!["*".to_owned()],
            routes: matcher_from(m, "routes")?,
        });
    }
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let at = format!("virtual_hosts[{i}]");
        if vh.hosts != ["*"] {
            return Err(ConvertError::unsupported(
                format!("{at}.hosts"),
                "hosts other than [\"*\"] (RPCs carry no host; match the service in routes)",
            ));
        }
        let routes = match &vh.routes {
            Some(m) => matcher_from(m, &format!("{at}.routes"))?,
            None => Vec::new(),
        };
        virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            domains: vh.hosts.clone(),
            routes,
        });
    }
    Ok(RouteConfiguration {
        name: rc.name.clone(),
        virtual_hosts,
        ignore_port_in_host_matching: false,
    })
}

fn matcher_from(m: &xm::Matcher, at: &str) -> Result<Vec<Route>, ConvertError> {
    use xm::matcher::MatcherType;
    let mut routes = Vec::new();
    match &m.matcher_type {
        Some(MatcherType::MatcherList(list)) => {
            for (i, fm) in list.matchers.iter().enumerate() {
                let at = format!("{at}.matcher_list.matchers[{i}]");
                let p = fm
                    .predicate
                    .as_ref()
                    .ok_or_else(|| ConvertError::new(format!("{at}.predicate"), "missing"))?;
                let matcher = predicate_from(p, &format!("{at}.predicate"))?;
                let on_match = fm
                    .on_match
                    .as_ref()
                    .ok_or_else(|| ConvertError::new(format!("{at}.on_match"), "missing"))?;
                routes.push(route_from(matcher, on_match, &format!("{at}.on_match"))?);
            }
        }
        Some(MatcherType::MatcherTree(_)) => {
            return Err(ConvertError::unsupported(
                format!("{at}.matcher_tree"),
                "matcher trees (use matcher_list)",
            ))
        }
        None => {}
    }
    if let Some(on_match) = &m.on_no_match {
        routes.push(route_from(
            RouteMatch::default(),
            on_match,
            &format!("{at}.on_no_match"),
        )?);
    }
    Ok(routes)
}

fn route_from(
    matcher: RouteMatch,
    on_match: &xm::matcher::OnMatch,
    at: &str,
) -> Result<Route, ConvertError> {
    use action::route_action::ClusterSpecifier as Cs;
    use xm::matcher::on_match::OnMatch;
    if on_match.keep_matching {
        return Err(ConvertError::unsupported(
            format!("{at}.keep_matching"),
            "keep_matching (the first matching route wins)",
        ));
    }
    let cfg = match &on_match.on_match {
        Some(OnMatch::Action(a)) => a,
        Some(OnMatch::Matcher(_)) => {
            return Err(ConvertError::unsupported(
                format!("{at}.matcher"),
                "nested matchers",
            ))
        }
        None => return Err(ConvertError::new(format!("{at}.action"), "missing")),
    };
    let at = format!("{at}.action.typed_config");
    let any = cfg
        .typed_config
        .as_ref()
        .ok_or_else(|| ConvertError::new(&at, "missing"))?;
    if any.type_url != action::RouteAction::type_url() {
        return Err(ConvertError::unsupported(
            at,
            format!(
                "action {} (only the generic proxy route action)",
                any.type_url
            ),
        ));
    }
    let a: action::RouteAction = unpack(any, &at)?;
    if a.retry_policy.is_some() {
        return Err(ConvertError::unsupported(
            format!("{at}.retry_policy"),
            "retries of RPCs",
        ));
    }
    if !a.per_filter_config.is_empty() {
        return Err(ConvertError::unsupported(
            format!("{at}.per_filter_config"),
            "per-route filter configs (the router is the only filter)",
        ));
    }
    if let Some((action, filters)) =
        mesh_meta_get(a.metadata.as_ref(), "route").map_err(|e| e.within(&at))?
    {
        return Ok(Route {
            name: a.name,
            matcher,
            action,
            filters,
        });
    }
    let destination = match &a.cluster_specifier {
        Some(Cs::Cluster(c)) => ClusterSpecifier::Cluster(c.clone()),
        Some(Cs::WeightedClusters(w)) => {
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                let cat = format!("{at}.weighted_clusters.clusters[{i}]");
                let plain = rpb::weighted_cluster::ClusterWeight {
                    name: c.name.clone(),
                    weight: c.weight,
                    ..Default::default()
                };
                if c != &plain {
                    return Err(ConvertError::unsupported(
                        cat,
                        "weighted cluster fields other than name and weight",
                    ));
                }
                out.push(WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight.map_or(0, |w| w.value),
                });
            }
            ClusterSpecifier::WeightedClusters(out)
        }
        None => {
            return Err(ConvertError::new(
                format!("{at}.cluster_specifier"),
                "missing (cluster or weighted_clusters)",
            ))
        }
    };
    let mut action = RouteAction {
        destination,
        ..RouteAction::default()
    };
    if let Some(t) = opt_duration(a.timeout.as_ref(), &format!("{at}.timeout"))? {
        action.timeout = t;
    }
    Ok(Route {
        name: a.name,
        matcher,
        action,
        filters: Vec::new(),
    })
}

/// The custom predicate carrying a whole route match (see the module docs).
pub(super) fn custom_predicate_to(m: &RouteMatch) -> xm::matcher::matcher_list::Predicate {
    use xm::matcher::matcher_list::predicate::{single_predicate, MatchType, SinglePredicate};
    let json = serde_json::to_string(m).unwrap_or_default();
    let fields = HashMap::from([(
        "route_match".to_owned(),
        pbw::Value {
            kind: Some(pbw::value::Kind::StringValue(json)),
        },
    )]);
    xm::matcher::matcher_list::Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(TypedExtensionConfig {
                name: "mesh.matching.rpc.input.request".to_owned(),
                typed_config: Some(typed_struct_to(RPC_REQUEST_INPUT, Default::default())),
            }),
            matcher: Some(single_predicate::Matcher::CustomMatch(
                TypedExtensionConfig {
                    name: "mesh.matching.rpc.route_match".to_owned(),
                    typed_config: Some(typed_struct_to(
                        RPC_ROUTE_MATCH,
                        pbw::Struct {
                            fields: fields.into_iter().collect(),
                        },
                    )),
                },
            )),
        })),
    }
}

/// The route match of our custom predicate (`input` is already known to be ours).
pub(super) fn custom_predicate_from(
    custom: &TypedExtensionConfig,
    at: &str,
) -> Result<RouteMatch, ConvertError> {
    let at = format!("{at}.custom_match.typed_config");
    let any = custom
        .typed_config
        .as_ref()
        .ok_or_else(|| ConvertError::new(&at, "missing"))?;
    let Some((url, value)) = typed_struct_from(any, &at)? else {
        return Err(ConvertError::unsupported(
            at,
            format!("custom matcher {}", any.type_url),
        ));
    };
    if url != RPC_ROUTE_MATCH {
        return Err(ConvertError::unsupported(
            format!("{at}.type_url"),
            format!("custom matcher {url:?} (only {RPC_ROUTE_MATCH})"),
        ));
    }
    let json = match value
        .fields
        .get("route_match")
        .and_then(|v| v.kind.as_ref())
    {
        Some(pbw::value::Kind::StringValue(s)) => s,
        _ => {
            return Err(ConvertError::new(
                format!("{at}.value.route_match"),
                "missing (a JSON string)",
            ))
        }
    };
    serde_json::from_str(json).map_err(|e| ConvertError::new(format!("{at}.value.route_match"), e))
}

/// Whether a path condition is a catch-all.
pub(super) fn is_catch_all(p: &PathMatch) -> bool {
    matches!(p, PathMatch::Prefix(s) if s == "/")
}

/// The generic proxy's property input for `name`.
pub(super) fn property_input(name: &str) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: "envoy.matching.generic_proxy.input.property".to_owned(),
        typed_config: Some(pack(&gm::PropertyMatchInput {
            property_name: name.to_owned(),
        })),
    }
}
