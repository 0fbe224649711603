//! `RouteConfiguration` (RDS) → `VirtualHost` → `Route` and its match ↔ mesh-core's model.

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::google::protobuf as pbw;
use mesh_core::{PathMatch, Route, RouteConfiguration, RouteMatch, VirtualHost};

use super::matchers::{header_from, header_to, query_from, query_to, regex};
use super::route_action::{action_from, action_to};
use super::{ConvertError, XdsResource};

impl XdsResource for RouteConfiguration {
    type Proto = rpb::RouteConfiguration;
    const TYPE: crate::ResourceType = crate::ResourceType::Route;
    const TYPE_URL: &'static str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    const KIND: &'static str = "route_configuration";

    fn resource_name(&self) -> &str {
        &self.name
    }

    fn proto_name(proto: &Self::Proto) -> &str {
        &proto.name
    }

    fn from_proto(p: Self::Proto) -> Result<Self, ConvertError> {
        let refuse = [
            (p.vhds.is_some(), "vhds", "virtual host discovery"),
            (
                !p.request_headers_to_add.is_empty()
                    || !p.request_headers_to_remove.is_empty()
                    || !p.response_headers_to_add.is_empty()
                    || !p.response_headers_to_remove.is_empty(),
                "request_headers_to_add",
                "header mutations at route-configuration level (set them per route)",
            ),
            (
                !p.internal_only_headers.is_empty(),
                "internal_only_headers",
                "internal-only headers",
            ),
            (
                !p.cluster_specifier_plugins.is_empty(),
                "cluster_specifier_plugins",
                "cluster specifier plugins",
            ),
            (
                !p.typed_per_filter_config.is_empty(),
                "typed_per_filter_config",
                "filter configs at route-configuration level (set them per route)",
            ),
            (
                !p.request_mirror_policies.is_empty(),
                "request_mirror_policies",
                "mirroring",
            ),
            // Matching switches the router does not implement: refused rather than ignored,
            // so a table never routes differently from Envoy.
            (
                !p.vhost_header.is_empty(),
                "vhost_header",
                "virtual host selection by another header than the authority",
            ),
            (
                p.ignore_path_parameters_in_path_matching,
                "ignore_path_parameters_in_path_matching",
                "ignoring path parameters in path matching",
            ),
        ];
        if let Some((_, path, what)) = refuse.into_iter().find(|(bad, _, _)| *bad) {
            return Err(ConvertError::unsupported(path, what));
        }
        let virtual_hosts = p
            .virtual_hosts
            .into_iter()
            .enumerate()
            .map(|(i, vh)| vhost_from(vh).map_err(|e| e.within(format!("virtual_hosts[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: p.name,
            virtual_hosts,
            ignore_port_in_host_matching: p.ignore_port_in_host_matching,
        })
    }

    fn to_proto(&self) -> Self::Proto {
        rpb::RouteConfiguration {
            name: self.name.clone(),
            virtual_hosts: self.virtual_hosts.iter().map(vhost_to).collect(),
            ignore_port_in_host_matching: self.ignore_port_in_host_matching,
            // As in the mesh, a route to a cluster not (yet) known answers 503 at request time
            // instead of refusing the table; Envoy validates inline tables unless told not to.
            validate_clusters: Some(pbw::BoolValue { value: false }),
            ..Default::default()
        }
    }
}

#[allow(deprecated)] // deprecated fields are read to refuse them
fn vhost_from(vh: rpb::VirtualHost) -> Result<VirtualHost, ConvertError> {
    let refuse = [
        (vh.require_tls != 0, "require_tls", "TLS redirects"),
        (
            !vh.rate_limits.is_empty(),
            "rate_limits",
            "global rate limiting",
        ),
        (vh.cors.is_some(), "cors", "CORS"),
        (vh.hedge_policy.is_some(), "hedge_policy", "hedging"),
        (vh.matcher.is_some(), "matcher", "generic matchers"),
        (
            !vh.request_headers_to_add.is_empty()
                || !vh.request_headers_to_remove.is_empty()
                || !vh.response_headers_to_add.is_empty()
                || !vh.response_headers_to_remove.is_empty(),
            "request_headers_to_add",
            "header mutations at virtual-host level (set them per route)",
        ),
        (
            !vh.typed_per_filter_config.is_empty(),
            "typed_per_filter_config",
            "filter configs at virtual-host level (set them per route)",
        ),
        (
            !vh.request_mirror_policies.is_empty(),
            "request_mirror_policies",
            "mirroring",
        ),
    ];
    if let Some((_, path, what)) = refuse.into_iter().find(|(bad, _, _)| *bad) {
        return Err(ConvertError::unsupported(path, what));
    }
    let routes = vh
        .routes
        .into_iter()
        .enumerate()
        .map(|(j, r)| {
            // A virtual host's retry policy is the default of its routes, as in Envoy.
            route_from(r, vh.retry_policy.as_ref()).map_err(|e| e.within(format!("routes[{j}]")))
        })
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: vh.name,
        domains: vh.domains,
        routes,
    })
}

fn vhost_to(vh: &VirtualHost) -> rpb::VirtualHost {
    rpb::VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes: vh.routes.iter().map(route_to).collect(),
        ..Default::default()
    }
}

