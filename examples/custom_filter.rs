//! Your own sidecar, with your own filter: `cargo run --example custom_filter`.
//!
//! Registers a `require-header` filter factory (config `header`: the header a request must
//! carry, else 403; `tag`: what it appends to the response's `x-checked-by`), then runs the
//! control plane and two sidecars built with that registry. The mesh.yaml places the filter on
//! the client's outbound listener and the server's inbound listener (`http_filters`), and on one
//! route (`routes[].filters`): app → outbound sidecar → inbound sidecar → app.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use mesh_core::{Body, BoxError, FilterConfig};
use mesh_examples::{hello_app, ready_sidecar, ControlPlane};
use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_router::{LayerRegistry, RouteLayer};
use tower::{Layer, Service};

/// The mesh, with `{port}` placeholders.
const MESH_YAML: &str = r#"
services:
  - name: hello
    aliases: ["*"]
    endpoints: [ { address: "127.0.0.1:{hello_in}" } ]
    routes:
      - name: guarded                       # a per-route filter, on top of the listener's
        match: { prefix: /guarded }
        route: { cluster: hello }
        filters:
          - custom: { name: require-header, config: { header: x-role, tag: route } }
      - name: default
        match: { prefix: / }
        route: { cluster: hello }
http_filters:                               # every sidecar's outbound listener...
  outbound:
    - custom: { name: require-header, config: { header: x-tenant, tag: outbound } }
nodes:
  - id: hello-1
    service: hello
    listeners: { outbound: "127.0.0.1:{hello_out}", inbound: "127.0.0.1:{hello_in}", local_app: "127.0.0.1:{app}" }
    http_filters:                           # ...but this node's own lists win
      outbound: []
      inbound:
        - custom: { name: require-header, config: { header: x-tenant, tag: inbound } }
  - id: client-1
    listeners: { outbound: "127.0.0.1:{client_out}", inbound: "127.0.0.1:{client_in}", local_app: "127.0.0.1:{client_app}" }
"#;

/// The response header each filter instance appends its tag to.
pub const CHECKED_BY: &str = "x-checked-by";

/// Answers 403 to requests without `header`; tags the responses of the others.
#[derive(Clone, Debug)]
struct RequireHeaderLayer {
    header: HeaderName,
    tag: HeaderValue,
}

impl RequireHeaderLayer {
    /// The factory registered as `require-header`: a bad config refuses the listener or route
    /// (the sidecar NACKs it), so it is checked here, once, not per request.
    fn factory(config: &FilterConfig) -> Result<RouteLayer, String> {
        let FilterConfig::Custom { config, .. } = config else {
            return Err("require-header takes a custom config".into());
        };
        let header = config
            .get("header")
            .ok_or("require-header needs `header`")?;
        let header = HeaderName::try_from(header.as_str()).map_err(|e| format!("header: {e}"))?;
        let tag = config.get("tag").map_or("require-header", String::as_str);
        let tag = HeaderValue::try_from(tag).map_err(|e| format!("tag: {e}"))?;
        Ok(RouteLayer::new(Self { header, tag }))
    }
}

impl<S> Layer<S> for RequireHeaderLayer {
    type Service = RequireHeader<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireHeader {
            inner,
            cfg: Arc::new(self.clone()),
        }
    }
}

/// The service of [`RequireHeaderLayer`].
#[derive(Clone, Debug)]
struct RequireHeader<S> {
    inner: S,
    cfg: Arc<RequireHeaderLayer>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl<S> Service<Request<Body>> for RequireHeader<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> BoxFuture {
        let cfg = Arc::clone(&self.cfg);
        if !req.headers().contains_key(&cfg.header) {
            let mut resp = Response::new(mesh_core::body::full(format!(
                "missing header {}\n",
                cfg.header
            )));
            *resp.status_mut() = StatusCode::FORBIDDEN;
            resp.headers_mut().append(CHECKED_BY, cfg.tag.clone());
            return Box::pin(async move { Ok(resp) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().append(CHECKED_BY, cfg.tag.clone());
            Ok(resp)
        })
    }
}

/// The registry this sidecar is built with: the defaults (`fault`) plus ours.
pub fn registry() -> LayerRegistry {
    let mut r = LayerRegistry::default();
    r.register("require-header", RequireHeaderLayer::factory);
    r
}

/// The ports in use (all on 127.0.0.1).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    app: u16,
    client_out: u16,
    client_in: u16,
    client_app: u16,
    hello_out: u16,
    hello_in: u16,
    client_admin: u16,
    hello_admin: u16,
}

