//! Request and response header edits of a route: remove, then add (Envoy's order).

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::{HeaderValueOption, ValidationError};

/// A compiled set of header edits.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderEdits {
    add: Vec<(HeaderName, HeaderValue, bool)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Compiles `add` and `remove`; `field` prefixes the error path (`request` or `response`).
    pub(crate) fn compile(
        field: &str,
        add: &[HeaderValueOption],
        remove: &[String],
    ) -> Result<Self, ValidationError> {
        let name = |at: String, n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| ValidationError::new(at, format!("{n:?} is not a valid header name")))
        };
        let add = add
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let at = format!("{field}_headers_to_add[{i}]");
                let value = HeaderValue::from_str(&h.value).map_err(|_| {
                    ValidationError::new(format!("{at}.value"), "not a valid header value")
                })?;
                Ok((name(format!("{at}.name"), &h.name)?, value, h.append))
            })
            .collect::<Result<_, ValidationError>>()?;
        let remove = remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(format!("{field}_headers_to_remove[{i}]"), n))
            .collect::<Result<_, _>>()?;
        Ok(Self { add, remove })
    }

    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to `headers`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, append) in &self.add {
            if *append {
                headers.append(name.clone(), value.clone());
            } else {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_then_adds_appending_or_overwriting() {
        let add = vec![
            HeaderValueOption {
                name: "x-a".into(),
                value: "2".into(),
                append: true,
            },
            HeaderValueOption {
                name: "x-b".into(),
                value: "new".into(),
                append: false,
            },
            HeaderValueOption {
                name: "x-gone".into(),
                value: "back".into(),
                append: true,
            },
        ];
        let edits = HeaderEdits::compile("request", &add, &["x-gone".into()]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("old"));
        edits.apply(&mut h);
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(h["x-b"], "new");
        assert_eq!(h.get_all("x-gone").iter().collect::<Vec<_>>(), ["back"]);
        let bad = HeaderEdits::compile("response", &[], &["bad header".into()]).unwrap_err();
        assert_eq!(bad.path, "response_headers_to_remove[0]");
    }
}
