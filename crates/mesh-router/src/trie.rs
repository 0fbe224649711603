//! A radix tree over path bytes: the index that finds every prefix (and exact-path) route of a
//! path in one walk, in time proportional to the path, not to the number of routes.
//!
//! Hand-written because it is small and must hand back route *indices* in first-match order with
//! exact and prefix routes kept apart, which general-purpose trie crates do not model.

/// One node: the edge label from its parent, and the routes ending here.
#[derive(Debug, Default, Clone)]
struct Node {
    label: Box<[u8]>,
    /// Children by the first byte of their label, sorted.
    children: Vec<(u8, u32)>,
    /// Routes whose prefix is the path from the root to here, ascending.
    prefix: Vec<u32>,
    /// Routes whose exact path is the path from the root to here, ascending.
    exact: Vec<u32>,
}

/// The trie while it is built; [`freeze`](Self::freeze) turns it into the lookup form.
#[derive(Debug, Clone)]
pub(crate) struct TrieBuilder {
    nodes: Vec<Node>,
}

impl Default for TrieBuilder {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl TrieBuilder {
    /// Adds `route` under `key`; routes must be inserted in ascending order.
    pub(crate) fn insert(&mut self, key: &[u8], route: u32, exact: bool) {
        let mut node = 0usize;
        let mut rest = key;
        loop {
            let Some(&first) = rest.first() else {
                let n = &mut self.nodes[node];
                if exact { &mut n.exact } else { &mut n.prefix }.push(route);
                return;
            };
            let pos = self.nodes[node]
                .children
                .binary_search_by_key(&first, |c| c.0);
            let child = match pos {
                Ok(i) => self.nodes[node].children[i].1 as usize,
                Err(i) => {
                    let id = self.push(Node {
                        label: rest.into(),
                        ..Node::default()
                    });
                    self.nodes[node].children.insert(i, (first, id));
                    node = id as usize;
                    rest = &[];
                    continue;
                }
            };
            let label = &self.nodes[child].label;
            let common = label.iter().zip(rest).take_while(|(a, b)| a == b).count();
            if common < label.len() {
                // Split the edge: a new middle node takes the common part.
                let tail: Box<[u8]> = label[common..].into();
                let mid = self.push(Node {
                    label: rest[..common].into(),
                    children: vec![(tail[0], child as u32)],
                    ..Node::default()
                });
                self.nodes[child].label = tail;
                if let Ok(i) = pos {
                    self.nodes[node].children[i].1 = mid;
                }
                node = mid as usize;
            } else {
                node = child;
            }
            rest = &rest[common..];
        }
    }

    fn push(&mut self, node: Node) -> u32 {
        self.nodes.push(node);
        // A table cannot hold 4 billion trie nodes: routes are far fewer than that.
        (self.nodes.len() - 1) as u32
    }

