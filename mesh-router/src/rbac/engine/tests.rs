use std::sync::Arc;

use http::Request;
use mesh_core::extensions::PeerIdentity;
use mesh_core::{HeaderMatcher, Permission, Principal, Rbac, RbacAction, RbacPolicy, StringMatch};

use super::*;

fn rbac(action: RbacAction, policies: &[(&str, Vec<Principal>, Vec<Permission>)]) -> RbacEngine {
    RbacEngine::compile(&Rbac {
        action,
        policies: policies
            .iter()
            .map(|(n, who, what)| {
                (
                    n.to_string(),
                    RbacPolicy {
                        principals: who.clone(),
                        permissions: what.clone(),
                    },
                )
            })
            .collect(),
    })
    .unwrap()
}

fn req(method: &str, uri: &str) -> Request<()> {
    Request::builder().method(method).uri(uri).body(()).unwrap()
}

fn with_peer(mut r: Request<()>, id: &str) -> Request<()> {
    r.extensions_mut().insert(PeerIdentity(Arc::from(id)));
    r
}

fn header(name: &str, value: StringMatch) -> Permission {
    Permission::Header(HeaderMatcher {
        name: name.into(),
        value,
        ignore_case: false,
        invert: false,
        treat_missing_header_as_empty: false,
    })
}

fn path(p: &str) -> Permission {
    Permission::UrlPath(StringMatch::Prefix(p.into()))
}

const ORDERS: &str = "spiffe://cluster.local/ns/default/sa/orders";

#[test]
fn allow_without_policies_denies_everything_and_deny_without_policies_allows() {
    let allow = rbac(RbacAction::Allow, &[]);
    assert_eq!(
        allow.evaluate(&req("GET", "/")),
        Verdict::Denied(NO_POLICY_MATCHED)
    );
    let deny = rbac(RbacAction::Deny, &[]);
    assert_eq!(deny.evaluate(&req("GET", "/")), Verdict::Allowed);
}

#[test]
fn allow_needs_a_principal_and_a_permission_of_one_policy() {
    let e = rbac(
        RbacAction::Allow,
        &[(
            "read-api",
            vec![Principal::Any(true)],
            vec![
                path("/api/"),
                header(":method", StringMatch::Exact("HEAD".into())),
            ],
        )],
    );
    assert_eq!(e.evaluate(&req("POST", "/api/x")), Verdict::Allowed);
    assert_eq!(e.evaluate(&req("HEAD", "/other")), Verdict::Allowed);
    assert_eq!(
        e.evaluate(&req("GET", "/other")),
        Verdict::Denied(NO_POLICY_MATCHED)
    );
}

#[test]
fn deny_names_the_policy_that_matched() {
    let e = rbac(
        RbacAction::Deny,
        &[
            ("no-admin", vec![Principal::Any(true)], vec![path("/admin")]),
            (
                "no-delete",
                vec![Principal::Any(true)],
                vec![header(":method", StringMatch::Exact("DELETE".into()))],
            ),
        ],
    );
    assert_eq!(
        e.evaluate(&req("GET", "/admin/x")),
        Verdict::Denied("no-admin")
    );
    assert_eq!(
        e.evaluate(&req("DELETE", "/x")),
        Verdict::Denied("no-delete")
    );
    assert_eq!(e.evaluate(&req("GET", "/x")), Verdict::Allowed);
}

#[test]
fn url_path_ignores_the_query_and_path_header_sees_it() {
    let e = rbac(
        RbacAction::Allow,
        &[(
            "p",
            vec![Principal::Any(true)],
            vec![Permission::UrlPath(StringMatch::Exact("/a".into()))],
        )],
    );
    assert_eq!(e.evaluate(&req("GET", "/a?x=1")), Verdict::Allowed);
    assert!(matches!(e.evaluate(&req("GET", "/ab")), Verdict::Denied(_)));
    let e = rbac(
        RbacAction::Allow,
        &[(
            "p",
            vec![Principal::Any(true)],
            vec![header(":path", StringMatch::Exact("/a?x=1".into()))],
        )],
    );
    assert_eq!(e.evaluate(&req("GET", "/a?x=1")), Verdict::Allowed);
    assert!(matches!(e.evaluate(&req("GET", "/a")), Verdict::Denied(_)));
}

