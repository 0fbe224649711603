//! The model as a user writes it (YAML) and the validation every producer and sink runs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_core::*;

const GOOD: &str = r#"
listeners:
  - name: outbound
    address: 127.0.0.1:8082
    direction: outbound
    route_config_name: outbound
    rate_limit:
      token_bucket: { max_tokens: 100, tokens_per_fill: 10, fill_interval: 1s }
  - name: inbound
    address: 127.0.0.1:8083
    direction: inbound
    route_config:
      name: inbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - route: { cluster: local_app }
route_configs:
  - name: outbound
    virtual_hosts:
      - name: reviews
        domains: ["reviews", "reviews.default.svc", "*.reviews.example.com"]
        routes:
          - name: reviews-v2-canary
            match:
              prefix: /api
              headers:
                - { name: x-canary, exact: "1" }
                - { name: x-debug, present: true, invert: true }
              query_parameters:
                - { name: v, regex: "2|3" }
            route:
              weighted_clusters:
                - { name: reviews-v1, weight: 90 }
                - { name: reviews-v2, weight: 10 }
              timeout: 250ms
              retry_policy:
                retry_on: 5xx,connect-failure,retriable-status-codes
                num_retries: 2
                retriable_status_codes: [409]
                budget: { budget_percent: 20 }
              rate_limit:
                token_bucket: { max_tokens: 5, fill_interval: 100ms }
                mode: { wait: { max_wait: 50ms, max_waiting: 10 } }
                descriptor: client_address
              hash_policy: [ { header: x-user }, source_ip ]
            filters:
              - fault: { abort: { http_status: 503, percentage: 1.5 } }
          - match: { grpc: { service: reviews.v1.Reviews, method: Get } }
            route: { cluster: reviews-v1, prefix_rewrite: /v1/ }
          - match: { path: /exact, case_sensitive: false }
            route: { cluster_header: x-cluster }
          - match: { regex: "/items/[0-9]+" }
            route: { cluster: reviews-v1 }
clusters:
  - name: reviews-v1
    discovery: eds
    lb_policy: { ring_hash: {} }
    connect_timeout: 1s
    outlier_detection: { consecutive_5xx: 3 }
    health_check: { path: /healthz, interval: 2s }
  - name: reviews-v2
    lb_policy: { maglev: { table_size: 65537 } }
    protocol: http2
    load_assignment:
      endpoints:
        - locality: { zone: a }
          endpoints:
            - { address: "127.0.0.1:9001", weight: 3 }
            - { address: "127.0.0.1:9002", health: draining }
  - name: local_app
    load_assignment:
      endpoints:
        - endpoints: [ { address: "127.0.0.1:6060" } ]
endpoints:
  - cluster_name: reviews-v1
    endpoints:
      - priority: 0
        endpoints: [ { address: "10.0.0.1:80" }, { address: "10.0.0.2:80" } ]
      - priority: 1
        load_balancing_weight: 2
        endpoints: [ { address: "10.0.1.1:80" } ]
"#;

fn good() -> MeshConfig {
    mesh_core::yaml::from_str(GOOD).unwrap()
}

fn err_of(cfg: &MeshConfig) -> ValidationError {
    cfg.validate().expect_err("config should be refused")
}

