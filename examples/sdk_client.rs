//! The in-process mesh: a hyper client wrapped with the router, rate-limit and load-balancing
//! layers, all fed live by an `XdsClient` — no sidecar at all.
//!
//! Run: `cargo run --example sdk_client` (it starts its own control plane and two app replicas
//! on loopback; point `XdsClient` at your control plane instead in a real application).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use mesh_core::{body, Cluster, ClusterLoadAssignment, RouteConfiguration};
use mesh_lb::{ClusterManager, LoadBalance, RemoveLoadAssignment};
use mesh_ratelimit::RateLimitLayer;
use mesh_router::{LayerRegistry, RouterLayer};
use mesh_xds::client::XdsClient;
use mesh_xds::server::{mesh_core_validator, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;
use tower::{Layer, ServiceExt};

const MESH: &str = r#"
services:
  - name: hello
    endpoints: [ { address: "{a}" }, { address: "{b}" } ]
    routes:
      - name: hello-limited
        match: { prefix: /limited }
        route: { cluster: hello, rate_limit: { token_bucket: { max_tokens: 1, fill_interval: 60s } } }
      - name: hello-default
        match: { prefix: / }
        route: { cluster: hello }
"#;

#[tokio::main]
async fn main() -> Result<(), mesh_core::BoxError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// Starts a control plane for the example (a real application connects to its own).
async fn control_plane(
    a: SocketAddr,
    b: SocketAddr,
) -> Result<(SocketAddr, tempfile::TempDir), mesh_core::BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mesh.yaml");
    std::fs::write(
        &path,
        MESH.replace("{a}", &a.to_string())
            .replace("{b}", &b.to_string()),
    )?;
    let cache = SnapshotCache::new();
    cache.set_validator(mesh_core_validator());
    FileSource::new(&path, cache.clone()).spawn(Duration::from_millis(200))?;
    let (addr, _) = XdsServer::new(cache).spawn("127.0.0.1:0".parse()?).await?;
    Ok((addr, dir))
}

/// The example: returns what it printed.
async fn run() -> Result<Vec<String>, mesh_core::BoxError> {
    let a = mesh_examples::hello_app("127.0.0.1:0".parse()?, "replica a").await?;
    let b = mesh_examples::hello_app("127.0.0.1:0".parse()?, "replica b").await?;
    let (xds, _dir) = control_plane(a, b).await?;

    // The layers, empty until xDS fills them.
    let clusters = ClusterManager::new();
    let router = RouterLayer::empty(LayerRegistry::default());
    let limits = RateLimitLayer::new(Default::default())?;

    // The xDS client feeds them: CDS/EDS to the cluster manager, the `outbound` route table to
    // the router, and that table's rate limits to the rate limiter.
    let removed = clusters.clone();
    let client = XdsClient::builder()
        .address(format!("http://{xds}"))
        .node_id("sdk-1")
        .sink_all::<Cluster>(Arc::new(clusters.clone()))
        .sink_each::<ClusterLoadAssignment>(Arc::new(clusters.clone()))
        .on_removed::<ClusterLoadAssignment>(move |name| {
            mesh_core::Reload::reload(&removed, RemoveLoadAssignment(name.to_string()))
        })
        .sink_named::<RouteConfiguration>("outbound", Arc::new(router.clone()))
        .sink_rate_limits("outbound", Arc::new(limits.clone()))
        .start()?;
    client.wait_ready(Duration::from_secs(10)).await?;

    // The application's client: router → rate limit → load balancer → pooled hyper client.
    let http = router.layer(limits.layer(LoadBalance::upstream(clusters.clone())));
    let mut out = Vec::new();
    for path in ["/", "/", "/limited", "/limited"] {
        let req = Request::get(format!("http://hello{path}")).body(body::empty())?;
        let resp = http.clone().oneshot(req).await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        out.push(format!(
            "GET hello{path} -> {status} {}",
            String::from_utf8_lossy(&text).trim()
        ));
    }
    client.shutdown().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sdk_client_routes_balances_and_limits_from_xds() {
        let lines = super::run().await.expect("the sdk_client example failed");
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].starts_with("GET hello/ -> 200 OK hello world from replica"),
            "{lines:?}"
        );
        assert_ne!(
            lines[0], lines[1],
            "round robin over both replicas: {lines:?}"
        );
        assert!(
            lines[2].starts_with("GET hello/limited -> 200"),
            "{lines:?}"
        );
        assert!(
            lines[3].starts_with("GET hello/limited -> 429"),
            "{lines:?}"
        );
    }
}
