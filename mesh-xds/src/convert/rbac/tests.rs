#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_core::{Listener, Validate};

use super::*;
use crate::convert::{pack, unpack, XdsResource};

/// An inbound listener with every principal and permission kind the mesh models.
fn listener() -> Listener {
    mesh_core::yaml::from_str(
        r#"
name: inbound
address: 127.0.0.1:1
direction: inbound
route_config_name: inbound
rbac:
  action: ALLOW
  policies:
    read-api:
      principals:
        - or_ids:
            - authenticated: { exact: "spiffe://cluster.local/ns/default/sa/orders" }
            - authenticated: { prefix: "spiffe://cluster.local/ns/ops/" }
        - not_id: { authenticated: { present: true } }
      permissions:
        - and_rules:
            - url_path: { prefix: /api/ }
            - or_rules:
                - header: { name: ":method", exact: GET }
                - header: { name: ":method", exact: HEAD }
        - not_rule: { url_path: { regex: "/admin/.*" } }
        - header: { name: x-team, suffix: ops, ignore_case: true, invert: true }
    anyone-health:
      principals: [{ any: true }]
      permissions: [{ url_path: { exact: /healthz } }]
"#,
    )
    .unwrap()
}

/// The HCM of a listener proto, to edit in place.
fn with_hcm(p: &mut lpb::Listener, edit: impl FnOnce(&mut hcm::HttpConnectionManager)) {
    let Some(lpb::filter::ConfigType::TypedConfig(any)) =
        &mut p.filter_chains[0].filters[0].config_type
    else {
        panic!("no typed_config")
    };
    let mut m: hcm::HttpConnectionManager = unpack(any, "").unwrap();
    edit(&mut m);
    *any = pack(&m);
}

/// Edits the RBAC filter's config of a listener proto.
fn with_rbac(p: &mut lpb::Listener, edit: impl FnOnce(&mut filter::Rbac)) {
    with_hcm(p, |m| {
        let f = m
            .http_filters
            .iter_mut()
            .find(|f| f.name == RBAC_FILTER)
            .expect("rbac filter");
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
            panic!("no typed_config")
        };
        let mut r: filter::Rbac = unpack(any, "").unwrap();
        edit(&mut r);
        *any = pack(&r);
    });
}

const AT: &str = "filter_chains[0].filters[0].typed_config.http_filters[1].typed_config";

#[test]
fn listener_rbac_round_trips_through_the_rbac_filter() {
    let l = listener();
    l.validate().unwrap();
    let p = l.to_proto();
    let back = Listener::from_proto(p.clone()).unwrap();
    assert_eq!(back.rbac, l.rbac);
    // The filter sits after the rate limit and before the router, as in our stack.
    let mut names = Vec::new();
    let mut p = p;
    with_hcm(&mut p, |m| {
        names = m.http_filters.iter().map(|f| f.name.clone()).collect();
    });
    assert_eq!(names[0], crate::convert::LOCAL_RATELIMIT_FILTER);
    assert_eq!(names[1], RBAC_FILTER);
    assert_eq!(names.last().unwrap(), crate::convert::ROUTER_FILTER);
    // No policy: no filter at all.
    let mut open = l.clone();
    open.rbac = None;
    let mut p = open.to_proto();
    with_hcm(&mut p, |m| {
        assert!(m.http_filters.iter().all(|f| f.name != RBAC_FILTER));
    });
    assert_eq!(Listener::from_proto(p).unwrap().rbac, None);
}

#[test]
fn a_filter_without_rules_enforces_nothing() {
    let mut p = listener().to_proto();
    with_rbac(&mut p, |r| r.rules = None);
    assert_eq!(Listener::from_proto(p).unwrap().rbac, None);
}

#[test]
fn unsupported_rbac_is_refused_with_the_field_path() {
    let nack = |edit: &dyn Fn(&mut filter::Rbac)| {
        let mut p = listener().to_proto();
        with_rbac(&mut p, edit);
        Listener::from_proto(p).unwrap_err()
    };
    let e = nack(&|r| r.shadow_rules = r.rules.clone());
    assert_eq!(e.path, format!("{AT}.shadow_rules"));
    let e = nack(&|r| {
        r.matcher = Some(Default::default());
    });
    assert_eq!(e.path, format!("{AT}.matcher"));
    let e = nack(&|r| {
        r.rules.as_mut().unwrap().action = cfg::rbac::Action::Log as i32;
    });
    assert_eq!(e.path, format!("{AT}.rules.action"));
    let e = nack(&|r| {
        let p = r
            .rules
            .as_mut()
            .unwrap()
            .policies
            .get_mut("read-api")
            .unwrap();
        p.principals[1] = cfg::Principal {
            identifier: Some(cfg::principal::Identifier::RemoteIp(core::CidrRange {
                address_prefix: "10.0.0.0".into(),
                prefix_len: None,
            })),
        };
    });
    assert_eq!(
        e.path,
        format!("{AT}.rules.policies[read-api].principals[1].identifier")
    );
    assert!(e.to_string().contains("RemoteIp"), "{e}");
    let e = nack(&|r| {
        let p = r
            .rules
            .as_mut()
            .unwrap()
            .policies
            .get_mut("read-api")
            .unwrap();
        let cfg::permission::Rule::AndRules(set) = p.permissions[0].rule.as_mut().unwrap() else {
            panic!("and_rules")
        };
        set.rules[1] = cfg::Permission {
            rule: Some(cfg::permission::Rule::DestinationPort(80)),
        };
    });
    assert_eq!(
        e.path,
        format!("{AT}.rules.policies[read-api].permissions[0].and_rules.rules[1].rule")
    );
    let e = nack(&|r| {
        let p = r
            .rules
            .as_mut()
            .unwrap()
            .policies
            .get_mut("anyone-health")
            .unwrap();
        p.condition = Some(Default::default());
    });
    assert_eq!(
        e.path,
        format!("{AT}.rules.policies[anyone-health].condition")
    );
}

#[test]
fn a_per_route_rbac_override_is_refused() {
    use envoy_types::pb::envoy::config::route::v3 as rpb;
    let rc: mesh_core::RouteConfiguration = mesh_core::yaml::from_str(
        "name: r\nvirtual_hosts: [ { name: v, domains: ['*'], routes: [ { route: { cluster: c } } ] } ]\n",
    )
    .unwrap();
    let mut p: rpb::RouteConfiguration = rc.to_proto();
    p.virtual_hosts[0].routes[0].typed_per_filter_config.insert(
        RBAC_FILTER.into(),
        pack(&filter::RbacPerRoute { rbac: None }),
    );
    let e = mesh_core::RouteConfiguration::from_proto(p).unwrap_err();
    assert!(
        e.path
            .contains(&format!("typed_per_filter_config[{RBAC_FILTER}]")),
        "{e}"
    );
}
