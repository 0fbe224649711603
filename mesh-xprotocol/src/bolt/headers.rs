//! Bolt's header map (SOFA's `SimpleMapSerializer`): a sequence of `key length (i32) | key |
//! value length (i32) | value`, big-endian. A value length of -1 is a null value (read as
//! empty), 0 an empty one.

use bytes::BufMut;

use crate::CodecError;

/// Parses a header map; every length must fit in what is left of `buf`.
pub(crate) fn decode(mut buf: &[u8]) -> Result<Vec<(String, String)>, CodecError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = take_string(&mut buf, "header key")?;
        let value = take_string(&mut buf, "header value")?;
        out.push((key, value));
    }
    Ok(out)
}

/// Writes `pairs` as a header map.
pub(crate) fn encode(pairs: &[(&str, &str)], out: &mut impl BufMut) {
    for (k, v) in pairs {
        put_string(out, k);
        put_string(out, v);
    }
}

/// The encoded size of `pairs`.
pub(crate) fn encoded_len(pairs: &[(&str, &str)]) -> usize {
    pairs.iter().map(|(k, v)| 8 + k.len() + v.len()).sum()
}

fn put_string(out: &mut impl BufMut, s: &str) {
    // Lengths above i32::MAX cannot occur: frames are bounded far below that.
    out.put_i32(i32::try_from(s.len()).unwrap_or(i32::MAX));
    out.put_slice(s.as_bytes());
}

fn take_string(buf: &mut &[u8], what: &str) -> Result<String, CodecError> {
    let malformed = |reason: String| CodecError::Malformed {
        protocol: "bolt",
        reason,
    };
    let Some((len, rest)) = buf.split_first_chunk::<4>() else {
        return Err(malformed(format!("{what} length cut short")));
    };
    let len = i32::from_be_bytes(*len);
    *buf = rest;
    if len < 0 {
        // SOFA writes -1 for a null value.
        return if len == -1 {
            Ok(String::new())
        } else {
            Err(malformed(format!("negative {what} length {len}")))
        };
    }
    let len = len as usize;
    if len > buf.len() {
        return Err(malformed(format!(
            "{what} of {len} bytes overruns the header map"
        )));
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    String::from_utf8(s.to_vec()).map_err(|_| malformed(format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs = [
            ("service", "com.a.Hello:1.0"),
            ("sofa_head_method_name", "hi"),
            ("", ""),
        ];
        let mut buf = Vec::new();
        encode(&pairs, &mut buf);
        assert_eq!(buf.len(), encoded_len(&pairs));
        let back = decode(&buf).unwrap();
        let back: Vec<(&str, &str)> = back.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(back, pairs);
    }

    #[test]
    fn null_value_reads_as_empty() {
        let mut buf = Vec::new();
        buf.put_i32(1);
        buf.put_slice(b"k");
        buf.put_i32(-1);
        assert_eq!(decode(&buf).unwrap(), vec![("k".to_owned(), String::new())]);
    }

    #[test]
    fn overrun_and_cut_lengths_are_malformed() {
        let mut buf = Vec::new();
        buf.put_i32(10);
        buf.put_slice(b"abc");
        assert!(decode(&buf).is_err());
        assert!(decode(&[0, 0]).is_err());
        let mut buf = Vec::new();
        buf.put_i32(1);
        buf.put_slice(b"k");
        buf.put_i32(-7);
        assert!(decode(&buf).is_err());
    }
}
