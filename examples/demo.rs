//! The whole mesh in one command: `cargo run --release --example demo`.
//!
//! Starts the control plane on an embedded mesh.yaml, a hello app on :6060 and two sidecars fed
//! by xDS, so that `curl 127.0.0.1:8082/` crosses app → :8082 → :8083 → app, then prints what
//! to try and runs until Ctrl-C.

use mesh_examples::demo::{Demo, Ports};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = match Demo::start(Ports::default()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: could not start: {e}\n(are ports 6060, 8082, 8083, 15000, 15001, 18000, 19000 free?)");
            std::process::exit(1);
        }
    };
    println!("{}", demo.instructions());
    tokio::signal::ctrl_c().await?;
    println!("stopping: draining the sidecars");
    demo.shutdown().await;
    Ok(())
}

/// The demo's ports, all free ones (tests run beside each other and beside a running demo).
#[cfg(test)]
fn free_ports() -> Ports {
    let p = mesh_testkit::free_ports(12);
    Ports {
        app: p[0],
        client_out: p[1],
        hello_in: p[2],
        hello_out: p[3],
        client_in: p[4],
        client_app: p[5],
        xds: p[6],
        cp_admin: p[7],
        client_admin: p[8],
        hello_admin: p[9],
        envoy_out: p[10],
        envoy_in: p[11],
    }
}

#[cfg(test)]
mod tests {
    use super::free_ports;
    use mesh_examples::demo::Demo;
    use std::net::SocketAddr;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_answers_through_both_hops_and_rate_limits() {
        let ports = free_ports();
        let demo = Demo::start(ports).await.unwrap();
        assert!(demo
            .instructions()
            .contains(&format!("curl 127.0.0.1:{}/", ports.client_out)));
        let out = SocketAddr::from(([127, 0, 0, 1], ports.client_out));
        let statuses = tokio::task::spawn_blocking(move || {
            let hello =
                mesh_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
                    mesh_testkit::http_get(out, "/").ok().filter(|r| r.0 == 200)
                });
            let limited: Vec<u16> = (0..3)
                .map(|_| mesh_testkit::http_get(out, "/limited").unwrap().0)
                .collect();
            (hello, limited)
        })
        .await
        .unwrap();
        assert_eq!(
            statuses.0.map(|r| r.1),
            Some("hello world from the hello app\n".to_string())
        );
        assert_eq!(statuses.1, vec![200, 200, 429]);
        let admin = SocketAddr::from(([127, 0, 0, 1], ports.cp_admin));
        let (code, body) = tokio::task::spawn_blocking(move || {
            mesh_testkit::http_get(admin, "/snapshots").unwrap()
        })
        .await
        .unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains("client-1") && body.contains("hello-1"),
            "{body}"
        );
        demo.shutdown().await;
    }
}

#[cfg(test)]
mod envoy_tests {
    use super::free_ports;
    use mesh_examples::demo::Demo;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// The shipped Envoy bootstrap, pointed at this test's ports, joins the demo mesh.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_envoy_joins_the_demo_with_the_shipped_bootstrap() {
        let Some(_envoy) = mesh_testkit::require_envoy() else {
            return;
        };
        let ports = free_ports();
        let demo = Demo::start(ports).await.unwrap();
        let bootstrap =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/bootstrap.yaml"))
                .unwrap()
                .replace("port_value: 18000", &format!("port_value: {}", ports.xds))
                .replace("port_value: 9901", "port_value: 0");
        let out = SocketAddr::from(([127, 0, 0, 1], ports.envoy_out));
        let body = tokio::task::spawn_blocking(move || {
            let envoy = mesh_testkit::EnvoyProcess::start(&bootstrap).unwrap();
            let got =
                mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
                    mesh_testkit::http_get(out, "/").ok().filter(|r| r.0 == 200)
                });
            drop(envoy);
            got
        })
        .await
        .unwrap();
        assert_eq!(
            body.map(|r| r.1),
            Some("hello world from the hello app\n".to_string()),
            "Envoy → hello-1 → app"
        );
        demo.shutdown().await;
    }
}
