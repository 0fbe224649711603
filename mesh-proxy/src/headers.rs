//! What a proxy must do to headers on each hop: drop hop-by-hop headers, append
//! `x-forwarded-for`, and make sure every request carries `x-request-id` and a W3C `traceparent`.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use mesh_core::StripHostPort;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and so are never
/// forwarded. `te` is handled apart: `te: trailers` must survive, gRPC needs it.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The W3C trace-context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The request-id header, as Envoy and Linkerd use it.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The forwarded-for header.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Removes hop-by-hop headers, including those the `connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present (comparisons of standard
    // names are integer compares) instead of eight hashed removals on every request and response.
    if !headers
        .keys()
        .any(|k| k == header::TE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let keeps_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if keeps_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the port of the request's authority (the `Host` header, and the URI's authority
/// when it has one) as `mode` says, as Envoy's connection manager does before routing
/// (`strip_matching_host_port`, `strip_any_host_port`); `listener_port` is the port the
/// request arrived on. CONNECT requests keep theirs, as in Envoy.
pub fn strip_host_port(parts: &mut http::request::Parts, mode: StripHostPort, listener_port: u16) {
    if parts.method == http::Method::CONNECT {
        return;
    }
    if let Some(host) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        let stripped = mode.apply(host, listener_port);
        if stripped.len() != host.len() {
            if let Ok(v) = HeaderValue::from_str(stripped) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    let stripped = parts.uri.authority().and_then(|a| {
        let s = mode.apply(a.as_str(), listener_port);
        (s.len() != a.as_str().len()).then(|| s.parse::<http::uri::Authority>())
    });
    if let Some(Ok(authority)) = stripped {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.authority = Some(authority);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
}

/// Appends the client's address to `x-forwarded-for`.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    if let Some(ip) = forwarded_for_value(client) {
        append_forwarded_for_value(headers, &ip);
    }
}

/// The client's address as an `x-forwarded-for` value, made once per connection: every request
/// on it appends the same one (a clone of the value shares its bytes; formatting and copying
/// the address per request cost an allocation and a free each time).
pub fn forwarded_for_value(client: IpAddr) -> Option<HeaderValue> {
    // The address is formatted on the stack: the header value is the only allocation.
    let mut ip = [0u8; 64];
    let len = match client {
        // Dotted decimal by hand: `Display` for an address ran the formatting machinery per
        // octet.
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    ip[n] = b'.';
                    n += 1;
                }
                n += decimal_into(&mut ip[n..], octet);
            }
            n
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut w = &mut ip[..];
            write!(w, "{client}").ok()?;
            64 - w.len()
        }
    };
    // Shared bytes, so that each request's clone is a reference count, not a copy.
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&ip[..len])).ok()
}

/// Appends `ip` (from [`forwarded_for_value`]) to `x-forwarded-for`.
pub fn append_forwarded_for_value(headers: &mut HeaderMap, ip: &HeaderValue) {
    // One lookup for the read and the write (the entry), not a `get` and an `insert`: each
    // hashes the name and probes the map, on every request. The same below.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut e) => {
            let value = match e.get().to_str() {
                Ok(prev) if !prev.trim().is_empty() => HeaderValue::from_maybe_shared(
                    bytes::Bytes::from([prev.as_bytes(), b", ", ip.as_bytes()].concat()),
                ),
                _ => Ok(ip.clone()),
            };
            if let Ok(v) = value {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            e.insert(ip.clone());
        }
    }
}

/// Sets `entry` to `value`, replacing whatever values it had.
fn set(entry: Entry<'_, HeaderValue>, value: HeaderValue) {
    match entry {
        Entry::Occupied(mut e) => {
            e.insert(value);
        }
        Entry::Vacant(e) => {
            e.insert(value);
        }
    }
}

/// Writes `v` in decimal at the start of `out` (at least three bytes); returns the length.
fn decimal_into(out: &mut [u8], v: u8) -> usize {
    let digits = [b'0' + v / 100, b'0' + v / 10 % 10, b'0' + v % 10];
    let skip = if v >= 100 {
        0
    } else if v >= 10 {
        1
    } else {
        2
    };
    let len = 3 - skip;
    out[..len].copy_from_slice(&digits[skip..]);
    len
}

/// Keeps a present `x-request-id`, or generates a random (version 4) UUID.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    let entry = headers.entry(X_REQUEST_ID);
    if matches!(&entry, Entry::Occupied(e) if !e.get().is_empty()) {
        return;
    }
    let mut b: [u8; 16] = rand::random();
    // Version 4 and the RFC 4122 variant bits.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = [b'-'; 36];
    hex_into(&mut s[0..8], &b[0..4]);
    hex_into(&mut s[9..13], &b[4..6]);
    hex_into(&mut s[14..18], &b[6..8]);
    hex_into(&mut s[19..23], &b[8..10]);
    hex_into(&mut s[24..36], &b[10..16]);
    if let Ok(v) = HeaderValue::from_bytes(&s) {
        set(entry, unique(v));
    }
}

