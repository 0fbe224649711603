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

    /// The lookup form: every node's header, label, child table and route lists laid out in one
    /// array of words, nodes in depth-first order (a child follows its parent closely), so a
    /// walk reads a few neighbouring cache lines instead of one or more per field per node
    /// (five separate arrays before: a cache miss each, per request).
    pub(crate) fn freeze(&self) -> PathTrie {
        // Depth-first order of the nodes.
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![0usize];
        while let Some(n) = stack.pop() {
            order.push(n);
            stack.extend(self.nodes[n].children.iter().rev().map(|c| c.1 as usize));
        }
        // Each node's offset in the word array.
        let size = |n: &Node| {
            HEADER
                + n.label.len().div_ceil(4)
                + 2 * n.children.len()
                + n.prefix.len()
                + n.exact.len()
        };
        let mut offset = vec![0u32; self.nodes.len()];
        let mut at = 0usize;
        for &n in &order {
            offset[n] = at as u32;
            at += size(&self.nodes[n]);
        }
        let mut t = PathTrie {
            words: Vec::with_capacity(at),
            routes: 0,
        };
        for &old in &order {
            let n = &self.nodes[old];
            t.words.extend_from_slice(&[
                n.label.len() as u32,
                n.children.len() as u32,
                n.prefix.len() as u32,
                n.exact.len() as u32,
            ]);
            // The label's bytes, four to a word (little end first).
            t.words.extend(
                n.label
                    .chunks(4)
                    .map(|c| c.iter().rev().fold(0u32, |w, b| (w << 8) | u32::from(*b))),
            );
            for (key, id) in &n.children {
                t.words.push(u32::from(*key));
                t.words.push(offset[*id as usize]);
            }
            t.words.extend_from_slice(&n.prefix);
            t.words.extend_from_slice(&n.exact);
            t.routes += n.prefix.len() + n.exact.len();
        }
        t
    }
}

/// Words of a node's header: label length, number of children, of prefix routes and of exact
/// routes. The header is followed by the label (four bytes a word), the `(key, offset)` pair of
/// each child, then the prefix routes, then the exact routes (each list ascending).
const HEADER: usize = 4;

/// Route indices keyed by path prefixes and exact paths, in lookup form (see
/// [`TrieBuilder::freeze`]). Sizes fit `u32` because a table's routes (and so its trie nodes
/// and bytes) are far fewer than 4 billion.
#[derive(Debug, Clone)]
pub(crate) struct PathTrie {
    words: Vec<u32>,
    /// How many route entries the trie holds.
    routes: usize,
}

impl PathTrie {
    /// Whether no route is indexed.
    pub(crate) fn is_empty(&self) -> bool {
        self.routes == 0
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
        let lower = |b: u8| if FOLD { b.to_ascii_lowercase() } else { b };
        let w = self.words.as_slice();
        let mut node = 0usize;
        let mut rest = path;
        // Every offset and length was written by `freeze`, so the `get`s below only fail on a
        // corrupt trie; they end the walk rather than panic.
        loop {
            let Some(&[label, children, prefix, exact]) = w.get(node..node + HEADER) else {
                return;
            };
            let (children, prefix, exact) = (children as usize, prefix as usize, exact as usize);
            let kids = node + HEADER + (label as usize).div_ceil(4);
            let routes = kids + 2 * children;
            if prefix > 0 {
                visit(w.get(routes..routes + prefix).unwrap_or_default());
            }
            let Some(&first) = rest.first() else {
                if exact > 0 {
                    let exact_at = routes + prefix;
                    visit(w.get(exact_at..exact_at + exact).unwrap_or_default());
                }
                return;
            };
            let first = u32::from(lower(first));
            let Some(pairs) = w.get(kids..routes) else {
                return;
            };
            let Some(child) = pairs.chunks_exact(2).find(|p| p[0] == first).map(|p| p[1]) else {
                return;
            };
            let child = child as usize;
            let Some(&len) = w.get(child) else {
                return;
            };
            let len = len as usize;
            let Some(head) = rest.get(..len) else {
                return;
            };
            // The label follows the child's header, in the cache line the walk reads next
            // anyway; compared a word (four bytes, packed as `freeze` packs them) at a time.
            let at = child + HEADER;
            let Some(label) = w.get(at..at + len.div_ceil(4)) else {
                return;
            };
            // The first byte is the child's key, already compared.
            let same = head.iter().enumerate().skip(1).all(|(k, a)| {
                // Truncation intended: byte `k % 4` of the word.
                label
                    .get(k / 4)
                    .is_some_and(|word| (word >> (8 * (k % 4))) as u8 == lower(*a))
            });
            if !same {
                return;
            }
            rest = &rest[len..];
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
