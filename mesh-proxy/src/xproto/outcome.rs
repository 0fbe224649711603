//! What an RPC response tells outlier detection about its endpoint: the protocol's status
//! read as the HTTP status it stands for, then classified by mesh-lb's
//! [`Outcome::of_status`], the same rule HTTP responses go through (so `consecutive_5xx` and
//! `consecutive_gateway_failure` mean the same for both).
//!
//! The reading follows MOSN's status mappings of bolt and dubbo (every non-success status is a
//! 500 unless it names overload, a time-out or a lost connection), with two differences, both
//! so that a client sending bad calls cannot eject healthy endpoints: the statuses that blame
//! the request (bolt's CODEC_EXCEPTION, which the mesh answers a request whose body does not
//! decode with; dubbo's BAD_REQUEST and CLIENT_ERROR) read as 400, and "no provider for this
//! service" (bolt NO_PROCESSOR, dubbo SERVICE_NOT_FOUND) reads as 404, as an HTTP route miss
//! does (a sidecar upstream answers an unknown service with these).
//!
//! | protocol status | reads as | counts for |
//! |---|---|---|
//! | bolt SUCCESS, dubbo OK | 200 | success |
//! | bolt SERVER_THREADPOOL_BUSY, dubbo SERVER_THREADPOOL_EXHAUSTED | 503 | 5xx and gateway |
//! | bolt TIMEOUT, dubbo CLIENT_TIMEOUT / SERVER_TIMEOUT | 504 | 5xx and gateway |
//! | bolt CONNECTION_CLOSED / ERROR_COMM | 502 | 5xx and gateway |
//! | bolt NO_PROCESSOR, dubbo SERVICE_NOT_FOUND | 404 | success (not the endpoint's fault) |
//! | bolt CODEC_EXCEPTION, dubbo BAD_REQUEST / CLIENT_ERROR | 400 | success (not the endpoint's fault) |
//! | any other: bolt ERROR, SERVER_EXCEPTION, UNKNOWN...; dubbo SERVICE_ERROR, SERVER_ERROR... | 500 | 5xx |
//!
//! Failures the proxy sees itself (connect failure, the request's time-out, the connection
//! reset before the answer) are [`Outcome::LOCAL_ORIGIN_FAILURE`], recorded where they happen.
//! A business exception is not among these: bolt and dubbo carry it in a successful response's
//! body.

use http::StatusCode;
use mesh_core::RpcProtocol;
use mesh_lb::Outcome;
use mesh_xprotocol::{bolt, dubbo};

/// The HTTP status a response with protocol status `status` stands for.
pub(crate) fn http_status(protocol: RpcProtocol, status: Option<u16>) -> StatusCode {
    let Some(status) = status else {
        // A response without a status (not one our codecs decode): the endpoint answered.
        return StatusCode::OK;
    };
    match protocol {
        RpcProtocol::Bolt => match status {
            bolt::status::SUCCESS => StatusCode::OK,
            bolt::status::SERVER_THREADPOOL_BUSY => StatusCode::SERVICE_UNAVAILABLE,
            bolt::status::NO_PROCESSOR => StatusCode::NOT_FOUND,
            bolt::status::CODEC_EXCEPTION => StatusCode::BAD_REQUEST,
            bolt::status::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
            bolt::status::CONNECTION_CLOSED | bolt::status::ERROR_COMM => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        RpcProtocol::Dubbo => match u8::try_from(status).unwrap_or(u8::MAX) {
            dubbo::status::OK => StatusCode::OK,
            dubbo::status::SERVER_THREADPOOL_EXHAUSTED_ERROR => StatusCode::SERVICE_UNAVAILABLE,
            dubbo::status::SERVICE_NOT_FOUND => StatusCode::NOT_FOUND,
            dubbo::status::CLIENT_TIMEOUT | dubbo::status::SERVER_TIMEOUT => {
                StatusCode::GATEWAY_TIMEOUT
            }
            dubbo::status::BAD_REQUEST | dubbo::status::CLIENT_ERROR => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
    }
}

/// The outcome of an upstream's response, for outlier detection.
pub(crate) fn of_response(protocol: RpcProtocol, status: Option<u16>) -> Outcome {
    Outcome::of_status(http_status(protocol, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Outcome = Outcome::Failure { gateway: false };
    const GATEWAY: Outcome = Outcome::Failure { gateway: true };

    #[test]
    fn bolt_statuses() {
        let cases = [
            (bolt::status::SUCCESS, Outcome::Success),
            (bolt::status::SERVER_EXCEPTION, SERVER),
            (bolt::status::ERROR, SERVER),
            (bolt::status::UNKNOWN, SERVER),
            (bolt::status::CODEC_EXCEPTION, Outcome::Success),
            (bolt::status::SERVER_THREADPOOL_BUSY, GATEWAY),
            (bolt::status::NO_PROCESSOR, Outcome::Success),
            (bolt::status::TIMEOUT, GATEWAY),
            (bolt::status::CONNECTION_CLOSED, GATEWAY),
            (bolt::status::ERROR_COMM, GATEWAY),
            (0x7777, SERVER),
        ];
        for (status, want) in cases {
            assert_eq!(
                of_response(RpcProtocol::Bolt, Some(status)),
                want,
                "{status:#x}"
            );
        }
    }

    #[test]
    fn dubbo_statuses() {
        let cases = [
            (dubbo::status::OK, Outcome::Success),
            (dubbo::status::BAD_REQUEST, Outcome::Success),
            (dubbo::status::CLIENT_ERROR, Outcome::Success),
            (dubbo::status::SERVICE_ERROR, SERVER),
            (dubbo::status::SERVER_ERROR, SERVER),
            (dubbo::status::BAD_RESPONSE, SERVER),
            (dubbo::status::SERVICE_NOT_FOUND, Outcome::Success),
            (dubbo::status::SERVER_TIMEOUT, GATEWAY),
            (dubbo::status::CLIENT_TIMEOUT, GATEWAY),
            (dubbo::status::SERVER_THREADPOOL_EXHAUSTED_ERROR, GATEWAY),
        ];
        for (status, want) in cases {
            let got = of_response(RpcProtocol::Dubbo, Some(u16::from(status)));
            assert_eq!(got, want, "{status}");
        }
        assert_eq!(of_response(RpcProtocol::Dubbo, Some(0x1234)), SERVER);
        assert_eq!(of_response(RpcProtocol::Bolt, None), Outcome::Success);
    }
}
