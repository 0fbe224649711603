//! One request's access-log record and its two line formats. Pure: no I/O, no clock; the writer
//! task formats records off the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Version};
use mesh_core::{AccessLogFormat, ACCESS_LOG_JSON_FIELDS};
use serde_json::Value;

/// What the access log knows about one finished request (Envoy's command operators).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// `%START_TIME%`.
    pub(crate) start_time: SystemTime,
    /// `%REQ(:METHOD)%`.
    pub(crate) method: Method,
    /// `%REQ(:PATH)%` as it arrived (before any rewrite).
    pub(crate) path: Option<PathAndQuery>,
    /// `x-envoy-original-path`, when a hop before us rewrote the path.
    pub(crate) original_path: Option<HeaderValue>,
    /// `%PROTOCOL%`.
    pub(crate) protocol: Version,
    /// `%REQ(:AUTHORITY)%`: the Host header or the URI's authority.
    pub(crate) authority: Option<HeaderValue>,
    /// `%REQ(X-FORWARDED-FOR)%`, after this hop appended its client.
    pub(crate) x_forwarded_for: Option<HeaderValue>,
    /// `%REQ(USER-AGENT)%`.
    pub(crate) user_agent: Option<HeaderValue>,
    /// `%REQ(X-REQUEST-ID)%` (the edge generated one if the request had none).
    pub(crate) request_id: Option<HeaderValue>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    pub(crate) downstream: Option<SocketAddr>,
    /// `%RESPONSE_CODE%`.
    pub(crate) response_code: u16,
    /// The mesh's own answer, as Envoy's response flag (`MeshError::response_flag`), or `-`.
    pub(crate) flag: &'static str,
    /// The client went away before the response's end (Envoy's `DC`).
    pub(crate) downstream_closed: bool,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`.
    pub(crate) upstream_service_time: Option<HeaderValue>,
    /// `%UPSTREAM_HOST%`: the endpoint of the last attempt.
    pub(crate) upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER%`.
    pub(crate) upstream_cluster: Option<Arc<str>>,
    /// `%ROUTE_NAME%`.
    pub(crate) route_name: Option<String>,
    /// `%BYTES_RECEIVED%`: request body bytes.
    pub(crate) bytes_received: u64,
    /// `%BYTES_SENT%`: response body bytes.
    pub(crate) bytes_sent: u64,
    /// `%DURATION%`: from the request's start to the response's last byte.
    pub(crate) duration: Duration,
}

impl Record {
    /// Appends this record as one line (newline included) in `format` to `out`.
    pub(crate) fn write(&self, format: AccessLogFormat, out: &mut String) {
        match format {
            AccessLogFormat::Text => self.write_text(out),
            AccessLogFormat::Json => self.write_json(out),
        }
    }

    /// Envoy's default format; `-` for every unset value, as Envoy writes it.
    fn write_text(&self, out: &mut String) {
        use std::fmt::Write as _;
        let h = |v: &Option<HeaderValue>| v.as_ref().map_or_else(|| "-".into(), text_of);
        let path = self.path_text().unwrap_or_else(|| "-".into());
        let host = self
            .upstream_host
            .map_or_else(|| "-".into(), |a| a.to_string());
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "[{}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\"",
            humantime::format_rfc3339_millis(self.start_time),
            self.method,
            path,
            protocol(self.protocol),
            self.response_code,
            self.flags(),
            self.bytes_received,
            self.bytes_sent,
            self.duration.as_millis(),
            h(&self.upstream_service_time),
            h(&self.x_forwarded_for),
            h(&self.user_agent),
            h(&self.request_id),
            h(&self.authority),
            host,
        );
    }

    /// One JSON object with [`ACCESS_LOG_JSON_FIELDS`]' keys in order; unset values are null,
    /// numbers are numbers (as Envoy's `json_format` types them).
    fn write_json(&self, out: &mut String) {
        let h = |v: &Option<HeaderValue>| v.as_ref().map_or(Value::Null, |v| text_of(v).into());
        let values = [
            humantime::format_rfc3339_millis(self.start_time)
                .to_string()
                .into(),
            self.method.as_str().into(),
            self.path_text().map_or(Value::Null, Value::from),
            protocol(self.protocol).into(),
            self.response_code.into(),
            self.flags().into(),
            self.bytes_received.into(),
            self.bytes_sent.into(),
            u64::try_from(self.duration.as_millis())
                .unwrap_or(u64::MAX)
                .into(),
            h(&self.upstream_service_time),
            h(&self.x_forwarded_for),
            h(&self.user_agent),
            h(&self.request_id),
            h(&self.authority),
            self.upstream_host
                .map_or(Value::Null, |a| a.to_string().into()),
            self.upstream_cluster
                .as_deref()
                .map_or(Value::Null, Value::from),
            self.route_name.as_deref().map_or(Value::Null, Value::from),
            self.downstream
                .map_or(Value::Null, |a| a.to_string().into()),
        ];
        out.push('{');
        for (i, ((key, _), value)) in ACCESS_LOG_JSON_FIELDS.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            out.push_str(&value.to_string());
        }
        out.push_str("}\n");
    }

    /// `x-envoy-original-path` if present, else the path as it arrived.
    fn path_text(&self) -> Option<String> {
        match (&self.original_path, &self.path) {
            (Some(v), _) => Some(text_of(v)),
            (None, Some(p)) => Some(p.as_str().to_string()),
            (None, None) => None,
        }
    }

    /// `%RESPONSE_FLAGS%`: comma-separated, `-` when none.
    fn flags(&self) -> String {
        match (self.flag, self.downstream_closed) {
            ("-", false) => "-".into(),
            ("-", true) => "DC".into(),
            (f, false) => f.into(),
            (f, true) => format!("{f},DC"),
        }
    }
}

