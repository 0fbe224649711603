//! A stream's subscribed names: a sorted vector of shared names.
//!
//! Every subscriber holds one per subscribed type (an Envoy's EDS subscription is 100 names).
//! A `BTreeSet<Arc<str>>` costs 34 bytes a name when built by inserts (half-full nodes: 3.4 KB
//! per 100 names); a sorted vector trimmed to its length costs the 16-byte pointer. Lookups
//! stay logarithmic; inserts shift, which is cheap for subscriptions of this size.

use std::borrow::Borrow;
use std::sync::Arc;

/// A set of subscribed names, sorted, duplicate-free.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Names(Vec<Arc<str>>);

impl Names {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|n| (**n).cmp(name))
    }

    /// Whether `name` is subscribed.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Adds `name` (no-op when present).
    pub(crate) fn insert(&mut self, name: Arc<str>) {
        if let Err(i) = self.find(&name) {
            self.0.insert(i, name);
        }
    }

    /// Removes `name` if present.
    pub(crate) fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
        }
    }

    /// Gives back the spare capacity growth left (after a batch of inserts).
    pub(crate) fn trim(&mut self) {
        self.0.shrink_to_fit();
    }

    /// Number of names.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no name is subscribed.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names, sorted.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|n| n.borrow())
    }
}

impl FromIterator<Arc<str>> for Names {
    fn from_iter<I: IntoIterator<Item = Arc<str>>>(iter: I) -> Self {
        let mut v: Vec<Arc<str>> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        v.shrink_to_fit();
        Self(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_trimmed() {
        let mut n: Names = ["b", "a", "b", "c"].into_iter().map(Arc::from).collect();
        assert_eq!(n.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(n.0.capacity(), 3);
        n.insert(Arc::from("0"));
        n.insert(Arc::from("a"));
        n.remove("b");
        n.remove("zz");
        n.trim();
        assert_eq!(n.iter().collect::<Vec<_>>(), ["0", "a", "c"]);
        assert!(n.contains("c") && !n.contains("b"));
        assert_eq!((n.len(), n.0.capacity()), (3, 3));
        assert!(!n.is_empty());
    }
}
