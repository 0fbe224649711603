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

/// Route indices keyed by path prefixes and exact paths.
#[derive(Debug, Clone)]
pub(crate) struct PathTrie {
    nodes: Vec<Node>,
}

impl Default for PathTrie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl PathTrie {
    /// Whether nothing was inserted.
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[0].prefix.is_empty() && self.nodes[0].exact.is_empty()
    }

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

    /// Calls `visit` with the route lists that hold for `path`: the prefix lists of every node
    /// on the way, and the exact list of the node the whole path ends on. `fold` compares ASCII
    /// case-insensitively (the keys were inserted lowered).
    pub(crate) fn walk(&self, path: &[u8], fold: bool, mut visit: impl FnMut(&[u32])) {
        let mut node = &self.nodes[0];
        let mut rest = path;
        loop {
            if !node.prefix.is_empty() {
                visit(&node.prefix);
            }
            let Some(&first) = rest.first() else {
                if !node.exact.is_empty() {
                    visit(&node.exact);
                }
                return;
            };
            let first = if fold {
                first.to_ascii_lowercase()
            } else {
                first
            };
            let Ok(i) = node.children.binary_search_by_key(&first, |c| c.0) else {
                return;
            };
            let child = &self.nodes[node.children[i].1 as usize];
            let n = child.label.len();
            let Some(head) = rest.get(..n) else {
                return;
            };
            let same = if fold {
                head.eq_ignore_ascii_case(&child.label)
            } else {
                *head == *child.label
            };
            if !same {
                return;
            }
            rest = &rest[n..];
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
        let mut t = PathTrie::default();
        t.insert(b"/api/v1", 0, false);
        t.insert(b"/api", 1, false);
        t.insert(b"/api/v2", 2, false);
        t.insert(b"/api/v1/users", 3, true);
        t.insert(b"", 4, false);
        t.insert(b"/apx", 5, false);
        assert_eq!(hits(&t, "/api/v1/users", false), [0, 1, 3, 4]);
        assert_eq!(hits(&t, "/api/v1/users/7", false), [0, 1, 4]);
        assert_eq!(hits(&t, "/api/v", false), [1, 4]);
        assert_eq!(hits(&t, "/apx/y", false), [4, 5]);
        assert_eq!(hits(&t, "/b", false), [4]);
        assert_eq!(hits(&t, "/API/V1/users", false), [4]);
        assert_eq!(hits(&t, "/API/V1/USERS", true), [0, 1, 3, 4]);
        assert!(!t.is_empty());
        assert!(PathTrie::default().is_empty());
    }
}