fn route_from(r: rpb::Route, vh_retry: Option<&rpb::RetryPolicy>) -> Result<Route, ConvertError> {
    use rpb::route::Action;
    let matcher = match &r.r#match {
        Some(m) => match_from(m).map_err(|e| e.within("match"))?,
        None => return Err(ConvertError::new("match", "missing")),
    };
    let action = match &r.action {
        Some(Action::Route(a)) => a,
        Some(_) => {
            return Err(ConvertError::unsupported(
                "action",
                "redirect, direct_response and non-forwarding routes (route only)",
            ))
        }
        None => return Err(ConvertError::new("action", "missing")),
    };
    let (action, filters) = action_from(&r, action, vh_retry, &matcher.path)?;
    Ok(Route {
        name: r.name,
        matcher,
        action,
        filters,
    })
}

fn route_to(r: &Route) -> rpb::Route {
    let mut out = rpb::Route {
        name: r.name.clone(),
        r#match: Some(match_to(&r.matcher)),
        ..Default::default()
    };
    action_to(r, &mut out);
    out
}

fn match_from(m: &rpb::RouteMatch) -> Result<RouteMatch, ConvertError> {
    use rpb::route_match::PathSpecifier as P;
    let refuse = [
        (
            m.runtime_fraction.is_some(),
            "runtime_fraction",
            "runtime fractions",
        ),
        (
            m.tls_context.is_some(),
            "tls_context",
            "TLS context matching",
        ),
        (!m.cookies.is_empty(), "cookies", "cookie matching"),
        (
            !m.dynamic_metadata.is_empty(),
            "dynamic_metadata",
            "metadata matching",
        ),
        (
            !m.filter_state.is_empty(),
            "filter_state",
            "filter-state matching",
        ),
    ];
    if let Some((_, path, what)) = refuse.into_iter().find(|(bad, _, _)| *bad) {
        return Err(ConvertError::unsupported(path, what));
    }
    let path = match (&m.path_specifier, m.grpc.is_some()) {
        (Some(P::Prefix(p)), true) => grpc_from_prefix(p)?,
        (Some(P::Path(p)), true) => grpc_from_path(p)?,
        (_, true) => {
            return Err(ConvertError::unsupported(
                "grpc",
                "gRPC matches other than a service prefix or a method path",
            ))
        }
        (Some(P::Prefix(p)), false) if p.is_empty() => PathMatch::Prefix("/".into()),
        (Some(P::Prefix(p)), false) => PathMatch::Prefix(p.clone()),
        (Some(P::Path(p)), false) => PathMatch::Exact(p.clone()),
        (Some(P::SafeRegex(r)), false) => PathMatch::Regex(r.regex.clone()),
        (Some(P::ConnectMatcher(_)), false) => PathMatch::ConnectMatcher {},
        (Some(_), false) => {
            return Err(ConvertError::unsupported(
                "path_specifier",
                "separated-prefix and extension path matchers",
            ))
        }
        (None, false) => return Err(ConvertError::new("path_specifier", "missing")),
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_from(h).map_err(|e| e.within(format!("headers[{i}]"))))
        .collect::<Result<_, _>>()?;
    let query_parameters = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_from(q).map_err(|e| e.within(format!("query_parameters[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.is_none_or(|b| b.value),
        headers,
        query_parameters,
    })
}

fn grpc_from_prefix(p: &str) -> Result<PathMatch, ConvertError> {
    match p.strip_prefix('/').and_then(|s| s.strip_suffix('/')) {
        Some(service) if !service.is_empty() && !service.contains('/') => Ok(PathMatch::Grpc {
            service: service.to_string(),
            method: None,
        }),
        _ => Err(ConvertError::unsupported(
            "prefix",
            format!("gRPC prefix {p:?} (expected /package.Service/)"),
        )),
    }
}

fn grpc_from_path(p: &str) -> Result<PathMatch, ConvertError> {
    let mut parts = p.strip_prefix('/').unwrap_or_default().split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(m), None) if !s.is_empty() && !m.is_empty() => Ok(PathMatch::Grpc {
            service: s.to_string(),
            method: Some(m.to_string()),
        }),
        _ => Err(ConvertError::unsupported(
            "path",
            format!("gRPC path {p:?} (expected /package.Service/Method)"),
        )),
    }
}

fn match_to(m: &RouteMatch) -> rpb::RouteMatch {
    use rpb::route_match::PathSpecifier as P;
    let mut grpc = None;
    let path = match &m.path {
        PathMatch::Prefix(p) => P::Prefix(p.clone()),
        PathMatch::Exact(p) => P::Path(p.clone()),
        PathMatch::Regex(r) => P::SafeRegex(regex(r)),
        PathMatch::ConnectMatcher {} => P::ConnectMatcher(rpb::route_match::ConnectMatcher {}),
        PathMatch::Grpc { service, method } => {
            grpc = Some(rpb::route_match::GrpcRouteMatchOptions {});
            match method {
                Some(m) => P::Path(format!("/{service}/{m}")),
                None => P::Prefix(format!("/{service}/")),
            }
        }
    };
    rpb::RouteMatch {
        path_specifier: Some(path),
        case_sensitive: (!m.case_sensitive).then_some(pbw::BoolValue { value: false }),
        grpc,
        headers: m.headers.iter().map(header_to).collect(),
        query_parameters: m.query_parameters.iter().map(query_to).collect(),
        ..Default::default()
    }
}
