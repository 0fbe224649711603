//! # mesh-router
//!
//! The routing tower Layer ([`RouterLayer`] / [`Router`]): each request is matched against the
//! live route table — the virtual host by authority (exact domain, then the longest `*suffix`
//! wildcard, then `*`, ignoring ASCII case; the port is part of the authority, as in Envoy,
//! unless the table sets `ignore_port_in_host_matching`), then the first route whose match holds (path
//! prefix, exact path, regex, gRPC service/method, header and query-parameter conditions). The
//! decision goes into the request extensions for the inner layers:
//! [`MatchedRoute`](mesh_core::extensions::MatchedRoute),
//! [`TargetCluster`](mesh_core::extensions::TargetCluster) (after a weighted or header-based
//! choice) and, when the route's hash policy yields one,
//! [`RequestHash`](mesh_core::extensions::RequestHash).
//!
//! Around the inner service the route's policy applies: prefix and host rewrites, request and
//! response header edits, the request timeout, retries (retry-on conditions, backoff with full
//! jitter, a retry budget; only for bodies that can be replayed, see [`MAX_REPLAY_BODY`]; each
//! retry marked with [`RetryAttempt`](mesh_core::extensions::RetryAttempt)), and the route's
//! named extra layers from a [`LayerRegistry`] (fault injection ships as `fault`).
//!
//! **Matching details.** Path conditions look at the path without its query string (prefix,
//! exact and regex alike); regexes must match the whole path or value. `case_sensitive: false`
//! applies to prefix and exact paths, not to regexes (as in Envoy: write `(?i)`). A gRPC match
//! (`/pkg.Service/` or `/pkg.Service/Method`) also requires `content-type: application/grpc`.
//! Header conditions on a repeated header see its values joined by `,`; a value condition on an
//! absent header fails, inverted or not, unless `treat_missing_header_as_empty` (presence
//! conditions invert as they are). Query conditions see the first occurrence, as sent (not
//! percent-decoded). A `cluster_header` route whose header is missing answers 503 (cluster not
//! found), as Envoy 1.40 does. All of this is checked against real Envoy by
//! `mesh-proxy/tests/envoy_differential.rs`.
//!
//! **Policy details.** The route timeout covers all attempts up to the response head (not the
//! streaming of the body); zero disables it. Retries replay bodies of at most
//! [`MAX_REPLAY_BODY`] bytes whose size is known up front; other requests get one attempt.
//! Per-route filters run outside the timeout and retries (a fault delay does not count against
//! the route timeout), in the order listed.
//!
//! **Error rule.** The router's own decisions are answered as responses built by
//! `MeshError::to_response`: no route is 404 (gRPC: UNIMPLEMENTED), a timeout 504 (gRPC:
//! DEADLINE_EXCEEDED), a fault abort its status. So a `Router` can serve a hyper connection
//! directly. Errors of the inner service pass through unchanged.
//!
//! **Spawning.** A router's future is `Send + 'static` when its inner service's is, so
//! `tokio::spawn(router.oneshot(req))` works. (`mesh_core::Body` is a struct rather than an alias
//! of a boxed body type precisely so that rustc can prove this inside `async` blocks.)
//!
//! **Reload.** [`RouterLayer`] implements `Reload<RouteConfiguration>`: the new table is
//! validated and compiled (regexes, tries, domain maps) off the data path and swapped in with
//! one atomic store; a request in flight keeps the route it matched. A bad table is refused
//! with an error naming the route and the reason, and the old table keeps serving.
//!
//! **Speed.** Exact domains are a hash map, wildcard domains a map per suffix length; exact and
//! prefix paths live in radix tries walked once per request (case-insensitive routes in a
//! second, lowered trie), and only regex routes are scanned. Every index yields ascending route
//! positions and the smallest one whose whole match holds wins, which keeps first-match order.
//!
//! ```
//! use http::Request;
//! use mesh_core::extensions::TargetCluster;
//! use mesh_core::{body, Body, BoxError, Reload, RouteConfiguration};
//! use mesh_router::RouterLayer;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config: RouteConfiguration = serde_yaml::from_str(r#"
//! name: main
//! virtual_hosts:
//!   - name: api
//!     domains: ["api.example.com"]
//!     routes:
//!       - name: users
//!         match: { prefix: "/users" }
//!         route: { cluster: users-v1 }
//! "#).unwrap();
//! let layer = RouterLayer::new(&config).unwrap();
//! // The inner service answers with the cluster the router chose.
//! let router = layer.layer(tower::service_fn(|req: Request<Body>| async move {
//!     let cluster = req.extensions().get::<TargetCluster>().unwrap().0.to_string();
//!     Ok::<_, BoxError>(http::Response::new(body::full(cluster)))
//! }));
//! let req = Request::get("http://api.example.com/users/7").body(body::empty()).unwrap();
//! let resp = router.clone().oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 200);
//!
//! let req = Request::get("http://api.example.com/other").body(body::empty()).unwrap();
//! assert_eq!(router.clone().oneshot(req).await.unwrap().status(), 404);
//!
//! // A bad table is refused, naming the route; the old one keeps serving.
//! let mut bad = config.clone();
//! bad.virtual_hosts[0].routes[0].matcher.path = mesh_core::PathMatch::Regex("([".into());
//! let err = layer.reload(bad).unwrap_err();
//! assert!(err.to_string().contains("route \"users\""), "{err}");
//! assert_eq!(layer.table().route_count(), 1);
//! # }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod domains;
mod fault;
mod filters;
mod layer;
mod matcher;
mod policy;
pub mod rbac;
mod table;
mod trie;

pub use fault::{Fault, FaultLayer};
pub use filters::{HttpService, LayerFactory, LayerRegistry, RouteLayer};
pub use layer::{ResponseFuture, Router, RouterLayer};
pub use policy::MAX_REPLAY_BODY;
pub use rbac::RbacLayer;
pub use table::{Decision, RouteTable};
