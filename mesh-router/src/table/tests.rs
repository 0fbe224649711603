//! Matching, precedence, cluster choice, hashing, compile errors, and the index-vs-scan proptest.

use super::*;
use mesh_core::{PathMatch, RouteAction, RouteMatch, VirtualHost};
use proptest::prelude::*;

fn table(yaml: &str) -> RouteTable {
    let config: RouteConfiguration = serde_yaml::from_str(yaml).unwrap();
    RouteTable::compile(&config, &LayerRegistry::default()).unwrap()
}

fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// The route name (or `404`) the table picks for a request.
fn route_of(t: &RouteTable, uri: &str, headers: &[(&str, &str)]) -> String {
    match t.decide(&req(uri, headers)) {
        Ok(d) => d.matched().route.name.clone(),
        Err(e) => {
            assert!(matches!(e, MeshError::NoRoute { .. }), "{e}");
            "404".into()
        }
    }
}

const MATCHERS: &str = r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - { name: exact, match: { path: "/exact" }, route: { cluster: c } }
      - { name: ci-exact, match: { path: "/Ci/Exact", case_sensitive: false }, route: { cluster: c } }
      - { name: regex, match: { regex: "/items/[0-9]+" }, route: { cluster: c } }
      - { name: grpc-method, match: { grpc: { service: pkg.Greeter, method: Hello } }, route: { cluster: c } }
      - { name: grpc-service, match: { grpc: { service: pkg.Greeter } }, route: { cluster: c } }
      - name: h-exact
        match: { prefix: "/h", headers: [ { name: x-env, exact: canary } ] }
        route: { cluster: c }
      - name: h-prefix
        match: { prefix: "/h", headers: [ { name: x-env, prefix: "blue", ignore_case: true } ] }
        route: { cluster: c }
      - name: h-regex
        match: { prefix: "/h", headers: [ { name: x-ver, regex: "v[0-9]+" } ] }
        route: { cluster: c }
      - name: h-present
        match: { prefix: "/h", headers: [ { name: x-debug, present: true } ] }
        route: { cluster: c }
      - name: h-inverted
        match: { prefix: "/h", headers: [ { name: x-user, exact: bot, invert: true } ] }
        route: { cluster: c }
      - name: q-exact
        match: { prefix: "/q", query_parameters: [ { name: mode, exact: "a%20b" } ] }
        route: { cluster: c }
      - name: q-present
        match: { prefix: "/q", query_parameters: [ { name: debug, present: true } ] }
        route: { cluster: c }
      - { name: ci-prefix, match: { prefix: "/CASE", case_sensitive: false }, route: { cluster: c } }
      - { name: prefix, match: { prefix: "/p/" }, route: { cluster: c } }
"#;

#[test]
fn every_matcher_kind() {
    let t = table(MATCHERS);
    let grpc = [("content-type", "application/grpc")];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(&str, Headers, &str)] = &[
        ("/exact", &[], "exact"),
        ("/exact?x=1", &[], "exact"),
        ("/exact/more", &[], "404"),
        ("/EXACT", &[], "404"),
        ("/ci/exact", &[], "ci-exact"),
        ("/CI/EXACT", &[], "ci-exact"),
        ("/items/42", &[], "regex"),
        ("/items/42x", &[], "404"),
        ("/pkg.Greeter/Hello", &grpc, "grpc-method"),
        ("/pkg.Greeter/Bye", &grpc, "grpc-service"),
        ("/pkg.Greeter/Hello", &[], "404"),
        ("/h", &[("x-env", "canary")], "h-exact"),
        ("/h", &[("x-env", "BLUE-2")], "h-prefix"),
        ("/h", &[("x-ver", "v12")], "h-regex"),
        ("/h", &[("x-ver", "v12b")], "404"),
        ("/h", &[("x-debug", "")], "h-present"),
        ("/h", &[("x-user", "bot")], "404"),
        ("/h", &[("x-user", "human")], "h-inverted"),
        ("/h", &[], "404"),
        ("/q?mode=a%20b", &[], "q-exact"),
        ("/q?mode=a+b&x", &[], "404"),
        ("/q?mode=a%20b&x", &[], "q-exact"),
        ("/q?mode=ab&debug", &[], "q-present"),
        ("/q?mode=ab", &[], "404"),
        ("/case/x", &[], "ci-prefix"),
        ("/CaSe", &[], "ci-prefix"),
        ("/p/anything", &[], "prefix"),
        ("/", &[], "404"),
    ];
    for (uri, headers, want) in cases {
        assert_eq!(&route_of(&t, uri, headers), want, "{uri} {headers:?}");
    }
}

