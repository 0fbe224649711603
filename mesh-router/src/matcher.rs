//! Compiled matchers: what a route's `match` becomes once, at reload, so the data path only
//! compares bytes and runs pre-built regexes.

use http::{HeaderMap, HeaderName};
use mesh_core::{HeaderMatcher, PathMatch, QueryParamMatcher, RouteMatch, StringMatch};
use regex::Regex;

/// Why a matcher could not be compiled (the field path and reason).
pub(crate) type CompileError = mesh_core::ValidationError;

/// Compiles a regex that must match a whole value (anchored), as Envoy's `safe_regex` does.
pub(crate) fn whole(re: &str) -> Result<Regex, CompileError> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| {
        let why = e.to_string();
        let why = why.lines().last().unwrap_or("invalid").trim().to_string();
        CompileError::new("regex", format!("invalid regex {re:?}: {why}"))
    })
}

/// A compiled condition on a string value.
#[derive(Debug, Clone)]
pub(crate) enum StrMatcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
    Present(bool),
}

impl StrMatcher {
    pub(crate) fn compile(
        m: &StringMatch,
        ignore_case: bool,
    ) -> Result<(Self, bool), CompileError> {
        // With ignore_case the pattern is lowered once here, and values are compared lowered.
        let fold = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        Ok(match m {
            StringMatch::Exact(s) => (Self::Exact(fold(s)), ignore_case),
            StringMatch::Prefix(s) => (Self::Prefix(fold(s)), ignore_case),
            StringMatch::Suffix(s) => (Self::Suffix(fold(s)), ignore_case),
            StringMatch::Contains(s) => (Self::Contains(fold(s)), ignore_case),
            // Regexes ignore `ignore_case` (as Envoy's do); write `(?i)` in the pattern instead.
            StringMatch::Regex(r) => (Self::Regex(whole(r)?), false),
            StringMatch::Present(p) => (Self::Present(*p), false),
        })
    }

    /// Whether `value` (None: absent) satisfies the condition.
    pub(crate) fn matches(&self, value: Option<&str>, ignore_case: bool) -> bool {
        let Some(v) = value else {
            return matches!(self, Self::Present(false));
        };
        self.matches_value(v, ignore_case)
    }

    /// Whether a present `v` satisfies the condition.
    pub(crate) fn matches_value(&self, v: &str, ignore_case: bool) -> bool {
        let lowered;
        let v = if ignore_case && v.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = v.to_ascii_lowercase();
            lowered.as_str()
        } else {
            v
        };
        match self {
            Self::Exact(s) => v == s,
            Self::Prefix(s) => v.starts_with(s.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
            Self::Contains(s) => v.contains(s.as_str()),
            Self::Regex(r) => r.is_match(v),
            Self::Present(p) => *p,
        }
    }
}

/// A compiled header condition.
#[derive(Debug, Clone)]
pub(crate) struct HeaderMatch {
    name: HeaderName,
    value: StrMatcher,
    ignore_case: bool,
    invert: bool,
    /// Envoy's `treat_missing_header_as_empty`.
    missing_as_empty: bool,
}

impl HeaderMatch {
    pub(crate) fn compile(h: &HeaderMatcher) -> Result<Self, CompileError> {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| CompileError::new("name", "not a valid header name"))?;
        let (value, ignore_case) = StrMatcher::compile(&h.value, h.ignore_case)?;
        Ok(Self {
            name,
            value,
            ignore_case,
            invert: h.invert,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// Envoy's rules: several values of one header are matched joined with `,`; a value that
    /// is not UTF-8 never matches a value condition. An absent header fails a value condition
    /// whether inverted or not, unless it is to be taken as empty; `present` conditions are
    /// inverted as they are.
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let held = match values.next() {
            None if matches!(self.value, StrMatcher::Present(_)) => self.value.matches(None, false),
            None if self.missing_as_empty => self.value.matches_value("", self.ignore_case),
            None => return false,
            Some(first) => match values.next() {
                None => first
                    .to_str()
                    .is_ok_and(|v| self.value.matches(Some(v), self.ignore_case)),
                Some(_) => {
                    let joined: Option<Vec<&str>> = headers
                        .get_all(&self.name)
                        .iter()
                        .map(|v| v.to_str().ok())
                        .collect();
                    joined
                        .is_some_and(|vs| self.value.matches(Some(&vs.join(",")), self.ignore_case))
                }
            },
        };
        held != self.invert
    }
}

/// A compiled query-parameter condition, on the first occurrence of the parameter. As in
/// Envoy's route matching (`QueryParamsMulti::parseQueryString`), names and values are
/// compared as they appear in the request, not percent-decoded: `mode=f%61st` is not `fast`.
#[derive(Debug, Clone)]
pub(crate) struct QueryMatch {
    name: String,
    value: StrMatcher,
    ignore_case: bool,
}

impl QueryMatch {
    fn compile(q: &QueryParamMatcher) -> Result<Self, CompileError> {
        let (value, ignore_case) = StrMatcher::compile(&q.value, q.ignore_case)?;
        Ok(Self {
            name: q.name.clone(),
            value,
            ignore_case,
        })
    }

