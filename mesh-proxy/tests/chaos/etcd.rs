//! The registry under faults, with load throughout: etcd restarted; a 3-member etcd cluster
//! losing one member, then the leader (no quorum), then both back. Registrations survive, the
//! control plane keeps serving its last good snapshot while etcd cannot answer, and follows
//! new registrations once etcd (or quorum) is back.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_testkit::{http_request, wait_for, EtcdCluster, EtcdProcess};

use crate::app::{App, AppMode};
use crate::load::{Load, LoadSpec};
use crate::support::{control_plane_bin, report, scaled, ControlPlane, NodePorts, SidecarProc};
use crate::wait_routable;

/// The mesh: a client node and a publisher node; the service `hello` comes only from the
/// registry.
struct Mesh {
    client: NodePorts,
    cp: ControlPlane,
    _client_sidecar: SidecarProc,
    publisher: SidecarProc,
}

fn start_mesh(cp_bin: &Path, dir: &Path, etcd_endpoints: &[String], registry: &str) -> Mesh {
    let client = NodePorts::new("client-1");
    let publisher_ports = NodePorts::new("pub-1");
    let base = dir.join("base.yaml");
    std::fs::write(
        &base,
        format!("nodes:\n{}{}", client.yaml(), publisher_ports.yaml()),
    )
    .unwrap();
    let cp = ControlPlane::start(
        cp_bin,
        dir,
        &[
            "--etcd".into(),
            etcd_endpoints.join(","),
            "--prefix".into(),
            "/mesh".into(),
            "--config".into(),
            base.display().to_string(),
        ],
    );
    let client_sidecar = SidecarProc::start(dir, cp.xds, "client-1", &[]);
    let publisher = SidecarProc::start(
        dir,
        cp.xds,
        "pub-1",
        &[
            "--registry".into(),
            registry.into(),
            "--registry-ttl".into(),
            "10".into(),
        ],
    );
    Mesh {
        client,
        cp,
        _client_sidecar: client_sidecar,
        publisher,
    }
}

/// Publishes `app` as `hello` through the publisher's registration API, retrying (at most
/// 20 s) while the registry cannot take it.
fn publish(publisher: SocketAddr, app: &App) {
    let body = format!(
        r#"{{"service":"hello","address":"127.0.0.1","port":{}}}"#,
        app.addr.port()
    );
    let mut last = String::new();
    let done = wait_for(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || match http_request(publisher, "POST", "/pub", &[], body.as_bytes()) {
            Ok(r) if r.status == 200 => Some(()),
            Ok(r) => {
                last = format!("{}: {}", r.status, r.text());
                None
            }
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        },
    );
    assert!(done.is_some(), "publish {}: {last}", app.addr);
}

/// Waits (at most 20 s) until `app` receives traffic: the control plane followed its
/// registration to the client sidecar.
fn wait_served(app: &App, what: &str) {
    let before = app.hits();
    let served = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        (app.hits() > before).then_some(())
    });
    assert!(served.is_some(), "{what}: {} never served", app.addr);
}

fn load_on(mesh: &Mesh) -> Load {
    Load::start(LoadSpec {
        targets: vec![mesh.client.outbound],
        host: "hello".into(),
        workers: 4,
        pause: Duration::from_millis(2),
        retry_refused: 0,
    })
}

#[test]
fn etcd_restart_under_load_fails_nothing_and_new_registrations_follow() {
    let Some(cp_bin) = control_plane_bin() else {
        return;
    };
    if mesh_testkit::require_etcd().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdProcess::start().unwrap();
    let mesh = start_mesh(&cp_bin, dir.path(), &[etcd.endpoint()], &etcd.client_url());
    let (app1, app2) = (
        App::start(AppMode::Answer(Duration::ZERO)),
        App::start(AppMode::Answer(Duration::ZERO)),
    );
    publish(mesh.publisher.admin, &app1);
    assert!(wait_routable(mesh.client.outbound, "hello"));

    let load = load_on(&mesh);
    let phase = scaled(Duration::from_millis(1500), Duration::from_secs(30));
    std::thread::sleep(phase);
    etcd.stop();
    // etcd is gone: the control plane keeps serving its last snapshot.
    std::thread::sleep(phase);
    etcd.restart().unwrap();
    publish(mesh.publisher.admin, &app2);
    wait_served(&app2, "registered after the etcd restart");
    wait_served(&app1, "registered before the etcd restart");
    std::thread::sleep(phase);
    let tally = load.stop();
    report(
        "etcd restart",
        &format!(
            "{}; app1 hits {}, app2 hits {}",
            tally.line(),
            app1.hits(),
            app2.hits()
        ),
    );
    assert!(tally.sent() > 100, "too little load: {}", tally.line());
    assert_eq!(tally.failed(), 0, "{}", tally.line());
    drop(mesh.cp);
}

#[test]
fn etcd_cluster_losing_a_member_then_quorum_keeps_serving_and_follows_after() {
    let Some(cp_bin) = control_plane_bin() else {
        return;
    };
    if mesh_testkit::require_etcd().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdCluster::start(3).unwrap();
    let leader = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        etcd.leader()
    })
    .expect("a leader");
    // Killed first: a follower; the publisher talks to the other follower, the survivor.
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let survivor = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let mesh = start_mesh(
        &cp_bin,
        dir.path(),
        &etcd.endpoints(),
        &etcd.client_url(survivor),
    );
    let apps: Vec<App> = (0..3)
        .map(|_| App::start(AppMode::Answer(Duration::ZERO)))
        .collect();
    publish(mesh.publisher.admin, &apps[0]);
    assert!(wait_routable(mesh.client.outbound, "hello"));

    let load = load_on(&mesh);
    let phase = scaled(Duration::from_millis(1500), Duration::from_secs(30));
    std::thread::sleep(phase);

    // One member lost: quorum stays (2 of 3); registrations still go through.
    etcd.kill(follower);
    publish(mesh.publisher.admin, &apps[1]);
    wait_served(&apps[1], "registered with one member down");

    // The leader lost too: no quorum. The control plane keeps serving its last snapshot.
    etcd.kill(leader);
    std::thread::sleep(phase);
    let during = load.snapshot();

    // Both back: quorum again; the old registrations survived, new ones are followed.
    etcd.restart_all_stopped().unwrap();
    publish(mesh.publisher.admin, &apps[2]);
    wait_served(&apps[2], "registered after quorum came back");
    wait_served(&apps[0], "registered before the faults");
    std::thread::sleep(phase);
    let tally = load.stop();
    let hits: Vec<u64> = apps.iter().map(App::hits).collect();
    report(
        "etcd 3-member cluster",
        &format!(
            "{}; without quorum: {}; app hits {hits:?}",
            tally.line(),
            during.line()
        ),
    );
    assert!(tally.sent() > 100, "too little load: {}", tally.line());
    assert_eq!(tally.failed(), 0, "{}", tally.line());
    drop(mesh.cp);
}
