//! Least request as the power of `choice_count` choices.
//!
//! Hand-written rather than tower's `balance::p2c`: tower's balancer owns a set of services and
//! their `Load`, while our endpoints' in-flight counters live in [`EndpointState`] and are
//! shared with circuit breaking, outlier detection and draining; picking here is two weighted
//! samples and two atomic loads, with no allocation and no `poll_ready` dance.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::hash::mix64;
use super::random::WeightedRandom;
use crate::endpoint::EndpointState;

/// A P2C picker over one bucket.
#[derive(Debug)]
pub(crate) struct LeastRequest {
    sampler: WeightedRandom,
    choices: u32,
    n: usize,
}

impl LeastRequest {
    /// Samples by weight, `choices` (≥ 2) candidates per pick.
    pub(crate) fn new(weights: &[u32], choices: u32) -> Self {
        Self {
            sampler: WeightedRandom::new(weights),
            choices: choices.max(2),
            n: weights.len(),
        }
    }

    /// The candidate with the fewest requests in flight (the first on a tie).
    #[inline]
    pub(crate) fn pick(&self, hosts: &[Arc<EndpointState>], mut r: u64) -> usize {
        if self.n == 1 {
            return 0;
        }
        let mut best = self.sampler.sample(r);
        let mut best_load = hosts[best].in_flight.load(Ordering::Relaxed);
        for _ in 1..self.choices {
            r = mix64(r);
            let c = self.sampler.sample(r);
            let load = hosts[c].in_flight.load(Ordering::Relaxed);
            if load < best_load {
                (best, best_load) = (c, load);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash::random_u64;
    use super::*;
    use crate::endpoint::InFlightGuard;

    #[test]
    fn avoids_the_busy_endpoint() {
        let hosts: Vec<_> = (1..=3)
            .map(|i| Arc::new(EndpointState::new(([127, 0, 0, 1], i).into())))
            .collect();
        let _busy: Vec<_> = (0..10)
            .map(|_| InFlightGuard::new(hosts[0].clone()))
            .collect();
        let p = LeastRequest::new(&[1, 1, 1], 2);
        let picks = (0..3_000)
            .filter(|_| p.pick(&hosts, random_u64()) == 0)
            .count();
        // Host 0 wins only when both samples are host 0: 1/9 of the time.
        assert!((200..480).contains(&picks), "{picks}");
    }
}
