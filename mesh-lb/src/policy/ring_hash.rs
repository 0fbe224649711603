//! Ketama-style consistent hashing on a ring (Envoy's `RING_HASH`), O(log n) per pick.
//!
//! Each host gets a number of points on a 64-bit ring proportional to its weight; a request key
//! goes to the first point at or after it. When a host leaves, only the keys on its points move.

use std::net::SocketAddr;

use super::hash::hash_addr;

/// A ring over one bucket.
#[derive(Debug)]
pub(crate) struct RingHash {
    /// (point, host index), sorted by point.
    ring: Box<[(u64, u32)]>,
}

impl RingHash {
    /// Builds the ring: each host gets `weight × p` points, where `p` (points per unit of
    /// weight) is the power of two that makes the ring at least `min` points, capped so it stays
    /// within `max`. Unlike Envoy's exact scaling, rounding `p` to a power of two means a host
    /// leaving or joining almost never changes the other hosts' points, so their keys stay put.
    pub(crate) fn new(hosts: &[(SocketAddr, u32)], min: u64, max: u64) -> Self {
        let total: u64 = hosts
            .iter()
            .map(|h| u64::from(h.1.max(1)))
            .sum::<u64>()
            .max(1);
        let mut p = min.div_ceil(total).max(1).next_power_of_two();
        if p * total > max {
            p = (max / total).max(1);
        }
        let mut ring = Vec::with_capacity((p * total) as usize);
        for (idx, (addr, w)) in hosts.iter().enumerate() {
            for k in 0..p * u64::from((*w).max(1)) {
                ring.push((hash_addr(addr, k), idx as u32));
            }
        }
        ring.sort_unstable();
        Self {
            ring: ring.into_boxed_slice(),
        }
    }

    /// The host owning `key`.
    #[inline]
    pub(crate) fn pick(&self, key: u64) -> usize {
        let i = self.ring.partition_point(|&(p, _)| p < key);
        let i = if i == self.ring.len() { 0 } else { i };
        self.ring.get(i).map_or(0, |&(_, h)| h as usize)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{hash::mix64, testutil::hosts};
    use super::*;

    #[test]
    fn ring_is_sized_like_envoy() {
        assert_eq!(RingHash::new(&hosts(4), 1024, 8 << 20).len(), 1024);
        assert_eq!(RingHash::new(&hosts(10_000), 1024, 8 << 20).len(), 10_000);
        assert_eq!(RingHash::new(&hosts(10), 1024, 100).len(), 100);
    }

    #[test]
    fn removing_a_host_moves_only_its_keys() {
        let all = hosts(10);
        let before = RingHash::new(&all, 1024, 8 << 20);
        let mut fewer = all.clone();
        let gone = fewer.remove(3).0;
        let after = RingHash::new(&fewer, 1024, 8 << 20);
        let mut moved = 0;
        for k in 0..10_000u64 {
            let key = mix64(k);
            let a = all[before.pick(key)].0;
            let b = fewer[after.pick(key)].0;
            if a != gone {
                assert_eq!(a, b, "a key not on the removed host moved");
            } else {
                moved += 1;
            }
        }
        assert!((600..1_400).contains(&moved), "{moved}");
    }

    #[test]
    fn weights_are_honoured() {
        let mut h = hosts(2);
        h[0].1 = 3;
        let ring = RingHash::new(&h, 4096, 8 << 20);
        let first = (0..20_000u64).filter(|&k| ring.pick(mix64(k)) == 0).count();
        assert!((14_000..16_000).contains(&first), "{first}");
    }
}