#[test]
fn a_full_config_parses_with_envoy_defaults_and_validates() {
    let cfg = good();
    cfg.validate().unwrap();
    let route = &cfg.route_configs[0].virtual_hosts[0].routes[0];
    assert_eq!(route.action.timeout, Duration::from_millis(250));
    let retry = route.action.retry_policy.as_ref().unwrap();
    assert!(retry.retry_on.server_error && retry.retry_on.connect_failure);
    assert!(retry.retry_on.retriable_status_codes && !retry.retry_on.gateway_error);
    assert_eq!(
        retry.backoff,
        RetryBackoff::default(),
        "Envoy's 25ms base backoff by default"
    );
    assert_eq!(retry.budget.as_ref().unwrap().min_retry_concurrency, 3);
    assert_eq!(route.matcher.headers[1].value, StringMatch::Present(true));
    assert!(route.matcher.headers[1].invert);
    assert_eq!(route.filters[0].name(), "fault");
    // Defaults of what the file left out.
    let unnamed = &cfg.route_configs[0].virtual_hosts[0].routes[3];
    assert_eq!(unnamed.action.timeout, Duration::from_secs(15));
    assert!(unnamed.matcher.case_sensitive);
    let c = &cfg.clusters[0];
    assert_eq!(c.circuit_breakers, CircuitBreakers::default());
    assert_eq!(c.circuit_breakers.max_retries, 3);
    assert_eq!(
        c.outlier_detection.as_ref().unwrap().max_ejection_percent,
        10
    );
    assert_eq!(c.healthy_panic_threshold, 50.0);
    assert_eq!(
        c.lb_policy,
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
            maximum_ring_size: 8 << 20
        }
    );
    let la = cfg.clusters[1].load_assignment.as_ref().unwrap();
    assert_eq!(la.len(), 2);
    assert!(!la.endpoints[0].lb_endpoints[1].health.is_healthy());
    assert_eq!(cfg.endpoints[0].overprovisioning_factor, 140);
}

#[test]
fn serialization_round_trips() {
    let cfg = good();
    let yaml = mesh_core::yaml::to_string(&cfg).unwrap();
    let back: MeshConfig = mesh_core::yaml::from_str(&yaml).unwrap();
    assert_eq!(back, cfg);
    let json = serde_json::to_string(&cfg).unwrap();
    let back: MeshConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn duplicate_names_are_refused() {
    let mut cfg = good();
    cfg.clusters.push(cfg.clusters[0].clone());
    let e = err_of(&cfg);
    assert_eq!(e.path, "clusters[3].name");
    assert!(e.reason.contains("duplicate"), "{e}");

    let mut cfg = good();
    let vh = cfg.route_configs[0].virtual_hosts[0].clone();
    cfg.route_configs[0].virtual_hosts.push(vh);
    assert_eq!(err_of(&cfg).path, "route_configs[0].virtual_hosts[1].name");

    let mut cfg = good();
    let mut vh = cfg.route_configs[0].virtual_hosts[0].clone();
    vh.name = "other".into();
    vh.routes.clear();
    cfg.route_configs[0].virtual_hosts.push(vh);
    let e = err_of(&cfg);
    assert_eq!(e.path, "route_configs[0].virtual_hosts[1].domains[0]");
    assert!(e.reason.contains("two virtual hosts"), "{e}");
}

#[test]
fn routes_to_missing_or_empty_clusters_are_refused() {
    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0].routes[3]
        .action
        .destination = ClusterSpecifier::Cluster("nope".into());
    let e = err_of(&cfg);
    assert_eq!(
        e.path,
        "route_configs[outbound].virtual_hosts[0].routes[3].route"
    );
    assert!(e.reason.contains("unknown cluster \"nope\""), "{e}");

    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0].routes[3]
        .action
        .destination = ClusterSpecifier::Cluster(String::new());
    assert_eq!(
        err_of(&cfg).path,
        "route_configs[0].virtual_hosts[0].routes[3].route.cluster"
    );

    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0].routes[0]
        .action
        .destination = ClusterSpecifier::WeightedClusters(vec![]);
    assert!(err_of(&cfg).reason.contains("must not be empty"));
}

#[test]
fn weights_summing_to_zero_are_refused() {
    let mut cfg = good();
    if let ClusterSpecifier::WeightedClusters(w) = &mut cfg.route_configs[0].virtual_hosts[0].routes
        [0]
    .action
    .destination
    {
        w.iter_mut().for_each(|c| c.weight = 0);
    }
    let e = err_of(&cfg);
    assert_eq!(
        e.path,
        "route_configs[0].virtual_hosts[0].routes[0].route.weighted_clusters"
    );
    assert_eq!(e.reason, "weights sum to zero");
}

