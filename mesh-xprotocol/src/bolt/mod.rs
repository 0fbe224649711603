//! SOFA bolt v1, the framing of SOFARPC (as MOSN's `bolt` codec and `sofa-bolt-node` read it).
//!
//! ```text
//! request:  proto(1)=0x01 type(1) cmdcode(2) ver2(1) requestId(4) codec(1) timeout(4)
//!           classLen(2) headerLen(2) contentLen(4) | class | header map | content
//! response: proto(1)=0x01 type(1) cmdcode(2) ver2(1) requestId(4) codec(1) respStatus(2)
//!           classLen(2) headerLen(2) contentLen(4) | class | header map | content
//! ```
//!
//! `type` is 0 response, 1 request, 2 oneway request; `cmdcode` 0 heartbeat, 1 request,
//! 2 response. The header map (length-prefixed key and value strings) carries the routing fields: `service` (SOFA's
//! unique service name, `interface:version`) and `sofa_head_method_name`. Class and content
//! (the hessian2 or protobuf body) are never parsed: the frame is forwarded as the bytes it
//! arrived as, its request id rewritten in place.
//!
//! The mesh's own error responses follow MOSN's mapping of its failures to bolt response
//! statuses (`Hijack`/`Mapping` in MOSN's `bolt/protocol.go`): no provider is `NO_PROCESSOR`,
//! a timeout `TIMEOUT`, an overload `SERVER_THREADPOOL_BUSY`, an upstream failure
//! `CONNECTION_CLOSED`, a frame that cannot be decoded `CODEC_EXCEPTION`; like MOSN's, they
//! carry no class and no content (SOFA clients turn any non-zero status into an error).

mod build;
pub(crate) mod headers;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub use build::{heartbeat_request, request, response, BoltRequest};

use crate::{CodecError, Frame, FrameKind, Protocol, RpcHeader, XCodec, XError};

/// Bolt v1's protocol code (the first byte).
pub const PROTOCOL_V1: u8 = 0x01;
/// `type`: a response.
pub const TYPE_RESPONSE: u8 = 0x00;
/// `type`: a request expecting a response.
pub const TYPE_REQUEST: u8 = 0x01;
/// `type`: a oneway request.
pub const TYPE_ONEWAY: u8 = 0x02;
/// `cmdcode`: heartbeat.
pub const CMD_HEARTBEAT: u16 = 0;
/// `cmdcode`: an RPC request.
pub const CMD_REQUEST: u16 = 1;
/// `cmdcode`: an RPC response.
pub const CMD_RESPONSE: u16 = 2;
/// The command version (`ver2`) SOFA writes.
pub const VERSION: u8 = 0x01;
/// The hessian2 codec byte.
pub const CODEC_HESSIAN2: u8 = 1;
/// The fixed header of a request.
pub const REQUEST_HEADER_LEN: usize = 22;
/// The fixed header of a response.
pub const RESPONSE_HEADER_LEN: usize = 20;
/// Where the request id sits (both directions).
const ID_AT: usize = 5;

/// Response statuses (`ResponseStatus` of sofa-bolt, sofa-bolt-node and MOSN).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// An error caught by the server.
    pub const ERROR: u16 = 0x0001;
    /// An exception in the server's handler.
    pub const SERVER_EXCEPTION: u16 = 0x0002;
    /// Unknown failure.
    pub const UNKNOWN: u16 = 0x0003;
    /// The server's thread pool is busy (the mesh's overload).
    pub const SERVER_THREADPOOL_BUSY: u16 = 0x0004;
    /// A communication error.
    pub const ERROR_COMM: u16 = 0x0005;
    /// No processor for the request (the mesh's "no provider").
    pub const NO_PROCESSOR: u16 = 0x0006;
    /// Timeout.
    pub const TIMEOUT: u16 = 0x0007;
    /// The client could not send.
    pub const CLIENT_SEND_ERROR: u16 = 0x0008;
    /// Encoding or decoding failed.
    pub const CODEC_EXCEPTION: u16 = 0x0009;
    /// The connection closed.
    pub const CONNECTION_CLOSED: u16 = 0x0010;
}

/// The header key of the service name.
pub const SERVICE_KEY: &str = "service";
/// The header key of the method name.
pub const METHOD_KEY: &str = "sofa_head_method_name";

/// The bolt v1 codec. Stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoltCodec;

