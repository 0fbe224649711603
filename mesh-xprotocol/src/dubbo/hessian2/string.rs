//! Hessian2 strings: compact (0x00-0x1f, 0x30-0x33) and chunked ('R' non-final, 'S' final).
//!
//! A string's length counts UTF-16 code units, not bytes, so its end is found by walking the UTF-8
//! lead bytes. Java writes a character outside the BMP as two 3-byte surrogates (CESU-8); other
//! writers use one 4-byte sequence, counted as two units. Both are read.

use std::borrow::Cow;

use super::{HessianError, Reader};

/// Whether `tag` starts a string.
pub(super) fn is_string_tag(tag: u8) -> bool {
    matches!(tag, 0x00..=0x1f | 0x30..=0x33 | b'R' | b'S')
}

/// One chunk's header: its length in UTF-16 units and whether more chunks follow.
fn chunk_header(r: &mut Reader<'_>) -> Result<(usize, bool), HessianError> {
    let at = r.pos;
    let tag = r.byte()?;
    match tag {
        0x00..=0x1f => Ok((usize::from(tag), true)),
        0x30..=0x33 => {
            let low = r.byte()?;
            Ok(((usize::from(tag - 0x30) << 8) | usize::from(low), true))
        }
        b'S' | b'R' => Ok((r.be(2)? as usize, tag == b'S')),
        _ => Err(HessianError::BadTag {
            tag,
            at,
            expected: "a string",
        }),
    }
}

/// Byte length of the UTF-8 sequence starting with `lead`, and the UTF-16 units it stands for.
fn char_width(lead: u8) -> Option<(usize, usize)> {
    match lead {
        0x00..=0x7f => Some((1, 1)),
        0xc0..=0xdf => Some((2, 1)),
        0xe0..=0xef => Some((3, 1)),
        0xf0..=0xf7 => Some((4, 2)),
        _ => None,
    }
}

/// Consumes `units` UTF-16 units of UTF-8 text; returns their byte range.
fn chunk_bytes(r: &mut Reader<'_>, units: usize) -> Result<(usize, usize), HessianError> {
    let start = r.pos;
    let mut left = units;
    while left > 0 {
        // ASCII is one byte per unit: skip the run of it in one step (most strings are ASCII).
        let ahead = &r.buf[r.pos.min(r.buf.len())..];
        let window = &ahead[..left.min(ahead.len())];
        let ascii = if window.is_ascii() {
            window.len()
        } else {
            window.iter().position(|b| !b.is_ascii()).unwrap_or(0)
        };
        r.pos += ascii;
        left -= ascii;
        if left == 0 {
            break;
        }
        let at = r.pos;
        let (bytes, n) = char_width(r.byte()?)
            .filter(|(_, n)| *n <= left)
            .ok_or(HessianError::InvalidUtf8 { at })?;
        r.skip(bytes - 1)?;
        left -= n;
    }
    Ok((start, r.pos))
}

/// Skips a string (not null).
pub(super) fn skip(r: &mut Reader<'_>) -> Result<(), HessianError> {
    loop {
        let (units, last) = chunk_header(r)?;
        chunk_bytes(r, units)?;
        if last {
            return Ok(());
        }
    }
}

/// Reads a string (not null): borrowed when it is one chunk of valid UTF-8.
pub(super) fn read<'a>(r: &mut Reader<'a>) -> Result<Cow<'a, str>, HessianError> {
    let buf = r.buf;
    let (units, last) = chunk_header(r)?;
    let (start, end) = chunk_bytes(r, units)?;
    if last {
        if let Ok(s) = std::str::from_utf8(&buf[start..end]) {
            return Ok(Cow::Borrowed(s));
        }
    }
    let mut out = Vec::with_capacity(end - start);
    decode_utf16_units(&buf[start..end], start, &mut out)?;
    let mut more = !last;
    while more {
        let (units, last) = chunk_header(r)?;
        let (start, end) = chunk_bytes(r, units)?;
        decode_utf16_units(&buf[start..end], start, &mut out)?;
        more = !last;
    }
    String::from_utf16(&out)
        .map(Cow::Owned)
        .map_err(|_| HessianError::InvalidUtf8 { at: start })
}

/// Decodes (modified) UTF-8 into UTF-16 units, accepting surrogates encoded as 3-byte sequences.
fn decode_utf16_units(bytes: &[u8], offset: usize, out: &mut Vec<u16>) -> Result<(), HessianError> {
    let mut i = 0;
    while i < bytes.len() {
        let at = offset + i;
        let bad = HessianError::InvalidUtf8 { at };
        let lead = bytes[i];
        let (width, _) = char_width(lead).ok_or(bad.clone())?;
        let tail = bytes.get(i + 1..i + width).ok_or(bad.clone())?;
        if tail.iter().any(|b| b & 0xc0 != 0x80) {
            return Err(bad);
        }
        let cont = tail
            .iter()
            .fold(0u32, |acc, b| (acc << 6) | u32::from(b & 0x3f));
        let code = match width {
            1 => u32::from(lead),
            2 => (u32::from(lead & 0x1f) << 6) | cont,
            3 => (u32::from(lead & 0x0f) << 12) | cont,
            _ => (u32::from(lead & 0x07) << 18) | cont,
        };
        if let Ok(unit) = u16::try_from(code) {
            out.push(unit);
        } else {
            let c = char::from_u32(code).ok_or(bad)?;
            let mut pair = [0u16; 2];
            out.extend_from_slice(c.encode_utf16(&mut pair));
        }
        i += width;
    }
    Ok(())
}
