//! The state machine, driven without sockets: exact request sequences for ACK/NACK, removal,
//! resource chains, delta, the NACK-loop guard and sink rollback.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_core::*;

use super::*;
use crate::convert::{encode, XdsResource};

/// Records what it is fed; refuses updates for which `refuse` holds.
pub(crate) struct Recorder<T> {
    pub seen: Mutex<Vec<T>>,
    /// Names it was told were removed (as a per-resource sink).
    pub removed: Mutex<Vec<String>>,
    refuse: Box<dyn Fn(&T) -> bool + Send + Sync>,
}

impl<T> Recorder<T> {
    pub fn new() -> Arc<Self> {
        Self::refusing(|_| false)
    }
    pub fn refusing(f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
            refuse: Box::new(f),
        })
    }
}

impl<T: Clone + Send + 'static> Reload<T> for Recorder<T> {
    fn reload(&self, update: T) -> Result<(), ReloadError> {
        if (self.refuse)(&update) {
            return Err(ReloadError::new("test", "x", "refused by the sink"));
        }
        self.seen.lock().unwrap().push(update);
        Ok(())
    }
}

impl<T: Clone + Send + 'static> mesh_core::ReloadEach<T> for Recorder<T> {
    fn remove(&self, name: &str) -> Result<(), ReloadError> {
        self.removed.lock().unwrap().push(name.to_owned());
        Ok(())
    }
}

fn eds_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn listener(name: &str, routes: &str) -> Listener {
    Listener {
        tls: None,
        rbac: None,
        xprotocol: None,
        name: name.into(),
        address: "127.0.0.1:8082".parse().unwrap(),
        direction: Direction::Outbound,
        route_config_name: routes.into(),
        route_config: None,
        http: HttpProtocolOptions::default(),
        rate_limit: None,
        http_filters: Vec::new(),
        tcp_proxy: None,
        detection: Default::default(),
        access_log: Vec::new(),
    }
}

fn routes(name: &str, limit: bool) -> RouteConfiguration {
    let mut action = RouteAction::to_cluster("a");
    if limit {
        action.rate_limit = Some(LocalRateLimit {
            token_bucket: TokenBucketConfig {
                max_tokens: 5,
                tokens_per_fill: 1,
                fill_interval: std::time::Duration::from_secs(1),
            },
            mode: RateLimitMode::Reject,
            descriptor: None,
        });
    }
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "r".into(),
                matcher: RouteMatch::default(),
                action,
                filters: vec![],
            }],
        }],
        ignore_port_in_host_matching: false,
    }
}

fn sotw(ty: ResourceType, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: ty.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn reqs(out: Vec<Outgoing>) -> Vec<DiscoveryRequest> {
    out.into_iter()
        .map(|o| match o.request {
            Outbound::Sotw(r) => r,
            Outbound::Delta(_) => panic!("delta request on a SotW stream"),
        })
        .collect()
}

fn names(r: &DiscoveryRequest) -> Vec<&str> {
    r.resource_names.iter().map(String::as_str).collect()
}

#[test]
fn first_requests_are_wildcard_cds_and_lds_with_the_node() {
    let mut s = XdsClient::builder().node_id("n1").into_state();
    let out = reqs(s.on_connect());
    let urls: Vec<_> = out.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        urls,
        [
            ResourceType::Cluster.type_url(),
            ResourceType::Listener.type_url()
        ]
    );
    for r in &out {
        assert_eq!(r.node.as_ref().unwrap().id, "n1");
        assert!(
            r.version_info.is_empty() && r.response_nonce.is_empty() && r.resource_names.is_empty()
        );
    }
}

#[test]
fn ack_nack_and_the_nack_loop_guard() {
    let sink = Recorder::<Vec<Cluster>>::new();
    let mut s = XdsClient::builder()
        .sink_all::<Cluster>(sink.clone())
        .into_state();
    s.on_connect();
    let out = reqs(s.on_response(sotw(
        ResourceType::Cluster,
        "v1",
        "n1",
        vec![encode(&eds_cluster("a"))],
    )));
    assert_eq!(out.len(), 2, "the ACK, then the EDS subscription");
    assert_eq!(
        (out[0].version_info.as_str(), out[0].response_nonce.as_str()),
        ("v1", "n1")
    );
    assert!(out[0].error_detail.is_none());
    assert_eq!(out[1].type_url, ResourceType::Endpoint.type_url());
    assert_eq!(names(&out[1]), ["a"]);

    let mut bad = Cluster::new("b");
    bad.lb_policy = LbPolicy::Maglev { table_size: 100 };
    let resp = sotw(
        ResourceType::Cluster,
        "v2",
        "n2",
        vec![encode(&eds_cluster("a")), encode(&bad)],
    );
    let out = s.on_response(resp.clone());
    assert!(!out[0].hold);
    let nack = &reqs(out)[0];
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n2")
    );
    let detail = nack.error_detail.as_ref().unwrap();
    assert!(
        detail
            .message
            .contains("cluster[b].lb_policy.maglev.table_size"),
        "{}",
        detail.message
    );
    assert_eq!(detail.code, 3);
    assert_eq!(
        sink.seen.lock().unwrap().len(),
        1,
        "the old config keeps serving"
    );
    assert_eq!(s.status().types[ResourceType::Cluster.type_url()].nacks, 1);

    // The control plane resends the rejected version: not re-applied, and the NACK is held.
    let mut again = resp;
    again.nonce = "n3".into();
    let out = s.on_response(again);
    assert!(out[0].hold);
    assert_eq!(reqs(out)[0].response_nonce, "n3");

    let out = reqs(s.on_response(sotw(
        ResourceType::Cluster,
        "v3",
        "n4",
        vec![encode(&Cluster::new("b"))],
    )));
    assert!(out[0].error_detail.is_none());
    assert_eq!(out[0].version_info, "v3");
    assert_eq!(
        names(&out[1]),
        Vec::<&str>::new(),
        "a's EDS subscription is dropped"
    );
    assert_eq!(sink.seen.lock().unwrap().last().unwrap()[0].name, "b");
}

