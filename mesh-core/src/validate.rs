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

/// A value that passed [`Validate::validate`]: [`Checked::new`] (or deserializing one) is the
/// only way to make it, so whoever receives a `Checked<T>` can rely on it without checking
/// again. This is how a config is validated once per side: the xDS client's conversion
/// produces `Checked` resources, and sinks that take them (mesh-lb's endpoint sets, for one)
/// skip the check that their `Reload<T>` entry point, open to any caller, still runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T>(T);

impl<T: Validate> Checked<T> {
    /// Validates `value`.
    pub fn new(value: T) -> Result<Self, ValidationError> {
        value.validate()?;
        Ok(Self(value))
    }
}

impl<T> Checked<T> {
    /// The value, giving up the guarantee.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Checked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> AsRef<T> for Checked<T> {
    fn as_ref(&self) -> &T {
        &self.0
    }
}

impl<T: serde::Serialize> serde::Serialize for Checked<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Deserializing validates: a value read back from a file is no more trusted than one from the
/// wire.
impl<'de, T: serde::Deserialize<'de> + Validate> serde::Deserialize<'de> for Checked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = T::deserialize(d)?;
        Self::new(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod checked_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ClusterLoadAssignment;

    /// `Checked` is made by validating, from code or from a file; an invalid value is refused.
    #[test]
    fn checked_values_are_validated_on_the_way_in() {
        let ok = ClusterLoadAssignment::from_addrs("a", ["127.0.0.1:80".parse().unwrap()]);
        let checked = Checked::new(ok.clone()).unwrap();
        assert_eq!(checked.cluster_name, "a");
        let dup = ClusterLoadAssignment::from_addrs(
            "a",
            [
                "127.0.0.1:80".parse().unwrap(),
                "127.0.0.1:80".parse().unwrap(),
            ],
        );
        let err = Checked::new(dup.clone()).unwrap_err();
        assert!(err.reason.contains("listed twice"), "{err}");

        let text = serde_yaml::to_string(&checked).unwrap();
        let back: Checked<ClusterLoadAssignment> = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back.into_inner(), ok);
        let bad = serde_yaml::to_string(&dup).unwrap();
        let err = serde_yaml::from_str::<Checked<ClusterLoadAssignment>>(&bad).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }
}
