//! The compiled route table: virtual-host lookup, the per-host route index, and the decision
//! (route, target cluster, request hash) for one request.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use http::Request;
use mesh_core::extensions::{ClientAddr, MatchedRoute, RequestHash, TargetCluster};
use mesh_core::{
    HashPolicy, MeshError, ReloadError, Route, RouteConfiguration, Validate, ValidationError,
};

use crate::domains::Domains;
use crate::filters::{LayerRegistry, RouteLayer};
use crate::matcher::{PathMatcher, RequestView, RouteMatcher};
use crate::policy::RoutePolicy;
use crate::trie::{PathTrie, TrieBuilder};

mod destination;
use destination::Destination;

/// One route, compiled.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    /// What goes into the request extensions.
    pub(crate) matched: MatchedRoute,
    pub(crate) matcher: RouteMatcher,
    destination: Destination,
    hash_policy: Vec<HashPolicy>,
    pub(crate) policy: Arc<RoutePolicy>,
    /// Extra layers, outermost first.
    pub(crate) filters: Vec<RouteLayer>,
    /// What the data path needs to know of `policy` and `filters` before touching them (they
    /// live in other allocations, so reading them is a cache miss per request).
    pub(crate) shape: Shape,
}

/// A route's data-path summary, computed at compile time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// No filter, timeout or retry: the inner service is called directly.
    pub(crate) direct: bool,
    /// The route's timeout when it is the only policy (no filter, no retry): the router calls
    /// the inner service in place under this timer, with no policy service in between.
    pub(crate) timer: Option<std::time::Duration>,
    /// A rewrite or request header edit applies.
    pub(crate) edits_request: bool,
    /// A response header edit applies.
    pub(crate) edits_response: bool,
}

/// One virtual host, indexed: exact and prefix routes live in path tries (one case-sensitive,
/// one lowered), regex routes in a list; all are identified by their position in `routes`.
///
/// A trie entry is `position << 1 | path_only`: `path_only` is set when only the path decides
/// (no header, query or gRPC condition), so a trie hit is a match without touching the route
/// itself (one cache miss fewer per request), and the flag costs no second lookup of its own.
/// The shift keeps the entries in position order.
#[derive(Debug)]
struct VirtualHostIndex {
    routes: Vec<Arc<CompiledRoute>>,
    cased: PathTrie,
    folded: PathTrie,
    /// Routes no trie can index (regex paths), by position, ascending.
    others: Vec<u32>,
    /// `connect_matcher` routes, by position, ascending: the only ones a CONNECT request sees.
    connects: Vec<u32>,
}

/// A compiled, validated `RouteConfiguration`, ready for the data path.
#[derive(Debug)]
pub struct RouteTable {
    name: Arc<str>,
    domains: Domains,
    vhosts: Vec<VirtualHostIndex>,
}

/// The router's decision for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub(crate) route: Arc<CompiledRoute>,
    /// The cluster the request goes to (after a weighted or header-based choice).
    pub cluster: TargetCluster,
    /// The consistent-hash key from the route's hash policy, if one yielded.
    pub hash: Option<RequestHash>,
}

impl Decision {
    /// The matched route (table, virtual host, route), as inserted into the extensions.
    pub fn matched(&self) -> &MatchedRoute {
        &self.route.matched
    }
}

impl RouteTable {
    /// A table that routes nothing (every request answers 404).
    pub fn empty() -> Self {
        Self {
            name: Arc::from(""),
            domains: Domains::default(),
            vhosts: Vec::new(),
        }
    }

