//! Per-descriptor buckets: a sharded map from a request part's value to its bucket, bounded.
//!
//! Keys come from clients (a header, an address), so the map hashes with SipHash under a random
//! key (std's `RandomState`) to resist collision floods, hashes once (hashbrown's `HashTable`
//! takes the precomputed hash) and shards by the hash so threads on different keys rarely meet
//! on a lock. A lookup takes one shard's read lock for a few nanoseconds; only a new key takes
//! the write lock.
//!
//! The bound: each shard holds at most `max_descriptors / shards` buckets. A full shard first
//! drops its idle buckets, those already full again, which a fresh bucket would equal, so
//! evicting them loses no state; if every bucket is busy, it drops the one closest to full.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;
use http::{HeaderName, Request};
use mesh_core::extensions::ClientAddr;
use mesh_core::DescriptorSource;

use crate::gcra::Bucket;

/// At most this many shards (a power of two).
const MAX_SHARDS: usize = 64;
/// At least this many buckets per shard (when the bound allows), so that eviction has a choice.
const MIN_PER_SHARD: usize = 16;

/// How a rule reads its descriptor from a request.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Header(HeaderName),
    ClientAddress,
    GrpcMethod,
}

impl Source {
    /// Compiles a descriptor source; `None` for a header name that is not one (validation
    /// rejects those before we get here).
    pub(crate) fn new(src: &DescriptorSource) -> Option<Self> {
        Some(match src {
            DescriptorSource::Header(h) => Self::Header(HeaderName::from_bytes(h.as_bytes()).ok()?),
            DescriptorSource::ClientAddress => Self::ClientAddress,
            DescriptorSource::GrpcMethod => Self::GrpcMethod,
        })
    }

    /// Calls `f` with the request's descriptor value, or `None` when the request has none (no
    /// such header, no client address, not gRPC): those share one bucket.
    pub(crate) fn with_key<B, R>(&self, req: &Request<B>, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        match self {
            Self::Header(name) => f(req.headers().get(name).map(|v| v.as_bytes())),
            Self::ClientAddress => match req.extensions().get::<ClientAddr>() {
                Some(ClientAddr(addr)) => match addr.ip() {
                    IpAddr::V4(ip) => f(Some(&ip.octets())),
                    IpAddr::V6(ip) => f(Some(&ip.octets())),
                },
                None => f(None),
            },
            Self::GrpcMethod if mesh_core::is_grpc(req) => f(Some(req.uri().path().as_bytes())),
            Self::GrpcMethod => f(None),
        }
    }
}

struct Entry {
    hash: u64,
    key: Box<[u8]>,
    bucket: Arc<Bucket>,
}

/// The bounded, sharded map of one rule's descriptor buckets.
pub(crate) struct DescriptorMap {
    shards: Box<[RwLock<HashTable<Entry>>]>,
    hasher: std::hash::RandomState,
    per_shard: AtomicUsize,
}

impl std::fmt::Debug for DescriptorMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DescriptorMap")
            .field("shards", &self.shards.len())
            .field("len", &self.len())
            .finish()
    }
}

impl DescriptorMap {
    /// A map holding at most `max` buckets.
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        // A power of two, so the total stays at or under max with a per-shard cap of at least
        // MIN_PER_SHARD (or max itself in one shard for tiny bounds).
        let wanted = (max / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = 1 << wanted.ilog2();
        Self {
            shards: (0..shards).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: std::hash::RandomState::new(),
            per_shard: AtomicUsize::new(max / shards),
        }
    }

    /// Changes the bound (a reload changed `max_descriptors`); shards shrink on their next
    /// insert.
    pub(crate) fn set_max(&self, max: usize) {
        let per = (max / self.shards.len()).max(1);
        self.per_shard.store(per, Ordering::Relaxed);
    }

