//! One rule's live state: its bucket (or descriptor buckets) and its waiting count.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use http::Request;
use mesh_core::{DescriptorSource, TokenBucketConfig};

use crate::descriptor::{DescriptorMap, Source};
use crate::gcra::{Acquire, Bucket, Gcra};

/// A rule's live state: what a reload keeps when the rule's name and limit are unchanged.
#[derive(Debug)]
pub(crate) struct RuleState {
    pub(crate) name: Arc<str>,
    /// Identity for reloads: same bucket and same descriptor → same state.
    pub(crate) identity: (TokenBucketConfig, Option<DescriptorSource>),
    pub(crate) gcra: Gcra,
    pub(crate) buckets: Buckets,
    /// Requests currently held in wait mode.
    pub(crate) waiting: AtomicU32,
}

#[derive(Debug)]
pub(crate) enum Buckets {
    Single(Arc<Bucket>),
    Keyed {
        source: Source,
        /// Requests without the descriptor share this one.
        missing: Arc<Bucket>,
        map: DescriptorMap,
    },
}

/// Outcome of one rule: the acquisition, and the bucket when it must be held across a wait.
pub(crate) struct RuleOutcome {
    pub(crate) acquire: Acquire,
    pub(crate) held: Option<Arc<Bucket>>,
}

impl RuleState {
    pub(crate) fn new(
        name: &str,
        bucket: &TokenBucketConfig,
        descriptor: Option<&DescriptorSource>,
        max_descriptors: usize,
    ) -> Result<Self, String> {
        let buckets = match descriptor {
            None => Buckets::Single(Arc::default()),
            Some(src) => Buckets::Keyed {
                source: Source::new(src).ok_or_else(|| format!("bad descriptor {src:?}"))?,
                missing: Arc::default(),
                map: DescriptorMap::new(max_descriptors),
            },
        };
        Ok(Self {
            name: name.into(),
            identity: (bucket.clone(), descriptor.cloned()),
            gcra: Gcra::new(bucket),
            buckets,
            waiting: AtomicU32::new(0),
        })
    }

    /// Runs `f` on the request's bucket (creating a descriptor bucket if needed).
    fn with_bucket<B, R>(
        &self,
        req: &Request<B>,
        now: u64,
        f: impl FnOnce(&Arc<Bucket>) -> R,
    ) -> R {
        match &self.buckets {
            Buckets::Single(b) => f(b),
            Buckets::Keyed {
                source,
                missing,
                map,
            } => source.with_key(req, |key| match key {
                None => f(missing),
                Some(k) => map.with_bucket(k, now, f),
            }),
        }
    }

    pub(crate) fn acquire<B>(&self, req: &Request<B>, now: u64, mode: &Mode) -> RuleOutcome {
        let (max_wait, max_waiting) = match *mode {
            Mode::Reject => (0, 0),
            Mode::Wait {
                max_wait,
                max_waiting,
            } => (max_wait, max_waiting),
        };
        let mut claimed = false;
        let out = self.with_bucket(req, now, |b| {
            let acquire = b.acquire(&self.gcra, now, max_wait, &mut claimed, || {
                // The waiting bound: claim a slot before committing a reservation.
                if self.waiting.fetch_add(1, Ordering::AcqRel) < max_waiting {
                    true
                } else {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    false
                }
            });
            let held = match acquire {
                Acquire::Admit { wait, .. } if wait > 0 => Some(Arc::clone(b)),
                _ => None,
            };
            RuleOutcome { acquire, held }
        });
        if claimed && out.held.is_none() {
            // A retry of the CAS found a token without waiting, or none within max_wait.
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        out
    }

    /// Gives back the token this request took (a later rule refused it).
    pub(crate) fn refund<B>(&self, req: &Request<B>) {
        match &self.buckets {
            Buckets::Single(b) => b.refund(&self.gcra),
            Buckets::Keyed {
                source,
                missing,
                map,
            } => source.with_key(req, |key| match key {
                None => missing.refund(&self.gcra),
                Some(k) => map.with_existing(k, |b| b.refund(&self.gcra)),
            }),
        }
    }

    /// Descriptor buckets held now (0 for a single-bucket rule).
    pub(crate) fn descriptor_count(&self) -> usize {
        match &self.buckets {
            Buckets::Single(_) => 0,
            Buckets::Keyed { map, .. } => map.len(),
        }
    }
}

/// What a rule does over its limit (nanoseconds for the wait).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Refuse at once.
    Reject,
    /// Hold up to `max_wait`, at most `max_waiting` at once.
    Wait { max_wait: u64, max_waiting: u32 },
}

impl RuleState {
    /// The request's bucket if it exists (to hold it across a wait).
    pub(crate) fn with_existing_bucket<B>(&self, req: &Request<B>) -> Option<Arc<Bucket>> {
        match &self.buckets {
            Buckets::Single(b) => Some(Arc::clone(b)),
            Buckets::Keyed {
                source,
                missing,
                map,
            } => source.with_key(req, |key| match key {
                None => Some(Arc::clone(missing)),
                Some(k) => {
                    let mut out = None;
                    map.with_existing(k, |b| out = Some(Arc::clone(b)));
                    out
                }
            }),
        }
    }
}
