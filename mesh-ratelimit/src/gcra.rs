//! The token bucket as GCRA (generic cell rate algorithm) in one `AtomicU64`.
//!
//! A bucket is just its *theoretical arrival time* (TAT): the instant at which it would be full
//! again. Admitting a request moves the TAT one emission interval `t` later; a request conforms
//! while the TAT it would leave is at most `tau = max_tokens * t` ahead of now. That is exactly a
//! token bucket of capacity `max_tokens` refilled at one token per `t` (refilled smoothly rather
//! than in Envoy's discrete `tokens_per_fill` steps; the long-run rate and the burst are the
//! same). One compare-and-swap admits; a rejection only loads, so a flood of rejected requests
//! never writes the shared cache line.
//!
//! Wait mode *reserves* a future token by moving the TAT beyond `now + tau`, up to `max_wait`:
//! waiters queue in arrival order without a lock and without polling. A cancelled reservation
//! gives its token back ([`Bucket::refund`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_core::TokenBucketConfig;

use crate::clock::Clock;

/// The parameters of a bucket, in clock nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Emission interval: nanoseconds per token (at least 1).
    pub(crate) t: u64,
    /// Burst tolerance: `max_tokens * t`.
    pub(crate) tau: u64,
    /// Capacity, for the `x-ratelimit-limit` header.
    pub(crate) max_tokens: u32,
}

impl Gcra {
    pub(crate) fn new(cfg: &TokenBucketConfig) -> Self {
        let interval = u64::try_from(cfg.fill_interval.as_nanos()).unwrap_or(u64::MAX);
        // Validation guarantees tokens_per_fill >= 1; a sub-nanosecond interval means "as fast
        // as the clock can tell", so clamp to 1ns rather than 0 (which would never limit).
        let t = (interval / u64::from(cfg.tokens_per_fill.max(1))).max(1);
        let max_tokens = cfg.max_tokens.max(1);
        Self {
            t,
            tau: t.saturating_mul(u64::from(max_tokens)),
            max_tokens,
        }
    }
}

/// What one acquisition decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquire {
    /// A token was taken (or reserved): go after `wait` nanoseconds (0 = now).
    Admit {
        /// How long until the reserved token is due.
        wait: u64,
        /// Whole tokens left after this one.
        remaining: u32,
        /// Nanoseconds until the bucket is full again.
        reset: u64,
    },
    /// No token within the allowed wait.
    Reject {
        /// Nanoseconds until a token is free.
        retry_after: u64,
        /// Nanoseconds until the bucket is full again.
        reset: u64,
    },
}

/// One token bucket. Aligned to a cache line so that two hot buckets never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Bucket {
    /// Theoretical arrival time in clock nanoseconds; 0 (or anything <= now) means full.
    tat: AtomicU64,
}

impl Bucket {
    /// Takes a token at `now`, or reserves one due within `max_wait` nanoseconds.
    ///
    /// `before_reserve` runs once before the first attempt to commit a reservation that must
    /// wait (wait mode uses it to claim a waiting slot); if it returns false the request is
    /// rejected. It returns whether the slot was claimed via `claimed` so the caller can give it
    /// back when the outcome needs no wait after all.
    pub(crate) fn acquire(
        &self,
        g: &Gcra,
        now: u64,
        max_wait: u64,
        claimed: &mut bool,
        mut before_reserve: impl FnMut() -> bool,
    ) -> Acquire {
        let mut cur = self.tat.load(Ordering::Acquire);
        loop {
            let new_tat = cur.max(now).saturating_add(g.t);
            // The earliest instant at which this request conforms.
            let allow_at = new_tat.saturating_sub(g.tau);
            let wait = allow_at.saturating_sub(now);
            if wait > max_wait {
                return Acquire::Reject {
                    retry_after: wait.max(1),
                    reset: cur.saturating_sub(now),
                };
            }
            if wait > 0 && !*claimed {
                if !before_reserve() {
                    return Acquire::Reject {
                        retry_after: wait,
                        reset: cur.saturating_sub(now),
                    };
                }
                *claimed = true;
            }
            match self
                .tat
                .compare_exchange_weak(cur, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let left = (now.saturating_add(g.tau)).saturating_sub(new_tat) / g.t;
                    return Acquire::Admit {
                        wait,
                        remaining: u32::try_from(left).unwrap_or(u32::MAX),
                        reset: new_tat.saturating_sub(now),
                    };
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back one token taken earlier (a later rule rejected, or a waiter was cancelled).
    pub(crate) fn refund(&self, g: &Gcra) {
        // Any TAT at or below now means "full", so saturating at 0 loses nothing.
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(g.t))
            });
    }

    /// Whether the bucket is full at `now`, i.e. indistinguishable from a fresh one (so it may be
    /// evicted without losing state).
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }

    /// The TAT, for choosing an eviction victim (the smallest is the closest to full).
    pub(crate) fn tat(&self) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }
}

