//! Both admin endpoints' `/metrics` (the sidecar's and the control plane's) pass
//! `promtool check metrics` after real traffic, so every family has samples.
#![allow(clippy::unwrap_used)]

#[path = "admin/mesh.rs"]
mod mesh;

use std::time::Duration;

use mesh::{get, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_admin_metrics_pass_promtool_after_real_traffic() {
    let Some(promtool) = mesh_testkit::require_promtool() else {
        return;
    };
    let mesh = Mesh::start().await;
    let out = mesh.out;
    let statuses = tokio::task::spawn_blocking(move || {
        let call = |host: &str| {
            mesh_testkit::http_request(out, "GET", "/", &[("Host", host)], b"")
                .map(|r| r.status)
                .unwrap_or(0)
        };
        // The outbound listener binds a moment after /ready; retry briefly.
        mesh_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            (call("hello") == 200).then_some(())
        });
        (0..20)
            .map(|i| call(if i % 4 == 0 { "nowhere" } else { "hello" }))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 404).count(),
        5,
        "{statuses:?}"
    );

    let endpoints = [
        ("client sidecar", mesh.client.admin_addr()),
        ("hello sidecar", mesh.hello.admin_addr()),
        ("control plane", mesh.cp_admin),
    ];
    for (what, admin) in endpoints {
        let (status, text) = get(admin, "/metrics").await;
        assert_eq!(status, 200, "{what}: {text}");
        if let Err(problems) = mesh_testkit::promtool_check_metrics(&promtool, &text) {
            panic!("{what}: {problems}\n--- exposition ---\n{text}");
        }
    }
    // The samples are there: the traffic's counters and histograms, and the xDS exchange.
    let (_, client) = get(mesh.client.admin_addr(), "/metrics").await;
    // (The warm-up's requests count too: at least 15 and 20.)
    let sample = |prefix: &str| -> f64 {
        client
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix}:\n{client}"))
    };
    assert!(sample("mesh_requests_total{listener=\"outbound\",route=\"hello\",cluster=\"hello\",status_class=\"2xx\"}") >= 15.0);
    assert!(sample("mesh_request_duration_seconds_count{listener=\"outbound\"}") >= 20.0);
    for needle in [
        "# TYPE mesh_requests_total counter",
        "mesh_local_replies_total{listener=\"outbound\",code=\"no_route\"} 5",
        "# TYPE mesh_request_duration_seconds histogram",
        "# TYPE mesh_upstream_requests_overflow_total counter",
        "# TYPE mesh_xds_version_info gauge",
    ] {
        assert!(
            client.contains(needle),
            "client sidecar lacks {needle:?}:\n{client}"
        );
    }
    let (_, cp) = get(mesh.cp_admin, "/metrics").await;
    for needle in [
        "# TYPE xds_acks_total counter",
        "# TYPE xds_convergence_seconds histogram",
        "xds_streams_open 2",
    ] {
        assert!(cp.contains(needle), "control plane lacks {needle:?}:\n{cp}");
    }
    mesh.stop().await;
}