    /// The lookup form: every node, label, child table and route list laid out in flat arrays,
    /// nodes in depth-first order, so a walk reads a few contiguous cache lines instead of
    /// chasing one allocation per field per node.
    pub(crate) fn freeze(&self) -> PathTrie {
        let mut t = PathTrie {
            nodes: Vec::with_capacity(self.nodes.len()),
            labels: Vec::new(),
            child_keys: Vec::new(),
            child_ids: Vec::new(),
            routes: Vec::new(),
        };
        // Depth-first numbering: new id of each old node.
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![0usize];
        while let Some(n) = stack.pop() {
            order.push(n);
            stack.extend(self.nodes[n].children.iter().rev().map(|c| c.1 as usize));
        }
        let mut new_id = vec![0u32; self.nodes.len()];
        for (new, old) in order.iter().enumerate() {
            new_id[*old] = new as u32;
        }
        let span = |v: &mut Vec<u32>, items: &[u32]| {
            let start = v.len() as u32;
            v.extend_from_slice(items);
            (start, items.len() as u32)
        };
        for old in order {
            let n = &self.nodes[old];
            let label = (t.labels.len() as u32, n.label.len() as u32);
            t.labels.extend_from_slice(&n.label);
            let children = (t.child_keys.len() as u32, n.children.len() as u32);
            for (key, id) in &n.children {
                t.child_keys.push(*key);
                t.child_ids.push(new_id[*id as usize]);
            }
            let prefix = span(&mut t.routes, &n.prefix);
            let exact = span(&mut t.routes, &n.exact);
            t.nodes.push(Frozen {
                label,
                children,
                prefix,
                exact,
            });
        }
        t
    }
}

/// A frozen node: `(start, len)` spans into the trie's flat arrays.
#[derive(Debug, Clone, Copy)]
struct Frozen {
    label: (u32, u32),
    children: (u32, u32),
    prefix: (u32, u32),
    exact: (u32, u32),
}

/// Route indices keyed by path prefixes and exact paths, in lookup form. Sizes fit `u32`
/// because a table's routes (and so its trie nodes and bytes) are far fewer than 4 billion.
#[derive(Debug, Clone)]
pub(crate) struct PathTrie {
    nodes: Vec<Frozen>,
    labels: Vec<u8>,
    child_keys: Vec<u8>,
    child_ids: Vec<u32>,
    routes: Vec<u32>,
}

fn span<T>(v: &[T], (start, len): (u32, u32)) -> &[T] {
    &v[start as usize..(start + len) as usize]
}

impl PathTrie {
    /// Whether no route is indexed.
    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Calls `visit` with the route lists that hold for `path`: the prefix lists of every node
    /// on the way, and the exact list of the node the whole path ends on. `fold` compares ASCII
    /// case-insensitively (the keys were inserted lowered).
    pub(crate) fn walk(&self, path: &[u8], fold: bool, visit: impl FnMut(&[u32])) {
        if fold {
            self.walk_as::<true>(path, visit);
        } else {
            self.walk_as::<false>(path, visit);
        }
    }

    /// [`walk`](Self::walk) with the case rule fixed at compile time, so the per-byte compare
    /// carries no branch on it.
    #[inline]
    fn walk_as<const FOLD: bool>(&self, path: &[u8], mut visit: impl FnMut(&[u32])) {
        let fold = FOLD;
        let mut node = self.nodes[0];
        let mut rest = path;
        loop {
            if node.prefix.1 > 0 {
                visit(span(&self.routes, node.prefix));
            }
            let Some(&first) = rest.first() else {
                if node.exact.1 > 0 {
                    visit(span(&self.routes, node.exact));
                }
                return;
            };
            let first = if fold {
                first.to_ascii_lowercase()
            } else {
                first
            };
            let keys = span(&self.child_keys, node.children);
            let Some(i) = keys.iter().position(|k| *k == first) else {
                return;
            };
            let child = self.nodes[self.child_ids[node.children.0 as usize + i] as usize];
            let label = span(&self.labels, child.label);
            let Some(head) = rest.get(..label.len()) else {
                return;
            };
            // The first byte is the child's key, already compared. Labels are mostly a few
            // bytes: a plain loop beats a call into memcmp there.
            let same = head[1..].iter().zip(&label[1..]).all(|(a, b)| {
                if fold {
                    a.to_ascii_lowercase() == *b
                } else {
                    a == b
                }
            });
            if !same {
                return;
            }
            rest = &rest[label.len()..];
            node = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(t: &PathTrie, path: &str, fold: bool) -> Vec<u32> {
        let mut out = Vec::new();
        t.walk(path.as_bytes(), fold, |l| out.extend_from_slice(l));
        out.sort_unstable();
        out
    }

    #[test]
    fn finds_every_prefix_and_the_exact_path() {
        let mut b = TrieBuilder::default();
        b.insert(b"/api/v1", 0, false);
        b.insert(b"/api", 1, false);
        b.insert(b"/api/v2", 2, false);
        b.insert(b"/api/v1/users", 3, true);
        b.insert(b"", 4, false);
        b.insert(b"/apx", 5, false);
        let t = b.freeze();
        assert_eq!(hits(&t, "/api/v1/users", false), [0, 1, 3, 4]);
        assert_eq!(hits(&t, "/api/v1/users/7", false), [0, 1, 4]);
        assert_eq!(hits(&t, "/api/v", false), [1, 4]);
        assert_eq!(hits(&t, "/apx/y", false), [4, 5]);
        assert_eq!(hits(&t, "/b", false), [4]);
        assert_eq!(hits(&t, "/API/V1/users", false), [4]);
        assert_eq!(hits(&t, "/API/V1/USERS", true), [0, 1, 3, 4]);
        assert!(!t.is_empty());
        assert!(TrieBuilder::default().freeze().is_empty());
    }
}