    /// Buckets held now.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map_or(0, |t| t.len()))
            .sum()
    }

    /// Runs `f` on the bucket of `key`, creating it (and evicting to stay bounded) if needed.
    /// `now` decides which buckets are idle.
    pub(crate) fn with_bucket<R>(
        &self,
        key: &[u8],
        now: u64,
        f: impl FnOnce(&Arc<Bucket>) -> R,
    ) -> R {
        let hash = self.hasher.hash_one(key);
        // hashbrown indexes by the low bits and tags by the top 7: shard by bits in between so
        // that neither loses entropy within a shard.
        let shard = &self.shards[((hash >> 32) as usize) & (self.shards.len() - 1)];
        let eq = |e: &Entry| e.hash == hash && *e.key == *key;
        if let Ok(table) = shard.read() {
            if let Some(e) = table.find(hash, eq) {
                return f(&e.bucket);
            }
        }
        // A poisoned lock only means a panic elsewhere mid-insert; the table is still a valid
        // table, so keep serving from it.
        let mut table = shard.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = table.find(hash, eq) {
            return f(&e.bucket);
        }
        let cap = self.per_shard.load(Ordering::Relaxed);
        if table.len() >= cap {
            table.retain(|e| !e.bucket.is_idle(now));
            while table.len() >= cap {
                let Some(victim) = table.iter().min_by_key(|e| e.bucket.tat()).map(|e| e.hash)
                else {
                    break;
                };
                let Ok(found) = table.find_entry(victim, |e| e.hash == victim) else {
                    break;
                };
                found.remove();
            }
        }
        let bucket = Arc::new(Bucket::default());
        let out = f(&bucket);
        table.insert_unique(
            hash,
            Entry {
                hash,
                key: key.into(),
                bucket,
            },
            |e| e.hash,
        );
        out
    }

    /// Runs `f` on the bucket of `key` if it exists (for refunds).
    pub(crate) fn with_existing(&self, key: &[u8], f: impl FnOnce(&Arc<Bucket>)) {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[((hash >> 32) as usize) & (self.shards.len() - 1)];
        if let Ok(table) = shard.read() {
            if let Some(e) = table.find(hash, |e| e.hash == hash && *e.key == *key) {
                f(&e.bucket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::{Acquire, Gcra};
    use mesh_core::TokenBucketConfig;
    use std::time::Duration;

    fn g() -> Gcra {
        Gcra::new(&TokenBucketConfig {
            max_tokens: 1,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(1),
        })
    }

    fn take(map: &DescriptorMap, key: &[u8], now: u64) -> bool {
        map.with_bucket(key, now, |b| {
            matches!(
                b.acquire(&g(), now, 0, &mut false, || true),
                Acquire::Admit { .. }
            )
        })
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let map = DescriptorMap::new(100);
        assert!(take(&map, b"alice", 10));
        assert!(!take(&map, b"alice", 10));
        assert!(take(&map, b"bob", 10), "bob is not limited by alice");
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn flood_of_distinct_keys_stays_bounded() {
        let map = DescriptorMap::new(1_000);
        for i in 0..50_000u32 {
            // All busy (each just took its only token): eviction must drop busy buckets.
            assert!(take(&map, &i.to_be_bytes(), 10));
            let cap = map.per_shard.load(Ordering::Relaxed);
            assert!(map.shards.iter().all(|s| s.read().unwrap().len() <= cap));
        }
        assert!(map.len() <= 1_000, "{}", map.len());
    }

    #[test]
    fn idle_buckets_go_first_then_the_closest_to_full() {
        let map = DescriptorMap::new(4);
        assert_eq!(map.shards.len(), 1);
        const S: u64 = 1_000_000_000;
        // t=0: "old" takes its token (full again at 1s); t=5s: three busy keys (full at 6s).
        assert!(take(&map, b"old", 0));
        for (i, k) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
            assert!(take(&map, k, 5 * S + i as u64));
        }
        // A new key at 5s: "old" is idle and goes; a, b, c keep their state.
        assert!(take(&map, b"new", 5 * S + 3));
        for k in [&b"a"[..], b"b", b"c", b"new"] {
            assert!(!take(&map, k, 5 * S + 4), "{k:?} kept its empty bucket");
        }
        // Everyone busy: "a" took its token first, so it is the closest to full and goes.
        assert!(take(&map, b"a2", 5 * S + 5));
        assert_eq!(map.len(), 4);
        assert!(!take(&map, b"b", 5 * S + 6), "b was not evicted");
        assert!(take(&map, b"a", 5 * S + 6), "a was evicted and starts full");
    }

    #[test]
    fn shrinking_the_bound_applies_on_next_insert() {
        let map = DescriptorMap::new(2_048);
        assert_eq!(map.shards.len(), 64);
        for i in 0..2_048u32 {
            take(&map, &i.to_be_bytes(), 0);
        }
        map.set_max(64);
        for i in 10_000..14_000u32 {
            take(&map, &i.to_be_bytes(), 0);
        }
        assert!(map.len() <= 64, "{}", map.len());
    }
}
