//! Envoy's RBAC HTTP filter (`envoy.filters.http.rbac`, typed config
//! `envoy.extensions.filters.http.rbac.v3.RBAC`) ↔ [`mesh_core::Rbac`] (`Listener::rbac`).
//!
//! The subset the mesh enforces: `rules` with action ALLOW or DENY; principals `any`,
//! `authenticated` (URI SAN), `or_ids`, `not_id`; permissions `any`, `url_path`, `header`,
//! `or_rules`, `and_rules`, `not_rule`. Everything else (shadow rules, matcher trees, `LOG`,
//! audit logging, conditions/CEL, other principal or permission kinds, `ignore_case` on path and
//! principal matchers) is refused with its field path, so the client NACKs it.

use envoy_types::pb::envoy::config::rbac::v3 as cfg;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filter;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use mesh_core::{Permission, Principal, Rbac, RbacAction, RbacPolicy, StringMatch};

use super::matchers::{header_from, header_to, regex, string_match_from, string_match_to};
use super::ConvertError;

/// HTTP filter name of the RBAC filter.
pub const RBAC_FILTER: &str = "envoy.filters.http.rbac";

/// The policy an RBAC filter config enforces: `None` when it has no `rules` (Envoy then lets
/// every request through). `path` is the config's field path, for errors.
pub(crate) fn rbac_from(p: &filter::Rbac, path: &str) -> Result<Option<Rbac>, ConvertError> {
    let refuse = |f: &str, what: &str| Err(ConvertError::unsupported(format!("{path}.{f}"), what));
    if p.shadow_rules.is_some() {
        return refuse("shadow_rules", "shadow rules");
    }
    if p.shadow_matcher.is_some() {
        return refuse("shadow_matcher", "shadow matchers");
    }
    if p.matcher.is_some() {
        return refuse("matcher", "matcher-based policies (use rules)");
    }
    let Some(rules) = &p.rules else {
        return Ok(None);
    };
    rules_from(rules)
        .map(Some)
        .map_err(|e| e.within(format!("{path}.rules")))
}

fn rules_from(r: &cfg::Rbac) -> Result<Rbac, ConvertError> {
    let action = match cfg::rbac::Action::try_from(r.action) {
        Ok(cfg::rbac::Action::Allow) => RbacAction::Allow,
        Ok(cfg::rbac::Action::Deny) => RbacAction::Deny,
        _ => {
            return Err(ConvertError::unsupported(
                "action",
                "actions other than ALLOW and DENY",
            ))
        }
    };
    if r.audit_logging_options.is_some() {
        return Err(ConvertError::unsupported(
            "audit_logging_options",
            "RBAC audit logging",
        ));
    }
    let mut policies = std::collections::BTreeMap::new();
    for (name, p) in &r.policies {
        let at = format!("policies[{name}]");
        policies.insert(name.clone(), policy_from(p).map_err(|e| e.within(at))?);
    }
    Ok(Rbac { action, policies })
}

