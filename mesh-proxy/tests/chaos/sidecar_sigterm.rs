//! SIGTERM of a sidecar under load, with clients that retry a refused connect (which reached
//! no one) on the other sidecar and nothing else: zero lost in-flight requests.

use std::time::Duration;

use crate::app::{App, AppMode};
use crate::load::{Load, LoadSpec};
use crate::support::{
    control_plane_bin, long, report, scaled, write_atomically, ControlPlane, NodePorts, SidecarProc,
};
use crate::{mesh_file, wait_routable};

#[test]
fn sidecar_sigterm_under_load_loses_no_in_flight_request() {
    let Some(cp_bin) = control_plane_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Answers take 50 ms, so a SIGTERM always finds requests in flight.
    let app = App::start(AppMode::Answer(Duration::from_millis(50)));
    let (a, b) = (NodePorts::new("client-a"), NodePorts::new("client-b"));
    let mesh = dir.path().join("mesh.yaml");
    write_atomically(&mesh, &mesh_file(&[&a, &b], &[app.addr], "", 0));
    let cp = ControlPlane::start(
        &cp_bin,
        dir.path(),
        &["--config".into(), mesh.display().to_string()],
    );
    let mut sidecar_a = SidecarProc::start(dir.path(), cp.xds, "client-a", &[]);
    let _sidecar_b = SidecarProc::start(dir.path(), cp.xds, "client-b", &[]);
    assert!(wait_routable(a.outbound, "app"));
    assert!(wait_routable(b.outbound, "app"));

    let load = Load::start(LoadSpec {
        targets: vec![a.outbound, b.outbound],
        host: "app".into(),
        workers: 8,
        pause: Duration::from_millis(1),
        retry_refused: 3,
    });
    let phase = scaled(Duration::from_millis(1500), Duration::from_secs(20));
    let rounds = if long() { 5 } else { 1 };
    for round in 1..=rounds {
        std::thread::sleep(phase);
        let in_flight_before = load.snapshot().sent();
        let code = sidecar_a.proc.sigterm_and_wait(Duration::from_secs(15));
        assert_eq!(
            code,
            Some(0),
            "round {round}: sidecar a exits 0 after draining\n{}",
            sidecar_a.proc.logs()
        );
        assert!(load.snapshot().sent() > in_flight_before);
        std::thread::sleep(phase);
        // Back for the next round (and so that both sidecars serve at the end).
        sidecar_a = SidecarProc::start(dir.path(), cp.xds, "client-a", &[]);
        assert!(wait_routable(a.outbound, "app"));
    }
    std::thread::sleep(phase);
    let tally = load.stop();
    report(
        "sidecar SIGTERM",
        &format!("{rounds} SIGTERM rounds; {}", tally.line()),
    );
    assert!(tally.sent() > 100, "too little load: {}", tally.line());
    assert_eq!(tally.failed(), 0, "{}", tally.line());
    assert!(
        tally.retried_refused > 0,
        "the clients met the stopped sidecar: {}",
        tally.line()
    );
}
