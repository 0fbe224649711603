//! `MeshError`, the one error of the request path, and its one mapping to a response.
//!
//! Layers fail with a `MeshError` (boxed through tower as a [`BoxError`]); the edge of the stack
//! (the sidecar's listener, or an SDK user's client wrapper) turns it into a response with
//! [`MeshError::to_response`]. No other place decides status codes.

use std::net::SocketAddr;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};

use crate::body::{self, Body, BoxError};

/// The gRPC status codes the mesh answers with (numeric values per the gRPC spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    /// 4: the deadline (our route timeout) expired.
    DeadlineExceeded = 4,
    /// 7: authorization (RBAC) refused the caller.
    PermissionDenied = 7,
    /// 8: rate limited, or a message over the size limit.
    ResourceExhausted = 8,
    /// 12: no route for the method.
    Unimplemented = 12,
    /// 13: malformed request or internal failure.
    Internal = 13,
    /// 14: no endpoint, circuit open, or upstream unreachable.
    Unavailable = 14,
}

/// Every way the mesh itself answers a request instead of the upstream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// No virtual host or route matched.
    #[error("{}", no_route(.authority, .path))]
    NoRoute {
        /// The request's authority (Host).
        authority: String,
        /// The request's path.
        path: String,
    },
    /// The route named a cluster the load balancer does not know.
    #[error("cluster {cluster:?} not found")]
    ClusterNotFound {
        /// The cluster name.
        cluster: String,
    },
    /// The cluster has no endpoint that may take traffic.
    #[error("no healthy endpoint in cluster {cluster:?}")]
    NoHealthyEndpoint {
        /// The cluster name.
        cluster: String,
    },
    /// A circuit breaker of the cluster is open.
    #[error("circuit breaker open for cluster {cluster:?}: {limit}")]
    CircuitOpen {
        /// The cluster name.
        cluster: String,
        /// Which limit was reached (`max_requests`, `max_pending_requests`, ...).
        limit: &'static str,
    },
    /// A local rate limit refused the request.
    #[error("rate limited by {rule}, retry after {}s", retry_after_secs(.retry_after))]
    RateLimited {
        /// The rule that refused it.
        rule: String,
        /// When a token will be available.
        retry_after: Duration,
    },
    /// The route's timeout expired before the upstream answered.
    #[error("upstream timed out after {timeout:?}")]
    UpstreamTimeout {
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The upstream could not be reached.
    #[error("upstream connect to {endpoint} failed: {reason}")]
    UpstreamConnect {
        /// The endpoint tried.
        endpoint: SocketAddr,
        /// The connect error.
        reason: String,
    },
    /// The upstream connection failed after connecting (reset, protocol error).
    #[error("upstream failed: {reason}")]
    Upstream {
        /// What failed.
        reason: String,
    },
    /// The request body is over the configured limit.
    #[error("request body over the {limit}-byte limit")]
    RequestTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request headers are over the configured limit.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The request is malformed.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// The listener's authorization (RBAC) refused the request.
    #[error("RBAC: access denied ({policy})")]
    RbacDenied {
        /// What decided: the DENY policy that matched, or `no_policy_matched` when no ALLOW
        /// policy did (a metrics label, as Envoy's `rbac_access_denied_matched_policy[..]`).
        policy: String,
    },
    /// A fault-injection filter aborted the request on purpose.
    #[error("fault injected: abort with {status}")]
    FaultAbort {
        /// The HTTP status to answer with.
        status: u16,
    },
}

/// Names what did not match; a request without an authority cannot match a virtual host at all,
/// which is worth saying (a tonic client on a custom service sends only the path unless built
/// `with_origin`).
fn no_route(authority: &str, path: &str) -> String {
    if authority.is_empty() {
        format!(
            "no route for path {path}: the request names no authority (no Host header and no \
             absolute URI), so no virtual host can match; give the URI a host \
             (tonic: `with_origin(service, \"http://SERVICE\")`)"
        )
    } else {
        format!("no route for authority {authority:?} and path {path}")
    }
}

