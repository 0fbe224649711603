#![allow(clippy::unwrap_used)]
//! RPC listeners (Envoy's generic_proxy form): round trips, the Envoy-native shape, NACKs.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::matcher::v3 as gm;
use envoy_types::pb::envoy::extensions::filters::network::generic_proxy::v3 as gp;
use envoy_types::pb::xds::r#type::matcher::v3 as xm;
use mesh_core::*;
use prost::Name;

use super::*;

fn listener(yaml: &str) -> Listener {
    let l: Listener = mesh_core::yaml::from_str(yaml).unwrap();
    l.validate().unwrap();
    l
}

fn round_trip(l: &Listener) -> Listener {
    decode::<Listener>(&encode(l)).unwrap()
}

const ROUTES: &str = r#"
    route_config:
      name: rpc
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: { path: /com.example.Hello/sayHi }
              route: { cluster: hello-hi, timeout: 2s }
            - match:
                prefix: /com.example.Hello/
                headers: [{ name: version, exact: "2.0" }, { name: group, prefix: g, ignore_case: true }]
              route: { weighted_clusters: [{ name: hello-v2, weight: 9 }, { name: hello-v2b, weight: 1 }] }
            - match: { prefix: /com.example.Hello/get }
              route: { cluster: hello-get }
            - match: { prefix: /com.example. }
              route: { cluster: example }
            - name: rest
              match: { prefix: / }
              route: { cluster: rest }
"#;

fn bolt() -> Listener {
    listener(&format!(
        "name: rpc_out\naddress: 127.0.0.1:12200\ndirection: outbound\nxprotocol:\n    protocol: bolt\n    max_frame_bytes: 1024\n    request_timeout: 750ms\n    max_upstream_connections: 3\n    max_requests_per_connection: 77\n{ROUTES}"
    ))
}

fn dubbo_beside_http() -> Listener {
    listener(&format!(
        "name: mixed\naddress: 127.0.0.1:20880\ndirection: inbound\nroute_config_name: inbound\nxprotocol:\n    protocol: dubbo\n{ROUTES}"
    ))
}

fn generic_proxy(l: &lpb::Listener, chain: usize) -> gp::GenericProxy {
    let f = &l.filter_chains[chain].filters[0];
    assert_eq!(f.name, GENERIC_PROXY_FILTER);
    let Some(lpb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no config")
    };
    unpack(any, "x").unwrap()
}

fn set_generic_proxy(l: &mut lpb::Listener, chain: usize, g: &gp::GenericProxy) {
    l.filter_chains[chain].filters[0].config_type =
        Some(lpb::filter::ConfigType::TypedConfig(pack(g)));
}

#[test]
fn rpc_listeners_round_trip() {
    for l in [bolt(), dubbo_beside_http()] {
        assert_eq!(round_trip(&l), l);
    }
}

#[test]
fn rpc_beside_http_is_a_chain_matched_by_its_protocol() {
    let p = dubbo_beside_http().to_proto();
    assert_eq!(p.filter_chains.len(), 2);
    assert_eq!(p.filter_chains[0].filters[0].name, HCM_FILTER);
    let m = p.filter_chains[1].filter_chain_match.as_ref().unwrap();
    assert_eq!(m.application_protocols, ["dubbo"]);
    assert_eq!(p.listener_filters[0].name, HTTP_INSPECTOR);
}

#[test]
fn expressible_routes_use_envoys_own_inputs_only() {
    let g = generic_proxy(&dubbo_beside_http().to_proto(), 1);
    let codec = g.codec_config.as_ref().unwrap();
    assert_eq!(codec.name, DUBBO_CODEC);
    let Some(gp::generic_proxy::RouteSpecifier::RouteConfig(rc)) = &g.route_specifier else {
        panic!("no inline routes")
    };
    let m = rc.virtual_hosts[0].routes.as_ref().unwrap();
    // The catch-all is the matcher's on_no_match.
    assert!(m.on_no_match.is_some());
    let text = format!("{m:?}");
    assert!(!text.contains("mesh.xprotocol"), "{text}");
    for input in [
        gm::ServiceMatchInput::type_url(),
        gm::MethodMatchInput::type_url(),
        gm::PropertyMatchInput::type_url(),
    ] {
        assert!(text.contains(&input), "{input} missing from {text}");
    }
}

