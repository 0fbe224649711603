//! mesh.yaml's per-service `authz:`: who may call a service, on which paths and methods,
//! translated to the [`Rbac`] of its nodes' inbound listener (our sidecar's RBAC layer, Envoy's
//! RBAC HTTP filter).

use serde::{Deserialize, Serialize};

use super::spec::SecuritySpec;
use mesh_core::{HeaderMatcher, Permission, Principal, Rbac, RbacAction, RbacPolicy, StringMatch};

/// The SPIFFE identity of a service's workloads: `spiffe://<trust domain>/ns/<ns>/sa/<service>`,
/// in the mesh's `security:` trust domain and namespace, or Istio's `cluster.local`/`default`
/// without one (then no certificate carries it: a rule naming callers matches no one, while
/// rules on paths and methods alone still apply).
pub(crate) fn service_identity(service: &str, security: Option<&SecuritySpec>) -> String {
    match security {
        Some(s) => s.identity(service).to_string(),
        None => format!("spiffe://cluster.local/ns/default/sa/{service}"),
    }
}

/// A service's authorization: requests matching some `allow` rule are let in, the rest get 403
/// (gRPC `PERMISSION_DENIED`). `allow: []` refuses everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzSpec {
    /// The rules; a request needs to match one.
    pub allow: Vec<AllowRule>,
}

/// One rule: a request matches when each condition given matches (a missing one matches all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Callers: service names of this mesh (their SPIFFE identity) or SPIFFE IDs
    /// (`spiffe://...`). Missing: any caller, with or without a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<String>>,
    /// Paths (without the query): exact, or a prefix when ending in `*` (`/api/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// HTTP methods (`GET`, `POST`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

impl AuthzSpec {
    /// Checks the rules; `known` says whether a name is a service of the mesh. Errors name the
    /// field within `authz`.
    pub(crate) fn check(&self, known: impl Fn(&str) -> bool) -> Result<(), (String, String)> {
        for (i, r) in self.allow.iter().enumerate() {
            let at = |f: &str, j: usize| format!("authz.allow[{i}].{f}[{j}]");
            for (j, who) in r.from.iter().flatten().enumerate() {
                let is_id = who.starts_with("spiffe://");
                if !is_id && (who.contains(':') || !known(who)) {
                    return Err((
                        at("from", j),
                        format!("{who:?} is neither a service of the mesh nor a spiffe:// ID"),
                    ));
                }
            }
            for (j, p) in r.paths.iter().flatten().enumerate() {
                if !p.starts_with('/') && p != "*" {
                    return Err((at("paths", j), format!("{p:?} does not start with /")));
                }
                if p.trim_end_matches('*').contains('*') {
                    return Err((at("paths", j), format!("{p:?}: `*` only at the end")));
                }
            }
            for (j, m) in r.methods.iter().flatten().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err((at("methods", j), format!("{m:?} is not an HTTP method")));
                }
            }
            for (field, list) in [
                ("from", &r.from),
                ("paths", &r.paths),
                ("methods", &r.methods),
            ] {
                if list.as_ref().is_some_and(Vec::is_empty) {
                    return Err((
                        format!("authz.allow[{i}].{field}"),
                        "empty (leave it out to match all)".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The listener policy: ALLOW, one policy `allow[i]` per rule.
    pub fn to_rbac(&self, security: Option<&SecuritySpec>) -> Rbac {
        let policies = self
            .allow
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("allow[{i}]"), r.to_policy(security)))
            .collect();
        Rbac {
            action: RbacAction::Allow,
            policies,
        }
    }
}

impl AllowRule {
    fn to_policy(&self, security: Option<&SecuritySpec>) -> RbacPolicy {
        let principals = match &self.from {
            None => vec![Principal::Any(true)],
            Some(from) => from
                .iter()
                .map(|who| {
                    let id = if who.starts_with("spiffe://") {
                        who.clone()
                    } else {
                        service_identity(who, security)
                    };
                    Principal::Authenticated(StringMatch::Exact(id))
                })
                .collect(),
        };
        let paths = self.paths.as_ref().map(|ps| {
            Permission::OrRules(
                ps.iter()
                    .map(|p| {
                        Permission::UrlPath(match p.strip_suffix('*') {
                            Some(prefix) => StringMatch::Prefix(prefix.to_owned()),
                            None => StringMatch::Exact(p.clone()),
                        })
                    })
                    .collect(),
            )
        });
        let methods = self.methods.as_ref().map(|ms| {
            Permission::OrRules(
                ms.iter()
                    .map(|m| {
                        Permission::Header(HeaderMatcher {
                            name: ":method".into(),
                            value: StringMatch::Exact(m.to_ascii_uppercase()),
                            ignore_case: false,
                            invert: false,
                            treat_missing_header_as_empty: false,
                        })
                    })
                    .collect(),
            )
        });
        let permission = match (paths, methods) {
            (None, None) => Permission::Any(true),
            (Some(p), None) | (None, Some(p)) => p,
            (Some(p), Some(m)) => Permission::AndRules(vec![p, m]),
        };
        RbacPolicy {
            principals,
            permissions: vec![permission],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_rules_become_an_allow_policy_per_rule() {
        let a: AuthzSpec = mesh_core::yaml::from_str(
            r#"
allow:
  - from: [orders, "spiffe://other.domain/ns/x/sa/y"]
    paths: ["/api/*", /healthz]
    methods: [GET, head]
  - paths: [/public/*]
"#,
        )
        .unwrap();
        a.check(|s| s == "orders").unwrap();
        let rbac = a.to_rbac(None);
        assert_eq!(rbac.action, RbacAction::Allow);
        let first = &rbac.policies["allow[0]"];
        assert_eq!(
            first.principals,
            vec![
                Principal::Authenticated(StringMatch::Exact(
                    "spiffe://cluster.local/ns/default/sa/orders".into()
                )),
                Principal::Authenticated(StringMatch::Exact(
                    "spiffe://other.domain/ns/x/sa/y".into()
                )),
            ]
        );
        let Permission::AndRules(both) = &first.permissions[0] else {
            panic!("{first:?}")
        };
        assert_eq!(
            both[0],
            Permission::OrRules(vec![
                Permission::UrlPath(StringMatch::Prefix("/api/".into())),
                Permission::UrlPath(StringMatch::Exact("/healthz".into())),
            ])
        );
        let Permission::OrRules(methods) = &both[1] else {
            panic!("{both:?}")
        };
        assert!(
            matches!(&methods[1], Permission::Header(h) if h.value == StringMatch::Exact("HEAD".into()))
        );
        assert_eq!(
            rbac.policies["allow[1]"].principals,
            vec![Principal::Any(true)]
        );
        mesh_core::Validate::validate(&rbac).unwrap();
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        let bad = |yaml: &str| {
            let a: AuthzSpec = mesh_core::yaml::from_str(yaml).unwrap();
            a.check(|s| s == "orders").unwrap_err().0
        };
        assert_eq!(bad("allow: [{ from: [nobody] }]"), "authz.allow[0].from[0]");
        assert_eq!(bad("allow: [{ paths: [api] }]"), "authz.allow[0].paths[0]");
        assert_eq!(
            bad("allow: [{ paths: ['/a*b'] }]"),
            "authz.allow[0].paths[0]"
        );
        assert_eq!(
            bad("allow: [{ methods: ['GE T'] }]"),
            "authz.allow[0].methods[0]"
        );
        assert_eq!(
            bad("allow: [{}, { methods: [] }]"),
            "authz.allow[1].methods"
        );
    }
}