/// Marks a value that is new on every request as never to be indexed by HPACK. Indexing it in
/// an HTTP/2 hop's dynamic table buys nothing (no later request repeats it) and costs on every
/// request: the encoder walked the chain of earlier values under the same name, compared each,
/// inserted this one and evicted another (a fifth of a request's instructions on a sidecar's
/// HTTP/2 upstream hop). A never-indexed literal is the HPACK representation for exactly such a
/// value; HTTP/1.1 hops ignore the flag. (It also makes the value print as `Sensitive` in
/// `Debug` output.)
fn unique(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// Lowercase hex of `bytes` into `out` (twice as long). Hand-rolled: `write!("{:02x}")` runs the
/// formatting machinery per byte, on every request.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Passes a valid `traceparent` on, or starts a new sampled trace when it is absent or invalid.
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    let entry = headers.entry(TRACEPARENT);
    if matches!(&entry, Entry::Occupied(e) if e.get().to_str().is_ok_and(valid_traceparent)) {
        return;
    }
    let trace: u128 = rand::random::<u128>() | 1; // all-zero ids are invalid
    let span: u64 = rand::random::<u64>() | 1;
    // `00-{trace:032x}-{span:016x}-01`, without the formatting machinery.
    let mut s = *b"00-________________________________-________________-01";
    hex_into(&mut s[3..35], &trace.to_be_bytes());
    hex_into(&mut s[36..52], &span.to_be_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&s) {
        set(entry, unique(v));
    }
}

/// `version-traceid-parentid-flags` with lowercase hex of 2-32-16-2 digits, ids not all zero.
fn valid_traceparent(v: &str) -> bool {
    // No Vec: this runs on every request that carries a traceparent.
    let mut parts = v.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_host_port_rewrites_host_and_authority_but_not_connect() {
        let parts = |req: http::request::Builder| req.body(()).unwrap().into_parts().0;
        let mut p = parts(http::Request::get("/x").header("host", "api:8080"));
        strip_host_port(&mut p, StripHostPort::Matching, 9999);
        assert_eq!(p.headers["host"], "api:8080", "not the listener's port");
        strip_host_port(&mut p, StripHostPort::Matching, 8080);
        assert_eq!(p.headers["host"], "api");
        let mut p = parts(http::Request::get("http://api:8080/x?q"));
        strip_host_port(&mut p, StripHostPort::Any, 1);
        assert_eq!(p.uri, "http://api/x?q");
        let mut p = parts(
            http::Request::builder()
                .method(http::Method::CONNECT)
                .uri("api:443")
                .header("host", "api:443"),
        );
        strip_host_port(&mut p, StripHostPort::Any, 1);
        assert_eq!(p.headers["host"], "api:443");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_but_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "gzip, trailers".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-app"], "kept");
        let mut h = HeaderMap::new();
        h.insert(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, ::1");
        let long: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        h.insert(X_FORWARDED_FOR, " ".parse().unwrap());
        append_forwarded_for(&mut h, long);
        assert_eq!(h[X_FORWARDED_FOR], long.to_string().as_str());
    }

    #[test]
    fn a_connections_forwarded_for_value_serves_each_of_its_requests() {
        let ip = forwarded_for_value("192.168.10.200".parse().unwrap()).unwrap();
        for prev in [None, Some("203.0.113.7")] {
            let mut h = HeaderMap::new();
            if let Some(p) = prev {
                h.insert(X_FORWARDED_FOR, p.parse().unwrap());
            }
            append_forwarded_for_value(&mut h, &ip);
            let want = prev.map_or("192.168.10.200".to_owned(), |p| {
                format!("{p}, 192.168.10.200")
            });
            assert_eq!(h[X_FORWARDED_FOR], want.as_str());
        }
        assert_eq!(ip, "192.168.10.200", "the cached value is left as it was");
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // A custom hop-by-hop name alone is found too.
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn generated_ids_are_never_indexed_but_passed_on_values_are_untouched() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        ensure_traceparent(&mut h);
        assert!(h[X_REQUEST_ID].is_sensitive());
        assert!(h[TRACEPARENT].is_sensitive());
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc".parse().unwrap());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, tp.parse().unwrap());
        ensure_request_id(&mut h);
        ensure_traceparent(&mut h);
        assert!(!h[X_REQUEST_ID].is_sensitive());
        assert!(!h[TRACEPARENT].is_sensitive());
        assert_eq!(h[TRACEPARENT], tp);
    }

    #[test]
    fn request_id_is_kept_or_generated_as_uuid_v4() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h[X_REQUEST_ID].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        ensure_request_id(&mut h);
        assert_eq!(h[X_REQUEST_ID], id.as_str(), "an existing id is passed on");
    }

    #[test]
    fn hex_into_matches_the_formatter() {
        let b = [0x00, 0x0f, 0xa5, 0xff, 0x10];
        let mut out = [0u8; 10];
        hex_into(&mut out, &b);
        let want: String = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        let mut h = HeaderMap::new();
        ensure_traceparent(&mut h);
        let v = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(v.len(), 55, "{v}");
        assert!(v.starts_with("00-") && v.ends_with("-01"), "{v}");
        assert!(!valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
    }

    #[test]
    fn traceparent_is_passed_on_when_valid_and_replaced_when_not() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, good.parse().unwrap());
        ensure_traceparent(&mut h);
        assert_eq!(h[TRACEPARENT], good);
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            h.insert(TRACEPARENT, bad.parse().unwrap());
            ensure_traceparent(&mut h);
            let v = h[TRACEPARENT].to_str().unwrap();
            assert!(valid_traceparent(v) && v != bad, "{v}");
        }
        let mut h = HeaderMap::new();
        ensure_traceparent(&mut h);
        assert!(valid_traceparent(h[TRACEPARENT].to_str().unwrap()));
    }
}