/// A header value as text (a non-UTF-8 byte becomes U+FFFD rather than losing the line).
fn text_of(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// `%PROTOCOL%` as Envoy spells it.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A complete record of a proxied request.
    pub(crate) fn record() -> Record {
        Record {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            method: Method::GET,
            path: Some(PathAndQuery::from_static("/app?x=1")),
            original_path: None,
            protocol: Version::HTTP_11,
            authority: Some(HeaderValue::from_static("hello")),
            x_forwarded_for: Some(HeaderValue::from_static("127.0.0.1")),
            user_agent: None,
            request_id: Some(HeaderValue::from_static("rid-1")),
            downstream: Some("127.0.0.1:5000".parse().unwrap()),
            response_code: 200,
            flag: "-",
            downstream_closed: false,
            upstream_service_time: None,
            upstream_host: Some("10.0.0.1:8080".parse().unwrap()),
            upstream_cluster: Some(Arc::from("hello")),
            route_name: Some("app".into()),
            bytes_received: 3,
            bytes_sent: 11,
            duration: Duration::from_micros(4_900),
        }
    }

    #[test]
    fn text_is_envoys_default_format_with_dashes_for_unset_values() {
        let mut out = String::new();
        record().write(AccessLogFormat::Text, &mut out);
        assert_eq!(
            out,
            "[2023-11-14T22:13:20.123Z] \"GET /app?x=1 HTTP/1.1\" 200 - 3 11 4 - \
             \"127.0.0.1\" \"-\" \"rid-1\" \"hello\" \"10.0.0.1:8080\"\n"
        );
        let mut r = record();
        r.flag = "UF";
        r.downstream_closed = true;
        r.original_path = Some(HeaderValue::from_static("/before"));
        r.protocol = Version::HTTP_2;
        let mut out = String::new();
        r.write(AccessLogFormat::Text, &mut out);
        assert!(out.contains("\"GET /before HTTP/2\" 200 UF,DC "), "{out}");
    }

    #[test]
    fn json_has_every_key_in_order_with_typed_values() {
        let mut out = String::new();
        record().write(AccessLogFormat::Json, &mut out);
        assert!(out.ends_with("}\n") && !out[..out.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let keys: Vec<&str> = ACCESS_LOG_JSON_FIELDS.iter().map(|(k, _)| *k).collect();
        let mut seen: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        seen.sort_unstable();
        let mut want = keys.clone();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert!(out.starts_with("{\"start_time\":\"2023-11-14T22:13:20.123Z\",\"method\""));
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["duration"], 4);
        assert_eq!(v["bytes_sent"], 11);
        assert_eq!(v["user_agent"], serde_json::Value::Null);
        assert_eq!(v["upstream_cluster"], "hello");
        assert_eq!(v["downstream_remote_address"], "127.0.0.1:5000");
    }
}