#[test]
fn shapes_envoy_cannot_say_travel_as_ours_and_round_trip() {
    let l = listener(
        r#"
name: rpc_out
address: 127.0.0.1:12200
direction: outbound
xprotocol:
  protocol: bolt
  route_config:
    name: rpc
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: { regex: "/com\\.example\\..*/say.*" }
            route: { cluster: a }
          - match:
              prefix: /x/
              headers: [{ name: zone, present: true }, { name: tier, exact: gold, invert: true }]
            route: { cluster: b, timeout: 1s, request_headers_to_add: [{ name: x-via, value: mesh }] }
          - match: { prefix: /y/ }
            route: { cluster_header: x-cluster }
"#,
    );
    assert_eq!(round_trip(&l), l);
    let g = generic_proxy(&l.to_proto(), 0);
    assert!(format!("{g:?}").contains("mesh.matching.rpc.route_match"));
}

/// The route table an Envoy user writes: a service prefix and a method suffix become one
/// path regex that matches what Envoy's inputs would.
#[test]
fn envoy_combinations_become_a_path_regex() {
    let mut p = bolt().to_proto();
    let mut g = generic_proxy(&p, 0);
    let Some(gp::generic_proxy::RouteSpecifier::RouteConfig(rc)) = &mut g.route_specifier else {
        panic!()
    };
    let Some(xm::matcher::MatcherType::MatcherList(list)) =
        &mut rc.virtual_hosts[0].routes.as_mut().unwrap().matcher_type
    else {
        panic!()
    };
    // Route 0 is service exact + method exact; make it service prefix + method suffix.
    let Some(xm::matcher::matcher_list::predicate::MatchType::AndMatcher(and)) =
        &mut list.matchers[0].predicate.as_mut().unwrap().match_type
    else {
        panic!()
    };
    use xm::matcher::matcher_list::predicate::{single_predicate::Matcher, MatchType};
    use xm::string_matcher::MatchPattern;
    for (p, pattern) in and.predicate.iter_mut().zip([
        MatchPattern::Prefix("com.ex".into()),
        MatchPattern::Suffix("Hi".into()),
    ]) {
        let Some(MatchType::SinglePredicate(s)) = &mut p.match_type else {
            panic!()
        };
        s.matcher = Some(Matcher::ValueMatch(xm::StringMatcher {
            ignore_case: false,
            match_pattern: Some(pattern),
        }));
    }
    set_generic_proxy(&mut p, 0, &g);
    let l = Listener::from_proto(p).unwrap();
    let x = l.xprotocol.unwrap();
    let r = &x.route_config.virtual_hosts[0].routes[0];
    assert_eq!(
        r.matcher.path,
        PathMatch::Regex(r"/com\.ex[^/]*/[^/]*Hi".into())
    );
}

fn nack(edit: impl FnOnce(&mut gp::GenericProxy)) -> ConvertError {
    let mut p = bolt().to_proto();
    let mut g = generic_proxy(&p, 0);
    edit(&mut g);
    set_generic_proxy(&mut p, 0, &g);
    Listener::from_proto(p).unwrap_err()
}

fn first_matcher(g: &mut gp::GenericProxy) -> &mut xm::matcher::matcher_list::FieldMatcher {
    let Some(gp::generic_proxy::RouteSpecifier::RouteConfig(rc)) = &mut g.route_specifier else {
        panic!()
    };
    let Some(xm::matcher::MatcherType::MatcherList(list)) =
        &mut rc.virtual_hosts[0].routes.as_mut().unwrap().matcher_type
    else {
        panic!()
    };
    &mut list.matchers[0]
}

