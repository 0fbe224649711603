//! One RPC route's predicate (generic proxy inputs + string matchers) ↔ its [`RouteMatch`]
//! (see `xprotocol_routes` for the semantics).

use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::matcher::v3 as gm;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3 as xm;
use mesh_core::{HeaderMatcher, PathMatch, RouteMatch, StringMatch};
use prost::Name;

use super::custom::typed_struct_from;
use super::xprotocol_routes::{
    custom_predicate_from, custom_predicate_to, is_catch_all, property_input, RPC_REQUEST_INPUT,
};
use super::{pack, unpack, ConvertError};

use xm::matcher::matcher_list::predicate::{single_predicate, MatchType, SinglePredicate};
use xm::matcher::matcher_list::{predicate::PredicateList, Predicate};
use xm::string_matcher::MatchPattern;

/// The predicate of `m`; `None` for a catch-all (no condition at all).
pub(super) fn predicate_to(m: &RouteMatch) -> Option<Predicate> {
    if is_catch_all(&m.path) && m.headers.is_empty() && m.query_parameters.is_empty() {
        return None;
    }
    let Some(singles) = native(m) else {
        return Some(custom_predicate_to(m));
    };
    Some(match <[SinglePredicate; 1]>::try_from(singles) {
        Ok([one]) => single(one),
        Err(many) => Predicate {
            match_type: Some(MatchType::AndMatcher(PredicateList {
                predicate: many.into_iter().map(single).collect(),
            })),
        },
    })
}

fn single(p: SinglePredicate) -> Predicate {
    Predicate {
        match_type: Some(MatchType::SinglePredicate(p)),
    }
}

/// The single predicates of `m` in Envoy's own inputs, when it can be said that way so that
/// converting back gives `m` again.
fn native(m: &RouteMatch) -> Option<Vec<SinglePredicate>> {
    if !m.query_parameters.is_empty() {
        return None;
    }
    let ic = !m.case_sensitive;
    let mut out = Vec::new();
    let plain = |s: &str| !s.is_empty() && !s.contains('/');
    let string = |p: MatchPattern| xm::StringMatcher {
        ignore_case: ic,
        match_pattern: Some(p),
    };
    match &m.path {
        PathMatch::Prefix(p) if p == "/" => {
            if ic {
                return None;
            }
        }
        PathMatch::Prefix(p) => {
            let rest = p.strip_prefix('/')?;
            match rest.split_once('/') {
                None if plain(rest) => out.push(input_pred(
                    "service",
                    string(MatchPattern::Prefix(rest.into())),
                )),
                Some((s, "")) if plain(s) => {
                    out.push(input_pred("service", string(MatchPattern::Exact(s.into()))))
                }
                Some((s, mp)) if plain(s) && plain(mp) => {
                    out.push(input_pred("service", string(MatchPattern::Exact(s.into()))));
                    out.push(input_pred(
                        "method",
                        string(MatchPattern::Prefix(mp.into())),
                    ));
                }
                _ => return None,
            }
        }
        PathMatch::Exact(p) => {
            let (s, method) = p.strip_prefix('/')?.split_once('/')?;
            if !plain(s) || !plain(method) {
                return None;
            }
            out.push(input_pred("service", string(MatchPattern::Exact(s.into()))));
            out.push(input_pred(
                "method",
                string(MatchPattern::Exact(method.into())),
            ));
        }
        _ => return None,
    }
    for h in &m.headers {
        if h.invert || h.treat_missing_header_as_empty {
            return None;
        }
        let pattern = match &h.value {
            StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
            StringMatch::Prefix(v) if !v.is_empty() => MatchPattern::Prefix(v.clone()),
            StringMatch::Suffix(v) if !v.is_empty() => MatchPattern::Suffix(v.clone()),
            StringMatch::Contains(v) if !v.is_empty() => MatchPattern::Contains(v.clone()),
            StringMatch::Regex(r) => MatchPattern::SafeRegex(xm::RegexMatcher {
                regex: r.clone(),
                ..Default::default()
            }),
            _ => return None,
        };
        out.push(SinglePredicate {
            input: Some(property_input(&h.name)),
            matcher: Some(single_predicate::Matcher::ValueMatch(xm::StringMatcher {
                ignore_case: h.ignore_case,
                match_pattern: Some(pattern),
            })),
        });
    }
    Some(out)
}