fn retry_after_secs(d: &Duration) -> u64 {
    // Round up: a client told "0" would retry at once and be refused again.
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl MeshError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::ClusterNotFound { .. }
            | Self::NoHealthyEndpoint { .. }
            | Self::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamConnect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::RbacDenied { .. } => StatusCode::FORBIDDEN,
            Self::FaultAbort { status } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The gRPC status this error answers a gRPC request with.
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            Self::NoRoute { .. } => GrpcCode::Unimplemented,
            Self::ClusterNotFound { .. }
            | Self::NoHealthyEndpoint { .. }
            | Self::CircuitOpen { .. }
            | Self::UpstreamConnect { .. }
            | Self::Upstream { .. } => GrpcCode::Unavailable,
            Self::RateLimited { .. } | Self::RequestTooLarge { .. } | Self::HeadersTooLarge => {
                GrpcCode::ResourceExhausted
            }
            Self::UpstreamTimeout { .. } => GrpcCode::DeadlineExceeded,
            Self::BadRequest { .. } => GrpcCode::Internal,
            Self::RbacDenied { .. } => GrpcCode::PermissionDenied,
            // The gRPC spec's HTTP-to-gRPC mapping for the injected status.
            Self::FaultAbort { status } => match status {
                400 => GrpcCode::Internal,
                401 | 403 | 404 => GrpcCode::Unimplemented,
                429 | 502..=504 => GrpcCode::Unavailable,
                _ => GrpcCode::Internal,
            },
        }
    }

    /// Which mesh component answered: `router`, `lb`, `ratelimit`, `upstream`, `proxy`, `fault`,
    /// `rbac`.
    pub fn component(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } | Self::UpstreamTimeout { .. } => "router",
            Self::ClusterNotFound { .. }
            | Self::NoHealthyEndpoint { .. }
            | Self::CircuitOpen { .. } => "lb",
            Self::RateLimited { .. } => "ratelimit",
            Self::UpstreamConnect { .. } | Self::Upstream { .. } => "upstream",
            Self::RequestTooLarge { .. } | Self::HeadersTooLarge | Self::BadRequest { .. } => {
                "proxy"
            }
            Self::FaultAbort { .. } => "fault",
            Self::RbacDenied { .. } => "rbac",
        }
    }

    /// A short machine-readable code, sent as `x-mesh-error` and used as a metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::ClusterNotFound { .. } => "cluster_not_found",
            Self::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::RateLimited { .. } => "rate_limited",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamConnect { .. } => "upstream_connect_failure",
            Self::Upstream { .. } => "upstream_failure",
            Self::RequestTooLarge { .. } => "request_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BadRequest { .. } => "bad_request",
            Self::FaultAbort { .. } => "fault_abort",
            Self::RbacDenied { .. } => "rbac_denied",
        }
    }

    /// Envoy's response flag for this error (`%RESPONSE_FLAGS%` in its access logs), so that
    /// an access-log line reads as an Envoy user expects: `NR` no route, `NC` no cluster, `UH`
    /// no healthy upstream, `UO` upstream overflow (circuit breaker), `RL` rate limited, `UT`
    /// upstream timeout, `UF` upstream connect failure, `UC` upstream connection termination,
    /// `DPE` downstream protocol error, `FI` fault injected; `-` when Envoy sets none (a body
    /// over the limit; an RBAC denial, which Envoy marks only in `%RESPONSE_CODE_DETAILS%` as
    /// `rbac_access_denied_matched_policy[..]`).
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "NR",
            Self::ClusterNotFound { .. } => "NC",
            Self::NoHealthyEndpoint { .. } => "UH",
            Self::CircuitOpen { .. } => "UO",
            Self::RateLimited { .. } => "RL",
            Self::UpstreamTimeout { .. } => "UT",
            Self::UpstreamConnect { .. } => "UF",
            Self::Upstream { .. } => "UC",
            Self::HeadersTooLarge | Self::BadRequest { .. } => "DPE",
            Self::RequestTooLarge { .. } | Self::RbacDenied { .. } => "-",
            Self::FaultAbort { .. } => "FI",
        }
    }

    /// Recovers a `MeshError` from a boxed error that crossed tower; anything else is an
    /// upstream failure (502), since every mesh-originated failure is a `MeshError`.
    pub fn from_boxed(err: BoxError) -> Self {
        match err.downcast::<MeshError>() {
            Ok(e) => *e,
            Err(other) => Self::Upstream {
                reason: other.to_string(),
            },
        }
    }

    /// The response for this error: gRPC requests get a trailers-only response (HTTP 200 with
    /// `grpc-status` and `grpc-message`), others the HTTP status and a short text body saying
    /// which component answered and why. The error itself rides along in the response's
    /// extensions, so outer layers (the sidecar's access log) still see its kind.
    pub fn to_response(&self, grpc: bool) -> Response<Body> {
        let mut resp = self.build_response(grpc);
        resp.extensions_mut().insert(self.clone());
        resp
    }

    fn build_response(&self, grpc: bool) -> Response<Body> {
        // An RBAC denial answers with Envoy's exact text, so a client cannot tell (and need not
        // care) whether our sidecar or Envoy refused it; the deciding policy is in metrics.
        let message = match self {
            Self::RbacDenied { .. } => RBAC_DENIED_BODY.to_string(),
            _ => format!("mesh {}: {self}", self.component()),
        };
        let mut builder = Response::builder().header("x-mesh-error", self.code());
        if let Self::RateLimited { retry_after, .. } = self {
            builder = builder.header(header::RETRY_AFTER, retry_after_secs(retry_after));
        }
        let built = if grpc {
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", u16::from(self.grpc_code() as u8))
                .header("grpc-message", percent_encode(&message))
                .body(body::empty())
        } else if let Self::RbacDenied { .. } = self {
            builder
                .status(self.status())
                .header(header::CONTENT_TYPE, "text/plain")
                .body(body::full(message))
        } else {
            builder
                .status(self.status())
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(body::full(format!("{message}\n")))
        };
        // Every header above is built from ASCII we control, so the builder cannot fail; keep a
        // plain fallback rather than a panic on the data path all the same.
        built.unwrap_or_else(|_| {
            let mut r = Response::new(body::empty());
            *r.status_mut() = self.status();
            r
        })
    }
}

