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

use super::hash::random_u64;

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
///
/// Hosts of equal weight share every deadline, so the heap holds one entry per distinct weight
/// (a handful in practice) and each pop emits that weight's hosts in index order: O(total) plus
/// O(Σ distinct w · log d) instead of a heap operation per turn (an EDS update of 10,000
/// weighted endpoints spent most of its rebuild in the per-turn heap).
fn edf_schedule(weights: &[u64], total: u64) -> Box<[u32]> {
    // Deadline (2k - 1) / 2w compared exactly by cross-multiplication; `class` breaks ties only
    // for the heap's sake (tied classes are merged by host index below).
    #[derive(PartialEq, Eq)]
    struct Due {
        k: u64,
        w: u64,
        class: usize,
    }
    impl Due {
        fn deadline_cmp(&self, o: &Self) -> std::cmp::Ordering {
            (u128::from(2 * self.k - 1) * u128::from(o.w))
                .cmp(&(u128::from(2 * o.k - 1) * u128::from(self.w)))
        }
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.deadline_cmp(o).then(self.class.cmp(&o.class))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    // Weight → its hosts, in index order.
    let mut by_weight: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for (i, &w) in weights.iter().enumerate() {
        by_weight.entry(w).or_default().push(i as u32);
    }
    let classes: Vec<(u64, Vec<u32>)> = by_weight.into_iter().collect();
    let mut heap: BinaryHeap<Reverse<Due>> = classes
        .iter()
        .enumerate()
        .filter(|(_, (w, _))| *w > 0)
        .map(|(class, &(w, _))| Reverse(Due { k: 1, w, class }))
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    let mut tied = Vec::new();
    let mut merged = Vec::new();
    while let Some(Reverse(first)) = heap.pop() {
        tied.clear();
        while heap
            .peek()
            .is_some_and(|Reverse(d)| d.deadline_cmp(&first).is_eq())
        {
            if let Some(Reverse(d)) = heap.pop() {
                tied.push(d);
            }
        }
        if tied.is_empty() {
            out.extend_from_slice(&classes[first.class].1);
        } else {
            // Several weights due at once: their hosts by index, as one heap of hosts would.
            merged.clear();
            merged.extend_from_slice(&classes[first.class].1);
            for d in &tied {
                merged.extend_from_slice(&classes[d.class].1);
            }
            merged.sort_unstable();
            out.extend_from_slice(&merged);
        }
        // Each host takes exactly w turns: (2w+1)/2w > 1 lies past every due turn.
        for mut d in std::iter::once(first).chain(tied.drain(..)) {
            if d.k < d.w {
                d.k += 1;
                heap.push(Reverse(d));
            }
        }
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

    /// The per-turn heap this module used before: the definition of the order.
    fn reference_schedule(weights: &[u64]) -> Vec<u32> {
        let total: u64 = weights.iter().sum();
        let mut turns: Vec<(u64, u64, u32)> = weights
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (1..=w).map(move |k| (k, w, i as u32)))
            .collect();
        turns.sort_by(|a, b| {
            (u128::from(2 * a.0 - 1) * u128::from(b.1))
                .cmp(&(u128::from(2 * b.0 - 1) * u128::from(a.1)))
                .then(a.2.cmp(&b.2))
        });
        assert_eq!(turns.len() as u64, total);
        turns.into_iter().map(|t| t.2).collect()
    }

    #[test]
    fn grouped_schedule_is_exactly_the_per_turn_edf_order() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for case in 0..200 {
            let n = 1 + next(40) as usize;
            let spread = [2, 4, 7, 30][case % 4];
            let weights: Vec<u64> = (0..n).map(|_| 1 + next(spread)).collect();
            let total = weights.iter().sum();
            assert_eq!(
                edf_schedule(&weights, total).to_vec(),
                reference_schedule(&weights),
                "{weights:?}"
            );
        }
        assert_eq!(edf_schedule(&[1, 3], 4).to_vec(), [1, 0, 1, 1]);
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
