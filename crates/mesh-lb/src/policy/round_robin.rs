//! Smooth weighted round robin with an O(1), lock-free pick.
//!
//! Envoy keeps an EDF scheduler behind a lock and pops it per pick (O(log n)). We instead
//! precompute the EDF order once per rebuild into a schedule table and walk it with one atomic
//! counter, so picking is a `fetch_add` and an index. Equal weights (the common case) need no
//! table at all. When the reduced weights sum past [`MAX_SCHEDULE`], weights are sampled with a
//! golden-ratio (Weyl) sequence over the cumulative weights instead: still smooth
//! (low-discrepancy) and exact in the long run, O(log n) per pick.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::random_u64;

/// Largest schedule table built (entries of 4 bytes).
const MAX_SCHEDULE: u64 = 1 << 17;

#[derive(Debug)]
enum Order {
    /// Equal weights: the counter modulo the host count.
    Equal,
    /// The precomputed EDF order.
    Table(Box<[u32]>),
    /// Cumulative weights, walked by a Weyl sequence.
    Weyl { cumulative: Box<[u64]>, total: u64 },
}

/// A round-robin picker over one bucket.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
    n: usize,
    order: Order,
}

impl RoundRobin {
    /// Builds the order for these weights (each ≥ 1).
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        // Start at a random offset so that many clients do not all hit host 0 first.
        let next = AtomicUsize::new(random_u64() as usize);
        let order = if weights.windows(2).all(|w| w[0] == w[1]) {
            Order::Equal
        } else {
            let g = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
            let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w / g)).collect();
            let total: u64 = reduced.iter().sum();
            if total <= MAX_SCHEDULE {
                Order::Table(edf_schedule(&reduced, total))
            } else {
                let mut acc = 0;
                let cumulative = reduced
                    .iter()
                    .map(|w| {
                        acc += w;
                        acc
                    })
                    .collect();
                Order::Weyl { cumulative, total }
            }
        };
        Self { next, n, order }
    }

    /// The next host's index.
    #[inline]
    pub(crate) fn pick(&self) -> usize {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.order {
            Order::Equal => i % self.n,
            Order::Table(t) => t[i % t.len()] as usize,
            Order::Weyl { cumulative, total } => {
                // Fractional part of i·φ, as a 64-bit fixed-point number.
                let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let target = ((u128::from(x) * u128::from(*total)) >> 64) as u64;
                cumulative.partition_point(|&c| c <= target)
            }
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Earliest-deadline-first order: host i's k-th turn is due at (k - ½) / w_i (the middle of its
/// k-th slot, which spreads light hosts between heavy ones); ties go to the lower index. Yields
/// each host exactly w_i times, spread evenly.
fn edf_schedule(weights: &[u64], total: u64) -> Box<[u32]> {
    // Deadline (2k - 1) / 2w compared exactly by cross-multiplication.
    #[derive(PartialEq, Eq)]
    struct Due {
        k: u64,
        w: u64,
        idx: u32,
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (u128::from(2 * self.k - 1) * u128::from(o.w))
                .cmp(&(u128::from(2 * o.k - 1) * u128::from(self.w)))
                .then(self.idx.cmp(&o.idx))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Reverse(Due {
                k: 1,
                w,
                idx: i as u32,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while out.len() < total as usize {
        let Some(Reverse(mut due)) = heap.pop() else {
            break;
        };
        out.push(due.idx);
        due.k += 1;
        heap.push(Reverse(due));
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rr: &RoundRobin, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[rr.pick()] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_cycle_exactly() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        assert_eq!(counts(&rr, 3, 300), vec![100, 100, 100]);
    }

    #[test]
    fn weights_are_exact_per_cycle_and_smooth() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(counts(&rr, 3, 700), vec![500, 100, 100]);
        // Smooth: within a cycle the heavy host never takes more than 3 turns in a row (5:1:1
        // interleaves as a a a b c a a rather than a a a a a b c).
        let Order::Table(seq) = &rr.order else {
            panic!("weighted order is a table")
        };
        let longest = seq.split(|&i| i != 0).map(<[u32]>::len).max().unwrap_or(0);
        assert!(longest <= 3, "{seq:?}");
    }

    #[test]
    fn huge_weight_sums_fall_back_to_weyl_and_keep_proportions() {
        let rr = RoundRobin::new(&[300_000, 100_000]);
        assert!(matches!(rr.order, Order::Table(_)), "gcd reduces 3:1");
        let rr = RoundRobin::new(&[300_001, 100_000]);
        assert!(matches!(rr.order, Order::Weyl { .. }));
        let c = counts(&rr, 2, 40_000);
        assert!((29_500..30_500).contains(&c[0]), "{c:?}");
    }
}
