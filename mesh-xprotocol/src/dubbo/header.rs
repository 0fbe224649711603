//! Dubbo's 16-byte frame header (Apache Dubbo's `ExchangeCodec`):
//!
//! ```text
//! 0      2      3        4                12            16
//! | 0xdabb | flag | status | request id (u64) | body length (i32) | body ...
//! flag: 0x80 request, 0x40 two-way, 0x20 event (heartbeat), low 5 bits serialization id
//! ```

use bytes::{BufMut, BytesMut};

/// The magic number every frame starts with.
pub const MAGIC: [u8; 2] = [0xda, 0xbb];
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Flag bit: the frame is a request.
pub const FLAG_REQUEST: u8 = 0x80;
/// Flag bit: the request expects a response.
pub const FLAG_TWO_WAY: u8 = 0x40;
/// Flag bit: an event (a heartbeat, or dubbo's read-only notice).
pub const FLAG_EVENT: u8 = 0x20;
/// The low bits of the flag byte: the body's serialization id.
pub const SERIALIZATION_MASK: u8 = 0x1f;
/// Serialization id of hessian2, dubbo's default and the only body this codec decodes.
pub const HESSIAN2: u8 = 2;

/// Where the request id sits in the header.
pub(super) const REQUEST_ID: std::ops::Range<usize> = 4..12;

/// The fields of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The flag byte (request / two-way / event bits and serialization id).
    pub flag: u8,
    /// A response's status byte (see [`super::status`]); unused in requests.
    pub status: u8,
    /// The request id.
    pub request_id: u64,
    /// The body length in bytes.
    pub body_len: usize,
}

impl Header {
    /// Whether this is a request (else a response).
    pub fn is_request(&self) -> bool {
        self.flag & FLAG_REQUEST != 0
    }

    /// Whether a request expects a response.
    pub fn is_two_way(&self) -> bool {
        self.flag & FLAG_TWO_WAY != 0
    }

    /// Whether this is an event (heartbeat) frame.
    pub fn is_event(&self) -> bool {
        self.flag & FLAG_EVENT != 0
    }

    /// The body's serialization id.
    pub fn serialization(&self) -> u8 {
        self.flag & SERIALIZATION_MASK
    }

    /// Parses the header at the front of `buf`: `Ok(None)` if fewer than 16 bytes are there (but
    /// a wrong first byte is refused at once), `Err(reason)` if it is not a dubbo header.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, String> {
        if let Some(i) = buf.iter().take(2).zip(MAGIC).position(|(b, m)| *b != m) {
            return Err(format!(
                "bad magic byte 0x{:02x} at offset {i} (expected 0xdabb)",
                buf[i]
            ));
        }
        let Some(h) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let body_len = usize::try_from(len).map_err(|_| format!("negative body length {len}"))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[REQUEST_ID]);
        Ok(Some(Self {
            flag: h[2],
            status: h[3],
            request_id: u64::from_be_bytes(id),
            body_len,
        }))
    }

    /// A whole frame: this header's flag, status and request id, `body` and its length.
    pub fn frame(flag: u8, status: u8, request_id: u64, body: &[u8]) -> BytesMut {
        let header = Self {
            flag,
            status,
            request_id,
            body_len: body.len(),
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        out.put_slice(&header.encode());
        out.put_slice(body);
        out
    }

    /// The header's 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..2].copy_from_slice(&MAGIC);
        h[2] = self.flag;
        h[3] = self.status;
        h[REQUEST_ID].copy_from_slice(&self.request_id.to_be_bytes());
        // Bodies the mesh writes are short error messages; saturate rather than wrap.
        let len = i32::try_from(self.body_len).unwrap_or(i32::MAX);
        h[12..].copy_from_slice(&len.to_be_bytes());
        h
    }
}
