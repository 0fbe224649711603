//! A dubbo request body, decoded as far as routing needs (Apache Dubbo's `DubboCodec` /
//! `DecodeableRpcInvocation`): dubbo version, service path, service version, method name, the
//! parameter-types descriptor, then the arguments (skipped, never built), then the attachments map.

use super::hessian2::{HessianError, Reader};
use crate::RpcHeader;

/// Why a request body could not be decoded: which field, and the hessian2 error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request body: {field}: {source}")]
pub struct BodyError {
    /// The body field being read (`service path`, `argument 2`, `attachments`, ...).
    pub field: String,
    /// What went wrong.
    pub source: BodyErrorKind,
}

/// The kinds of [`BodyError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyErrorKind {
    /// Bad hessian2.
    #[error(transparent)]
    Hessian(#[from] HessianError),
    /// A field that must be a string was null.
    #[error("null where a string is required")]
    Null,
    /// The parameter-types descriptor is not a JVM descriptor list.
    #[error("bad parameter-types descriptor {0:?}")]
    Descriptor(String),
}

fn field<E: Into<BodyErrorKind>>(name: &str) -> impl FnOnce(E) -> BodyError + '_ {
    move |e| BodyError {
        field: name.to_owned(),
        source: e.into(),
    }
}

/// The routing view of a request body. `attachments` starts with `dubbo`, `path` and `version`
/// taken from the body, as Dubbo's `DecodeableRpcInvocation` sets them, then the wire map's
/// entries (a wire key equal to one of those replaces its value). Non-string attachment values are
/// skipped: routing matches strings.
pub fn decode(body: &[u8]) -> Result<RpcHeader, BodyError> {
    let mut r = Reader::new(body);
    let dubbo_version = required(&mut r, "dubbo version")?;
    let path = required(&mut r, "service path")?;
    let version = optional(&mut r, "service version")?;
    let method = required(&mut r, "method name")?;
    let desc = optional(&mut r, "parameter types")?;
    let args = count_params(&desc).map_err(field("parameter types"))?;
    for i in 0..args {
        r.skip_value()
            .map_err(|e| field(&format!("argument {i}"))(e))?;
    }
    // Room for the body's three and a typical wire map, so pushing rarely reallocates.
    let mut attachments = Vec::with_capacity(12);
    attachments.extend([
        ("dubbo".to_owned(), dubbo_version),
        ("path".to_owned(), path.clone()),
        ("version".to_owned(), version),
    ]);
    // Old clients end the body after the arguments; no attachments then.
    if !r.is_empty() {
        read_attachments(&mut r, &mut attachments).map_err(field("attachments"))?;
    }
    Ok(RpcHeader {
        service: path,
        method,
        attachments,
    })
}

fn required(r: &mut Reader<'_>, name: &str) -> Result<String, BodyError> {
    match r.read_string().map_err(field(name))? {
        Some(s) => Ok(s.into_owned()),
        None => Err(field(name)(BodyErrorKind::Null)),
    }
}

fn optional(r: &mut Reader<'_>, name: &str) -> Result<String, BodyError> {
    Ok(r.read_string()
        .map_err(field(name))?
        .map(|s| s.into_owned())
        .unwrap_or_default())
}

fn read_attachments(
    r: &mut Reader<'_>,
    out: &mut Vec<(String, String)>,
) -> Result<(), HessianError> {
    if !r.begin_map()? {
        return Ok(());
    }
    while !r.end_of_container()? {
        let key = read_string_or_skip(r)?;
        let value = read_string_or_skip(r)?;
        if let (Some(key), Some(value)) = (key, value) {
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value,
                None => out.push((key, value)),
            }
        }
    }
    Ok(())
}

/// A string value, or `None` after skipping a value of another shape (or null).
fn read_string_or_skip(r: &mut Reader<'_>) -> Result<Option<String>, HessianError> {
    match r.peek() {
        Some(0x00..=0x1f | 0x30..=0x33 | b'R' | b'S' | b'N') => {
            Ok(r.read_string()?.map(|s| s.into_owned()))
        }
        _ => r.skip_value().map(|()| None),
    }
}

/// Counts the parameters in a JVM method descriptor list such as `Ljava/lang/String;[IJ`
/// (Dubbo's `ReflectUtils.getDesc`): the number of argument values that follow in the body.
pub fn count_params(desc: &str) -> Result<usize, BodyErrorKind> {
    let bad = || BodyErrorKind::Descriptor(desc.to_owned());
    let bytes = desc.as_bytes();
    let (mut i, mut count) = (0, 0);
    while i < bytes.len() {
        while bytes.get(i) == Some(&b'[') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'Z' | b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S') => i += 1,
            Some(b'L') => {
                let end = bytes[i..].iter().position(|b| *b == b';').ok_or_else(bad)?;
                if end < 2 {
                    return Err(bad());
                }
                i += end + 1;
            }
            _ => return Err(bad()),
        }
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_count_one_value_per_parameter() {
        assert_eq!(count_params(""), Ok(0));
        assert_eq!(count_params("Ljava/lang/String;"), Ok(1));
        assert_eq!(
            count_params("Ljava/lang/String;IJ[I[[Ljava/util/Map;Z"),
            Ok(6)
        );
        for bad in ["L", "Ljava/lang/String", "V", "[", "X", "L;"] {
            assert!(count_params(bad).is_err(), "{bad:?} accepted");
        }
    }
}
