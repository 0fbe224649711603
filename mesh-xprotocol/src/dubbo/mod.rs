//! Dubbo 2 framing with hessian2 bodies: the [`DubboCodec`].
//!
//! A frame is a 16-byte [`header`] and a body. Requests are decoded only as far as routing needs
//! ([`request`]): the service path, method and attachments (`version`, `group`, `interface`, ...);
//! the arguments in between are skipped by the [`hessian2`] reader without being built. Responses
//! are cut by their header alone; an event request is a heartbeat when its body is hessian2 null,
//! else a read-only (`R`) or writable (`W`) notice ([`FrameKind::Event`]). A request whose body
//! does not decode is cut out all the same and reported as [`CodecError::BadRequest`], to be
//! answered with BAD_REQUEST. The frame's bytes pass through untouched but for the request id.
//!
//! The responses the mesh writes itself follow Apache Dubbo's `ExchangeCodec.encodeResponse`: the
//! request's serialization id in the flag byte (plus the event bit for a heartbeat), a status byte
//! from [`status`], and for an error a hessian2 string body with the message, which Dubbo clients
//! raise as the call's error.

pub mod header;
pub mod hessian2;
pub mod request;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

use crate::{CodecError, Frame, FrameKind, Protocol, RpcHeader, XCodec, XError};
use header::{Header, FLAG_EVENT, HEADER_LEN, HESSIAN2, REQUEST_ID};

/// Dubbo's response status bytes (`org.apache.dubbo.remoting.exchange.Response`).
pub mod status {
    /// The call succeeded.
    pub const OK: u8 = 20;
    /// The client gave up waiting.
    pub const CLIENT_TIMEOUT: u8 = 30;
    /// The server (here: the mesh, for its upstream) gave up waiting.
    pub const SERVER_TIMEOUT: u8 = 31;
    /// The request could not be decoded.
    pub const BAD_REQUEST: u8 = 40;
    /// The response could not be decoded.
    pub const BAD_RESPONSE: u8 = 50;
    /// No provider exports the service.
    pub const SERVICE_NOT_FOUND: u8 = 60;
    /// The service's method failed.
    pub const SERVICE_ERROR: u8 = 70;
    /// The server failed.
    pub const SERVER_ERROR: u8 = 80;
    /// The client failed.
    pub const CLIENT_ERROR: u8 = 90;
    /// The server is saturated and refused the call at once.
    pub const SERVER_THREADPOOL_EXHAUSTED_ERROR: u8 = 100;
}

const PROTOCOL: &str = "dubbo";

/// The dubbo codec (stateless; one value serves every connection).
#[derive(Debug, Clone, Copy, Default)]
pub struct DubboCodec;

impl DubboCodec {
    /// The status byte and message the mesh answers `error` with.
    ///
    /// Overload maps to `SERVER_THREADPOOL_EXHAUSTED_ERROR`, Dubbo's own "refused at once because
    /// saturated"; a broken upstream to `SERVER_ERROR`, as the failure is the server side's.
    pub fn error_status(error: XError) -> (u8, &'static str) {
        match error {
            XError::NoProvider => (
                status::SERVICE_NOT_FOUND,
                "mesh: no provider for the service",
            ),
            XError::Timeout => (status::SERVER_TIMEOUT, "mesh: upstream timed out"),
            XError::Overloaded => (
                status::SERVER_THREADPOOL_EXHAUSTED_ERROR,
                "mesh: overloaded (rate limit or circuit breaker)",
            ),
            XError::UpstreamFailure => (status::SERVER_ERROR, "mesh: upstream connection failed"),
            XError::Malformed => (status::BAD_REQUEST, "mesh: malformed request"),
        }
    }

    /// A response frame to `request` with `status` and a hessian2 string body `message` (the form
    /// of every non-OK dubbo response).
    pub fn response_with_message(request: &Frame, status: u8, message: &str) -> Bytes {
        let mut body = BytesMut::with_capacity(message.len() + 3);
        hessian2::write_string(&mut body, message);
        Header::frame(serialization_of(request), status, request.request_id, &body).freeze()
    }
}

