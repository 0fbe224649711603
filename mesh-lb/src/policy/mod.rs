//! The load-balancing policies, one module each, behind one [`Picker`] enum.
//!
//! Each picker is built once per endpoint-set rebuild (off the data path) over the hosts of one
//! bucket (a priority level, or one locality of it) and then picks in O(1) or O(log n) without
//! allocating: round robin, weighted random and P2C in O(1), ring hash in O(log n), Maglev in
//! O(1).

mod hash;
mod maglev;
mod p2c;
mod random;
mod ring_hash;
mod round_robin;

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::LbPolicy;

use crate::endpoint::EndpointState;

pub(crate) use hash::{bounded, mix64, random_u64};
pub(crate) use maglev::Maglev;
pub(crate) use p2c::LeastRequest;
pub(crate) use random::WeightedRandom;
pub(crate) use ring_hash::RingHash;
pub(crate) use round_robin::RoundRobin;

/// One bucket's picker, precomputed at rebuild.
#[derive(Debug)]
pub(crate) enum Picker {
    /// Smooth weighted round robin.
    RoundRobin(RoundRobin),
    /// Weighted random.
    Random(WeightedRandom),
    /// Least request, power of `choice_count` choices.
    LeastRequest(LeastRequest),
    /// Ketama ring.
    RingHash(RingHash),
    /// Maglev table.
    Maglev(Maglev),
}

impl Picker {
    /// Builds the policy's structure over `hosts` (address, weight ≥ 1), in bucket order.
    pub(crate) fn build(policy: &LbPolicy, hosts: &[(SocketAddr, u32)]) -> Self {
        let weights: Vec<u32> = hosts.iter().map(|h| h.1.max(1)).collect();
        match policy {
            LbPolicy::RoundRobin => Self::RoundRobin(RoundRobin::new(&weights)),
            LbPolicy::Random => Self::Random(WeightedRandom::new(&weights)),
            LbPolicy::LeastRequest { choice_count } => {
                Self::LeastRequest(LeastRequest::new(&weights, *choice_count))
            }
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => Self::RingHash(RingHash::new(hosts, *minimum_ring_size, *maximum_ring_size)),
            LbPolicy::Maglev { table_size } => Self::Maglev(Maglev::new(hosts, *table_size)),
        }
    }

    /// The index (into the bucket's hosts) of the next pick. `hash` is the request's
    /// consistent-hash key, used by ring hash and Maglev (a random key when absent).
    /// `hosts` must be the (non-empty) hosts the picker was built over.
    #[inline]
    pub(crate) fn pick(&self, hosts: &[Arc<EndpointState>], hash: Option<u64>) -> usize {
        match self {
            Self::RoundRobin(rr) => rr.pick(),
            Self::Random(r) => r.sample(random_u64()),
            Self::LeastRequest(p2c) => p2c.pick(hosts, random_u64()),
            Self::RingHash(ring) => ring.pick(hash.unwrap_or_else(random_u64)),
            Self::Maglev(m) => m.pick(hash.unwrap_or_else(random_u64)),
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::net::SocketAddr;

    /// `n` distinct loopback addresses, weight 1.
    pub(crate) fn hosts(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
                (addr, 1)
            })
            .collect()
    }
}