    pub(crate) fn matches(&self, query: Option<&str>) -> bool {
        let found = query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == self.name).then_some(v)
            })
        });
        self.value.matches(found, self.ignore_case)
    }
}

/// A compiled path condition.
#[derive(Debug, Clone)]
pub(crate) enum PathMatcher {
    /// Prefix; lowered when case-insensitive.
    Prefix(String),
    /// Exact path; lowered when case-insensitive.
    Exact(String),
    /// Anchored regex over the whole path (without query).
    Regex(Regex),
    /// CONNECT requests only (Envoy's `connect_matcher`): no path is looked at.
    Connect,
}

/// Everything a route's `match` asks, compiled.
#[derive(Debug, Clone)]
pub(crate) struct RouteMatcher {
    pub(crate) path: PathMatcher,
    pub(crate) case_sensitive: bool,
    /// gRPC matches also require a gRPC request (`content-type: application/grpc...`).
    pub(crate) grpc: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

impl RouteMatcher {
    /// Compiles a route's match; errors carry the field path within `match`.
    pub(crate) fn compile(m: &RouteMatch) -> Result<Self, CompileError> {
        let fold = |s: &str| {
            if m.case_sensitive {
                s.to_string()
            } else {
                s.to_ascii_lowercase()
            }
        };
        let (path, grpc) = match &m.path {
            PathMatch::Prefix(p) => (PathMatcher::Prefix(fold(p)), false),
            PathMatch::Exact(p) => (PathMatcher::Exact(fold(p)), false),
            // Envoy ignores `case_sensitive` for regexes: write `(?i)` in the pattern instead.
            PathMatch::Regex(r) => (PathMatcher::Regex(whole(r)?), false),
            // A gRPC path is `/pkg.Service/Method`: a whole service is a prefix, a method exact.
            PathMatch::Grpc { service, method } => match method {
                Some(method) => (
                    PathMatcher::Exact(fold(&format!("/{service}/{method}"))),
                    true,
                ),
                None => (PathMatcher::Prefix(fold(&format!("/{service}/"))), true),
            },
            PathMatch::ConnectMatcher {} => (PathMatcher::Connect, false),
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatch::compile(h).map_err(|e| e.within(format!("headers[{i}]"))))
            .collect::<Result<_, _>>()?;
        let query = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| {
                QueryMatch::compile(q).map_err(|e| e.within(format!("query_parameters[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            case_sensitive: m.case_sensitive,
            grpc,
            headers,
            query,
        })
    }

    /// Whether the path condition alone holds (the plain, unindexed check).
    pub(crate) fn path_matches(&self, path: &str) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        match &self.path {
            PathMatcher::Prefix(p) => {
                path.len() >= p.len() && eq(&path.as_bytes()[..p.len()], p.as_bytes())
            }
            PathMatcher::Exact(p) => eq(path.as_bytes(), p.as_bytes()),
            PathMatcher::Regex(r) => r.is_match(path),
            PathMatcher::Connect => false,
        }
    }

    /// Whether every condition but the path holds (the path is known to match).
    pub(crate) fn rest_matches(&self, req: &RequestView<'_>) -> bool {
        (!self.grpc || is_grpc(req.headers))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
    }

    /// Whether only the path decides (no header, query or gRPC condition).
    pub(crate) fn path_only(&self) -> bool {
        !self.grpc && self.headers.is_empty() && self.query.is_empty()
    }

    /// The whole match: path and the rest. A CONNECT request is matched by CONNECT matchers
    /// only, and they match nothing else.
    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        let path = match self.path {
            PathMatcher::Connect => req.connect,
            _ => !req.connect && self.path_matches(req.path),
        };
        path && self.rest_matches(req)
    }
}

/// The parts of a request matching looks at, borrowed once per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    /// The method is CONNECT (only `connect_matcher` routes apply).
    pub(crate) connect: bool,
}

impl<'a> RequestView<'a> {
    pub(crate) fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            connect: req.method() == http::Method::CONNECT,
        }
    }
}

/// `mesh_core::is_grpc` on headers alone, so matching reads `content-type` only when a gRPC
/// route is a candidate.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests;
