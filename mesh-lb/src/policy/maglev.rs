//! Maglev consistent hashing (Google's Maglev paper, Envoy's weighted variant), O(1) per pick.
//!
//! A lookup table of a prime size M is filled by letting every host claim entries in its own
//! pseudo-random permutation order, heavier hosts more often; a key picks `table[key % M]`.
//! When a host leaves, the table changes little beyond that host's entries.

use std::net::SocketAddr;

use super::hash::hash_addr;

/// A Maglev table over one bucket.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// Fills a table of `size` (a prime, validated by mesh-core) entries.
    pub(crate) fn new(hosts: &[(SocketAddr, u32)], size: u64) -> Self {
        let m = size.max(1) as usize;
        let n = hosts.len();
        if n == 0 {
            return Self {
                table: Box::new([]),
            };
        }
        let max_w = hosts.iter().map(|h| h.1.max(1)).max().unwrap_or(1) as u64;
        // Per host: (next slot in its permutation, skip, target weight). The permutation is
        // offset + k·skip mod M, walked by adding skip (no division per step).
        let mut perm: Vec<(u64, u64, u64)> = hosts
            .iter()
            .map(|(addr, _)| {
                let offset = hash_addr(addr, 0x6d61_676c) % size;
                let skip = if size > 1 {
                    hash_addr(addr, 0x736b_6970) % (size - 1) + 1
                } else {
                    1
                };
                (offset, skip, 0)
            })
            .collect();
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        let mut iteration: u64 = 1;
        while filled < m {
            for (i, (_, w)) in hosts.iter().enumerate() {
                if filled == m {
                    break;
                }
                let p = &mut perm[i];
                // A host of weight w claims on w/max of the rounds (Envoy's weighted Maglev).
                if iteration * u64::from((*w).max(1)) < p.2 {
                    continue;
                }
                p.2 += max_w;
                loop {
                    let c = p.0 as usize;
                    p.0 += p.1;
                    if p.0 >= size {
                        p.0 -= size;
                    }
                    if table[c] == u32::MAX {
                        table[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
            iteration += 1;
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    /// The host owning `key`.
    #[inline]
    pub(crate) fn pick(&self, key: u64) -> usize {
        let len = self.table.len() as u64;
        if len == 0 {
            return 0;
        }
        self.table[(key % len) as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::super::{hash::mix64, testutil::hosts};
    use super::*;

    fn shares(t: &Maglev, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        t.table.iter().for_each(|&i| c[i as usize] += 1);
        c
    }

    #[test]
    fn table_is_full_and_balanced() {
        let t = Maglev::new(&hosts(10), 65537);
        let c = shares(&t, 10);
        assert!(c.iter().all(|&x| (6_400..6_700).contains(&x)), "{c:?}");
    }

    #[test]
    fn weights_are_honoured() {
        let mut h = hosts(2);
        h[0].1 = 3;
        let c = shares(&Maglev::new(&h, 65537), 2);
        assert!((48_000..50_500).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn removing_a_host_disrupts_little() {
        let all = hosts(10);
        let before = Maglev::new(&all, 65537);
        let mut fewer = all.clone();
        let gone = fewer.remove(3).0;
        let after = Maglev::new(&fewer, 65537);
        let (mut moved_other, mut total_other) = (0, 0);
        for k in 0..20_000u64 {
            let key = mix64(k);
            let a = all[before.pick(key)].0;
            if a != gone {
                total_other += 1;
                if fewer[after.pick(key)].0 != a {
                    moved_other += 1;
                }
            }
        }
        // Maglev trades a little disruption for balance; the paper reports a few percent.
        assert!(
            moved_other * 100 < total_other * 5,
            "{moved_other}/{total_other}"
        );
    }
}