fn input_pred(kind: &str, m: xm::StringMatcher) -> SinglePredicate {
    let typed_config = match kind {
        "service" => pack(&gm::ServiceMatchInput {}),
        _ => pack(&gm::MethodMatchInput {}),
    };
    SinglePredicate {
        input: Some(TypedExtensionConfig {
            name: format!("envoy.matching.generic_proxy.input.{kind}"),
            typed_config: Some(typed_config),
        }),
        matcher: Some(single_predicate::Matcher::ValueMatch(m)),
    }
}

/// A string condition of Envoy's: pattern, ignore_case.
type Cond = (MatchPattern, bool);

/// Converts a route's predicate at `at`.
pub(super) fn predicate_from(p: &Predicate, at: &str) -> Result<RouteMatch, ConvertError> {
    let singles: Vec<(String, &SinglePredicate)> =
        match &p.match_type {
            Some(MatchType::SinglePredicate(s)) => vec![(format!("{at}.single_predicate"), s)],
            Some(MatchType::AndMatcher(list)) => {
                let mut out = Vec::new();
                for (i, p) in list.predicate.iter().enumerate() {
                    let pat = format!("{at}.and_matcher.predicate[{i}]");
                    match &p.match_type {
                        Some(MatchType::SinglePredicate(s)) => {
                            out.push((format!("{pat}.single_predicate"), s))
                        }
                        _ => return Err(ConvertError::unsupported(
                            pat,
                            "nested or/and/not matchers (an and_matcher of single predicates only)",
                        )),
                    }
                }
                out
            }
            Some(MatchType::OrMatcher(_)) => {
                return Err(ConvertError::unsupported(
                    format!("{at}.or_matcher"),
                    "or_matcher (use one route per alternative)",
                ))
            }
            Some(MatchType::NotMatcher(_)) => {
                return Err(ConvertError::unsupported(
                    format!("{at}.not_matcher"),
                    "not_matcher",
                ))
            }
            None => return Err(ConvertError::new(format!("{at}.match_type"), "missing")),
        };
    let mut service: Option<Cond> = None;
    let mut method: Option<Cond> = None;
    let mut headers = Vec::new();
    let count = singles.len();
    for (at, s) in singles {
        let input = s
            .input
            .as_ref()
            .and_then(|i| i.typed_config.as_ref())
            .ok_or_else(|| ConvertError::new(format!("{at}.input.typed_config"), "missing"))?;
        let iat = format!("{at}.input.typed_config");
        if let Some((url, _)) = typed_struct_from(input, &iat)? {
            if url != RPC_REQUEST_INPUT {
                return Err(ConvertError::unsupported(iat, format!("input {url:?}")));
            }
            let Some(single_predicate::Matcher::CustomMatch(c)) = &s.matcher else {
                return Err(ConvertError::new(
                    format!("{at}.custom_match"),
                    "missing (our request input takes our route match)",
                ));
            };
            if count != 1 {
                return Err(ConvertError::unsupported(
                    at,
                    "our route match beside other predicates",
                ));
            }
            return custom_predicate_from(c, &at);
        }
        let cond = match &s.matcher {
            Some(single_predicate::Matcher::ValueMatch(m)) => string_from(m, &at)?,
            Some(single_predicate::Matcher::CustomMatch(_)) => {
                return Err(ConvertError::unsupported(
                    format!("{at}.custom_match"),
                    "custom matchers on Envoy's inputs",
                ))
            }
            None => return Err(ConvertError::new(format!("{at}.value_match"), "missing")),
        };
        let slot = if input.type_url == gm::ServiceMatchInput::type_url()
            || input.type_url == gm::HostMatchInput::type_url()
            || input.type_url == gm::PathMatchInput::type_url()
        {
            &mut service
        } else if input.type_url == gm::MethodMatchInput::type_url() {
            &mut method
        } else if input.type_url == gm::PropertyMatchInput::type_url() {
            let prop: gm::PropertyMatchInput = unpack(input, &iat)?;
            headers.push(header_from(prop.property_name, cond, &at)?);
            continue;
        } else {
            return Err(ConvertError::unsupported(
                iat,
                format!(
                    "input {} (service, host, path, method or property)",
                    input.type_url
                ),
            ));
        };
        if slot.replace(cond).is_some() {
            return Err(ConvertError::unsupported(
                at,
                "a second condition on the same input (combine them in one regex)",
            ));
        }
    }
    let (path, case_sensitive) = path_from(service, method, at)?;
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers,
        query_parameters: Vec::new(),
    })
}

