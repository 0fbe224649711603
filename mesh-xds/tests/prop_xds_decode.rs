//! Property tests on the xDS client's decode path (issue #18 item 6): whatever a control plane
//! sends, nothing panics; the client ACKs, or NACKs with an `error_detail` naming the resource
//! and the reason, and a resource that converts round-trips through our encoder.
//!
//! Cases per run (proptest, stable toolchain): 2,000 random byte strings and 2,000 mutated valid
//! resources through the client's state machine; 1,000 random Listener, 1,000 Cluster and 1,000
//! RouteConfiguration messages through the conversion (a sixth to a third of each converts, and
//! then round-trips). 7,000 in all, a few seconds; a failure prints its minimal case.
#![allow(clippy::unwrap_used)]

#[path = "prop_xds_decode/strategies.rs"]
mod strategies;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::{Cluster, ClusterLoadAssignment, Listener, RouteConfiguration};
use mesh_xds::client::{AdsState, Outbound, XdsClient};
use mesh_xds::convert::{decode, encode, pack, XdsResource};
use mesh_xds::source::MeshSpec;
use mesh_xds::ResourceType;
use proptest::prelude::*;
use strategies::{cluster_proto, listener_proto, route_proto};

/// A SotW response of `ty` carrying `resources`.
fn response(ty: ResourceType, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: "v1".into(),
        resources,
        type_url: ty.type_url().into(),
        nonce: "n1".into(),
        ..Default::default()
    }
}

/// Feeds `resp` to a fresh client state machine; returns the NACK's message, or `None` for an
/// ACK.
fn ack_or_nack(resp: DiscoveryResponse) -> Option<String> {
    let mut state: AdsState = XdsClient::builder().into_state();
    state.on_connect();
    let out = state.on_response(resp);
    match &out.first().map(|o| &o.request) {
        Some(Outbound::Sotw(req)) => req.error_detail.as_ref().map(|e| e.message.clone()),
        other => panic!("no SotW answer: {other:?}"),
    }
}

fn type_and_kind() -> impl Strategy<Value = (ResourceType, &'static str)> {
    prop_oneof![
        Just((ResourceType::Listener, Listener::KIND)),
        Just((ResourceType::Route, RouteConfiguration::KIND)),
        Just((ResourceType::Cluster, Cluster::KIND)),
        Just((ResourceType::Endpoint, ClusterLoadAssignment::KIND)),
    ]
}

/// Valid resources of each type, to mutate (translated once).
fn seeds() -> &'static [(ResourceType, Any)] {
    static SEEDS: std::sync::OnceLock<Vec<(ResourceType, Any)>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(translate_seeds)
}

fn translate_seeds() -> Vec<(ResourceType, Any)> {
    let yaml = "services:\n  - name: hello\n    endpoints: [ { address: 127.0.0.1:9001 } ]\n    \
                rate_limit: { token_bucket: { max_tokens: 5, tokens_per_fill: 5, fill_interval: 1s } }\n\
                nodes:\n  - id: n1\n    service: hello\n    listeners: { outbound: 127.0.0.1:8082, inbound: 127.0.0.1:8083, local_app: 127.0.0.1:6060 }\n";
    let (_, snaps) = MeshSpec::load_str("seed.yaml", yaml).unwrap();
    let snap = &snaps.nodes["n1"];
    let mut out = Vec::new();
    for ty in ResourceType::CLIENT {
        for r in snap.of(ty).items().values() {
            out.push((ty, r.any().clone()));
        }
    }
    assert!(out.len() >= 4, "seeds of every type");
    out
}

/// A byte-level mutation: flip, truncate, insert or overwrite.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Set(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize| i % bytes.len();
    match m {
        Mutation::Flip(i, b) => {
            let i = at(*i);
            bytes[i] ^= b;
        }
        Mutation::Truncate(i) => bytes.truncate(at(*i)),
        Mutation::Insert(i, b) => {
            let i = at(*i);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Set(i, b) => {
            let i = at(*i);
            bytes[i] = *b;
        }
    }
}

/// Checks the client's answer: an ACK, or a NACK whose message names the resource kind.
fn assert_ack_or_detailed_nack(kind: &str, nack: Option<String>) -> Result<(), TestCaseError> {
    if let Some(msg) = nack {
        prop_assert!(msg.contains(kind), "the NACK names the {kind}: {msg}");
        prop_assert!(msg.len() > kind.len() + 4, "and a reason: {msg}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes under each type URL: decoded or refused, never a panic; the client NACKs
    /// with the kind and the reason.
    #[test]
    fn random_bytes_are_acked_or_nacked_with_detail(
        (ty, kind) in type_and_kind(),
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let any = Any { type_url: ty.type_url().into(), value: bytes };
        assert_ack_or_detailed_nack(kind, ack_or_nack(response(ty, vec![any])))?;
    }

    /// Valid resources with their bytes mutated (flipped, cut, spliced): mostly still
    /// well-formed protobuf with odd values.
    #[test]
    fn mutated_resources_are_acked_or_nacked_with_detail(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seeds();
        let (ty, mut any) = seeds[seed.index(seeds.len())].clone();
        for m in &mutations {
            mutate(&mut any.value, m);
        }
        let kind = match ty {
            ResourceType::Listener => Listener::KIND,
            ResourceType::Route => RouteConfiguration::KIND,
            ResourceType::Cluster => Cluster::KIND,
            _ => ClusterLoadAssignment::KIND,
        };
        assert_ack_or_detailed_nack(kind, ack_or_nack(response(ty, vec![any])))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Well-formed Cluster messages with random values: converted (and then round-trips
    /// through our encoder) or refused with the field path.
    #[test]
    fn random_cluster_protos_convert_or_name_the_field(proto in cluster_proto()) {
        let any = pack(&proto);
        match decode::<Cluster>(&any) {
            Ok(c) => prop_assert_eq!(decode::<Cluster>(&encode(&c)).unwrap(), c),
            Err(e) => prop_assert!(e.to_string().starts_with("cluster["), "{e}"),
        }
        assert_ack_or_detailed_nack(Cluster::KIND, ack_or_nack(response(ResourceType::Cluster, vec![any])))?;
    }

    /// Well-formed Listener messages: random addresses and filter chains, the connection
    /// manager's routes inline or by RDS, known and unknown HTTP filters.
    #[test]
    fn random_listener_protos_convert_or_name_the_field(proto in listener_proto()) {
        let any = pack(&proto);
        match decode::<Listener>(&any) {
            Ok(l) => prop_assert_eq!(decode::<Listener>(&encode(&l)).unwrap(), l),
            Err(e) => prop_assert!(e.to_string().starts_with("listener["), "{e}"),
        }
        assert_ack_or_detailed_nack(Listener::KIND, ack_or_nack(response(ResourceType::Listener, vec![any])))?;
    }

    /// Well-formed RouteConfiguration messages with random matches, actions and timeouts.
    #[test]
    fn random_route_protos_convert_or_name_the_field(proto in route_proto()) {
        let any = pack(&proto);
        match decode::<RouteConfiguration>(&any) {
            Ok(r) => prop_assert_eq!(decode::<RouteConfiguration>(&encode(&r)).unwrap(), r),
            Err(e) => prop_assert!(e.to_string().contains(RouteConfiguration::KIND), "{e}"),
        }
    }
}
