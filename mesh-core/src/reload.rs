//! The `Reload` contract and the hot-swappable `Shared<T>` cell.

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::ValidationError;

/// A live-config sink: what the xDS client (or a static loader) feeds.
///
/// The contract every implementation keeps:
/// 1. validate `update` completely (and compile whatever the data path needs) *before* touching
///    the live state;
/// 2. on success, make the new state visible with one atomic swap, so requests in flight finish
///    on the state they started with and new ones see the new state;
/// 3. on failure, return a [`ReloadError`] naming the resource and the reason, and leave the
///    previous state serving untouched.
///
/// `reload` is called off the data path (from the config task), so it may allocate and compile.
///
/// Validation happens once per side: a sink may implement `Reload<Checked<T>>` (see
/// [`Checked`](crate::Checked)) for input that was validated on its way in (the xDS client's
/// conversion produces `Checked` resources) and skip step 1's re-check there, keeping it in its
/// `Reload<T>` for every other caller.
pub trait Reload<T>: Send + Sync {
    /// Validates `update` and, if valid, swaps it in atomically.
    fn reload(&self, update: T) -> Result<(), ReloadError>;
}

impl<T, R: Reload<T> + ?Sized> Reload<T> for Arc<R> {
    fn reload(&self, update: T) -> Result<(), ReloadError> {
        (**self).reload(update)
    }
}

/// A sink fed one resource at a time (each added or changed `T`), which must therefore also be
/// told when a resource goes away: otherwise what it was fed would linger after the control
/// plane removed it (an endpoint set of a deleted cluster, say). The xDS client calls
/// [`remove`](Self::remove) for every removed name once the rest of the update was accepted.
pub trait ReloadEach<T>: Reload<T> {
    /// Forgets the resource named `name`. Unknown names are not an error (the sink may never
    /// have been fed that resource).
    fn remove(&self, name: &str) -> Result<(), ReloadError>;
}

impl<T, R: ReloadEach<T> + ?Sized> ReloadEach<T> for Arc<R> {
    fn remove(&self, name: &str) -> Result<(), ReloadError> {
        (**self).remove(name)
    }
}

/// Why a [`Reload`] refused an update. The previous state keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?} rejected: {reason}")]
pub struct ReloadError {
    /// The kind of resource (`route_configuration`, `cluster`, `cluster_load_assignment`, ...).
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// Why it was refused; for validation failures, the field path and the reason.
    pub reason: String,
}

impl ReloadError {
    /// A refusal for any reason.
    pub fn new(
        kind: impl Into<String>,
        name: impl Into<String>,
        reason: impl fmt::Display,
    ) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            reason: reason.to_string(),
        }
    }

    /// A refusal because validation failed.
    pub fn invalid(kind: impl Into<String>, name: impl Into<String>, err: ValidationError) -> Self {
        Self::new(kind, name, err)
    }
}

/// A hot-swappable value: the data path reads it with one atomic load and no lock, and the
/// config path replaces it whole.
///
/// Cloning a `Shared` clones the handle: every clone sees the same current value.
pub struct Shared<T> {
    cell: Arc<ArcSwap<T>>,
}

impl<T> Shared<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Self::from_arc(Arc::new(value))
    }

    /// A cell holding an already shared `value`.
    pub fn from_arc(value: Arc<T>) -> Self {
        Self {
            cell: Arc::new(ArcSwap::new(value)),
        }
    }

    /// The current value, for a short read on the data path (one atomic load, no refcount
    /// traffic in the common case). Hold the guard only for the duration of a request step.
    pub fn load(&self) -> Guard<Arc<T>> {
        self.cell.load()
    }

    /// The current value as an owned `Arc`, for holding across awaits (a request in flight keeps
    /// the config it started with).
    pub fn load_full(&self) -> Arc<T> {
        self.cell.load_full()
    }

    /// Replaces the value; readers see either the old or the new one, never a mix.
    pub fn store(&self, value: T) {
        self.cell.store(Arc::new(value));
    }

    /// Replaces the value with an already shared one, returning the previous value.
    pub fn swap(&self, value: Arc<T>) -> Arc<T> {
        self.cell.swap(value)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Shared").field(&**self.cell.load()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that accepts only even numbers, as a stand-in for a layer.
    struct Evens(Shared<u64>);

    impl Reload<u64> for Evens {
        fn reload(&self, update: u64) -> Result<(), ReloadError> {
            if update % 2 == 1 {
                return Err(ReloadError::new("number", update.to_string(), "odd"));
            }
            self.0.store(update);
            Ok(())
        }
    }

    #[test]
    fn failed_reload_keeps_previous_state() {
        let sink = Arc::new(Evens(Shared::new(2)));
        sink.reload(4).unwrap();
        assert_eq!(**sink.0.load(), 4);
        let err = sink.reload(5).unwrap_err();
        assert_eq!(err.to_string(), "number \"5\" rejected: odd");
        assert_eq!(**sink.0.load(), 4);
    }

    #[test]
    fn clones_share_one_cell_and_readers_keep_their_snapshot() {
        let a = Shared::new(vec![1, 2, 3]);
        let b = a.clone();
        let held = a.load_full();
        b.store(vec![9]);
        assert_eq!(
            *held,
            vec![1, 2, 3],
            "an in-flight reader keeps what it loaded"
        );
        assert_eq!(**a.load(), vec![9]);
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_value() {
        // Each stored value is a vector whose elements are all equal; a torn read would mix them.
        let shared = Shared::new(vec![0u32; 64]);
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (s, stop) = (shared.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    // At least some reads even if the writer finishes first; bounded either way.
                    while reads < 10_000 || (!stop.load(Ordering::Relaxed) && reads < 5_000_000) {
                        let v = s.load();
                        assert!(v.iter().all(|x| *x == v[0]));
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 1..=2_000u32 {
            shared.store(vec![i; 64]);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(shared.load()[0], 2_000);
    }
}