#[test]
fn unsupported_generic_proxy_fields_are_nacked_by_path() {
    let at = "filter_chains[0].filters[0].typed_config";
    let e = nack(|g| g.tracing = Some(Default::default()));
    assert_eq!(e.path, format!("{at}.tracing"));
    let e = nack(|g| g.access_log.push(Default::default()));
    assert_eq!(e.path, format!("{at}.access_log"));
    let e = nack(|g| {
        let f = g.filters[0].clone();
        g.filters.insert(0, f);
    });
    assert_eq!(e.path, format!("{at}.filters[0]"));
    let e = nack(|g| {
        g.codec_config = Some(core::TypedExtensionConfig {
            name: "http1".into(),
            typed_config: Some(pack(&envoy_types::pb::envoy::extensions::filters::network::generic_proxy::codecs::http1::v3::Http1CodecConfig::default())),
        })
    });
    assert_eq!(e.path, format!("{at}.codec_config.typed_config"));
    let e = nack(|g| {
        g.route_specifier = Some(gp::generic_proxy::RouteSpecifier::GenericRds(
            Default::default(),
        ))
    });
    assert_eq!(e.path, format!("{at}.generic_rds"));
    let e = nack(|g| {
        let Some(gp::generic_proxy::RouteSpecifier::RouteConfig(rc)) = &mut g.route_specifier
        else {
            panic!()
        };
        rc.virtual_hosts[0].hosts = vec!["com.example.Hello".into()];
    });
    assert_eq!(e.path, format!("{at}.route_config.virtual_hosts[0].hosts"));
    let e = nack(|g| {
        let m = first_matcher(g);
        let p = m.predicate.take().unwrap();
        m.predicate = Some(xm::matcher::matcher_list::Predicate {
            match_type: Some(xm::matcher::matcher_list::predicate::MatchType::OrMatcher(
                xm::matcher::matcher_list::predicate::PredicateList {
                    predicate: vec![p.clone(), p],
                },
            )),
        });
    });
    let routes = format!("{at}.route_config.virtual_hosts[0].routes");
    assert_eq!(
        e.path,
        format!("{routes}.matcher_list.matchers[0].predicate.or_matcher")
    );
    let e = nack(|g| first_matcher(g).on_match.as_mut().unwrap().keep_matching = true);
    assert_eq!(
        e.path,
        format!("{routes}.matcher_list.matchers[0].on_match.keep_matching")
    );
    let e = nack(|g| {
        let Some(xm::matcher::on_match::OnMatch::Action(a)) =
            &mut first_matcher(g).on_match.as_mut().unwrap().on_match
        else {
            panic!()
        };
        let mut action: envoy_types::pb::envoy::extensions::filters::network::generic_proxy::action::v3::RouteAction =
            unpack(a.typed_config.as_ref().unwrap(), "x").unwrap();
        action.retry_policy = Some(Default::default());
        a.typed_config = Some(pack(&action));
    });
    assert_eq!(
        e.path,
        format!("{routes}.matcher_list.matchers[0].on_match.action.typed_config.retry_policy")
    );
}

#[test]
fn rpc_chain_shapes_we_cannot_serve_are_nacked_by_path() {
    // An RPC chain matched on a protocol nothing detects.
    let mut p = dubbo_beside_http().to_proto();
    p.filter_chains[1]
        .filter_chain_match
        .as_mut()
        .unwrap()
        .application_protocols = vec!["thrift".into()];
    let e = Listener::from_proto(p).unwrap_err();
    assert_eq!(e.path, "filter_chains[1].filter_chain_match");
    // Two RPC chains.
    let mut p = bolt().to_proto();
    let chain = p.filter_chains[0].clone();
    p.filter_chains.push(chain);
    let e = Listener::from_proto(p).unwrap_err();
    assert_eq!(e.path, "filter_chains[1]");
    // A TypedStruct codec that is not ours.
    let e = nack(|g| {
        g.codec_config.as_mut().unwrap().typed_config = Some(super::custom::typed_struct_to(
            "type.googleapis.com/acme.ThriftCodec",
            Default::default(),
        ))
    });
    assert_eq!(
        e.path,
        "filter_chains[0].filters[0].typed_config.codec_config.typed_config.type_url"
    );
}