    /// Validates and compiles `config`, building each route's extra layers from `registry`.
    /// The error names the route (by name, or by position) and the reason.
    pub fn compile(
        config: &RouteConfiguration,
        registry: &LayerRegistry,
    ) -> Result<Self, ReloadError> {
        let refuse = |reason: String| ReloadError::new("route_configuration", &config.name, reason);
        // mesh-core's validation first (once: routes are not validated again below); its error
        // path names the route by position, the message adds the route's name.
        config
            .validate()
            .map_err(|e| refuse(describe(config, &e)))?;
        let name: Arc<str> = Arc::from(config.name.as_str());
        let mut domains = Domains::new(config.ignore_port_in_host_matching);
        let mut vhosts = Vec::with_capacity(config.virtual_hosts.len());
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            let vh_name: Arc<str> = Arc::from(vh.name.as_str());
            let mut routes = Vec::with_capacity(vh.routes.len());
            let (mut cased, mut folded, mut others, mut connects) = (
                TrieBuilder::default(),
                TrieBuilder::default(),
                Vec::new(),
                Vec::new(),
            );
            for (j, route) in vh.routes.iter().enumerate() {
                let compiled = compile_route(&name, &vh_name, route, registry).map_err(|e| {
                    let e = e.within(format!("virtual_hosts[{i}].routes[{j}]"));
                    refuse(describe(config, &e))
                })?;
                let j = u32::try_from(j)
                    .ok()
                    .filter(|j| *j < 1 << 31)
                    .ok_or_else(|| refuse("too many routes".into()))?;
                let m = &compiled.matcher;
                let entry = j << 1 | u32::from(m.path_only());
                let trie = if m.case_sensitive {
                    &mut cased
                } else {
                    &mut folded
                };
                match &m.path {
                    PathMatcher::Prefix(p) => trie.insert(p.as_bytes(), entry, false),
                    PathMatcher::Exact(p) => trie.insert(p.as_bytes(), entry, true),
                    PathMatcher::Regex(_) => others.push(j),
                    PathMatcher::Connect => connects.push(j),
                }
                routes.push(Arc::new(compiled));
            }
            let vh_i = u32::try_from(i).map_err(|_| refuse("too many virtual hosts".into()))?;
            for d in &vh.domains {
                domains.add(vh_i, d);
            }
            vhosts.push(VirtualHostIndex {
                routes,
                cased: cased.freeze(),
                folded: folded.freeze(),
                others,
                connects,
            });
        }
        Ok(Self {
            name,
            domains,
            vhosts,
        })
    }

    /// The route configuration's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many routes the table holds.
    pub fn route_count(&self) -> usize {
        self.vhosts.iter().map(|v| v.routes.len()).sum()
    }

    /// Decides where `req` goes: the first matching route of its virtual host, the target
    /// cluster and the request hash. No match is `MeshError::NoRoute`; a route whose cluster
    /// header is absent is `MeshError::ClusterNotFound` (503, as in Envoy).
    pub fn decide<B>(&self, req: &Request<B>) -> Result<Decision, MeshError> {
        let (route, cluster, hash) = self.route_for(req)?;
        Ok(Decision {
            route: Arc::clone(route),
            cluster,
            hash,
        })
    }

    /// [`decide`](Self::decide) with the route borrowed from the table, for the router's data
    /// path: it clones the route's `Arc` only when the response future needs it.
    pub(crate) fn route_for<B>(
        &self,
        req: &Request<B>,
    ) -> Result<(&Arc<CompiledRoute>, TargetCluster, Option<RequestHash>), MeshError> {
        let authority = authority(req);
        let view = RequestView::of(req);
        let no_route = || MeshError::NoRoute {
            authority: authority.to_string(),
            path: req.uri().path().to_string(),
        };
        let (v, r) = self.find(authority, &view).ok_or_else(no_route)?;
        let route = &self.vhosts[v].routes[r];
        // As Envoy: a cluster header that is absent (or not a usable value) names no cluster,
        // which answers like an unknown cluster (`cluster_not_found_response_code`, 503).
        let cluster =
            route
                .destination
                .pick(req.headers())
                .ok_or_else(|| MeshError::ClusterNotFound {
                    cluster: String::new(),
                })?;
        let hash = request_hash(&route.hash_policy, req).map(RequestHash);
        Ok((route, cluster, hash))
    }

    /// The (virtual host, route) indices of the first route whose match holds, through the
    /// indexes: every candidate list is ascending, so each is read only while its indices are
    /// below the best match so far, and the minimum wins (first-match order is preserved).
    pub(crate) fn find(&self, authority: &str, view: &RequestView<'_>) -> Option<(usize, usize)> {
        let v = self.domains.lookup(authority)? as usize;
        let vh = &self.vhosts[v];
        let mut best = u32::MAX;
        // `path_known`: a trie list, whose entries carry the path-only flag (see
        // `VirtualHostIndex`); otherwise plain positions whose whole match is to be checked.
        let mut consider = |list: &[u32], path_known: bool| {
            for &e in list {
                let i = if path_known { e >> 1 } else { e };
                if i >= best {
                    break;
                }
                let holds = if path_known {
                    e & 1 == 1 || vh.routes[i as usize].matcher.rest_matches(view)
                } else {
                    vh.routes[i as usize].matcher.matches(view)
                };
                if holds {
                    best = i;
                    break;
                }
            }
        };
        // CONNECT has no path to walk (authority form): its own routes only, and only it.
        if view.connect {
            consider(&vh.connects, false);
            return (best != u32::MAX).then_some((v, best as usize));
        }
        let path = view.path.as_bytes();
        vh.cased.walk(path, false, |l| consider(l, true));
        if !vh.folded.is_empty() {
            vh.folded.walk(path, true, |l| consider(l, true));
        }
        consider(&vh.others, false);
        (best != u32::MAX).then_some((v, best as usize))
    }

    /// The same answer as [`find`](Self::find) by a plain scan of every route, the reference
    /// the indexes are tested against.
    #[cfg(test)]
    pub(crate) fn find_linear(
        &self,
        authority: &str,
        view: &RequestView<'_>,
    ) -> Option<(usize, usize)> {
        let v = self.domains.lookup(authority)? as usize;
        let r = self.vhosts[v]
            .routes
            .iter()
            .position(|r| r.matcher.matches(view))?;
        Some((v, r))
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::empty()
    }
}