impl Ports {
    fn mesh_yaml(&self) -> String {
        [
            ("{app}", self.app),
            ("{client_out}", self.client_out),
            ("{client_in}", self.client_in),
            ("{client_app}", self.client_app),
            ("{hello_out}", self.hello_out),
            ("{hello_in}", self.hello_in),
        ]
        .iter()
        .fold(MESH_YAML.to_string(), |t, (k, v)| {
            t.replace(k, &v.to_string())
        })
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The running mesh.
pub struct Mesh {
    cp: ControlPlane,
    client: Sidecar,
    hello: Sidecar,
}

impl Mesh {
    /// Starts the app, the control plane and both sidecars, and waits for their config.
    pub async fn start(ports: Ports) -> Result<Self, BoxError> {
        hello_app(addr(ports.app), "the hello app").await?;
        let cp = ControlPlane::start(&ports.mesh_yaml()).await?;
        let sidecar = |node: &str, admin: u16| {
            let mut o = DynamicOptions::new(vec![cp.url()], node);
            o.admin = addr(admin);
            o.drain_timeout = Duration::from_secs(1);
            o.filters = registry();
            ready_sidecar(o)
        };
        let hello = sidecar("hello-1", ports.hello_admin).await?;
        let client = sidecar("client-1", ports.client_admin).await?;
        Ok(Self { cp, client, hello })
    }

    /// Drains both sidecars.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        self.hello.shutdown().await;
        drop(self.cp);
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let ports = Ports {
        app: 7060,
        client_out: 7082,
        client_in: 17083,
        client_app: 17060,
        hello_out: 17082,
        hello_in: 7083,
        client_admin: 17000,
        hello_admin: 17001,
    };
    let mesh = Mesh::start(ports).await?;
    println!(
        "Up: curl -i -H 'x-tenant: t1' 127.0.0.1:{out}/   (200, x-checked-by: inbound, outbound)\n\
         \x20   curl -i 127.0.0.1:{out}/                      (403 from the outbound filter)\n\
         \x20   curl -i -H 'x-tenant: t1' 127.0.0.1:{out}/guarded   (403: the route wants x-role)\n\
         Ctrl-C stops.",
        out = ports.client_out
    );
    tokio::signal::ctrl_c().await?;
    mesh.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_testkit::HttpResponse;

    fn free_ports() -> Ports {
        let p = mesh_testkit::free_ports(8);
        Ports {
            app: p[0],
            client_out: p[1],
            client_in: p[2],
            client_app: p[3],
            hello_out: p[4],
            hello_in: p[5],
            client_admin: p[6],
            hello_admin: p[7],
        }
    }

    fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        mesh_testkit::http_request(addr(port), "GET", path, headers, b"").unwrap()
    }

    fn checked_by(r: &HttpResponse) -> Vec<&str> {
        r.headers
            .iter()
            .filter(|(n, _)| n == CHECKED_BY)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listener_and_route_filters_run_on_both_hops() {
        let ports = free_ports();
        let mesh = Mesh::start(ports).await.unwrap();
        let out = ports.client_out;
        let (ok, denied, guarded, role) = tokio::task::spawn_blocking(move || {
            let tenant = [("x-tenant", "t1")];
            let ok =
                mesh_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
                    Some(get(out, "/", &tenant)).filter(|r| r.status == 200)
                });
            let denied = get(out, "/", &[]);
            let guarded = get(out, "/guarded", &tenant);
            let role = get(out, "/guarded", &[("x-tenant", "t1"), ("x-role", "admin")]);
            (ok, denied, guarded, role)
        })
        .await
        .unwrap();
        let ok = ok.expect("a request with x-tenant goes through");
        assert_eq!(ok.text(), "hello world from the hello app\n");
        // The inbound hop's filter tags the response first, the outbound one on the way back.
        assert_eq!(checked_by(&ok), vec!["inbound", "outbound"]);
        assert_eq!(denied.status, 403, "{}", denied.text());
        assert_eq!(checked_by(&denied), vec!["outbound"]);
        assert_eq!(guarded.status, 403, "the route's filter wants x-role");
        assert_eq!(checked_by(&guarded), vec!["route", "outbound"]);
        assert_eq!(role.status, 200);
        assert_eq!(checked_by(&role), vec!["inbound", "route", "outbound"]);
        mesh.shutdown().await;
    }

    /// A required filter the sidecar has no factory for: LDS is NACKed naming the filter, and
    /// the old listeners keep serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_required_filter_is_nacked_and_the_old_config_serves() {
        let ports = free_ports();
        let mesh = Mesh::start(ports).await.unwrap();
        let yaml = ports.mesh_yaml().replace(
            "    - custom: { name: require-header, config: { header: x-tenant, tag: outbound } }",
            "    - custom: { name: require-header, config: { header: x-tenant, tag: outbound } }\n    - custom: { name: no-such-filter }",
        );
        mesh.cp.rewrite(&yaml).unwrap();
        let mut status = mesh.client.xds().unwrap().status_watch();
        let error = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let err = status.borrow_and_update().types
                    [mesh_xds::ResourceType::Listener.type_url()]
                .last_error
                .clone();
                if let Some(e) = err {
                    return e;
                }
                status.changed().await.unwrap();
            }
        })
        .await
        .expect("the listener update is NACKed");
        assert!(error.contains("no-such-filter"), "{error}");
        assert!(error.contains("http_filters[1]"), "{error}");
        let out = ports.client_out;
        let r = tokio::task::spawn_blocking(move || get(out, "/", &[("x-tenant", "t1")]))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(checked_by(&r), vec!["inbound", "outbound"]);
        mesh.shutdown().await;
    }
}