fn malformed(reason: impl Into<String>) -> CodecError {
    CodecError::Malformed {
        protocol: "bolt",
        reason: reason.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The fixed-header facts of a frame whose first bytes are in `b`: (kind, header length),
/// or `None` when more bytes are needed to tell.
fn classify(b: &[u8]) -> Result<Option<(FrameKind, usize)>, CodecError> {
    match b.first() {
        None => return Ok(None),
        Some(&PROTOCOL_V1) => {}
        Some(&0x02) => return Err(malformed("bolt v2 (protocol code 2) is not supported")),
        Some(p) => return Err(malformed(format!("protocol code {p:#04x}"))),
    }
    if b.len() < 4 {
        return Ok(None);
    }
    let cmd = u16_at(b, 2);
    let kind = match (b[1], cmd) {
        (TYPE_REQUEST, CMD_REQUEST) => FrameKind::Request { oneway: false },
        (TYPE_ONEWAY, CMD_REQUEST) => FrameKind::Request { oneway: true },
        (TYPE_REQUEST | TYPE_ONEWAY, CMD_HEARTBEAT) => FrameKind::HeartbeatRequest,
        (TYPE_RESPONSE, CMD_RESPONSE) => FrameKind::Response,
        (TYPE_RESPONSE, CMD_HEARTBEAT) => FrameKind::HeartbeatResponse,
        (t, c) => return Err(malformed(format!("type {t} with command code {c}"))),
    };
    let len = match kind {
        FrameKind::Response | FrameKind::HeartbeatResponse => RESPONSE_HEADER_LEN,
        _ => REQUEST_HEADER_LEN,
    };
    Ok(Some((kind, len)))
}

impl XCodec for BoltCodec {
    fn protocol(&self) -> Protocol {
        Protocol::Bolt
    }

    fn decode(&self, buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, CodecError> {
        let Some((kind, fixed)) = classify(buf)? else {
            return Ok(None);
        };
        if buf.len() < fixed {
            return Ok(None);
        }
        // classLen, headerLen, contentLen sit in the last 8 bytes of the fixed header.
        let at = fixed - 8;
        let class_len = usize::from(u16_at(buf, at));
        let header_len = usize::from(u16_at(buf, at + 2));
        let content_len = u32_at(buf, at + 4) as usize;
        let total = fixed + class_len + header_len + content_len;
        if total > max_frame {
            return Err(CodecError::TooLarge {
                protocol: "bolt",
                len: total,
                limit: max_frame,
            });
        }
        if buf.len() < total {
            // One allocation for the rest of the frame rather than one per read.
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let raw = buf.split_to(total);
        let request_id = u64::from(u32_at(&raw, ID_AT));
        let (header, status) = match kind {
            FrameKind::Request { .. } => {
                let start = fixed + class_len;
                match headers::decode(&raw[start..start + header_len]) {
                    Ok(pairs) => (rpc_header(pairs), None),
                    // The frame's length is known: answered and the connection goes on, as
                    // SOFA bolt's server answers a request it cannot deserialize.
                    Err(e) => {
                        let reason = match e {
                            CodecError::Malformed { reason, .. } => reason,
                            other => other.to_string(),
                        };
                        return Err(CodecError::BadRequest {
                            protocol: "bolt",
                            reason,
                            frame: Box::new(Frame {
                                kind,
                                request_id,
                                header: RpcHeader::default(),
                                status: None,
                                raw,
                            }),
                        });
                    }
                }
            }
            FrameKind::Response | FrameKind::HeartbeatResponse => {
                (RpcHeader::default(), Some(u16_at(&raw, 10)))
            }
            FrameKind::HeartbeatRequest | FrameKind::Event { .. } => (RpcHeader::default(), None),
        };
        Ok(Some(Frame {
            kind,
            request_id,
            header,
            status,
            raw,
        }))
    }

    fn set_request_id(&self, frame: &mut Frame, id: u64) {
        // Bolt ids are 32 bits; the multiplexer allocates ids within 32 bits.
        let id = id as u32;
        if frame.raw.len() >= ID_AT + 4 {
            frame.raw[ID_AT..ID_AT + 4].copy_from_slice(&id.to_be_bytes());
        }
        frame.request_id = u64::from(id);
    }

    fn is_success(&self, response: &Frame) -> bool {
        response.status == Some(status::SUCCESS)
    }

    fn error_response(&self, request: &Frame, error: XError) -> Bytes {
        let status = match error {
            XError::NoProvider => status::NO_PROCESSOR,
            XError::Timeout => status::TIMEOUT,
            XError::Overloaded => status::SERVER_THREADPOOL_BUSY,
            XError::UpstreamFailure => status::CONNECTION_CLOSED,
            XError::Malformed => status::CODEC_EXCEPTION,
        };
        response(
            request_codec(request),
            request.request_id as u32,
            status,
            CMD_RESPONSE,
            &[],
        )
    }

    fn heartbeat_response(&self, request: &Frame) -> Bytes {
        response(
            request_codec(request),
            request.request_id as u32,
            status::SUCCESS,
            CMD_HEARTBEAT,
            &[],
        )
    }
}

/// The codec byte of a request (hessian2 when the frame is too short to say).
fn request_codec(request: &Frame) -> u8 {
    request.raw.get(9).copied().unwrap_or(CODEC_HESSIAN2)
}

/// The routing fields from a request's header map.
fn rpc_header(pairs: Vec<(String, String)>) -> RpcHeader {
    let find = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    RpcHeader {
        service: find(SERVICE_KEY),
        method: find(METHOD_KEY),
        attachments: pairs,
    }
}