#[test]
fn invalid_regexes_are_refused_wherever_they_are() {
    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0].routes[3].matcher.path =
        PathMatch::Regex("/items/[0-9".into());
    let e = err_of(&cfg);
    assert_eq!(
        e.path,
        "route_configs[0].virtual_hosts[0].routes[3].match.regex"
    );
    assert!(e.reason.starts_with("invalid regex \"/items/[0-9\""), "{e}");

    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0].routes[0]
        .matcher
        .query_parameters[0]
        .value = StringMatch::Regex("(".into());
    assert_eq!(
        err_of(&cfg).path,
        "route_configs[0].virtual_hosts[0].routes[0].match.query_parameters[0].regex"
    );
}

#[test]
fn bad_addresses_are_refused() {
    for (addr, why) in [
        ("0.0.0.0:80", "unicast"),
        ("127.0.0.1:0", "port 0"),
        ("224.0.0.1:80", "unicast"),
    ] {
        let mut cfg = good();
        cfg.endpoints[0].endpoints[0].lb_endpoints[0].address = addr.parse().unwrap();
        let e = err_of(&cfg);
        assert_eq!(
            e.path, "endpoints[0].endpoints[0].endpoints[0].address",
            "{addr}"
        );
        assert!(e.reason.contains(why), "{addr}: {e}");
    }
    // Unparseable addresses are refused by the parser, naming the field.
    let text = GOOD.replace("127.0.0.1:6060", "localhost:6060");
    let err = mesh_core::yaml::from_str::<MeshConfig>(&text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("address") && err.contains("line"), "{err}");

    let mut cfg = good();
    cfg.endpoints[0].endpoints[0].lb_endpoints[1].address = "10.0.0.1:80".parse().unwrap();
    assert!(err_of(&cfg).reason.contains("listed twice"));

    let mut cfg = good();
    cfg.listeners[1].address = cfg.listeners[0].address;
    assert_eq!(err_of(&cfg).path, "listeners[1].address");
}

#[test]
fn cross_references_must_resolve() {
    let mut cfg = good();
    cfg.listeners[0].route_config_name = "missing".into();
    assert_eq!(err_of(&cfg).path, "listeners[0].route_config_name");

    let mut cfg = good();
    cfg.endpoints.clear();
    let e = err_of(&cfg);
    assert!(
        e.reason
            .contains("EDS cluster \"reviews-v1\" has no endpoint set"),
        "{e}"
    );

    let mut cfg = good();
    cfg.clusters[0].load_assignment = Some(ClusterLoadAssignment::default());
    assert!(err_of(&cfg).reason.contains("gets its endpoints from EDS"));
}

#[test]
fn policy_values_are_range_checked() {
    let mut c = Cluster::new("c");
    c.lb_policy = LbPolicy::Maglev { table_size: 65536 };
    assert_eq!(c.validate().unwrap_err().reason, "65536 is not a prime");
    c.lb_policy = LbPolicy::LeastRequest { choice_count: 1 };
    assert!(c.validate().is_err());
    c.lb_policy = LbPolicy::RoundRobin;
    c.healthy_panic_threshold = 101.0;
    assert_eq!(c.validate().unwrap_err().path, "healthy_panic_threshold");
    c.healthy_panic_threshold = 50.0;
    c.connect_timeout = Duration::ZERO;
    assert_eq!(c.validate().unwrap_err().path, "connect_timeout");

    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0].routes[0].filters =
        vec![FilterConfig::Fault(FaultConfig {
            delay: None,
            abort: Some(FaultAbort {
                http_status: 700,
                percentage: 5.0,
            }),
        })];
    assert_eq!(
        err_of(&cfg).path,
        "route_configs[0].virtual_hosts[0].routes[0].filters[0].fault.abort.http_status"
    );

    let mut cfg = good();
    cfg.listeners[0]
        .rate_limit
        .as_mut()
        .unwrap()
        .token_bucket
        .max_tokens = 0;
    assert_eq!(
        err_of(&cfg).path,
        "listeners[0].rate_limit.token_bucket.max_tokens"
    );

    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0].routes[0].name.clear();
    assert!(err_of(&cfg).reason.contains("needs a name"));

    let mut cfg = good();
    cfg.route_configs[0].virtual_hosts[0]
        .domains
        .push("a*b".into());
    assert_eq!(
        err_of(&cfg).path,
        "route_configs[0].virtual_hosts[0].domains[3]"
    );
}