#[test]
fn first_match_wins_across_indexes() {
    let t = table(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - { name: regex-first, match: { regex: "/a/.*" }, route: { cluster: c } }
      - { name: long-prefix, match: { prefix: "/a/b" }, route: { cluster: c } }
      - { name: exact-later, match: { path: "/a/b" }, route: { cluster: c } }
      - { name: ci, match: { prefix: "/B", case_sensitive: false }, route: { cluster: c } }
      - { name: short-prefix, match: { prefix: "/b" }, route: { cluster: c } }
      - { name: catch-all, match: { prefix: "/" }, route: { cluster: c } }
"#,
    );
    assert_eq!(route_of(&t, "/a/b", &[]), "regex-first");
    assert_eq!(route_of(&t, "/a", &[]), "catch-all");
    assert_eq!(
        route_of(&t, "/b/x", &[]),
        "ci",
        "an earlier case-insensitive route wins"
    );
    assert_eq!(route_of(&t, "/zzz", &[]), "catch-all");
}

#[test]
fn virtual_host_by_domain_specificity() {
    let t = table(
        r#"
name: t
virtual_hosts:
  - { name: any, domains: ["*"], routes: [ { name: any, route: { cluster: c } } ] }
  - { name: wild, domains: ["*.example.com"], routes: [ { name: wild, route: { cluster: c } } ] }
  - { name: exact, domains: ["api.example.com"], routes: [ { name: exact, route: { cluster: c } } ] }
"#,
    );
    assert_eq!(route_of(&t, "http://api.example.com/", &[]), "exact");
    assert_eq!(
        route_of(&t, "http://api.example.com:8080/", &[]),
        "any",
        "the port is part of the authority, as in Envoy"
    );
    assert_eq!(route_of(&t, "/", &[("host", "API.example.com")]), "exact");
    assert_eq!(route_of(&t, "/", &[("host", "www.example.com")]), "wild");
    assert_eq!(route_of(&t, "/", &[("host", "other.org")]), "any");
    assert_eq!(route_of(&t, "/", &[]), "any");
}

#[test]
fn weighted_split_stays_within_statistical_bounds() {
    let t = table(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - route: { weighted_clusters: [ { name: stable, weight: 90 }, { name: off, weight: 0 }, { name: canary, weight: 10 } ] }
"#,
    );
    let (mut canary, n) = (0, 10_000);
    for _ in 0..n {
        let d = t.decide(&req("/", &[])).unwrap();
        assert_ne!(&*d.cluster.0, "off", "zero weight is never picked");
        canary += u32::from(&*d.cluster.0 == "canary");
    }
    // Binomial(10000, 0.1): mean 1000, sd 30; ±150 is five sigma.
    assert!((850..=1150).contains(&canary), "{canary}");
}

#[test]
fn cluster_header_chooses_and_missing_header_is_cluster_not_found() {
    let t = table(
        r#"
name: t
virtual_hosts:
  - { name: vh, domains: ["*"], routes: [ { route: { cluster_header: x-cluster } } ] }
"#,
    );
    let d = t.decide(&req("/", &[("x-cluster", "blue")])).unwrap();
    assert_eq!(&*d.cluster.0, "blue");
    for headers in [&[][..], &[("x-cluster", "")]] {
        assert!(
            matches!(
                t.decide(&req("/", headers)),
                Err(MeshError::ClusterNotFound { .. })
            ),
            "503 as in Envoy: {headers:?}"
        );
    }
}

