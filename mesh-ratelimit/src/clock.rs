//! The limiter's time source: monotonic nanoseconds since the clock was made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the limiter reads the time. Cheap to clone; all clones read the same time.
///
/// - [`Clock::system`] (the default): the CPU's invariant TSC through `quanta` (a few ns; the
///   OS monotonic clock where there is no such TSC);
/// - [`Clock::tokio`]: `tokio::time::Instant`, which follows tokio's paused time in tests;
/// - [`Clock::manual`]: a hand-driven clock for tests and benchmarks.
///
/// An enum rather than a trait object: the hot path branches on a predictable tag instead of an
/// indirect call.
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    System { clock: quanta::Clock, base: u64 },
    Tokio(tokio::time::Instant),
    Manual(Arc<AtomicU64>),
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The fastest monotonic clock of the machine. `quanta` reads the TSC directly (~5x cheaper
    /// than `std::time::Instant::now`, a vDSO `clock_gettime`, which was most of the cost of an
    /// admitted request) and falls back to the OS clock without an invariant TSC. The first
    /// call in a process calibrates the TSC (a few milliseconds): make clocks off the data path.
    pub fn system() -> Self {
        let clock = quanta::Clock::new();
        let base = clock.raw();
        Self(Source::System { clock, base })
    }

    /// tokio's clock: under `#[tokio::test(start_paused = true)]` the limiter sees paused time
    /// and wait mode's sleeps auto-advance it. Create it inside the runtime.
    pub fn tokio() -> Self {
        Self(Source::Tokio(tokio::time::Instant::now()))
    }

    /// A clock that moves only when told to, and its handle.
    pub fn manual() -> (Self, ManualClock) {
        let cell = Arc::new(AtomicU64::new(0));
        (Self(Source::Manual(Arc::clone(&cell))), ManualClock(cell))
    }

    /// Nanoseconds since the clock was made.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        let elapsed = match &self.0 {
            Source::System { clock, base } => return clock.delta_as_nanos(*base, clock.raw()),
            Source::Tokio(base) => tokio::time::Instant::now().duration_since(*base),
            Source::Manual(cell) => return cell.load(Ordering::Relaxed),
        };
        // u64 nanoseconds last 584 years.
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The handle that moves a [`Clock::manual`] clock.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(by, Ordering::Relaxed);
    }

    /// The current reading, in nanoseconds.
    pub fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let (clock, hand) = Clock::manual();
        assert_eq!(clock.now_nanos(), 0);
        hand.advance(Duration::from_millis(3));
        assert_eq!(clock.now_nanos(), 3_000_000);
        assert_eq!(clock.clone().now_nanos(), hand.now_nanos());
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(clock.now_nanos(), 2_000_000_000);
    }

    #[test]
    fn system_clock_is_monotonic_and_in_nanoseconds() {
        let clock = Clock::system();
        let start = std::time::Instant::now();
        let a = clock.now_nanos();
        std::thread::sleep(Duration::from_millis(20));
        let b = clock.now_nanos();
        let real = start.elapsed();
        assert!(b >= a);
        let measured = Duration::from_nanos(b - a);
        assert!(measured >= Duration::from_millis(19), "{measured:?}");
        assert!(
            measured <= real + Duration::from_millis(1),
            "{measured:?} > {real:?}"
        );
    }
}
