//! Real Envoy as the oracle for authorization: one mesh.yaml with a service's `authz:` rules,
//! served by our control plane, configures the inbound listener of a real Envoy (its RBAC HTTP
//! filter) and of our sidecar (its RBAC layer); a generated corpus of requests (paths × methods
//! × headers) gets the same allow (200) or deny (403 `RBAC: access denied`) from both, and every
//! difference fails the test with the case printed. The policies are principal-free (plaintext:
//! no caller has an identity); identity-based ones are covered once mTLS carries identities.
//!
//! Under `CI=true` a missing Envoy fails the test (mesh-testkit's skip-or-fail policy).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_testkit::{http_request, EnvoyProcess, HttpStub};
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;

const PATHS: [&str; 12] = [
    "/api/orders",
    "/api/",
    "/api",
    "/api/orders?limit=1",
    "/API/orders",
    "/healthz",
    "/healthz/deep",
    "/admin/reset",
    "/admin",
    "/other",
    "/",
    "/api/x/../../admin/reset",
];
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
const HEADERS: [&[(&str, &str)]; 2] = [&[], &[("x-team", "ops")]];

fn mesh_yaml(app: SocketAddr, envoy: (u16, u16), ours: (u16, u16)) -> String {
    format!(
        r#"
services:
  - name: api
    authz:
      allow:
        - paths: ["/api/*", /healthz]
          methods: [GET, PUT]
        - paths: ["/admin/*"]
          methods: [POST]
        - methods: [PATCH]
nodes:
  - id: envoy-rbac
    service: api
    listeners: {{ outbound: 127.0.0.1:{eo}, inbound: 127.0.0.1:{ei}, local_app: {app} }}
  - id: sidecar-rbac
    service: api
    listeners: {{ outbound: 127.0.0.1:{oo}, inbound: 127.0.0.1:{oi}, local_app: {app} }}
"#,
        eo = envoy.0,
        ei = envoy.1,
        oo = ours.0,
        oi = ours.1,
    )
}

/// Status and body of one request (no body for a 200: the app's is the same for both).
fn outcome(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![("Host", "api")];
    all.extend_from_slice(headers);
    let r = http_request(addr, method, path, &all, b"").unwrap();
    (
        r.status,
        if r.status == 403 {
            r.text()
        } else {
            String::new()
        },
    )
}

#[test]
fn envoy_and_our_sidecar_authorize_a_corpus_alike() {
    let _bin = mesh_testkit::envoy_or_skip!();
    let app = HttpStub::start(200, "app").unwrap();
    let p = mesh_testkit::free_ports(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, mesh_yaml(app.addr(), (p[0], p[1]), (p[2], p[3]))).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    let (xds, sidecar) = rt.block_on(async {
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
        let mut o = DynamicOptions::new(vec![format!("http://{xds}")], "sidecar-rbac");
        o.admin = SocketAddr::from(([127, 0, 0, 1], p[4]));
        o.drain_timeout = Duration::from_millis(200);
        (xds, Sidecar::start_dynamic(o).await.unwrap())
    });
    let _envoy =
        EnvoyProcess::start(&mesh_testkit::ads_bootstrap("envoy-rbac", xds, "GRPC")).unwrap();
    let envoy = SocketAddr::from(([127, 0, 0, 1], p[1]));
    let ours = SocketAddr::from(([127, 0, 0, 1], p[3]));
    for (what, addr) in [("envoy", envoy), ("the sidecar", ours)] {
        let up = mesh_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            http_request(addr, "GET", "/healthz", &[("Host", "api")], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(up.is_some(), "{what}'s inbound listener never served");
    }

    let mut diffs = Vec::new();
    let mut tally = std::collections::BTreeMap::<u16, usize>::new();
    let mut total = 0;
    for path in PATHS {
        for method in METHODS {
            for headers in HEADERS {
                total += 1;
                let want = outcome(envoy, method, path, headers);
                let got = outcome(ours, method, path, headers);
                *tally.entry(want.0).or_default() += 1;
                if got != want {
                    diffs.push(format!(
                        "{method} {path} {headers:?}\n  envoy:   {want:?}\n  sidecar: {got:?}"
                    ));
                }
            }
        }
    }
    eprintln!("{total} cases; envoy statuses {tally:?}");
    assert!(total >= 50);
    assert!(
        diffs.is_empty(),
        "{} of {total} cases differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // The corpus exercises both answers, and denials carry Envoy's body.
    assert!(tally.get(&200).is_some_and(|n| *n >= 10), "{tally:?}");
    assert!(tally.get(&403).is_some_and(|n| *n >= 10), "{tally:?}");
    assert_eq!(
        outcome(ours, "DELETE", "/api/x", &[]).1,
        "RBAC: access denied"
    );
    rt.block_on(sidecar.shutdown());
}
