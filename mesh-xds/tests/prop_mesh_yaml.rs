//! Property tests on mesh.yaml loading (issue #18 item 6): whatever the file holds, the control
//! plane's load (parse, translate, validate) never panics; it is Ok, or an error naming the file
//! and the reason, and the last good config keeps serving.
//!
//! Cases per run (proptest, stable toolchain): 1,000 arbitrary texts and 1,000 mesh.yaml-shaped
//! documents mixing valid and invalid values (about 8 % load). A failure prints its minimal case.
#![allow(clippy::unwrap_used)]

use mesh_core::MeshConfig;
use mesh_xds::server::{mesh_core_validator, SnapshotCache};
use mesh_xds::source::MeshSpec;
use proptest::prelude::*;

/// Pieces of a mesh.yaml, valid and not: names, addresses, durations, policies.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}",
        Just(String::new()),
        "[ -~]{0,12}",
        Just("a b".to_owned()),
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u16..=65535).prop_map(|p| format!("127.0.0.1:{p}")),
        Just("127.0.0.1:0".to_owned()),
        Just("[::1]:80".to_owned()),
        Just("nowhere".to_owned()),
        Just("10.0.0.1:99999".to_owned()),
        "[ -~]{0,16}",
    ]
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..100_000).prop_map(|n| format!("{n}ms")),
        Just("0s".to_owned()),
        Just("-1s".to_owned()),
        Just("forever".to_owned()),
        Just("99999999999999999999s".to_owned()),
    ]
}

fn lb_policy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("round_robin".to_owned()),
        Just("{ least_request: { choice_count: 2 } }".to_owned()),
        Just("{ least_request: { choice_count: 0 } }".to_owned()),
        Just("{ ring_hash: {} }".to_owned()),
        Just("random".to_owned()),
        Just("sideways".to_owned()),
        Just("{ maglev: { table_size: 4 } }".to_owned()),
    ]
}

fn service_yaml() -> impl Strategy<Value = String> {
    (
        name(),
        proptest::option::of(0u32..70_000),
        proptest::collection::vec((address(), 0u32..5, "[a-z0-9-]{0,4}"), 0..4),
        lb_policy(),
        proptest::option::of(duration()),
        proptest::option::of((0u32..5, duration())),
        proptest::option::of((0u32..200, 0u32..200, duration())),
    )
        .prop_map(|(name, port, endpoints, lb, timeout, retry, limit)| {
            let mut y = format!("  - name: {name:?}\n    lb_policy: {lb}\n");
            if let Some(p) = port {
                y += &format!("    port: {p}\n");
            }
            y += "    endpoints:\n";
            for (addr, weight, zone) in endpoints {
                y += &format!("      - {{ address: {addr:?}, weight: {weight}, zone: {zone:?} }}\n");
            }
            if endpoints_is_empty(&y) {
                y += "      []\n";
            }
            if let Some(t) = timeout {
                y += &format!("    timeout: {t}\n");
            }
            if let Some((n, t)) = retry {
                y += &format!(
                    "    retry_policy: {{ retry_on: \"5xx\", num_retries: {n}, per_try_timeout: {t} }}\n"
                );
            }
            if let Some((max, fill, every)) = limit {
                y += &format!(
                    "    rate_limit: {{ token_bucket: {{ max_tokens: {max}, tokens_per_fill: {fill}, fill_interval: {every} }} }}\n"
                );
            }
            y
        })
}

fn endpoints_is_empty(y: &str) -> bool {
    y.ends_with("    endpoints:\n")
}

fn mesh_yaml() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(service_yaml(), 0..4),
        proptest::collection::vec((name(), name(), address(), address()), 0..3),
    )
        .prop_map(|(services, nodes)| {
            let mut y = String::from("services:\n");
            if services.is_empty() {
                y += "  []\n";
            }
            for s in services {
                y += &s;
            }
            y += "nodes:\n";
            if nodes.is_empty() {
                y += "  []\n";
            }
            for (id, service, outbound, inbound) in nodes {
                y += &format!(
                    "  - id: {id:?}\n    service: {service:?}\n    listeners: {{ outbound: {outbound:?}, inbound: {inbound:?}, local_app: 127.0.0.1:6060 }}\n"
                );
            }
            y
        })
}

/// Loads `text` as the control plane does (parse, translate, then the cache's validator):
/// never a panic, and every error has a reason.
fn load_like_the_control_plane(text: &str) -> Result<usize, String> {
    let (_, snaps) = MeshSpec::load_str("mesh.yaml", text).map_err(|e| e.to_string())?;
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let mut served = 0;
    for snap in snaps.nodes.into_values().chain([snaps.fallback]) {
        cache.check(snap).map_err(|e| e.to_string())?;
        served += 1;
    }
    Ok(served)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Arbitrary text: the YAML parser and the model's serde never panic.
    #[test]
    fn arbitrary_text_loads_or_is_refused_with_a_reason(text in "(?s).{0,300}") {
        if let Err(e) = load_like_the_control_plane(&text) {
            prop_assert!(e.starts_with("mesh.yaml"), "the error names the file: {e}");
        }
        if let Err(e) = mesh_core::yaml::from_str::<MeshConfig>(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Shaped like a mesh.yaml, with valid and invalid values mixed: Ok, or an error naming
    /// the file and a reason; a load that passes gives every node a snapshot the client's own
    /// validation accepts.
    #[test]
    fn mesh_yaml_shaped_input_loads_or_is_refused_with_a_reason(text in mesh_yaml()) {
        match load_like_the_control_plane(&text) {
            Ok(served) => prop_assert!(served >= 1),
            Err(e) => {
                prop_assert!(e.starts_with("mesh.yaml") || e.contains("invalid"), "{e}");
                prop_assert!(e.len() > "mesh.yaml: ".len(), "a reason: {e}");
            }
        }
    }
}
