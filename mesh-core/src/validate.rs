//! Validation of the model: what every producer (YAML, xDS conversion, the control plane's
//! snapshot check) and every `Reload` sink runs before a config may serve.

use std::fmt;

/// Why a piece of config is invalid, and where.
///
/// `path` names the field the way a user would find it, e.g.
/// `route_configuration[main].virtual_hosts[0].routes[2].match.regex`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ValidationError {
    /// Field path from the resource root to the offending field.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    /// An error at `path` with `reason`.
    pub fn new(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// Prefixes the path with the enclosing field, so nested checks can report relative paths.
    #[must_use]
    pub fn within(mut self, parent: impl fmt::Display) -> Self {
        self.path = if self.path.is_empty() {
            parent.to_string()
        } else if self.path.starts_with('[') {
            format!("{parent}{}", self.path)
        } else {
            format!("{parent}.{}", self.path)
        };
        self
    }
}

/// A config value that can check itself.
pub trait Validate {
    /// Returns the first problem found, with its field path relative to `self`.
    fn validate(&self) -> Result<(), ValidationError>;
}

/// Checks that `names` holds no duplicates; `what` names the list in the error path.
pub(crate) fn unique_names<'a>(
    what: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), ValidationError> {
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.into_iter().enumerate() {
        if !seen.insert(name) {
            return Err(ValidationError::new(
                format!("{what}[{i}].name"),
                format!("duplicate name {name:?}"),
            ));
        }
    }
    Ok(())
}

/// Checks that a name is non-empty.
pub(crate) fn non_empty(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        Err(ValidationError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_builds_dotted_and_indexed_paths() {
        let e = ValidationError::new("regex", "bad")
            .within("match")
            .within("routes[2]");
        assert_eq!(e.path, "routes[2].match.regex");
        let e = ValidationError::new("[3]", "bad").within("endpoints");
        assert_eq!(e.path, "endpoints[3]");
        assert_eq!(e.to_string(), "endpoints[3]: bad");
    }

    #[test]
    fn duplicate_names_are_found_with_their_index() {
        let err = unique_names("clusters", ["a", "b", "a"]).unwrap_err();
        assert_eq!(err.path, "clusters[2].name");
        assert!(err.reason.contains("\"a\""));
        assert!(unique_names("clusters", ["a", "b"]).is_ok());
    }
}
