//! What a delta client holds, kept small: the resources it was sent (shared `Arc`s, sorted by
//! name, 8 bytes each), plus the versions it announced on connect until they are resolved.

use std::collections::HashMap;
use std::sync::Arc;

use super::resource::Resource;

#[derive(Debug, Default)]
pub(crate) struct Held {
    sent: Vec<Arc<Resource>>,
    /// `initial_resource_versions` of names not (yet) matched to a resource.
    initial: HashMap<String, u64>,
}

impl Held {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.sent.binary_search_by(|r| r.name().cmp(name))
    }

    /// Records a version the client announced on (re)connect.
    pub(crate) fn announce(&mut self, name: String, hash: u64) {
        self.initial.insert(name, hash);
    }

    /// Whether the client holds `r` as it is. An announced version that matches is adopted.
    pub(crate) fn holds(&mut self, r: &Arc<Resource>) -> bool {
        if let Ok(i) = self.find(r.name()) {
            return self.sent[i].hash() == r.hash();
        }
        if self.initial.get(r.name()) == Some(&r.hash()) {
            self.initial.remove(r.name());
            self.insert(r.clone());
            return true;
        }
        false
    }

    /// Whether the client holds anything named `name` (sent or announced).
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok() || self.initial.contains_key(name)
    }

    pub(crate) fn insert(&mut self, r: Arc<Resource>) {
        self.initial.remove(r.name());
        match self.find(r.name()) {
            Ok(i) => self.sent[i] = r,
            Err(i) => self.sent.insert(i, r),
        }
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.initial.remove(name);
        if let Ok(i) = self.find(name) {
            self.sent.remove(i);
        }
    }

    /// Gives back the spare capacity of a batch of inserts when it is a quarter or more (a
    /// first sync of 100 names leaves room for 128).
    pub(crate) fn trim(&mut self) {
        if self.sent.capacity() - self.sent.len() > self.sent.len() / 4 {
            self.sent.shrink_to_fit();
        }
        if self.initial.is_empty() && self.initial.capacity() > 0 {
            self.initial = HashMap::new();
        }
    }

    /// Names held (sent or announced) that `exists` says are gone, sorted.
    pub(crate) fn gone(&self, exists: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out: Vec<String> = self
            .sent
            .iter()
            .map(|r| r.name())
            .chain(self.initial.keys().map(String::as_str))
            .filter(|n| !exists(n))
            .map(str::to_owned)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