/// The body (and gRPC message) of an RBAC denial: Envoy's, word for word.
pub const RBAC_DENIED_BODY: &str = "RBAC: access denied";

/// Whether a request is gRPC (`content-type: application/grpc...`), so errors answer in kind.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Percent-encodes a grpc-message as the gRPC spec asks (printable ASCII except `%` passes).
fn percent_encode(msg: &str) -> HeaderValue {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("mesh error"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn all() -> Vec<MeshError> {
        vec![
            MeshError::NoRoute {
                authority: "a".into(),
                path: "/x".into(),
            },
            MeshError::ClusterNotFound {
                cluster: "c".into(),
            },
            MeshError::NoHealthyEndpoint {
                cluster: "c".into(),
            },
            MeshError::CircuitOpen {
                cluster: "c".into(),
                limit: "max_requests",
            },
            MeshError::RateLimited {
                rule: "r".into(),
                retry_after: Duration::from_millis(1500),
            },
            MeshError::UpstreamTimeout {
                timeout: Duration::from_secs(1),
            },
            MeshError::UpstreamConnect {
                endpoint: "127.0.0.1:1".parse().unwrap(),
                reason: "refused".into(),
            },
            MeshError::Upstream {
                reason: "reset".into(),
            },
            MeshError::RequestTooLarge { limit: 10 },
            MeshError::HeadersTooLarge,
            MeshError::BadRequest {
                reason: "bad".into(),
            },
            MeshError::FaultAbort { status: 418 },
            MeshError::RbacDenied {
                policy: "no_policy_matched".into(),
            },
        ]
    }

    #[test]
    fn http_status_mapping() {
        let statuses: Vec<u16> = all().iter().map(|e| e.status().as_u16()).collect();
        assert_eq!(
            statuses,
            [404, 503, 503, 503, 429, 504, 502, 502, 413, 431, 400, 418, 403]
        );
    }

    #[test]
    fn envoy_response_flags() {
        let flags: Vec<&str> = all().iter().map(MeshError::response_flag).collect();
        assert_eq!(
            flags,
            ["NR", "NC", "UH", "UO", "RL", "UT", "UF", "UC", "-", "DPE", "DPE", "FI", "-"]
        );
    }

    #[test]
    fn grpc_status_mapping() {
        use GrpcCode::*;
        let codes: Vec<GrpcCode> = all().iter().map(MeshError::grpc_code).collect();
        assert_eq!(
            codes,
            [
                Unimplemented,
                Unavailable,
                Unavailable,
                Unavailable,
                ResourceExhausted,
                DeadlineExceeded,
                Unavailable,
                Unavailable,
                ResourceExhausted,
                ResourceExhausted,
                Internal,
                Internal,
                PermissionDenied
            ]
        );
    }

    #[test]
    fn http_response_names_component_and_reason_and_sets_retry_after() {
        let err = MeshError::RateLimited {
            rule: "per-ip".into(),
            retry_after: Duration::from_millis(1500),
        };
        let resp = err.to_response(false);
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()["retry-after"],
            "2",
            "rounded up to whole seconds"
        );
        assert_eq!(resp.headers()["x-mesh-error"], "rate_limited");
        assert_eq!(resp.extensions().get::<MeshError>(), Some(&err));
        let body = block_on(resp.into_body().collect()).unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"mesh ratelimit: rate limited by per-ip, retry after 2s\n"
        );
    }

    #[test]
    fn grpc_response_is_trailers_only_with_status() {
        let err = MeshError::NoRoute {
            authority: "svc".into(),
            path: "/pkg.S/M".into(),
        };
        let resp = err.to_response(true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(
            resp.headers()["grpc-message"],
            "mesh router: no route for authority \"svc\" and path /pkg.S/M"
        );
    }

    /// A request without an authority is told why nothing could match, and how to fix it.
    #[test]
    fn rbac_denial_answers_with_envoys_body_and_permission_denied() {
        let err = MeshError::RbacDenied {
            policy: "deny-admin".into(),
        };
        let resp = err.to_response(false);
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-mesh-error"], "rbac_denied");
        let body = block_on(resp.into_body().collect()).unwrap().to_bytes();
        assert_eq!(&body[..], b"RBAC: access denied");
        let resp = err.to_response(true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "7");
        assert_eq!(resp.headers()["grpc-message"], "RBAC: access denied");
    }

    #[test]
    fn no_route_without_authority_says_so() {
        let err = MeshError::NoRoute {
            authority: String::new(),
            path: "/grpc.health.v1.Health/Check".into(),
        };
        let text = err.to_string();
        assert!(text.contains("path /grpc.health.v1.Health/Check"), "{text}");
        assert!(text.contains("names no authority"), "{text}");
        assert!(text.contains("with_origin"), "{text}");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }

    #[test]
    fn detects_grpc_by_content_type() {
        let grpc = Request::builder()
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        let plain = Request::builder()
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        assert!(is_grpc(&grpc));
        assert!(!is_grpc(&plain));
        assert!(!is_grpc(&Request::new(())));
    }

    #[test]
    fn boxed_errors_round_trip_and_foreign_errors_become_502() {
        let boxed: BoxError = Box::new(MeshError::HeadersTooLarge);
        assert_eq!(MeshError::from_boxed(boxed), MeshError::HeadersTooLarge);
        let foreign: BoxError = "connection reset".into();
        let e = MeshError::from_boxed(foreign);
        assert_eq!(e.status(), 502);
        assert_eq!(
            e,
            MeshError::Upstream {
                reason: "connection reset".into()
            }
        );
    }

    /// Polls a future that never waits (a `Full` body) to completion without a runtime.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}