/// A standalone token bucket on a [`Clock`]: the limiter's algorithm without the layer, for
/// code that rate-limits something other than HTTP requests (and for measuring the algorithm's
/// own cost). Lock-free: one atomic compare-and-swap per admission.
///
/// ```
/// use std::time::Duration;
/// use mesh_core::TokenBucketConfig;
/// use mesh_ratelimit::{Clock, TokenBucket};
///
/// let (clock, hand) = Clock::manual();
/// let bucket = TokenBucket::new(
///     &TokenBucketConfig { max_tokens: 2, tokens_per_fill: 1, fill_interval: Duration::from_secs(1) },
///     clock,
/// );
/// assert_eq!(bucket.try_acquire(), Ok(1));
/// assert_eq!(bucket.try_acquire(), Ok(0));
/// assert_eq!(bucket.try_acquire(), Err(Duration::from_secs(1)));
/// hand.advance(Duration::from_secs(1));
/// assert_eq!(bucket.try_acquire(), Ok(0));
/// ```
#[derive(Debug)]
pub struct TokenBucket {
    gcra: Gcra,
    bucket: Bucket,
    clock: Clock,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: &TokenBucketConfig, clock: Clock) -> Self {
        Self {
            gcra: Gcra::new(config),
            bucket: Bucket::default(),
            clock,
        }
    }

    /// Takes a token: `Ok(tokens left)`, or `Err(time until one is free)`.
    #[inline]
    pub fn try_acquire(&self) -> Result<u32, Duration> {
        let now = self.clock.now_nanos();
        match self
            .bucket
            .acquire(&self.gcra, now, 0, &mut false, || false)
        {
            Acquire::Admit { remaining, .. } => Ok(remaining),
            Acquire::Reject { retry_after, .. } => Err(nanos(retry_after)),
        }
    }
}

/// Nanoseconds to a `Duration`.
pub(crate) fn nanos(n: u64) -> Duration {
    Duration::from_nanos(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    fn cfg(max: u32, per_fill: u32, interval_ms: u64) -> Gcra {
        Gcra::new(&TokenBucketConfig {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(interval_ms),
        })
    }

    fn take(b: &Bucket, g: &Gcra, now: u64) -> Acquire {
        b.acquire(g, now, 0, &mut false, || true)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_reject_with_retry_after_of_one_interval() {
        let g = cfg(3, 1, 100);
        let b = Bucket::default();
        let now = 5_000 * MS;
        let left: Vec<u32> = (0..3)
            .map(|_| match take(&b, &g, now) {
                Acquire::Admit {
                    wait: 0, remaining, ..
                } => remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(left, [2, 1, 0]);
        match take(&b, &g, now) {
            Acquire::Reject { retry_after, reset } => {
                assert_eq!(retry_after, 100 * MS);
                assert_eq!(reset, 300 * MS, "full again after three intervals");
            }
            other => panic!("{other:?}"),
        }
        // One interval later exactly one token is back.
        assert!(matches!(
            take(&b, &g, now + 100 * MS),
            Acquire::Admit { .. }
        ));
        assert!(matches!(
            take(&b, &g, now + 100 * MS),
            Acquire::Reject { .. }
        ));
    }

    #[test]
    fn tokens_per_fill_sets_the_rate() {
        // 10 tokens per second = one per 100ms.
        let g = cfg(1, 10, 1000);
        assert_eq!(g.t, 100 * MS);
        assert_eq!(g.tau, 100 * MS);
    }

    #[test]
    fn reservation_waits_in_order_and_respects_max_wait() {
        let g = cfg(1, 1, 100);
        let b = Bucket::default();
        let now = 1_000 * MS;
        assert!(matches!(take(&b, &g, now), Acquire::Admit { wait: 0, .. }));
        let mut waits = Vec::new();
        for _ in 0..3 {
            let mut claimed = false;
            match b.acquire(&g, now, 250 * MS, &mut claimed, || true) {
                Acquire::Admit { wait, .. } => {
                    assert!(claimed);
                    waits.push(wait / MS);
                }
                Acquire::Reject { retry_after, .. } => waits.push(1_000_000 + retry_after / MS),
            }
        }
        assert_eq!(
            waits,
            [100, 200, 1_000_300],
            "the third would wait 300ms > 250ms"
        );
    }

    #[test]
    fn refused_waiting_slot_rejects_without_consuming() {
        let g = cfg(1, 1, 100);
        let b = Bucket::default();
        assert!(matches!(take(&b, &g, 0), Acquire::Admit { .. }));
        let r = b.acquire(&g, 0, 1_000 * MS, &mut false, || false);
        assert_eq!(
            r,
            Acquire::Reject {
                retry_after: 100 * MS,
                reset: 100 * MS
            }
        );
        assert!(matches!(take(&b, &g, 100 * MS), Acquire::Admit { .. }));
    }

    #[test]
    fn refund_returns_a_token() {
        let g = cfg(1, 1, 100);
        let b = Bucket::default();
        assert!(matches!(take(&b, &g, 50 * MS), Acquire::Admit { .. }));
        assert!(matches!(take(&b, &g, 50 * MS), Acquire::Reject { .. }));
        b.refund(&g);
        assert!(b.is_idle(50 * MS));
        assert!(matches!(take(&b, &g, 50 * MS), Acquire::Admit { .. }));
    }

    #[test]
    fn many_threads_never_overadmit() {
        // Frozen time: exactly max_tokens admissions, whatever the interleaving.
        let g = cfg(1_000, 1, 1_000);
        let b = Arc::new(Bucket::default());
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, admitted) = (Arc::clone(&b), Arc::clone(&admitted));
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Acquire::Admit { .. } = take(&b, &g, 7 * MS) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
    }
}
