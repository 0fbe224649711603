//! The one hessian2 value the mesh writes: a string (the message of an error response).

use bytes::{BufMut, BytesMut};

/// Largest chunk, in UTF-16 units (Java's `Hessian2Output` uses the same).
const CHUNK: usize = 0x8000;

/// Appends `s` as a hessian2 string. Characters outside the BMP are written as two 3-byte
/// surrogates, as Java's `Hessian2Output` does, because Java's reader rejects 4-byte UTF-8.
pub fn write_string(out: &mut BytesMut, s: &str) {
    let units: Vec<u16> = s.encode_utf16().collect();
    let mut chunks = units.chunks(CHUNK).peekable();
    if units.is_empty() {
        out.put_u8(0x00);
    }
    while let Some(chunk) = chunks.next() {
        let len = chunk.len();
        if chunks.peek().is_some() {
            out.put_u8(b'R');
            out.put_u16(len as u16);
        } else if len <= 0x1f {
            out.put_u8(len as u8);
        } else if len <= 0x3ff {
            out.put_u8(0x30 + (len >> 8) as u8);
            out.put_u8(len as u8);
        } else {
            out.put_u8(b'S');
            out.put_u16(len as u16);
        }
        for &unit in chunk {
            put_unit(out, unit);
        }
    }
}

fn put_unit(out: &mut BytesMut, unit: u16) {
    match unit {
        0..=0x7f => out.put_u8(unit as u8),
        0x80..=0x7ff => {
            out.put_u8(0xc0 | (unit >> 6) as u8);
            out.put_u8(0x80 | (unit & 0x3f) as u8);
        }
        _ => {
            out.put_u8(0xe0 | (unit >> 12) as u8);
            out.put_u8(0x80 | ((unit >> 6) & 0x3f) as u8);
            out.put_u8(0x80 | (unit & 0x3f) as u8);
        }
    }
}
