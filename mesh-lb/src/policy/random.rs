//! Weighted random choice in O(1) through Vose's alias table.

/// A weighted random sampler over one bucket.
#[derive(Debug)]
pub(crate) struct WeightedRandom {
    n: usize,
    /// Per column: the threshold (scaled to 2^32) under which the column itself is chosen,
    /// and its alias otherwise. `None` when all weights are equal.
    alias: Option<Box<[(u32, u32)]>>,
}

impl WeightedRandom {
    /// Builds the alias table for these weights (each ≥ 1).
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Self { n, alias: None };
        }
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut scaled: Vec<f64> = weights
            .iter()
            .map(|&w| f64::from(w) * n as f64 / total)
            .collect();
        let mut table: Vec<(u32, u32)> = (0..n as u32).map(|i| (u32::MAX, i)).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            table[s] = (
                (scaled[s] * 4_294_967_296.0).min(f64::from(u32::MAX)) as u32,
                l as u32,
            );
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // What is left (rounding) keeps threshold MAX and itself as alias.
        Self {
            n,
            alias: Some(table.into_boxed_slice()),
        }
    }

    /// The index chosen by the random bits `r`.
    #[inline]
    pub(crate) fn sample(&self, r: u64) -> usize {
        let col = super::hash::bounded(r as u32, self.n);
        match &self.alias {
            None => col,
            Some(t) => {
                let (threshold, alias) = t[col];
                if ((r >> 32) as u32) < threshold {
                    col
                } else {
                    alias as usize
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash::random_u64;
    use super::*;

    #[test]
    fn weights_are_honoured_within_bounds() {
        let r = WeightedRandom::new(&[1, 2, 7]);
        let mut c = [0u32; 3];
        let n = 100_000;
        for _ in 0..n {
            c[r.sample(random_u64())] += 1;
        }
        // Expected 10k / 20k / 70k; 5 sigma is under 1.5k for each.
        for (got, want) in c.iter().zip([10_000, 20_000, 70_000]) {
            assert!(got.abs_diff(want) < 1_500, "{c:?}");
        }
    }

    #[test]
    fn equal_weights_need_no_table() {
        let r = WeightedRandom::new(&[3, 3]);
        assert!(r.alias.is_none());
        assert!(r.sample(u64::MAX) < 2);
    }
}