fn string_from(m: &xm::StringMatcher, at: &str) -> Result<Cond, ConvertError> {
    match &m.match_pattern {
        Some(MatchPattern::Custom(_)) => Err(ConvertError::unsupported(
            format!("{at}.value_match.custom"),
            "custom string matchers",
        )),
        Some(p) => Ok((p.clone(), m.ignore_case)),
        None => Err(ConvertError::new(
            format!("{at}.value_match.match_pattern"),
            "missing",
        )),
    }
}

fn header_from(
    name: String,
    (p, ignore_case): Cond,
    at: &str,
) -> Result<HeaderMatcher, ConvertError> {
    if name.is_empty() {
        return Err(ConvertError::new(
            format!("{at}.input.typed_config.property_name"),
            "missing",
        ));
    }
    let value = match p {
        MatchPattern::Exact(v) => StringMatch::Exact(v),
        MatchPattern::Prefix(v) => StringMatch::Prefix(v),
        MatchPattern::Suffix(v) => StringMatch::Suffix(v),
        MatchPattern::Contains(v) => StringMatch::Contains(v),
        MatchPattern::SafeRegex(r) => StringMatch::Regex(r.regex),
        MatchPattern::Custom(_) => unreachable_custom(at)?,
    };
    Ok(HeaderMatcher {
        name,
        value,
        ignore_case,
        invert: false,
        treat_missing_header_as_empty: false,
    })
}

fn unreachable_custom<T>(at: &str) -> Result<T, ConvertError> {
    Err(ConvertError::unsupported(
        format!("{at}.value_match.custom"),
        "custom string matchers",
    ))
}

/// The path condition for a service and a method condition (`/{service}/{method}`), and
/// whether it is case sensitive.
fn path_from(
    service: Option<Cond>,
    method: Option<Cond>,
    at: &str,
) -> Result<(PathMatch, bool), ConvertError> {
    let ic = match (&service, &method) {
        (Some((_, a)), Some((_, b))) if a != b => {
            return Err(ConvertError::unsupported(
                at,
                "ignore_case on only one of the service and method matchers",
            ))
        }
        (Some((_, a)), _) | (None, Some((_, a))) => *a,
        (None, None) => false,
    };
    use MatchPattern as P;
    let path = match (service.map(|c| c.0), method.map(|c| c.0)) {
        (None, None) => PathMatch::Prefix("/".into()),
        (Some(P::Exact(s)), None) => PathMatch::Prefix(format!("/{s}/")),
        (Some(P::Prefix(s)), None) => PathMatch::Prefix(format!("/{s}")),
        (Some(P::Exact(s)), Some(P::Exact(m))) => PathMatch::Exact(format!("/{s}/{m}")),
        (Some(P::Exact(s)), Some(P::Prefix(m))) => PathMatch::Prefix(format!("/{s}/{m}")),
        (s, m) => PathMatch::Regex(format!(
            "/{}/{}",
            fragment(s.as_ref(), at)?,
            fragment(m.as_ref(), at)?
        )),
    };
    Ok((path, !ic))
}

/// A regex for one path segment matching what `p` matches.
fn fragment(p: Option<&MatchPattern>, at: &str) -> Result<String, ConvertError> {
    let seg = "[^/]*";
    Ok(match p {
        None => seg.to_owned(),
        Some(MatchPattern::Exact(v)) => regex::escape(v),
        Some(MatchPattern::Prefix(v)) => format!("{}{seg}", regex::escape(v)),
        Some(MatchPattern::Suffix(v)) => format!("{seg}{}", regex::escape(v)),
        Some(MatchPattern::Contains(v)) => format!("{seg}{}{seg}", regex::escape(v)),
        Some(MatchPattern::SafeRegex(r)) => format!("(?:{})", r.regex),
        Some(MatchPattern::Custom(_)) => unreachable_custom(at)?,
    })
}
