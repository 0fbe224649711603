//! An RBAC config our sidecar cannot enforce (here: shadow rules) is NACKed over xDS with the
//! field path in `error_detail`, and the listener keeps serving its previous policy.
#![allow(clippy::unwrap_used)]

mod scripted_ads;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_core::{Cluster, ClusterLoadAssignment, Listener};
use mesh_xds::convert::{pack, unpack, XdsResource, RBAC_FILTER};
use scripted_ads::Setup;

fn listener(port: u16) -> Listener {
    mesh_core::yaml::from_str(&format!(
        r#"
name: inbound
address: 127.0.0.1:{port}
direction: inbound
rbac:
  policies:
    ok-only:
      principals: [{{ any: true }}]
      permissions: [{{ url_path: {{ exact: /ok }} }}]
route_config:
  name: inbound
  virtual_hosts: [ {{ name: v, domains: ['*'], routes: [ {{ route: {{ cluster: app }} }} ] }} ]
"#
    ))
    .unwrap()
}

/// The listener's proto with shadow rules added to its RBAC filter.
fn with_shadow_rules(l: &Listener) -> lpb::Listener {
    let mut p = l.to_proto();
    let Some(lpb::filter::ConfigType::TypedConfig(any)) =
        &mut p.filter_chains[0].filters[0].config_type
    else {
        panic!("no typed_config")
    };
    let mut m: hcm::HttpConnectionManager = unpack(any, "").unwrap();
    let f = m
        .http_filters
        .iter_mut()
        .find(|f| f.name == RBAC_FILTER)
        .unwrap();
    let Some(hcm::http_filter::ConfigType::TypedConfig(fany)) = &mut f.config_type else {
        panic!("no typed_config")
    };
    let mut r: rbac::Rbac = unpack(fany, "").unwrap();
    r.shadow_rules = r.rules.clone();
    *fany = pack(&r);
    *any = pack(&m);
    p
}

async fn status(addr: SocketAddr, path: &'static str) -> u16 {
    tokio::task::spawn_blocking(move || {
        mesh_testkit::http_request(addr, "GET", path, &[("Host", "x")], b"")
            .map(|r| r.status)
            .unwrap_or(0)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_rbac_is_nacked_with_its_path_and_the_old_policy_keeps_serving() {
    let app = mesh_testkit::HttpStub::start(200, "app").unwrap();
    let mut s = Setup::start(None).await;
    let port = mesh_testkit::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = Cluster::new("app");
    c.load_assignment = Some(ClusterLoadAssignment::from_addrs("app", [app.addr()]));
    s.ads.send(&[c]);
    let l = listener(port);
    s.ads.send(std::slice::from_ref(&l));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(addr, "/ok").await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "listener never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(addr, "/no").await, 403);

    s.ads
        .send_raw(Listener::TYPE_URL, vec![pack(&with_shadow_rules(&l))]);
    let detail = s.ads.nacked(Listener::TYPE_URL).await;
    assert!(
        detail.contains("http_filters[1].typed_config.shadow_rules"),
        "{detail}"
    );
    assert_eq!(status(addr, "/ok").await, 200);
    assert_eq!(
        status(addr, "/no").await,
        403,
        "the old policy still applies"
    );
    s.stop().await;
}
