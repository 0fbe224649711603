//! 100 edits of the mesh file in a row under load: zero failed requests, no NACK, and the
//! sidecar ends on the control plane's last version.

use std::time::Duration;

use crate::app::{App, AppMode};
use crate::load::{Load, LoadSpec};
use crate::support::{
    control_plane_bin, report, scaled, write_atomically, ControlPlane, NodePorts, SidecarProc,
};
use crate::{mesh_file, wait_routable};

const EDITS: u32 = 100;

#[test]
fn a_hundred_config_edits_under_load_fail_nothing() {
    let Some(cp_bin) = control_plane_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let apps = [
        App::start(AppMode::Answer(Duration::ZERO)),
        App::start(AppMode::Answer(Duration::ZERO)),
    ];
    let node = NodePorts::new("client-1");
    let mesh = dir.path().join("mesh.yaml");
    // Each edit changes an endpoint's metadata (EDS), and every other one also the route
    // time-out (RDS) and which endpoints serve (both apps, or only the first).
    let file = |edit: u32| {
        let endpoints: Vec<_> = if edit % 4 == 3 {
            vec![apps[0].addr]
        } else {
            apps.iter().map(|a| a.addr).collect()
        };
        let extra = format!("    timeout: {}ms\n", 5_000 + edit % 2);
        mesh_file(&[&node], &endpoints, &extra, edit)
    };
    write_atomically(&mesh, &file(0));
    let cp = ControlPlane::start(
        &cp_bin,
        dir.path(),
        &["--config".into(), mesh.display().to_string()],
    );
    let sidecar = SidecarProc::start(dir.path(), cp.xds, "client-1", &[]);
    let before = sidecar
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
    let gap = scaled(Duration::from_millis(50), Duration::from_millis(1200));
    std::thread::sleep(gap * 4);
    for edit in 1..=EDITS {
        write_atomically(&mesh, &file(edit));
        std::thread::sleep(gap);
    }
    let after = sidecar.converge(&cp, "client-1", Duration::from_secs(20));
    std::thread::sleep(gap * 4);
    let tally = load.stop();
    let after = after.unwrap_or_else(|e| panic!("no convergence after the edits: {e}"));
    report(
        "100 config edits",
        &format!(
            "{}; sidecar acks {} -> {}, nacks {}",
            tally.line(),
            before.acks,
            after.acks,
            after.nacks
        ),
    );
    assert!(tally.sent() > 100, "too little load: {}", tally.line());
    assert_eq!(tally.failed(), 0, "{}", tally.line());
    assert_eq!(after.nacks, 0, "{after:?}");
    assert!(
        after.acks >= before.acks + 10,
        "the edits reached the sidecar: acks {} -> {}",
        before.acks,
        after.acks
    );
}