#[test]
fn hash_policy_first_that_yields() {
    let t = table(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - route: { cluster: c, hash_policy: [ !header x-user, !cookie session, !query_parameter id, !source_ip ] }
"#,
    );
    let h = |uri: &str, headers: &[(&str, &str)]| t.decide(&req(uri, headers)).unwrap().hash;
    let a = h("/", &[("x-user", "alice")]);
    assert!(a.is_some());
    assert_eq!(
        a,
        h("/?id=9", &[("x-user", "alice")]),
        "same key, same hash"
    );
    assert_ne!(a, h("/", &[("x-user", "bob")]));
    assert_eq!(
        h("/", &[("cookie", "a=1; session=alice")]),
        a,
        "the value is what is hashed"
    );
    assert_eq!(h("/?id=alice", &[]), a);
    assert_eq!(h("/", &[]), None, "no client address extension");
    let mut r = req("/", &[]);
    r.extensions_mut()
        .insert(ClientAddr("10.0.0.1:5000".parse().unwrap()));
    assert!(t.decide(&r).unwrap().hash.is_some());
}

#[test]
fn bad_tables_name_the_route_and_the_reason() {
    let compile = |yaml: &str| {
        let config: RouteConfiguration = serde_yaml::from_str(yaml).unwrap();
        RouteTable::compile(&config, &LayerRegistry::default())
            .unwrap_err()
            .to_string()
    };
    let err = compile(
        r#"
name: main
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - { name: ok, route: { cluster: c } }
      - { name: broken, match: { regex: "([" }, route: { cluster: c } }
"#,
    );
    assert!(err.contains("\"main\""), "{err}");
    assert!(err.contains("route \"broken\""), "{err}");
    assert!(
        err.contains("virtual_hosts[0].routes[1].match.regex"),
        "{err}"
    );
    let err = compile(
        r#"
name: main
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - { route: { cluster: c }, filters: [ !custom { name: nope } ] }
"#,
    );
    assert!(err.contains("route #0"), "{err}");
    assert!(err.contains("unknown filter \"nope\""), "{err}");
    let err = compile(
        r#"
name: main
virtual_hosts:
  - { name: a, domains: ["x"] }
  - { name: b, domains: ["x"] }
"#,
    );
    assert!(err.contains("served by two virtual hosts"), "{err}");
}

// ---- the indexes agree with a plain scan on random tables ----

/// A small alphabet so that random prefixes, paths and regexes overlap often.
fn path_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof!["a", "b", "A", "/", "ab"], 0..5)
        .prop_map(|p| format!("/{}", p.concat()))
}

