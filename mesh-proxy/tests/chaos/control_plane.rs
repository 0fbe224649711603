//! kill -9 of the control plane under load, then a restart: zero failed requests; the sidecar
//! reconnects and converges to the restarted control plane's versions.

use std::time::Duration;

use crate::app::{App, AppMode};
use crate::load::{Load, LoadSpec};
use crate::support::{
    control_plane_bin, long, report, scaled, write_atomically, ControlPlane, NodePorts, SidecarProc,
};
use crate::{mesh_file, wait_routable};

#[test]
fn control_plane_kill9_under_load_fails_nothing_and_the_sidecar_converges() {
    let Some(cp_bin) = control_plane_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(AppMode::Answer(Duration::ZERO));
    let node = NodePorts::new("client-1");
    let mesh = dir.path().join("mesh.yaml");
    write_atomically(&mesh, &mesh_file(&[&node], &[app.addr], "", 0));
    let mut cp = ControlPlane::start(
        &cp_bin,
        dir.path(),
        &["--config".into(), mesh.display().to_string()],
    );
    let sidecar = SidecarProc::start(dir.path(), cp.xds, "client-1", &[]);
    sidecar
        .converge(&cp, "client-1", Duration::from_secs(15))
        .unwrap();
    assert!(wait_routable(node.outbound, "app"));

    let load = Load::start(LoadSpec {
        targets: vec![node.outbound],
        host: "app".into(),
        workers: 4,
        pause: Duration::from_millis(2),
        retry_refused: 0,
    });
    let phase = scaled(Duration::from_millis(1500), Duration::from_secs(20));
    let rounds: u32 = if long() { 5 } else { 1 };
    let mut view = None;
    for round in 1..=rounds {
        std::thread::sleep(phase);
        cp.proc.kill9();
        // Edited while it is down: the restarted control plane serves versions the sidecar has
        // never seen, so equal versions below prove it reconnected and took them.
        write_atomically(&mesh, &mesh_file(&[&node], &[app.addr], "", round));
        std::thread::sleep(phase);
        cp.proc.start();
        cp.wait_up();
        let v = sidecar
            .converge(&cp, "client-1", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: no convergence: {e}"));
        view = Some(v);
    }
    std::thread::sleep(phase);
    let tally = load.stop();
    let view = view.unwrap();
    report(
        "control plane kill -9",
        &format!(
            "{rounds} kill/restart rounds; {}; sidecar connects {}, nacks {}",
            tally.line(),
            view.connects,
            view.nacks
        ),
    );
    assert!(tally.sent() > 100, "too little load: {}", tally.line());
    assert_eq!(tally.failed(), 0, "{}", tally.line());
    assert!(
        view.connects > u64::from(rounds),
        "the sidecar reconnected after each restart: {view:?}"
    );
    assert_eq!(view.nacks, 0, "{view:?}");
}
