//! A Hessian 2.0 reader that skips values without materialising them.
//!
//! Dubbo's request body is a sequence of hessian2 values (dubbo version, service path, service
//! version, method, parameter-types descriptor, the arguments, the attachments map). Routing needs
//! the strings before the arguments and the attachments after them, so the arguments must be
//! *skipped*: every value shape of the Hessian 2.0 serialization spec is walked by its encoding
//! (strings in all their forms including chunks, ints, longs, doubles, dates, binary, typed and
//! untyped lists and maps, class definitions and objects, refs, null and booleans) without building
//! it. The only allocation is the table of class definitions (their field counts), which objects
//! that follow refer to by index.
//!
//! Hand-written rather than a crate: the one Rust hessian2 crate (`hessian_rs`, pre-release
//! 0.0.4-rc3 from 2023) deserialises into an owned `Value` tree through serde and has no way to skip
//! a value, which is the whole point here.

mod string;
#[cfg(test)]
mod tests;
mod writer;

pub use writer::write_string;

use std::borrow::Cow;

/// Containers nested deeper than this are refused (a hostile body cannot exhaust the stack).
pub const MAX_DEPTH: usize = 64;

/// Why a hessian2 value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HessianError {
    /// The input ended inside a value.
    #[error("hessian2 value truncated at byte {at}")]
    UnexpectedEnd {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// A tag byte that does not start the expected kind of value.
    #[error("unexpected hessian2 tag 0x{tag:02x} at byte {at} (expected {expected})")]
    BadTag {
        /// The tag byte.
        tag: u8,
        /// Its offset.
        at: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// A length or count that is negative.
    #[error("negative hessian2 length {len} at byte {at}")]
    NegativeLength {
        /// The length read.
        len: i32,
        /// Its offset.
        at: usize,
    },
    /// An object referring to a class definition that was never sent.
    #[error("hessian2 object at byte {at} refers to undefined class #{index}")]
    UnknownClass {
        /// The class index.
        index: usize,
        /// The object's offset.
        at: usize,
    },
    /// Lists, maps and objects nested deeper than [`MAX_DEPTH`].
    #[error("hessian2 values nested deeper than {MAX_DEPTH} at byte {at}")]
    TooDeep {
        /// Offset of the container that went too deep.
        at: usize,
    },
    /// A string whose bytes are not UTF-8 (nor Java's surrogate-pair form of it).
    #[error("invalid UTF-8 in hessian2 string at byte {at}")]
    InvalidUtf8 {
        /// Offset of the offending character.
        at: usize,
    },
}

/// A cursor over one hessian2 stream (one dubbo body): class definitions persist across the
/// values read from it, as in Java's `Hessian2Input`.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Field counts of the class definitions seen so far, by definition index.
    class_fields: Vec<usize>,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            class_fields: Vec::new(),
        }
    }

    /// The offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The next tag byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, HessianError> {
        let b = self
            .peek()
            .ok_or(HessianError::UnexpectedEnd { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], HessianError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(HessianError::UnexpectedEnd { at: self.buf.len() })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Result<(), HessianError> {
        self.take(n).map(|_| ())
    }

    fn be(&mut self, n: usize) -> Result<i64, HessianError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0i64, |acc, b| (acc << 8) | i64::from(*b)))
    }

    /// Reads an int (`I` and the compact one-, two- and three-octet forms).
    pub fn read_int(&mut self) -> Result<i32, HessianError> {
        let at = self.pos;
        let tag = self.byte()?;
        let value = match tag {
            0x80..=0xbf => i32::from(tag) - 0x90,
            0xc0..=0xcf => ((i32::from(tag) - 0xc8) << 8) | i32::from(self.byte()?),
            0xd0..=0xd7 => ((i32::from(tag) - 0xd4) << 16) | self.be(2)? as i32,
            b'I' => self.be(4)? as u32 as i32,
            _ => {
                return Err(HessianError::BadTag {
                    tag,
                    at,
                    expected: "int",
                })
            }
        };
        Ok(value)
    }

    fn read_len(&mut self) -> Result<usize, HessianError> {
        let at = self.pos;
        let len = self.read_int()?;
        usize::try_from(len).map_err(|_| HessianError::NegativeLength { len, at })
    }

    /// Reads a string (any form, chunked ones joined); `None` for null. Borrowed from the input
    /// when it is one chunk of plain UTF-8, the common case.
    pub fn read_string(&mut self) -> Result<Option<Cow<'a, str>>, HessianError> {
        if self.peek() == Some(b'N') {
            self.pos += 1;
            return Ok(None);
        }
        string::read(self).map(Some)
    }

    /// Skips a list's or map's type: a type name (string) or a ref to an earlier one (int).
    fn skip_type(&mut self) -> Result<(), HessianError> {
        match self.peek() {
            Some(tag) if string::is_string_tag(tag) => string::skip(self),
            _ => self.read_int().map(|_| ()),
        }
    }

    /// Reads a class definition (`C`, after its tag): name, field count, field names.
    fn class_def(&mut self) -> Result<(), HessianError> {
        string::skip(self)?;
        let fields = self.read_len()?;
        for _ in 0..fields {
            string::skip(self)?;
        }
        self.class_fields.push(fields);
        Ok(())
    }

    /// Skips class definitions in front of a value; they are not values themselves.
    fn skip_class_defs(&mut self) -> Result<(), HessianError> {
        while self.peek() == Some(b'C') {
            self.pos += 1;
            self.class_def()?;
        }
        Ok(())
    }

    /// Skips one value of any shape, without building it.
    pub fn skip_value(&mut self) -> Result<(), HessianError> {
        self.skip_at_depth(0)
    }

    fn skip_at_depth(&mut self, depth: usize) -> Result<(), HessianError> {
        self.skip_class_defs()?;
        let at = self.pos;
        if depth > MAX_DEPTH {
            return Err(HessianError::TooDeep { at });
        }
        let tag = self.peek().ok_or(HessianError::UnexpectedEnd { at })?;
        if string::is_string_tag(tag) {
            return string::skip(self);
        }
        self.pos += 1;
        match tag {
            // null, booleans, one-octet ints, longs and doubles 0.0 / 1.0
            b'N' | b'T' | b'F' | 0x80..=0xbf | 0xd8..=0xef | 0x5b | 0x5c => Ok(()),
            0xc0..=0xcf | 0xf0..=0xff | 0x5d => self.skip(1),
            0xd0..=0xd7 | 0x38..=0x3f | 0x5e => self.skip(2),
            b'I' | b'Y' | 0x5f | 0x4b => self.skip(4),
            b'L' | b'D' | 0x4a => self.skip(8),
            // binary: compact, then chunks ('A' non-final, 'B' final)
            0x20..=0x2f => self.skip(usize::from(tag - 0x20)),
            0x34..=0x37 => {
                let low = self.byte()?;
                self.skip((usize::from(tag - 0x34) << 8) | usize::from(low))
            }
            b'A' | b'B' => {
                let len = self.be(2)? as usize;
                self.skip(len)?;
                if tag == b'A' {
                    self.skip_binary_chunks()
                } else {
                    Ok(())
                }
            }
            // ref to an earlier list, map or object
            b'Q' => self.read_int().map(|_| ()),
            // lists: typed/untyped, variable (until 'Z') or fixed length
            b'U' => {
                self.skip_type()?;
                self.skip_until_end(depth, 1)
            }
            b'W' => self.skip_until_end(depth, 1),
            b'V' => {
                self.skip_type()?;
                let len = self.read_len()?;
                self.skip_n(depth, len)
            }
            b'X' => {
                let len = self.read_len()?;
                self.skip_n(depth, len)
            }
            0x70..=0x77 => {
                self.skip_type()?;
                self.skip_n(depth, usize::from(tag - 0x70))
            }
            0x78..=0x7f => self.skip_n(depth, usize::from(tag - 0x78)),
            // maps: typed and untyped, key-value pairs until 'Z'
            b'M' => {
                self.skip_type()?;
                self.skip_until_end(depth, 2)
            }
            b'H' => self.skip_until_end(depth, 2),
            // objects: 'O' + class index, or the compact 0x60..0x6f forms
            b'O' => {
                let index = self.read_len()?;
                self.skip_object(depth, index, at)
            }
            0x60..=0x6f => self.skip_object(depth, usize::from(tag - 0x60), at),
            _ => Err(HessianError::BadTag {
                tag,
                at,
                expected: "a value",
            }),
        }
    }

    fn skip_binary_chunks(&mut self) -> Result<(), HessianError> {
        loop {
            let at = self.pos;
            let tag = self.byte()?;
            match tag {
                b'A' | b'B' => {
                    let len = self.be(2)? as usize;
                    self.skip(len)?;
                    if tag == b'B' {
                        return Ok(());
                    }
                }
                0x20..=0x2f => return self.skip(usize::from(tag - 0x20)),
                0x34..=0x37 => {
                    let low = self.byte()?;
                    return self.skip((usize::from(tag - 0x34) << 8) | usize::from(low));
                }
                _ => {
                    return Err(HessianError::BadTag {
                        tag,
                        at,
                        expected: "a binary chunk",
                    })
                }
            }
        }
    }

    /// Skips `n` values inside a container.
    fn skip_n(&mut self, depth: usize, n: usize) -> Result<(), HessianError> {
        for _ in 0..n {
            self.skip_at_depth(depth + 1)?;
        }
        Ok(())
    }

    /// Skips groups of `per_entry` values until the container's 'Z'.
    fn skip_until_end(&mut self, depth: usize, per_entry: usize) -> Result<(), HessianError> {
        while !self.end_of_container()? {
            self.skip_n(depth, per_entry)?;
        }
        Ok(())
    }

    fn skip_object(&mut self, depth: usize, index: usize, at: usize) -> Result<(), HessianError> {
        let fields = *self
            .class_fields
            .get(index)
            .ok_or(HessianError::UnknownClass { index, at })?;
        self.skip_n(depth, fields)
    }

    /// Consumes the container terminator 'Z' if it is next; an error at the end of input.
    pub fn end_of_container(&mut self) -> Result<bool, HessianError> {
        match self.peek() {
            Some(b'Z') => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(HessianError::UnexpectedEnd { at: self.pos }),
        }
    }

    /// Starts reading a map: consumes `H`, or `M` and its type, and returns `true`; returns
    /// `false` (consuming it) for a null. Entries follow until [`Reader::end_of_container`].
    pub fn begin_map(&mut self) -> Result<bool, HessianError> {
        self.skip_class_defs()?;
        let at = self.pos;
        match self.byte()? {
            b'H' => Ok(true),
            b'M' => self.skip_type().map(|()| true),
            b'N' => Ok(false),
            tag => Err(HessianError::BadTag {
                tag,
                at,
                expected: "a map",
            }),
        }
    }
}