fn compile_route(
    table: &Arc<str>,
    vhost: &Arc<str>,
    route: &Route,
    registry: &LayerRegistry,
) -> Result<CompiledRoute, ValidationError> {
    let matcher = RouteMatcher::compile(&route.matcher).map_err(|e| e.within("match"))?;
    let prefix_len = match &matcher.path {
        PathMatcher::Prefix(p) => Some(p.len()),
        _ => None,
    };
    let policy = RoutePolicy::compile(&route.action, prefix_len).map_err(|e| e.within("route"))?;
    let destination =
        Destination::compile(&route.action.destination).map_err(|e| e.within("route"))?;
    let filters: Vec<RouteLayer> = registry
        .build_all(&route.filters)
        .map_err(|(k, why)| ValidationError::new(format!("filters[{k}]"), why))?;
    let shape = Shape {
        direct: filters.is_empty() && !policy.wraps_call(),
        timer: policy
            .timeout
            .filter(|_| filters.is_empty() && policy.retry.is_none()),
        edits_request: !policy.rewrite.is_empty() || !policy.request_headers.is_empty(),
        edits_response: !policy.response_headers.is_empty(),
    };
    Ok(CompiledRoute {
        matched: MatchedRoute {
            route_config: Arc::clone(table),
            virtual_host: Arc::clone(vhost),
            route: Arc::new(route.clone()),
        },
        matcher,
        destination,
        hash_policy: route.action.hash_policy.clone(),
        policy: Arc::new(policy),
        filters,
        shape,
    })
}

/// The error, prefixed with the route it is about (`route "name"`, or `route #j` when unnamed)
/// when its path points into one.
fn describe(config: &RouteConfiguration, e: &ValidationError) -> String {
    fn index(s: &str) -> Option<(usize, &str)> {
        let (n, rest) = s.split_once(']')?;
        Some((n.parse().ok()?, rest))
    }
    let route = e
        .path
        .strip_prefix("virtual_hosts[")
        .and_then(index)
        .and_then(|(i, rest)| Some((i, index(rest.strip_prefix(".routes[")?)?.0)))
        .and_then(|(i, j)| Some((j, config.virtual_hosts.get(i)?.routes.get(j)?)));
    match route {
        Some((_, r)) if !r.name.is_empty() => format!("route {:?}: {e}", r.name),
        Some((j, _)) => format!("route #{j}: {e}"),
        None => e.to_string(),
    }
}

/// The request's authority: the URI's (HTTP/2 `:authority`, absolute form), else `Host`.
fn authority<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// The first hash the policies yield. SipHash with fixed keys: stable within the process,
/// which is all the load balancer's ring needs.
fn request_hash<B>(policies: &[HashPolicy], req: &Request<B>) -> Option<u64> {
    let hash = |bytes: &[u8]| BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes);
    policies.iter().find_map(|p| match p {
        HashPolicy::Header(name) => req.headers().get(name.as_str()).map(|v| hash(v.as_bytes())),
        HashPolicy::Cookie(name) => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash(v.as_bytes())),
        HashPolicy::QueryParameter(name) => req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash(v.as_bytes()))
        }),
        HashPolicy::SourceIp => req
            .extensions()
            .get::<ClientAddr>()
            .map(|a| hash(a.0.ip().to_string().as_bytes())),
    })
}

#[cfg(test)]
mod tests;