fn route_strategy() -> impl Strategy<Value = Route> {
    let path = prop_oneof![
        path_strategy().prop_map(PathMatch::Prefix),
        path_strategy().prop_map(PathMatch::Exact),
        path_strategy().prop_map(|p| PathMatch::Regex(format!("{p}.*"))),
        Just(PathMatch::Prefix(String::new())),
    ];
    let header = proptest::option::of(prop_oneof![
        Just(mesh_core::StringMatch::Exact("1".into())),
        Just(mesh_core::StringMatch::Present(false)),
    ]);
    (path, any::<bool>(), header, any::<bool>()).prop_map(
        |(path, case_sensitive, header, invert)| Route {
            matcher: RouteMatch {
                path,
                case_sensitive,
                headers: header
                    .map(|value| mesh_core::HeaderMatcher {
                        name: "x-h".into(),
                        value,
                        ignore_case: false,
                        invert,
                        treat_missing_header_as_empty: false,
                    })
                    .into_iter()
                    .collect(),
                query_parameters: Vec::new(),
            },
            action: RouteAction::to_cluster("c"),
            ..Route::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn indexes_agree_with_a_linear_scan(
        routes in proptest::collection::vec(route_strategy(), 0..30),
        probes in proptest::collection::vec((path_strategy(), any::<bool>()), 1..30),
    ) {
        let config = RouteConfiguration {
            name: "p".into(),
            virtual_hosts: vec![VirtualHost { name: "vh".into(), domains: vec!["*".into()], routes }],
            ignore_port_in_host_matching: false,
        };
        let t = RouteTable::compile(&config, &LayerRegistry::default()).unwrap();
        for (path, with_header) in probes {
            let headers: &[(&str, &str)] = if with_header { &[("x-h", "1")] } else { &[] };
            let r = req(&path, headers);
            let view = RequestView::of(&r);
            prop_assert_eq!(t.find("h", &view), t.find_linear("h", &view), "path {}", path);
        }
    }
}

#[test]
fn shape_says_what_the_data_path_may_skip() {
    let t = table(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - { name: plain, match: { path: "/plain" }, route: { cluster: c, timeout: 0s } }
      - { name: timed, match: { path: "/timed" }, route: { cluster: c } }
      - name: edits
        match: { path: "/edits" }
        route:
          cluster: c
          timeout: 0s
          prefix_rewrite: /x
          response_headers_to_add: [{ name: x-a, value: b }]
"#,
    );
    let shape = |path: &str| t.decide(&req(path, &[])).unwrap().route.shape;
    let s = shape("/plain");
    assert!(s.direct && !s.edits_request && !s.edits_response);
    let s = shape("/timed");
    assert!(!s.direct, "the default timeout wraps the call");
    assert_eq!(s.timer, Some(std::time::Duration::from_secs(15)));
    assert_eq!(shape("/plain").timer, None);
    let s = shape("/edits");
    assert!(s.direct && s.edits_request && s.edits_response);
}

#[test]
fn connect_requests_see_connect_routes_only() {
    let t = table(
        r#"
name: t
virtual_hosts:
  - name: tunnels
    domains: ["db.internal:5432"]
    routes:
      - { name: catch-all, match: { prefix: "" }, route: { cluster: c } }
      - name: tunnel
        match: { connect_matcher: {}, headers: [ { name: x-tenant, present: true } ] }
        route: { cluster: db, upgrade_configs: [ { upgrade_type: CONNECT, connect_config: {} } ] }
  - name: web
    domains: ["*"]
    routes:
      - { name: web, match: { prefix: "/" }, route: { cluster: c } }
"#,
    );
    let connect = |authority: &str, headers: &[(&str, &str)]| {
        let mut b = Request::connect(authority);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = b.body(()).unwrap();
        match t.decide(&r) {
            Ok(d) => d.matched().route.name.clone(),
            Err(e) => {
                assert!(matches!(e, MeshError::NoRoute { .. }), "{e}");
                "404".into()
            }
        }
    };
    let tenant = [("x-tenant", "a")];
    assert_eq!(connect("db.internal:5432", &tenant), "tunnel");
    assert_eq!(
        connect("db.internal:5432", &[]),
        "404",
        "other conditions hold too"
    );
    assert_eq!(
        connect("other:443", &tenant),
        "404",
        "a prefix route never matches CONNECT"
    );
    // And a connect_matcher never matches anything else.
    let host = [("host", "db.internal:5432"), ("x-tenant", "a")];
    assert_eq!(route_of(&t, "/x", &host), "catch-all");
    let r = Request::connect("db.internal:5432")
        .header("x-tenant", "a")
        .body(())
        .unwrap();
    let view = RequestView::of(&r);
    assert_eq!(
        t.find("db.internal:5432", &view),
        t.find_linear("db.internal:5432", &view)
    );
}

#[test]
fn a_connect_route_must_terminate() {
    let config: RouteConfiguration = serde_yaml::from_str(
        r#"
name: t
virtual_hosts:
  - name: vh
    domains: ["*"]
    routes:
      - { name: tunnel, match: { connect_matcher: {} }, route: { cluster: db } }
"#,
    )
    .unwrap();
    let err = RouteTable::compile(&config, &LayerRegistry::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("routes[0].route.upgrade_configs") && msg.contains("connect_config"),
        "{msg}"
    );
}
