//! The in-process mesh: a hyper client under the router, rate-limit and load-balancing layers,
//! all fed live by xDS through one call, `Mesh::connect` — no sidecar at all.
//!
//! Run: `cargo run --example sdk_client` (it starts its own control plane and two app replicas
//! on loopback; a real application points `MeshOptions` at its control plane instead).

use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{body, Body};
use mesh_examples::ControlPlane;
use mesh_xds::sdk::{Mesh, MeshOptions, MeshService};
use tower::{Layer, ServiceExt};

/// The example's mesh: one service with two replicas, a rate-limited route and a default one.
/// `sdk-1` is declared an SDK node, so it gets the outbound side only.
fn mesh_yaml(endpoints: &[std::net::SocketAddr]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        r#"
services:
  - name: hello
    endpoints: [ {} ]
    routes:
      - name: hello-limited
        match: {{ prefix: /limited }}
        route: {{ cluster: hello, rate_limit: {{ token_bucket: {{ max_tokens: 1, fill_interval: 60s }} }} }}
      - name: hello-default
        match: {{ prefix: / }}
        route: {{ cluster: hello }}
nodes:
  - {{ id: sdk-1, sdk: true }}
"#,
        eps.join(", ")
    )
}

#[tokio::main]
async fn main() -> Result<(), mesh_core::BoxError> {
    let a = mesh_examples::hello_app("127.0.0.1:0".parse()?, "replica a").await?;
    let b = mesh_examples::hello_app("127.0.0.1:0".parse()?, "replica b").await?;
    let cp = ControlPlane::start(&mesh_yaml(&[a, b])).await?;

    // One call: the layers, fed live by the control plane.
    let mesh = Mesh::connect(MeshOptions::new(cp.url(), "sdk-1")).await?;
    // Your own hyper client, under the mesh's layers.
    let http = mesh
        .layer()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Body>());
    for path in ["/", "/", "/limited", "/limited"] {
        println!("{}", get(&http, "hello", path).await?);
    }
    mesh.shutdown().await;
    Ok(())
}

/// `GET http://{host}{path}` through the mesh, as one line: status and body.
async fn get(http: &MeshService, host: &str, path: &str) -> Result<String, mesh_core::BoxError> {
    let req = Request::get(format!("http://{host}{path}")).body(body::empty())?;
    let resp = http.clone().oneshot(req).await?;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    Ok(format!(
        "GET {host}{path} -> {status} {}",
        String::from_utf8_lossy(&text).trim()
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use super::*;

    /// Routing, balancing and rate limiting from xDS; an endpoint change followed live; a
    /// thousand concurrent calls spawned on the runtime; a miss that names what did not match.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sdk_client_routes_balances_limits_and_follows_xds() {
        let a = mesh_examples::hello_app("127.0.0.1:0".parse().unwrap(), "replica a")
            .await
            .unwrap();
        let b = mesh_examples::hello_app("127.0.0.1:0".parse().unwrap(), "replica b")
            .await
            .unwrap();
        let cp = ControlPlane::start(&mesh_yaml(&[a, b])).await.unwrap();
        let mesh = Mesh::connect(MeshOptions::new(cp.url(), "sdk-1"))
            .await
            .expect("the mesh connects and gets a full config");
        let http = mesh
            .layer()
            .layer(Client::builder(TokioExecutor::new()).build_http::<Body>());

        // Balancing: round robin alternates the two replicas.
        let first = get(&http, "hello", "/").await.unwrap();
        let second = get(&http, "hello", "/").await.unwrap();
        assert!(
            first.starts_with("GET hello/ -> 200 OK hello world from replica"),
            "{first}"
        );
        assert!(
            second.starts_with("GET hello/ -> 200 OK hello world from replica"),
            "{second}"
        );
        assert_ne!(first, second, "both replicas answer");

        // Rate limiting of the route, in-process: one token, then 429.
        assert!(get(&http, "hello", "/limited")
            .await
            .unwrap()
            .contains("-> 200"));
        let limited = get(&http, "hello", "/limited").await.unwrap();
        assert!(limited.contains("-> 429"), "{limited}");

        // A miss names the authority and path that did not match.
        let miss = get(&http, "nowhere", "/x").await.unwrap();
        assert!(miss.contains("-> 404"), "{miss}");
        assert!(
            miss.contains(r#"authority "nowhere" and path /x"#),
            "{miss}"
        );

        // A thousand concurrent calls, each spawned on the runtime: the client and its
        // futures are Send + 'static.
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let client = http.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get("http://hello/").body(body::empty()).unwrap();
                let resp = client.oneshot(req).await?;
                Ok::<_, mesh_core::MeshError>(resp.status())
            }));
        }
        let mut statuses = BTreeMap::new();
        for t in tasks {
            let status = t.await.unwrap().unwrap();
            *statuses.entry(status.as_u16()).or_insert(0) += 1;
        }
        assert_eq!(statuses, BTreeMap::from([(200, 1000)]));

        // The unboxed stack (`MeshStack<Upstream>`, our pooled client) spawns as well.
        let stack = mesh.stack();
        let req = Request::get("http://hello/").body(body::empty()).unwrap();
        let resp = tokio::spawn(stack.oneshot(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);

        // A live endpoint change: replica c replaces both; the layers follow without a restart.
        let c = mesh_examples::hello_app("127.0.0.1:0".parse().unwrap(), "replica c")
            .await
            .unwrap();
        cp.rewrite(&mesh_yaml(&[c])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = get(&http, "hello", "/").await.unwrap();
            if line.ends_with("replica c") {
                break;
            }
            assert!(Instant::now() < deadline, "still {line} after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..10 {
            let line = get(&http, "hello", "/").await.unwrap();
            assert!(line.ends_with("replica c"), "{line}");
        }
        mesh.shutdown().await;
    }
}