fn policy_from(p: &cfg::Policy) -> Result<RbacPolicy, ConvertError> {
    if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
        return Err(ConvertError::unsupported("condition", "CEL conditions"));
    }
    let principals = p
        .principals
        .iter()
        .enumerate()
        .map(|(i, x)| principal_from(x).map_err(|e| e.within(format!("principals[{i}]"))))
        .collect::<Result<_, _>>()?;
    let permissions = p
        .permissions
        .iter()
        .enumerate()
        .map(|(i, x)| permission_from(x).map_err(|e| e.within(format!("permissions[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(RbacPolicy {
        principals,
        permissions,
    })
}

/// A string matcher of a path or principal, where our model has no `ignore_case`.
fn exact_case(s: &matcher::StringMatcher, field: &str) -> Result<StringMatch, ConvertError> {
    if s.ignore_case {
        return Err(ConvertError::unsupported(
            format!("{field}.ignore_case"),
            "case-insensitive path and principal matching",
        ));
    }
    string_match_from(s).map_err(|e| e.within(field))
}

fn principal_from(p: &cfg::Principal) -> Result<Principal, ConvertError> {
    use cfg::principal::Identifier as I;
    let each = |ids: &[cfg::Principal], field: &str| {
        ids.iter()
            .enumerate()
            .map(|(i, x)| principal_from(x).map_err(|e| e.within(format!("{field}.ids[{i}]"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.identifier {
        Some(I::Any(true)) => Principal::Any(true),
        Some(I::Any(false)) => return Err(ConvertError::new("any", "must be true")),
        Some(I::Authenticated(a)) => Principal::Authenticated(match &a.principal_name {
            // No name: any caller with a verified certificate.
            None => StringMatch::Present(true),
            Some(s) => exact_case(s, "authenticated.principal_name")?,
        }),
        Some(I::OrIds(set)) => Principal::OrIds(each(&set.ids, "or_ids")?),
        Some(I::NotId(p)) => {
            Principal::NotId(Box::new(principal_from(p).map_err(|e| e.within("not_id"))?))
        }
        Some(I::AndIds(_)) => return Err(ConvertError::unsupported("and_ids", "and_ids")),
        Some(other) => {
            let kind = format!("{other:?}");
            let kind = kind.split('(').next().unwrap_or("").to_string();
            return Err(ConvertError::unsupported(
                "identifier",
                format!("principal kind {kind} (supported: any, authenticated, or_ids, not_id)"),
            ));
        }
        None => return Err(ConvertError::new("identifier", "missing")),
    })
}

fn permission_from(p: &cfg::Permission) -> Result<Permission, ConvertError> {
    use cfg::permission::Rule as R;
    let each = |rules: &[cfg::Permission], field: &str| {
        rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission_from(x).map_err(|e| e.within(format!("{field}.rules[{i}]"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(R::Any(true)) => Permission::Any(true),
        Some(R::Any(false)) => return Err(ConvertError::new("any", "must be true")),
        Some(R::Header(h)) => Permission::Header(header_from(h).map_err(|e| e.within("header"))?),
        Some(R::UrlPath(m)) => match &m.rule {
            Some(matcher::path_matcher::Rule::Path(s)) => {
                Permission::UrlPath(exact_case(s, "url_path.path")?)
            }
            None => return Err(ConvertError::new("url_path.path", "missing")),
        },
        Some(R::OrRules(set)) => Permission::OrRules(each(&set.rules, "or_rules")?),
        Some(R::AndRules(set)) => Permission::AndRules(each(&set.rules, "and_rules")?),
        Some(R::NotRule(p)) => Permission::NotRule(Box::new(
            permission_from(p).map_err(|e| e.within("not_rule"))?,
        )),
        Some(other) => {
            let kind = format!("{other:?}");
            let kind = kind.split('(').next().unwrap_or("").to_string();
            return Err(ConvertError::unsupported(
                "rule",
                format!(
                    "permission kind {kind} (supported: any, url_path, header, or_rules, \
                     and_rules, not_rule)"
                ),
            ));
        }
        None => return Err(ConvertError::new("rule", "missing")),
    })
}

/// The RBAC filter config enforcing `r`.
pub(crate) fn rbac_to(r: &Rbac) -> filter::Rbac {
    filter::Rbac {
        rules: Some(cfg::Rbac {
            action: match r.action {
                RbacAction::Allow => cfg::rbac::Action::Allow,
                RbacAction::Deny => cfg::rbac::Action::Deny,
            } as i32,
            policies: r
                .policies
                .iter()
                .map(|(n, p)| {
                    (
                        n.clone(),
                        cfg::Policy {
                            principals: p.principals.iter().map(principal_to).collect(),
                            permissions: p.permissions.iter().map(permission_to).collect(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A string condition as a `StringMatcher`; `present` (no such form) as a regex that matches
/// anything (`true`) or nothing (`false`).
fn matcher_to(s: &StringMatch) -> matcher::StringMatcher {
    string_match_to(s, false).unwrap_or_else(|| {
        let re = if matches!(s, StringMatch::Present(true)) {
            "[\\s\\S]*"
        } else {
            "[^\\s\\S]"
        };
        matcher::StringMatcher {
            ignore_case: false,
            match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(regex(re))),
        }
    })
}

fn principal_to(p: &Principal) -> cfg::Principal {
    use cfg::principal::Identifier as I;
    let identifier = match p {
        Principal::Any(b) => I::Any(*b),
        Principal::Authenticated(s) => I::Authenticated(cfg::principal::Authenticated {
            principal_name: match s {
                StringMatch::Present(true) => None,
                other => Some(matcher_to(other)),
            },
        }),
        Principal::OrIds(ids) => I::OrIds(cfg::principal::Set {
            ids: ids.iter().map(principal_to).collect(),
        }),
        Principal::NotId(p) => I::NotId(Box::new(principal_to(p))),
    };
    cfg::Principal {
        identifier: Some(identifier),
    }
}

fn permission_to(p: &Permission) -> cfg::Permission {
    use cfg::permission::Rule as R;
    let set = |rules: &[Permission]| cfg::permission::Set {
        rules: rules.iter().map(permission_to).collect(),
    };
    let rule = match p {
        Permission::Any(b) => R::Any(*b),
        Permission::UrlPath(s) => R::UrlPath(matcher::PathMatcher {
            rule: Some(matcher::path_matcher::Rule::Path(matcher_to(s))),
        }),
        Permission::Header(h) => R::Header(header_to(h)),
        Permission::OrRules(r) => R::OrRules(set(r)),
        Permission::AndRules(r) => R::AndRules(set(r)),
        Permission::NotRule(p) => R::NotRule(Box::new(permission_to(p))),
    };
    cfg::Permission { rule: Some(rule) }
}

#[cfg(test)]
mod tests;
