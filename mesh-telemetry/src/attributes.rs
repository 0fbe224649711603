//! The OpenTelemetry HTTP semantic conventions (stable, v1.2x) for one hop's span: the span
//! name, the request's attributes, and what a response or a failure adds.
//!
//! - Both kinds: `http.request.method` (`_OTHER` plus `http.request.method_original` for a
//!   method outside the registry), `url.path`, `url.scheme`, `server.address`, `server.port`,
//!   `network.protocol.version`, `user_agent.original`; after the response
//!   `http.response.status_code`.
//! - SERVER spans add `client.address` / `client.port` (the peer the sidecar accepted).
//! - CLIENT spans add `url.full`, without the query: a query string may carry credentials the
//!   convention asks to redact, and we cannot tell which parameters do.
//! - Errors: a SERVER span is an error from status 500, a CLIENT span from 400 (the
//!   convention's rule for each side); `error.type` is then the status code, or the mesh's
//!   error code (`upstream_connect_failure`, ...) when the hop failed without a response.

use std::borrow::Cow;

use http::{Method, Request, Version};
use mesh_core::extensions::ClientAddr;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;

/// The span name: the method (`{method}` in the convention, with no route template known at
/// the start of a hop), `HTTP` for a method outside the registry.
pub(crate) fn span_name(method: &Method) -> Cow<'static, str> {
    Cow::Borrowed(known_method(method).unwrap_or("HTTP"))
}

fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn protocol_version(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}

/// The request's attributes (computed only for sampled spans).
pub(crate) fn request<B>(req: &Request<B>, kind: &SpanKind) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(12);
    match known_method(req.method()) {
        Some(m) => attrs.push(KeyValue::new("http.request.method", m)),
        None => {
            attrs.push(KeyValue::new("http.request.method", "_OTHER"));
            attrs.push(KeyValue::new(
                "http.request.method_original",
                req.method().as_str().to_owned(),
            ));
        }
    }
    let uri = req.uri();
    let scheme = uri.scheme_str().unwrap_or("http");
    attrs.push(KeyValue::new("url.scheme", scheme.to_owned()));
    attrs.push(KeyValue::new("url.path", uri.path().to_owned()));
    // HTTP/2 carries the authority in the URI, HTTP/1.1 in `Host`.
    let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if let Some(authority) = authority {
        let (host, port) = split_host_port(authority);
        attrs.push(KeyValue::new("server.address", host.to_owned()));
        let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
        attrs.push(KeyValue::new("server.port", i64::from(port)));
        if *kind == SpanKind::Client {
            attrs.push(KeyValue::new(
                "url.full",
                format!("{scheme}://{authority}{}", uri.path()),
            ));
        }
    }
    if let Some(v) = protocol_version(req.version()) {
        attrs.push(KeyValue::new("network.protocol.version", v));
    }
    if let Some(ua) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new("user_agent.original", ua.to_owned()));
    }
    if *kind == SpanKind::Server {
        if let Some(ClientAddr(peer)) = req.extensions().get::<ClientAddr>() {
            attrs.push(KeyValue::new("client.address", peer.ip().to_string()));
            attrs.push(KeyValue::new("client.port", i64::from(peer.port())));
        }
    }
    attrs
}

/// `host` and the port of an authority (`[::1]:80` keeps its brackets off the host).
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

/// Whether a response with `status` makes this kind of span an error.
pub(crate) fn is_error_status(status: u16, kind: &SpanKind) -> bool {
    match kind {
        SpanKind::Client | SpanKind::Producer => status >= 400,
        _ => status >= 500,
    }
}

/// What a response adds: its status code and, for an error, `error.type` and the span status
/// (with no description, as the convention asks for status-code errors).
pub(crate) fn response(status: u16, kind: &SpanKind) -> (Vec<KeyValue>, Option<Status>) {
    let mut attrs = vec![KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    )];
    if is_error_status(status, kind) {
        attrs.push(KeyValue::new("error.type", status.to_string()));
        return (attrs, Some(Status::error("")));
    }
    (attrs, None)
}

/// gRPC status codes the convention counts as errors on a SERVER span (any non-OK code is one
/// on a CLIENT span): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS.
pub(crate) fn is_grpc_error(code: i64, kind: &SpanKind) -> bool {
    match kind {
        SpanKind::Client | SpanKind::Producer => code != 0,
        _ => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a opentelemetry::Value> {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn server_and_client_attributes_follow_the_conventions() {
        let mut req = Request::post("/orders/1?secret=x")
            .header("host", "orders:8080")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(ClientAddr("10.0.0.7:5555".parse().unwrap()));
        let s = request(&req, &SpanKind::Server);
        assert_eq!(get(&s, "http.request.method").unwrap().as_str(), "POST");
        assert_eq!(get(&s, "url.path").unwrap().as_str(), "/orders/1");
        assert_eq!(get(&s, "url.scheme").unwrap().as_str(), "http");
        assert_eq!(get(&s, "server.address").unwrap().as_str(), "orders");
        assert_eq!(
            get(&s, "server.port"),
            Some(&opentelemetry::Value::I64(8080))
        );
        assert_eq!(get(&s, "network.protocol.version").unwrap().as_str(), "1.1");
        assert_eq!(get(&s, "user_agent.original").unwrap().as_str(), "curl/8");
        assert_eq!(get(&s, "client.address").unwrap().as_str(), "10.0.0.7");
        assert!(get(&s, "url.full").is_none());

        let c = request(&req, &SpanKind::Client);
        assert_eq!(
            get(&c, "url.full").unwrap().as_str(),
            "http://orders:8080/orders/1",
            "no query: it may hold credentials"
        );
        assert!(get(&c, "client.address").is_none());

        let other = Request::builder()
            .method(Method::from_bytes(b"PURGE").unwrap())
            .uri("http://[::1]/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let o = request(&other, &SpanKind::Server);
        assert_eq!(get(&o, "http.request.method").unwrap().as_str(), "_OTHER");
        assert_eq!(
            get(&o, "http.request.method_original").unwrap().as_str(),
            "PURGE"
        );
        assert_eq!(get(&o, "server.address").unwrap().as_str(), "::1");
        assert_eq!(get(&o, "server.port"), Some(&opentelemetry::Value::I64(80)));
        assert_eq!(get(&o, "network.protocol.version").unwrap().as_str(), "2");
        assert_eq!(span_name(other.method()), "HTTP");
    }

    #[test]
    fn error_status_depends_on_the_side() {
        assert!(response(404, &SpanKind::Client).1.is_some());
        assert!(response(404, &SpanKind::Server).1.is_none());
        let (attrs, status) = response(503, &SpanKind::Server);
        assert_eq!(status, Some(Status::error("")));
        assert_eq!(get(&attrs, "error.type").unwrap().as_str(), "503");
        assert!(is_grpc_error(14, &SpanKind::Server));
        assert!(!is_grpc_error(5, &SpanKind::Server));
        assert!(is_grpc_error(5, &SpanKind::Client));
    }
}
