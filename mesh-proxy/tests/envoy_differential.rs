//! Differential routing: one mesh.yaml, served by our control plane, configures a real Envoy, our
//! sidecar and the in-process SDK stack; a seeded corpus of requests over every matcher and
//! route action we support goes to all three, and every difference in status, chosen backend,
//! or what the backend saw (target, host, `x-m-*` headers) and the `x-m-*` response headers
//! fails the test with the case printed. Weighted clusters are compared statistically.
//!
//! Under `CI=true` a missing Envoy fails the test (mesh-testkit's skip-or-fail policy).
#![allow(clippy::unwrap_used)]

mod differential;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use differential::{corpus, mesh_yaml, send, weighted_pick, Backends, Case, NodePorts, Outcome};
use http_body_util::BodyExt;
use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_testkit::EnvoyProcess;
use mesh_xds::sdk::{Mesh, MeshOptions};
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;
use tower::ServiceExt;

/// How many generated cases (on top of the named ones), and the seed.
const CASES: usize = 4000;
const SEED: u64 = 21;

/// Requests that the three divergences are about, always in the corpus.
fn named_cases() -> Vec<Case> {
    let case = |host: &str, target: &str, headers: &[(&str, &str)]| Case {
        host: host.into(),
        target: target.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    vec![
        case("api:9999", "/exact", &[]),
        case("api:8080", "/exact", &[]),
        case("api", "/h", &[("x-m-region", "eu")]),
        case("api", "/h", &[("x-m-region", "eu"), ("x-m-env", "prod")]),
        case("api", "/exact#frag", &[]),
    ]
}

/// Polls `addr` until every backend answers through it (the whole config arrived).
fn wait_routable(addr: SocketAddr, what: &str) {
    let probe = |host: &str| Case {
        host: host.into(),
        target: "/".into(),
        headers: Vec::new(),
    };
    let ok = mesh_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        differential::SERVICES
            .iter()
            .all(|s| send(addr, &probe(s)).0 == 200)
            .then_some(())
    });
    assert!(ok.is_some(), "{what} never routed to every backend");
}

