//! The `mesh-control-plane` binary on SIGTERM: it stops accepting, tells the open connections
//! GOAWAY, and exits 0 within its drain bound even though ADS streams never end by themselves.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_testkit::{free_ports, http_get, wait_for};
use mesh_xds::client::XdsClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_within_the_bound() {
    let ports = free_ports(2);
    let (xds, admin) = (
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    );
    let config = mesh_testkit::workspace_root().join("examples/mesh.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-control-plane"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", &xds.to_string(), "--admin", &admin.to_string()])
        .args(["--drain-timeout", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            matches!(http_get(admin, "/healthz"), Ok((200, _))).then_some(())
        })
    })
    .await
    .unwrap();
    assert!(up.is_some(), "admin endpoint up");

    // A subscriber with an open ADS stream.
    let client = XdsClient::builder()
        .address(format!("http://{xds}"))
        .node_id("orders-1")
        .start()
        .unwrap();
    client.wait_ready(Duration::from_secs(10)).await.unwrap();

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let sent = Instant::now();
    let (mut child, status) = tokio::task::spawn_blocking(move || {
        let status = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            child.try_wait().unwrap()
        });
        (child, status)
    })
    .await
    .unwrap();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("still running 10 s after SIGTERM");
    };
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?} (bound 2 s)");
    // New connections are refused once it is gone.
    assert!(std::net::TcpStream::connect(xds).is_err());
    client.shutdown().await;
}
