//! Smoke test: a real Envoy with a static config answers what the config says.

use mesh_testkit::{envoy_or_skip, http_get, EnvoyProcess, HttpStub};

fn config(upstream_port: u16) -> String {
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/direct"}}
                direct_response: {{status: 418, body: {{inline_string: "direct from envoy"}}}}
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 5s}}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}
"#
    )
}

#[test]
fn envoy_serves_direct_response_and_routes_to_upstream() -> anyhow::Result<()> {
    let _bin = envoy_or_skip!(Ok(()));
    let upstream = HttpStub::start(200, "hello from upstream")?;
    let envoy = EnvoyProcess::start(&config(upstream.addr().port()))?;
    let listener = envoy.listener_addr("main")?;

    let (status, body) = http_get(listener, "/direct")?;
    assert_eq!((status, body.as_str()), (418, "direct from envoy"));

    let (status, body) = http_get(listener, "/anything")?;
    assert_eq!((status, body.as_str()), (200, "hello from upstream"));
    assert_eq!(upstream.requests(), 1);

    let clusters = envoy.admin_get("/clusters")?;
    assert!(clusters.contains("upstream::"), "{clusters}");
    Ok(())
}
