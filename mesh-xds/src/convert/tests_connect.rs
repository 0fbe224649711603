#![allow(clippy::unwrap_used)]
//! CONNECT routes: `connect_matcher` and a route's `upgrade_configs` ↔ mesh-core.

use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_core::*;

use super::*;

fn tunnels() -> RouteConfiguration {
    mesh_core::yaml::from_str(
        r#"
name: tunnels
virtual_hosts:
  - name: db
    domains: ["db.internal:5432"]
    routes:
      - name: tunnel
        match: { connect_matcher: {}, headers: [ { name: x-tenant, present: true } ] }
        route: { cluster: db, upgrade_configs: [ { upgrade_type: CONNECT, connect_config: {} } ] }
"#,
    )
    .unwrap()
}

#[test]
fn connect_routes_round_trip_and_are_what_envoy_expects() {
    let rc = tunnels();
    rc.validate().unwrap();
    assert_eq!(decode::<RouteConfiguration>(&encode(&rc)).unwrap(), rc);
    let proto = rc.to_proto();
    let route = &proto.virtual_hosts[0].routes[0];
    assert!(matches!(
        route.r#match.as_ref().unwrap().path_specifier,
        Some(rpb::route_match::PathSpecifier::ConnectMatcher(_))
    ));
    let Some(rpb::route::Action::Route(a)) = &route.action else {
        panic!("not a route action");
    };
    assert_eq!(a.upgrade_configs.len(), 1);
    assert_eq!(a.upgrade_configs[0].upgrade_type, "CONNECT");
    assert!(a.upgrade_configs[0].connect_config.is_some());
    assert_eq!(
        a.upgrade_configs[0].enabled, None,
        "Envoy's default: enabled"
    );
}

/// The route's action in `rc`'s proto, to spoil.
fn action(rc: &mut rpb::RouteConfiguration) -> &mut rpb::RouteAction {
    match &mut rc.virtual_hosts[0].routes[0].action {
        Some(rpb::route::Action::Route(a)) => a,
        _ => panic!("not a route action"),
    }
}

#[test]
fn unsupported_connect_shapes_name_the_field() {
    let at = "route_configuration[tunnels].virtual_hosts[0].routes[0]";
    // Proxying CONNECT upstream as a CONNECT (no connect_config) is not supported.
    let mut rc = tunnels().to_proto();
    action(&mut rc).upgrade_configs[0].connect_config = None;
    let err = from_proto_checked::<RouteConfiguration>(rc).unwrap_err();
    assert_eq!(
        err.path,
        format!("{at}.route.upgrade_configs[0].connect_config"),
        "{err}"
    );
    // A connect_matcher with no CONNECT upgrade, or with it disabled.
    for spoil in [
        |a: &mut rpb::RouteAction| a.upgrade_configs.clear(),
        |a: &mut rpb::RouteAction| a.upgrade_configs[0].enabled = Some(BoolValue { value: false }),
    ] {
        let mut rc = tunnels().to_proto();
        spoil(action(&mut rc));
        let err = from_proto_checked::<RouteConfiguration>(rc).unwrap_err();
        assert_eq!(err.path, format!("{at}.route.upgrade_configs"), "{err}");
        assert!(err.reason.contains("connect_config"), "{err}");
    }
    // Per-route settings of other upgrades, PROXY protocol, POST-based CONNECT.
    let mut rc = tunnels().to_proto();
    action(&mut rc).upgrade_configs[0].upgrade_type = "websocket".into();
    let err = from_proto_checked::<RouteConfiguration>(rc).unwrap_err();
    assert_eq!(
        err.path,
        format!("{at}.route.upgrade_configs[0].upgrade_type"),
        "{err}"
    );
    let mut rc = tunnels().to_proto();
    let cc = action(&mut rc).upgrade_configs[0]
        .connect_config
        .as_mut()
        .unwrap();
    cc.allow_post = true;
    let err = from_proto_checked::<RouteConfiguration>(rc).unwrap_err();
    assert_eq!(
        err.path,
        format!("{at}.route.upgrade_configs[0].connect_config.allow_post"),
        "{err}"
    );
}