/// The request's serialization id, so the client decodes our body with the serializer it chose.
fn serialization_of(frame: &Frame) -> u8 {
    frame
        .raw
        .get(2)
        .map_or(HESSIAN2, |flag| flag & header::SERIALIZATION_MASK)
}

/// What an event request is, by its body (Apache Dubbo's `ExchangeCodec.decodeBody` and
/// `CodecSupport.isHeartBeat`): a heartbeat when the body is the serialized null (hessian2 `N`;
/// also an empty body, which the null of a serializer that cannot write one is), else an event
/// whose string data `R` makes the connection read-only and `W` writable again. A body of another
/// serialization than hessian2 is not read: a heartbeat, as before this distinction. A heartbeat
/// without the two-way bit is an event too: Dubbo's `HeartbeatHandler` answers only two-way ones.
fn event_kind(h: Header, body: &[u8]) -> FrameKind {
    if body.is_empty() || body == b"N" || h.serialization() != HESSIAN2 {
        return if h.is_two_way() {
            FrameKind::HeartbeatRequest
        } else {
            FrameKind::Event { read_only: None }
        };
    }
    let read_only = match hessian2::Reader::new(body).read_string() {
        Ok(Some(s)) if s == "R" => Some(true),
        Ok(Some(s)) if s == "W" => Some(false),
        _ => None,
    };
    FrameKind::Event { read_only }
}

fn malformed(reason: impl Into<String>) -> CodecError {
    CodecError::Malformed {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

impl XCodec for DubboCodec {
    fn protocol(&self) -> Protocol {
        Protocol::Dubbo
    }

    fn decode(&self, buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, CodecError> {
        let Some(h) = Header::parse(buf).map_err(malformed)? else {
            return Ok(None);
        };
        let len = HEADER_LEN.saturating_add(h.body_len);
        if len > max_frame {
            return Err(CodecError::TooLarge {
                protocol: PROTOCOL,
                len,
                limit: max_frame,
            });
        }
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let kind = match (h.is_request(), h.is_event()) {
            (true, true) => event_kind(h, &buf[HEADER_LEN..len]),
            (true, false) => FrameKind::Request {
                oneway: !h.is_two_way(),
            },
            (false, true) => FrameKind::HeartbeatResponse,
            (false, false) => FrameKind::Response,
        };
        let header = if let FrameKind::Request { .. } = kind {
            let decoded = if h.serialization() == HESSIAN2 {
                request::decode(&buf[HEADER_LEN..len]).map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "serialization id {}: only hessian2 (2) is decoded",
                    h.serialization()
                ))
            };
            match decoded {
                Ok(header) => header,
                // The length is known, so the frame is cut out and answered, as Dubbo's
                // `ExchangeCodec` marks such a request broken and answers BAD_REQUEST.
                Err(reason) => {
                    return Err(CodecError::BadRequest {
                        protocol: PROTOCOL,
                        reason,
                        frame: Box::new(Frame {
                            kind,
                            request_id: h.request_id,
                            header: RpcHeader::default(),
                            status: None,
                            raw: buf.split_to(len),
                        }),
                    })
                }
            }
        } else {
            RpcHeader::default()
        };
        Ok(Some(Frame {
            kind,
            request_id: h.request_id,
            header,
            status: (!h.is_request()).then_some(u16::from(h.status)),
            raw: buf.split_to(len),
        }))
    }

    fn set_request_id(&self, frame: &mut Frame, id: u64) {
        if let Some(slot) = frame.raw.get_mut(REQUEST_ID) {
            slot.copy_from_slice(&id.to_be_bytes());
            frame.request_id = id;
        }
    }

    fn is_success(&self, response: &Frame) -> bool {
        response.status == Some(u16::from(status::OK))
    }

    fn error_response(&self, request: &Frame, error: XError) -> Bytes {
        let (status, message) = Self::error_status(error);
        Self::response_with_message(request, status, message)
    }

    fn heartbeat_response(&self, request: &Frame) -> Bytes {
        // Dubbo answers a heartbeat with an OK event response whose body is hessian2 null.
        let flag = serialization_of(request) | FLAG_EVENT;
        Header::frame(flag, status::OK, request.request_id, b"N").freeze()
    }
}
