//! Access logs: one line per request on a listener, where and in which format (Envoy's file
//! access log, `envoy.access_loggers.file`, on the HTTP connection manager).

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError};

/// Standard output, as Envoy spells it in a file access log's `path`.
pub const ACCESS_LOG_STDOUT: &str = "/dev/stdout";

/// One access log of a listener: every request the listener serves is written to `path` as one
/// line, when its response has ended (or the client went away).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// The file appended to; `/dev/stdout` (the default; `-` is read as the same) for standard
    /// output, `/dev/stderr` for standard error.
    #[serde(default = "stdout", deserialize_with = "dash_is_stdout")]
    pub path: String,
    /// The line's format.
    #[serde(default)]
    pub format: AccessLogFormat,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            path: stdout(),
            format: AccessLogFormat::default(),
        }
    }
}

impl AccessLog {
    /// A log to `path` (`-` means standard output) in `format`.
    pub fn new(path: impl Into<String>, format: AccessLogFormat) -> Self {
        let path = path.into();
        Self {
            path: if path == "-" { stdout() } else { path },
            format,
        }
    }
}

/// The format of an access-log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Envoy's default format string:
    /// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    /// %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    /// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    /// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`.
    #[default]
    Text,
    /// One JSON object per line, with Istio's key names for Envoy's command operators
    /// (`start_time`, `method`, `path`, `protocol`, `response_code`, `response_flags`,
    /// `bytes_received`, `bytes_sent`, `duration`, `upstream_host`, `upstream_cluster`,
    /// `request_id`, `authority`, `downstream_remote_address`, ...).
    Json,
}

/// The keys of a [`AccessLogFormat::Json`] line, in order, each with the Envoy command operator
/// that fills it: the sidecar writes these, and the control plane sends Envoy the same dictionary
/// as a `json_format`, so both write the same keys. Names as Istio's JSON access log.
pub const ACCESS_LOG_JSON_FIELDS: [(&str, &str); 18] = [
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("route_name", "%ROUTE_NAME%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
];

/// Envoy's default access-log format string ([`AccessLogFormat::Text`]), newline included.
pub const ACCESS_LOG_ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
     %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
     %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
     \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
     \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

fn stdout() -> String {
    ACCESS_LOG_STDOUT.to_string()
}

fn dash_is_stdout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path = String::deserialize(d)?;
    Ok(if path == "-" { stdout() } else { path })
}

impl Validate for AccessLog {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.path.trim().is_empty() {
            return Err(ValidationError::new("path", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_envoy_text_on_stdout_and_dash_means_stdout() {
        let log: AccessLog = crate::yaml::from_str("{}").unwrap();
        assert_eq!(log, AccessLog::default());
        assert_eq!(log.path, "/dev/stdout");
        let log: AccessLog = crate::yaml::from_str("{ path: '-', format: json }").unwrap();
        assert_eq!(log, AccessLog::new("-", AccessLogFormat::Json));
        assert_eq!(log.path, ACCESS_LOG_STDOUT);
        let empty = AccessLog::new(" ", AccessLogFormat::Text);
        assert_eq!(empty.validate().unwrap_err().path, "path");
        let e = crate::yaml::from_str::<AccessLog>("{ format: xml }").unwrap_err();
        assert!(e.to_string().contains("unknown variant `xml`"), "{e}");
    }
}