#[test]
fn retry_on_uses_envoys_names() {
    let on: RetryOn = "gateway-error, reset,unavailable".parse().unwrap();
    assert!(on.gateway_error && on.reset && on.grpc_unavailable && !on.server_error);
    assert_eq!(String::from(on), "gateway-error,reset,unavailable");
    let err = "5xx,bogus".parse::<RetryOn>().unwrap_err();
    assert!(
        err.contains("unknown retry_on condition \"bogus\""),
        "{err}"
    );
}

#[test]
fn unknown_fields_are_refused_not_ignored() {
    let text = GOOD.replace("connect_timeout: 1s", "conect_timeout: 1s");
    let err = mesh_core::yaml::from_str::<MeshConfig>(&text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("conect_timeout"), "{err}");
}

#[test]
fn rate_limit_rules_follow_listener_and_named_routes() {
    let cfg = good();
    let rules = RateLimitConfig::for_listener(&cfg.listeners[0], cfg.route_config("outbound"));
    let names: Vec<&str> = rules.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["listener:outbound", "route:reviews-v2-canary"]);
    assert_eq!(
        rules.rules[1].scope,
        RateLimitScope::Route("reviews-v2-canary".into())
    );
    assert_eq!(
        rules.rules[1].limit.descriptor,
        Some(DescriptorSource::ClientAddress)
    );
    assert!((rules.rules[0].limit.token_bucket.rate_per_sec() - 10.0).abs() < 1e-9);
    rules.validate().unwrap();
    let mut dup = rules.clone();
    dup.rules.push(dup.rules[0].clone());
    assert_eq!(dup.validate().unwrap_err().path, "rules[2].name");
}

#[test]
fn tls_must_name_secrets_of_the_config_of_the_right_kind() {
    let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    let mut cfg = good();
    cfg.listeners[1].tls =
        Some(mesh_core::yaml::from_str("{ certificate: default, validation: ROOTCA }").unwrap());
    // No secrets at all: they come over SDS; only a static loader insists.
    cfg.validate().unwrap();
    let err = cfg.check_secret_refs().unwrap_err();
    assert_eq!(err.path, "listeners[1].tls.certificate", "{err}");
    cfg.secrets = vec![
        Secret {
            name: "default".into(),
            kind: SecretKind::ValidationContext(ValidationContext {
                trusted_ca: pem.into(),
            }),
        },
        Secret {
            name: "ROOTCA".into(),
            kind: SecretKind::ValidationContext(ValidationContext {
                trusted_ca: pem.into(),
            }),
        },
    ];
    let err = err_of(&cfg);
    assert_eq!(err.path, "listeners[1].tls.certificate", "{err}");
    assert!(err.to_string().contains("not a tls_certificate"), "{err}");
    cfg.secrets[0].kind = SecretKind::TlsCertificate(TlsCertificate {
        certificate_chain: pem.into(),
        private_key: "-----BEGIN PRIVATE KEY-----\n".into(),
    });
    cfg.validate().unwrap();
    cfg.clusters[2].tls =
        Some(mesh_core::yaml::from_str("{ certificate: default, validation: missing }").unwrap());
    let err = err_of(&cfg);
    assert_eq!(err.path, "clusters[2].tls.validation", "{err}");
    assert!(
        err.to_string().contains("unknown secret \"missing\""),
        "{err}"
    );
}
