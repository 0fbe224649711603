//! Building bolt frames: the mesh's own responses, and requests for tests and the load
//! generator.

use bytes::{BufMut, Bytes, BytesMut};

use super::{headers, CMD_REQUEST, PROTOCOL_V1, TYPE_ONEWAY, TYPE_REQUEST, TYPE_RESPONSE, VERSION};

/// A request to build with [`request`].
#[derive(Debug, Clone, Copy)]
pub struct BoltRequest<'a> {
    /// The request id.
    pub id: u32,
    /// The codec byte (1: hessian2).
    pub codec: u8,
    /// The client's timeout in milliseconds, as carried in the frame.
    pub timeout_ms: u32,
    /// No response expected.
    pub oneway: bool,
    /// The class name (SOFA writes `com.alipay.sofa.rpc.core.request.SofaRequest`).
    pub class: &'a str,
    /// The header map, in order.
    pub headers: &'a [(&'a str, &'a str)],
    /// The content (the serialized body).
    pub content: &'a [u8],
}

/// Encodes a request frame.
pub fn request(r: &BoltRequest<'_>) -> Bytes {
    let header_len = headers::encoded_len(r.headers);
    let mut out = BytesMut::with_capacity(22 + r.class.len() + header_len + r.content.len());
    out.put_u8(PROTOCOL_V1);
    out.put_u8(if r.oneway { TYPE_ONEWAY } else { TYPE_REQUEST });
    out.put_u16(CMD_REQUEST);
    out.put_u8(VERSION);
    out.put_u32(r.id);
    out.put_u8(r.codec);
    out.put_u32(r.timeout_ms);
    put_lengths(&mut out, r.class.len(), header_len, r.content.len());
    out.put_slice(r.class.as_bytes());
    headers::encode(r.headers, &mut out);
    out.put_slice(r.content);
    out.freeze()
}

/// Encodes a response frame with no class and no header map.
pub fn response(codec: u8, id: u32, status: u16, cmd: u16, content: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(20 + content.len());
    out.put_u8(PROTOCOL_V1);
    out.put_u8(TYPE_RESPONSE);
    out.put_u16(cmd);
    out.put_u8(VERSION);
    out.put_u32(id);
    out.put_u8(codec);
    out.put_u16(status);
    put_lengths(&mut out, 0, 0, content.len());
    out.put_slice(content);
    out.freeze()
}

fn put_lengths(out: &mut BytesMut, class: usize, header: usize, content: usize) {
    // Class and header lengths are u16 on the wire; callers build small frames.
    out.put_u16(u16::try_from(class).unwrap_or(u16::MAX));
    out.put_u16(u16::try_from(header).unwrap_or(u16::MAX));
    out.put_u32(u32::try_from(content).unwrap_or(u32::MAX));
}

/// Encodes a heartbeat request (as SOFA clients send to keep a connection alive).
pub fn heartbeat_request(id: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(22);
    out.put_u8(PROTOCOL_V1);
    out.put_u8(TYPE_REQUEST);
    out.put_u16(super::CMD_HEARTBEAT);
    out.put_u8(VERSION);
    out.put_u32(id);
    out.put_u8(super::CODEC_HESSIAN2);
    out.put_u32(0);
    put_lengths(&mut out, 0, 0, 0);
    out.freeze()
}