#[test]
fn regex_is_whole_value_and_header_rules_follow_routing() {
    let e = rbac(
        RbacAction::Allow,
        &[(
            "p",
            vec![Principal::Any(true)],
            vec![
                Permission::UrlPath(StringMatch::Regex("/v[0-9]+/items".into())),
                header("x-team", StringMatch::Exact("a,b".into())),
                header(":authority", StringMatch::Suffix(".internal".into())),
            ],
        )],
    );
    assert_eq!(e.evaluate(&req("GET", "/v2/items")), Verdict::Allowed);
    assert!(matches!(
        e.evaluate(&req("GET", "/v2/items/x")),
        Verdict::Denied(_)
    ));
    // Repeated values are joined with `,`, as in route matching.
    let mut r = req("GET", "/nope");
    r.headers_mut().append("x-team", "a".parse().unwrap());
    r.headers_mut().append("x-team", "b".parse().unwrap());
    assert_eq!(e.evaluate(&r), Verdict::Allowed);
    // `:authority` from the Host header of an origin-form request.
    let mut r = req("GET", "/nope");
    r.headers_mut()
        .insert("host", "svc.internal".parse().unwrap());
    assert_eq!(e.evaluate(&r), Verdict::Allowed);
    assert!(matches!(
        e.evaluate(&req("GET", "http://svc.external/nope")),
        Verdict::Denied(_)
    ));
}

#[test]
fn and_or_not_rules_compose() {
    let get = header(":method", StringMatch::Exact("GET".into()));
    let e = rbac(
        RbacAction::Allow,
        &[(
            "p",
            vec![Principal::Any(true)],
            vec![Permission::AndRules(vec![
                Permission::OrRules(vec![path("/a"), path("/b")]),
                Permission::NotRule(Box::new(get)),
            ])],
        )],
    );
    assert_eq!(e.evaluate(&req("POST", "/a")), Verdict::Allowed);
    assert_eq!(e.evaluate(&req("PUT", "/b")), Verdict::Allowed);
    assert!(matches!(e.evaluate(&req("GET", "/a")), Verdict::Denied(_)));
    assert!(matches!(e.evaluate(&req("POST", "/c")), Verdict::Denied(_)));
}

#[test]
fn authenticated_matches_the_peer_identity_and_no_identity_never_matches() {
    let e = rbac(
        RbacAction::Allow,
        &[(
            "orders",
            vec![Principal::Authenticated(StringMatch::Exact(ORDERS.into()))],
            vec![Permission::Any(true)],
        )],
    );
    assert_eq!(
        e.evaluate(&with_peer(req("GET", "/"), ORDERS)),
        Verdict::Allowed
    );
    assert!(matches!(
        e.evaluate(&with_peer(
            req("GET", "/"),
            "spiffe://cluster.local/ns/default/sa/x"
        )),
        Verdict::Denied(_)
    ));
    assert!(matches!(e.evaluate(&req("GET", "/")), Verdict::Denied(_)));
    // "Any authenticated caller" (present) still needs an identity.
    let any_id = rbac(
        RbacAction::Allow,
        &[(
            "mtls",
            vec![Principal::Authenticated(StringMatch::Present(true))],
            vec![Permission::Any(true)],
        )],
    );
    assert!(matches!(
        any_id.evaluate(&req("GET", "/")),
        Verdict::Denied(_)
    ));
    assert_eq!(
        any_id.evaluate(&with_peer(req("GET", "/"), ORDERS)),
        Verdict::Allowed
    );
}

#[test]
fn or_ids_and_not_id_compose() {
    let e = rbac(
        RbacAction::Deny,
        &[(
            "outsiders",
            vec![Principal::NotId(Box::new(Principal::OrIds(vec![
                Principal::Authenticated(StringMatch::Exact(ORDERS.into())),
                Principal::Authenticated(StringMatch::Prefix(
                    "spiffe://cluster.local/ns/ops/".into(),
                )),
            ])))],
            vec![Permission::Any(true)],
        )],
    );
    assert_eq!(
        e.evaluate(&with_peer(req("GET", "/"), ORDERS)),
        Verdict::Allowed
    );
    assert_eq!(
        e.evaluate(&with_peer(
            req("GET", "/"),
            "spiffe://cluster.local/ns/ops/sa/a"
        )),
        Verdict::Allowed
    );
    // No identity: `authenticated` fails, so `not_id` of it holds and the caller is denied.
    assert_eq!(e.evaluate(&req("GET", "/")), Verdict::Denied("outsiders"));
}

#[test]
fn bad_policies_are_refused_with_the_field_path() {
    let bad = Rbac {
        action: RbacAction::Allow,
        policies: [(
            "p".to_string(),
            RbacPolicy {
                principals: vec![Principal::Any(true)],
                permissions: vec![
                    Permission::Any(true),
                    Permission::OrRules(vec![Permission::UrlPath(StringMatch::Regex("([".into()))]),
                ],
            },
        )]
        .into(),
    };
    let err = RbacEngine::compile(&bad).unwrap_err().to_string();
    assert!(
        err.contains("policies[p].permissions[1].or_rules[0].url_path"),
        "{err}"
    );
    let pseudo = Rbac {
        action: RbacAction::Allow,
        policies: [(
            "p".to_string(),
            RbacPolicy {
                principals: vec![Principal::Any(true)],
                permissions: vec![header(":scheme", StringMatch::Exact("https".into()))],
            },
        )]
        .into(),
    };
    let err = RbacEngine::compile(&pseudo).unwrap_err().to_string();
    assert!(err.contains(":scheme"), "{err}");
}
