//! W3C trace context on `http` header maps: extraction through OpenTelemetry's
//! `TraceContextPropagator`, injection by hand.
//!
//! Injection is hand-written (a few lines) rather than the propagator's `inject_context`: that
//! one always writes `tracestate`, an empty header on nearly every request, and formats the ids
//! through the formatting machinery. The incoming `tracestate` is passed on untouched (our
//! samplers never change it).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::SpanContext;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The W3C trace-context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Reads `traceparent` / `tracestate` from a request's headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The parent context a request carries: its remote span, or an empty context (a new trace)
/// when `traceparent` is absent or invalid.
pub(crate) fn extract(headers: &HeaderMap) -> Context {
    // Most requests of a traced mesh carry one; without it, skip the propagator entirely.
    if !headers.contains_key(TRACEPARENT) {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Sets `traceparent` to `span` (`00-{trace}-{span}-{flags}`).
pub(crate) fn inject(headers: &mut HeaderMap, span: &SpanContext) {
    if !span.is_valid() {
        return;
    }
    let mut s = *b"00-________________________________-________________-__";
    hex_into(&mut s[3..35], &span.trace_id().to_bytes());
    hex_into(&mut s[36..52], &span.span_id().to_bytes());
    hex_into(&mut s[53..55], &[span.trace_flags().to_u8() & 0x01]);
    if let Ok(mut v) = HeaderValue::from_bytes(&s) {
        // New on every request: never indexed by HPACK (see mesh-proxy's headers module).
        v.set_sensitive(true);
        headers.insert(TRACEPARENT, v);
    }
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    use super::*;

    fn has_parent(cx: &Context) -> bool {
        cx.span().span_context().is_valid()
    }

    #[test]
    fn inject_writes_what_extract_reads() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut h = HeaderMap::new();
        inject(&mut h, &sc);
        assert_eq!(
            h[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(h[TRACEPARENT].is_sensitive());
        assert!(!h.contains_key("tracestate"), "no empty tracestate");
        let cx = extract(&h);
        let got = cx.span().span_context().clone();
        assert!(got.is_remote());
        assert_eq!(got.trace_id(), sc.trace_id());
        assert_eq!(got.span_id(), sc.span_id());
        assert!(got.is_sampled());

        let unsampled = SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        inject(&mut h, &unsampled);
        assert!(h[TRACEPARENT].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn absent_or_invalid_traceparent_means_a_new_trace() {
        assert!(!has_parent(&extract(&HeaderMap::new())));
        let mut h = HeaderMap::new();
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            h.insert(TRACEPARENT, bad.parse().unwrap());
            assert!(!has_parent(&extract(&h)), "{bad}");
        }
    }
}
