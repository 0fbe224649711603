//! A stalled app and a black-holed endpoint (accepts, never answers) beside three good ones: the
//! route time-out fires, outlier detection ejects both, traffic moves on to the good ones, and
//! the sidecar's memory stays bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::app::{App, AppMode};
use crate::load::{Load, LoadSpec};
use crate::support::{
    control_plane_bin, report, scaled, vm_rss_kib, write_atomically, ControlPlane, NodePorts,
    SidecarProc,
};
use crate::{mesh_file, wait_routable};

/// Consecutive gateway failures (504 time-outs) that eject an endpoint.
const EJECT_AFTER: u64 = 3;
const WORKERS: usize = 4;
/// Resident-memory growth allowed over the run (the sidecar starts at a few MiB).
const RSS_GROWTH_KIB: u64 = 64 * 1024;

#[test]
fn stalled_and_black_holed_endpoints_time_out_get_ejected_and_memory_stays_bounded() {
    let Some(cp_bin) = control_plane_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Three good apps, so that with both bad ones ejected 60 % stay healthy: under 50 % the
    // balancer would enter panic mode (as Envoy's default healthy_panic_threshold) and spread
    // traffic over the ejected endpoints again.
    let good: Vec<App> = (0..3)
        .map(|_| App::start(AppMode::Answer(Duration::ZERO)))
        .collect();
    let good_hits = || good.iter().map(App::hits).sum::<u64>();
    let stalled = App::start(AppMode::Answer(Duration::from_secs(3600)));
    let black_hole = App::start(AppMode::BlackHole);
    let node = NodePorts::new("client-1");
    let run = scaled(Duration::from_secs(6), Duration::from_secs(120));
    let extra = format!(
        "    timeout: 300ms\n    outlier_detection: {{ consecutive_5xx: {EJECT_AFTER}, \
         consecutive_gateway_failure: {EJECT_AFTER}, interval: 1s, base_ejection_time: {}s, \
         max_ejection_percent: 100 }}\n",
        run.as_secs() * 10
    );
    let mesh = dir.path().join("mesh.yaml");
    write_atomically(
        &mesh,
        &mesh_file(
            &[&node],
            &[
                good[0].addr,
                good[1].addr,
                good[2].addr,
                stalled.addr,
                black_hole.addr,
            ],
            &extra,
            0,
        ),
    );
    let cp = ControlPlane::start(
        &cp_bin,
        dir.path(),
        &["--config".into(), mesh.display().to_string()],
    );
    let sidecar = SidecarProc::start(dir.path(), cp.xds, "client-1", &[]);
    sidecar
        .converge(&cp, "client-1", Duration::from_secs(15))
        .unwrap();
    let rss_start = sidecar.rss_kib().unwrap();

    let load = Load::start(LoadSpec {
        targets: vec![node.outbound],
        host: "app".into(),
        workers: WORKERS,
        pause: Duration::from_millis(2),
        retry_refused: 0,
    });
    // Memory sampled every 100 ms for the whole run.
    let sampling = Arc::new(AtomicBool::new(true));
    let pid = sidecar.proc.pid();
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0u64;
            while sampling.load(Ordering::Acquire) {
                if let Some(kib) = vm_rss_kib(pid) {
                    max = max.max(kib);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        })
    };
    std::thread::sleep(run / 2);
    let first_half = load.snapshot();
    let good_hits_half = good_hits();
    std::thread::sleep(run / 2);
    let tally = load.stop();
    sampling.store(false, Ordering::Release);
    let rss_max = sampler.join().unwrap();
    let second_half_failed = tally.failed() - first_half.failed();
    let second_half_sent = tally.sent() - first_half.sent();
    report(
        "slow and black-holed endpoints",
        &format!(
            "{}; first half {}; second half sent {second_half_sent}, failed \
             {second_half_failed}; stalled app hits {}, black hole hits {}, good hits {}; \
             sidecar RSS start {rss_start} KiB, max {rss_max} KiB",
            tally.line(),
            first_half.line(),
            stalled.hits(),
            black_hole.hits(),
            good_hits()
        ),
    );
    assert!(
        stalled.hits() >= 1 && black_hole.hits() >= 1,
        "both bad endpoints were tried"
    );
    assert!(
        tally.by_outcome.get("504").copied().unwrap_or(0) >= 1,
        "the route time-out fired: {}",
        tally.line()
    );
    // Each bad endpoint fails at most EJECT_AFTER times in a row, plus what was already in
    // flight to it when it was ejected.
    let bound = 2 * (EJECT_AFTER + WORKERS as u64);
    assert!(
        tally.failed() <= bound,
        "failures {} over the ejection bound {bound}: {}",
        tally.failed(),
        tally.line()
    );
    assert_eq!(second_half_failed, 0, "traffic moved on: {}", tally.line());
    assert!(good_hits() > good_hits_half && second_half_sent > 50);
    assert!(
        rss_max <= rss_start + RSS_GROWTH_KIB,
        "sidecar RSS grew from {rss_start} KiB to {rss_max} KiB"
    );
    assert!(wait_routable(node.outbound, "app"));
}