/// The SDK stack's answer to `case` (its target has no fragment).
async fn sdk_outcome(mesh: &Mesh, case: &Case) -> (Outcome, String) {
    let mut req = http::Request::get(case.target.as_str()).header("host", case.host.as_str());
    for (k, v) in &case.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(mesh_core::body::empty()).unwrap();
    let resp = match mesh.client().oneshot(req).await {
        Ok(r) => r,
        Err(e) => e.to_response(false),
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    (Outcome::new(status, &body, &headers), body)
}

/// Fails with every differing case printed.
fn assert_same(what: &str, diffs: &[String], total: usize) {
    assert!(
        diffs.is_empty(),
        "{what}: {} of {total} cases differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Compares the shares of the weighted route's backends (80/20) over `n` requests.
fn weighted_share(mut pick: impl FnMut() -> String, n: usize, what: &str) {
    let w1 = (0..n).filter(|_| pick() == "b-w1").count();
    let share = w1 as f64 / n as f64;
    assert!(
        (0.72..=0.88).contains(&share),
        "{what}: b-w1 took {share:.3} of {n} requests, configured 0.8"
    );
}

#[test]
fn envoy_sidecar_and_sdk_route_a_corpus_alike() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let started = Instant::now();
    let backends = Backends::start();
    let p = mesh_testkit::free_ports(7);
    let nodes = [
        ("envoy-diff", p[0], p[1], false),
        ("sidecar-diff", p[2], p[3], false),
        ("sdk-diff", p[4], p[5], true),
    ]
    .map(|(id, outbound, inbound, sdk)| NodePorts {
        id,
        outbound,
        inbound,
        sdk,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, mesh_yaml(&backends, &nodes)).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let (xds, sidecar, mesh) = rt.block_on(async {
        let source = FileSource::new(&path, cache.clone());
        let status = source.status();
        source.spawn(Duration::from_millis(50)).unwrap();
        let (xds, _task) = XdsServer::new(cache.clone())
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(
            status.borrow().last_error.is_none(),
            "{:?}",
            *status.borrow()
        );
        let url = format!("http://{xds}");
        let mut o = DynamicOptions::new(vec![url.clone()], "sidecar-diff");
        o.admin = SocketAddr::from(([127, 0, 0, 1], p[6]));
        o.drain_timeout = Duration::from_millis(200);
        let sidecar = Sidecar::start_dynamic(o).await.unwrap();
        let mesh = Mesh::connect(MeshOptions::new(url, "sdk-diff"))
            .await
            .unwrap();
        (xds, sidecar, mesh)
    });
    eprintln!("control plane, sidecar and sdk up: {:?}", started.elapsed());
    let envoy =
        EnvoyProcess::start(&mesh_testkit::ads_bootstrap("envoy-diff", xds, "GRPC")).unwrap();
    let (envoy_addr, ours_addr) = (
        SocketAddr::from(([127, 0, 0, 1], p[0])),
        SocketAddr::from(([127, 0, 0, 1], p[2])),
    );
    wait_routable(envoy_addr, "envoy");
    wait_routable(ours_addr, "the sidecar");
    eprintln!("both routable: {:?}", started.elapsed());

    let cases: Vec<Case> = named_cases()
        .into_iter()
        .chain(corpus(SEED, CASES))
        .collect();
    let (mut sidecar_diffs, mut sdk_diffs) = (Vec::new(), Vec::new());
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut backends_seen = std::collections::BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        let (s, h, b) = send(envoy_addr, case);
        let want = Outcome::new(s, &b, &h);
        *statuses.entry(s).or_default() += 1;
        backends_seen.extend(want.seen.first().cloned());
        let (s, h, b) = send(ours_addr, case);
        let got = Outcome::new(s, &b, &h);
        if got != want {
            sidecar_diffs.push(format!(
                "#{i} {case:?}\n  envoy:   {want:?}\n  sidecar: {got:?}"
            ));
        }
        // A `Uri` cannot carry a fragment: the SDK never sees such a target.
        if !case.target.contains('#') {
            let (got, _) = rt.block_on(sdk_outcome(&mesh, case));
            if got != want {
                sdk_diffs.push(format!(
                    "#{i} {case:?}\n  envoy: {want:?}\n  sdk:   {got:?}"
                ));
            }
        }
    }
    eprintln!(
        "{} cases in {:?}; envoy statuses {statuses:?}; backends {}",
        cases.len(),
        started.elapsed(),
        backends_seen.len()
    );
    assert_same("sidecar vs envoy", &sidecar_diffs, cases.len());
    assert_same("sdk vs envoy", &sdk_diffs, cases.len());
    // The corpus reaches every route and every kind of answer (b-w1 and b-w2 are reported as
    // one; b-retry is exercised below).
    assert_eq!(
        backends_seen.len(),
        differential::SERVICES.len() - 2,
        "{backends_seen:?}"
    );
    for status in [200, 400, 404, 429, 503] {
        assert!(
            statuses.contains_key(&status),
            "no {status} in {statuses:?}"
        );
    }

    // Weighted clusters, statistically.
    let w = Case {
        host: "api".into(),
        target: "/w".into(),
        headers: Vec::new(),
    };
    let pick = |addr| {
        let (_, _, b) = send(addr, &w);
        weighted_pick(&b).unwrap_or_default().to_string()
    };
    weighted_share(|| pick(envoy_addr), 600, "envoy");
    weighted_share(|| pick(ours_addr), 600, "sidecar");
    weighted_share(
        || {
            let (_, b) = rt.block_on(sdk_outcome(&mesh, &w));
            weighted_pick(&b).unwrap_or_default().to_string()
        },
        600,
        "sdk",
    );

    // Retries on a status code: each answers the upstream's 503 after 1 + 2 attempts.
    let flaky = Case {
        host: "api".into(),
        target: "/flaky".into(),
        headers: Vec::new(),
    };
    let mut attempts = Vec::new();
    for who in ["envoy", "sidecar", "sdk"] {
        let before = differential::FLAKY_HITS.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..4 {
            let status = match who {
                "envoy" => send(envoy_addr, &flaky).0,
                "sidecar" => send(ours_addr, &flaky).0,
                _ => rt.block_on(sdk_outcome(&mesh, &flaky)).0.status,
            };
            assert_eq!(status, 503, "{who}");
        }
        let hits = differential::FLAKY_HITS.load(std::sync::atomic::Ordering::SeqCst) - before;
        attempts.push((who, hits));
    }
    assert_eq!(
        attempts,
        [("envoy", 12), ("sidecar", 12), ("sdk", 12)],
        "attempts for 4 requests retried twice on 503"
    );

    // Timeouts: a route timeout shorter than the upstream answers 504 (Envoy's "upstream
    // request timeout"), a longer one waits for the answer.
    for (target, want) in [("/zz-slow/short", 504), ("/zz-slow/long", 200)] {
        let case = Case {
            host: "api".into(),
            target: target.into(),
            headers: Vec::new(),
        };
        let got = [
            send(envoy_addr, &case).0,
            send(ours_addr, &case).0,
            rt.block_on(sdk_outcome(&mesh, &case)).0.status,
        ];
        assert_eq!(got, [want; 3], "{target}: envoy, sidecar, sdk");
    }

    drop(envoy);
    rt.block_on(async {
        mesh.shutdown().await;
        sidecar.shutdown().await;
    });
    eprintln!("whole test: {:?}", started.elapsed());
}
