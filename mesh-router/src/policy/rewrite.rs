//! Prefix (or whole-path) and host rewrites of a route.

use std::str::FromStr;

use http::uri::{Authority, PathAndQuery, Uri};
use http::{header, HeaderValue, Request};
use mesh_core::ValidationError;

/// A compiled rewrite.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rewrite {
    /// The replacement and how many leading path bytes it replaces (`None`: the whole path).
    prefix: Option<(String, Option<usize>)>,
    host: Option<(Authority, HeaderValue)>,
}

impl Rewrite {
    /// Compiles the rewrite; `matched_prefix` is the length of the route's prefix for prefix and
    /// gRPC-service matches (replaced), `None` for matches whose whole path is replaced.
    pub(crate) fn compile(
        prefix_rewrite: Option<&str>,
        matched_prefix: Option<usize>,
        host_rewrite: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let host = host_rewrite
            .map(|h| {
                let bad = || ValidationError::new("host_rewrite", format!("{h:?} is not a host"));
                Ok::<_, ValidationError>((
                    Authority::from_str(h).map_err(|_| bad())?,
                    HeaderValue::from_str(h).map_err(|_| bad())?,
                ))
            })
            .transpose()?;
        Ok(Self {
            prefix: prefix_rewrite.map(|p| (p.to_string(), matched_prefix)),
            host,
        })
    }

    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.prefix.is_none() && self.host.is_none()
    }

    /// Rewrites the request's path and/or authority (URI and `Host` header). A rewrite that
    /// would produce an invalid URI leaves the request as it was.
    pub(crate) fn apply<B>(&self, req: &mut Request<B>) {
        if self.is_empty() {
            return;
        }
        let mut parts = req.uri().clone().into_parts();
        if let Some((with, replaced)) = &self.prefix {
            let path = req.uri().path();
            let rest = replaced.and_then(|n| path.get(n..)).unwrap_or("");
            let mut new = format!("{with}{rest}");
            if new.is_empty() {
                new.push('/');
            }
            if let Some(q) = req.uri().query() {
                new.push('?');
                new.push_str(q);
            }
            match PathAndQuery::from_str(&new) {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => return,
            }
        }
        if let Some((authority, value)) = &self.host {
            if parts.authority.is_some() {
                parts.authority = Some(authority.clone());
            }
            req.headers_mut().insert(header::HOST, value.clone());
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    #[test]
    fn replaces_the_matched_prefix_and_keeps_the_query() {
        let rw = Rewrite::compile(Some("/v2/"), Some(5), None).unwrap();
        let mut r = req("/api/users?x=1");
        rw.apply(&mut r);
        assert_eq!(r.uri(), "/v2/users?x=1");
        let rw = Rewrite::compile(Some(""), Some(4), None).unwrap();
        let mut r = req("/api");
        rw.apply(&mut r);
        assert_eq!(r.uri().path(), "/", "an empty result is the root");
    }

    #[test]
    fn replaces_the_whole_path_for_exact_and_regex_matches() {
        let rw = Rewrite::compile(Some("/new"), None, None).unwrap();
        let mut r = req("/old/thing");
        rw.apply(&mut r);
        assert_eq!(r.uri(), "/new");
    }

    #[test]
    fn rewrites_host_header_and_absolute_authority() {
        let rw = Rewrite::compile(None, None, Some("backend.internal:8080")).unwrap();
        let mut r = req("http://front.example.com/a");
        rw.apply(&mut r);
        assert_eq!(r.uri(), "http://backend.internal:8080/a");
        assert_eq!(r.headers()["host"], "backend.internal:8080");
        let mut r = req("/a");
        rw.apply(&mut r);
        assert_eq!(r.uri(), "/a");
        assert_eq!(r.headers()["host"], "backend.internal:8080");
        assert!(Rewrite::compile(None, None, Some("bad host")).is_err());
    }
}