#[test]
fn sotw_removal_and_eds_follow_cds() {
    let eps = Recorder::<Vec<ClusterLoadAssignment>>::new();
    let each = Recorder::<Checked<ClusterLoadAssignment>>::new();
    let mut s = XdsClient::builder()
        .sink_all::<ClusterLoadAssignment>(eps.clone())
        .sink_each::<ClusterLoadAssignment>(each.clone())
        .into_state();
    s.on_connect();
    let cds = vec![encode(&eds_cluster("a")), encode(&eds_cluster("b"))];
    s.on_response(sotw(ResourceType::Cluster, "1", "c1", cds));
    let la = |n: &str| {
        encode(&ClusterLoadAssignment::from_addrs(
            n,
            ["10.0.0.1:80".parse().unwrap()],
        ))
    };
    let out = reqs(s.on_response(sotw(
        ResourceType::Endpoint,
        "1",
        "e1",
        vec![la("a"), la("b"), la("zzz")],
    )));
    assert_eq!(names(&out[0]), ["a", "b"]);
    assert_eq!(
        s.store.config.endpoints.len(),
        2,
        "an unsubscribed resource is not kept"
    );
    // b disappears from CDS: the cluster is removed and its endpoints are dropped.
    let out = reqs(s.on_response(sotw(
        ResourceType::Cluster,
        "2",
        "c2",
        vec![encode(&eds_cluster("a"))],
    )));
    assert_eq!(names(&out[1]), ["a"]);
    assert!(!s.store.config.clusters.contains_key("b"));
    // A per-resource sink is told of the removal by its contract, no callback needed.
    assert_eq!(*each.removed.lock().unwrap(), ["b"]);
    let last = eps.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        last.iter()
            .map(|l| l.cluster_name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
}

#[test]
fn readiness_waits_for_the_whole_chain_and_rate_limits_follow() {
    let rl = Recorder::<RateLimitConfig>::new();
    let mut s = XdsClient::builder()
        .sink_rate_limits("out", rl.clone())
        .into_state();
    s.on_connect();
    s.on_response(sotw(
        ResourceType::Cluster,
        "1",
        "c1",
        vec![encode(&Cluster::new("a"))],
    ));
    let out = reqs(s.on_response(sotw(
        ResourceType::Listener,
        "1",
        "l1",
        vec![encode(&listener("out", "main"))],
    )));
    assert_eq!(out[1].type_url, ResourceType::Route.type_url());
    assert_eq!(names(&out[1]), ["main"]);
    assert!(!s.is_ready(), "the route table is still missing");
    s.on_response(sotw(
        ResourceType::Route,
        "1",
        "r1",
        vec![encode(&routes("main", true))],
    ));
    assert!(s.is_ready());
    let fed = rl.seen.lock().unwrap().clone();
    assert_eq!(fed.last().unwrap().rules[0].name, "route:r");
    // A listener-only change that leaves the rules alone does not feed the sink again.
    let mut l = listener("out", "main");
    l.http.idle_timeout = std::time::Duration::from_secs(5);
    s.on_response(sotw(ResourceType::Listener, "2", "l2", vec![encode(&l)]));
    assert_eq!(rl.seen.lock().unwrap().len(), fed.len());
}

#[test]
fn a_refusing_sink_nacks_and_earlier_sinks_are_rolled_back() {
    let first = Recorder::<Checked<Cluster>>::new();
    let second = Recorder::<Vec<Cluster>>::refusing(|cs| cs.iter().any(|c| c.name == "evil"));
    let mut s = XdsClient::builder()
        .sink_each::<Cluster>(first.clone())
        .sink_all::<Cluster>(second.clone())
        .into_state();
    s.on_connect();
    let mut a1 = Cluster::new("a");
    a1.connect_timeout = std::time::Duration::from_secs(1);
    s.on_response(sotw(ResourceType::Cluster, "1", "n1", vec![encode(&a1)]));
    let mut a2 = a1.clone();
    a2.connect_timeout = std::time::Duration::from_secs(2);
    let out = reqs(s.on_response(sotw(
        ResourceType::Cluster,
        "2",
        "n2",
        vec![encode(&a2), encode(&Cluster::new("evil"))],
    )));
    assert!(out[0]
        .error_detail
        .as_ref()
        .unwrap()
        .message
        .contains("refused by the sink"));
    let seen = first.seen.lock().unwrap();
    assert_eq!(
        **seen.last().unwrap(),
        a1,
        "the per-resource sink got a1 back: {seen:?}"
    );
    assert_eq!(**s.store.config.clusters["a"], a1);
}

fn delta(
    ty: ResourceType,
    nonce: &str,
    add: Vec<(&str, &str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ty.type_url().into(),
        nonce: nonce.into(),
        resources: add
            .into_iter()
            .map(|(name, version, any)| Resource {
                name: name.into(),
                version: version.into(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn dreqs(
    out: Vec<Outgoing>,
) -> Vec<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest> {
    out.into_iter()
        .map(|o| match o.request {
            Outbound::Delta(r) => r,
            Outbound::Sotw(_) => panic!("SotW request on a delta stream"),
        })
        .collect()
}

#[test]
fn delta_add_remove_nack_and_resubscribe_with_versions() {
    let mut s = XdsClient::builder().mode(AdsMode::Delta).into_state();
    let first = dreqs(s.on_connect());
    assert_eq!(first.len(), 2);
    assert!(first[0].resource_names_subscribe.is_empty(), "wildcard");
    let c = ResourceType::Cluster;
    let out = dreqs(s.on_delta_response(delta(
        c,
        "d1",
        vec![
            ("a", "1", encode(&eds_cluster("a"))),
            ("b", "1", encode(&Cluster::new("b"))),
        ],
        &[],
    )));
    assert_eq!(out[0].response_nonce, "d1");
    assert!(out[0].error_detail.is_none());
    assert_eq!(out[1].resource_names_subscribe, ["a"]);
    // An endpoint set nobody subscribed to is neither kept nor remembered.
    let la = ClusterLoadAssignment::from_addrs("zzz", ["10.0.0.1:80".parse().unwrap()]);
    let eds = ResourceType::Endpoint;
    s.on_delta_response(delta(eds, "e1", vec![("zzz", "9", encode(&la))], &[]));
    assert!(s.store.config.endpoints.is_empty());
    assert!(s.ty(eds).resource_versions.is_empty());
    // Remove a: the EDS subscription is withdrawn.
    let out = dreqs(s.on_delta_response(delta(c, "d2", vec![], &["a"])));
    assert_eq!(out[1].resource_names_unsubscribe, ["a"]);
    assert_eq!(s.store.config.clusters.keys().collect::<Vec<_>>(), ["b"]);
    // A bad resource: nothing of the response applies.
    let mut bad = Cluster::new("c");
    bad.connect_timeout = std::time::Duration::ZERO;
    let resp = delta(
        c,
        "d3",
        vec![
            ("c", "1", encode(&bad)),
            ("d", "1", encode(&Cluster::new("d"))),
        ],
        &["b"],
    );
    let out = s.on_delta_response(resp.clone());
    let nack = &dreqs(out)[0];
    assert!(nack
        .error_detail
        .as_ref()
        .unwrap()
        .message
        .contains("cluster[c].connect_timeout"));
    assert_eq!(s.store.config.clusters.keys().collect::<Vec<_>>(), ["b"]);
    let mut again = resp;
    again.nonce = "d4".into();
    assert!(s.on_delta_response(again)[0].hold);
    // Reconnect: wildcard again, with the versions held.
    let re = dreqs(s.on_connect());
    assert_eq!(
        re[0].initial_resource_versions.get("b").map(String::as_str),
        Some("1")
    );
    assert_eq!(re[0].initial_resource_versions.len(), 1);
}

#[test]
fn refresh_re_requests_everything_with_an_empty_version() {
    let mut s = XdsClient::builder().into_state();
    s.on_connect();
    s.on_response(sotw(
        ResourceType::Cluster,
        "7",
        "n",
        vec![encode(&eds_cluster("a"))],
    ));
    let out = reqs(s.refresh());
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|r| r.version_info.is_empty()));
    assert_eq!(names(&out[1]), ["a"]);
}

#[test]
fn decode_of_every_type_goes_through_the_conversion_module() {
    // A listener whose inline route table is invalid is refused with the nested path.
    let mut l = listener("out", "");
    let mut rc = routes("inline", false);
    rc.virtual_hosts[0].domains.clear();
    l.route_config = Some(rc);
    let mut s = XdsClient::builder().into_state();
    s.on_connect();
    let out = reqs(s.on_response(sotw(ResourceType::Listener, "1", "n", vec![encode(&l)])));
    let msg = &out[0].error_detail.as_ref().unwrap().message;
    assert!(
        msg.starts_with("listener[out].route_config.virtual_hosts[0].domains"),
        "{msg}"
    );
    assert_eq!(<Listener as XdsResource>::KIND, "listener");
}
