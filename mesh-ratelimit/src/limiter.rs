//! The compiled rules, the per-request check, and reloading that keeps unchanged buckets.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use http::Request;
use mesh_core::extensions::MatchedRoute;
use mesh_core::{
    MeshError, RateLimitConfig, RateLimitMode, RateLimitScope, Reload, ReloadError, Validate,
};

use crate::clock::Clock;
use crate::gcra::{nanos, Acquire, Bucket};
use crate::rule::{Buckets, Mode, RuleState};

/// What the `x-ratelimit-*` headers report: the tightest rule that applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateInfo {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Nanoseconds until the bucket is full again.
    pub(crate) reset: u64,
}

#[derive(Debug)]
struct Rule {
    state: Arc<RuleState>,
    mode: Mode,
}

/// One compiled `RateLimitConfig`: what the data path loads with one atomic load.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    rules: Vec<Rule>,
    /// Indices of listener-scoped rules.
    listener: Vec<usize>,
    /// Indices of route-scoped rules, by route name. foldhash: the data path hashes the route's
    /// name once per request, and SipHash was about a third of an admitted request's check.
    routes: HashMap<Box<str>, Vec<usize>, foldhash::fast::RandomState>,
}

impl Snapshot {
    fn build(cfg: &RateLimitConfig, old: &Snapshot) -> Result<Self, String> {
        let mut snap = Snapshot::default();
        for (i, r) in cfg.rules.iter().enumerate() {
            let identity = (r.limit.token_bucket.clone(), r.limit.descriptor.clone());
            let kept = old
                .rules
                .iter()
                .map(|o| &o.state)
                .find(|s| *s.name == *r.name && s.identity == identity);
            let state = match kept {
                Some(s) => {
                    if let Buckets::Keyed { map, .. } = &s.buckets {
                        map.set_max(cfg.max_descriptors);
                    }
                    Arc::clone(s)
                }
                None => Arc::new(RuleState::new(
                    &r.name,
                    &r.limit.token_bucket,
                    r.limit.descriptor.as_ref(),
                    cfg.max_descriptors,
                )?),
            };
            let mode = match &r.limit.mode {
                RateLimitMode::Reject => Mode::Reject,
                RateLimitMode::Wait {
                    max_wait,
                    max_waiting,
                } => Mode::Wait {
                    max_wait: u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX),
                    max_waiting: *max_waiting,
                },
            };
            snap.rules.push(Rule { state, mode });
            match &r.scope {
                RateLimitScope::Listener => snap.listener.push(i),
                RateLimitScope::Route(name) => {
                    snap.routes.entry(name.as_str().into()).or_default().push(i)
                }
            }
        }
        Ok(snap)
    }

    /// The rules that apply to `req`, in config order within each scope.
    fn applicable<'a, B>(&'a self, req: &Request<B>) -> impl Iterator<Item = &'a Rule> + 'a {
        let route: &[usize] = if self.routes.is_empty() {
            &[]
        } else {
            req.extensions()
                .get::<MatchedRoute>()
                .and_then(|m| self.routes.get(m.route.name.as_str()))
                .map_or(&[], Vec::as_slice)
        };
        self.listener.iter().chain(route).map(|&i| &self.rules[i])
    }
}

/// What each service clone reads the rules through.
pub(crate) type SnapshotCache = arc_swap::Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>;

/// What the limiter decided for one request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Go now; `info` is the tightest rule's state (`None` when no rule applied).
    Go { info: Option<RateInfo> },
    /// Go after `wait` nanoseconds; the guard gives the tokens back if the wait is cancelled.
    Wait {
        wait: u64,
        guard: WaitGuard,
        info: Option<RateInfo>,
    },
    /// Refused (boxed: the admitted path should not move a `MeshError`-sized value around).
    Reject(Box<(MeshError, RateInfo)>),
}

/// Tokens held by a waiting request, returned if it is dropped before its turn.
#[derive(Debug)]
pub(crate) struct WaitGuard {
    held: Vec<(Arc<RuleState>, Arc<Bucket>, bool)>,
    done: bool,
}

impl WaitGuard {
    /// The wait is over and the request goes on: keep the tokens, free the waiting slots.
    pub(crate) fn complete(mut self) {
        self.done = true;
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        for (rule, bucket, counted) in &self.held {
            if !self.done {
                bucket.refund(&rule.gcra);
            }
            if *counted {
                rule.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

fn tighter(info: Option<RateInfo>, next: RateInfo) -> Option<RateInfo> {
    match info {
        Some(i) if i.remaining <= next.remaining => Some(i),
        _ => Some(next),
    }
}

/// The shared state behind every clone of a layer: the current snapshot and the clock.
#[derive(Debug)]
pub(crate) struct Limiter {
    /// The current rules. Each service clone reads it through an `arc_swap::Cache`: one plain
    /// atomic load per request while the config is unchanged (a `Shared::load` costs two
    /// read-modify-writes, a third of an admitted request).
    snapshot: Arc<ArcSwap<Snapshot>>,
    clock: Clock,
    /// Serialises reloads (off the data path) so two never build from the same old snapshot.
    reloading: Mutex<()>,
}

impl Limiter {
    pub(crate) fn new(cfg: RateLimitConfig, clock: Clock) -> Result<Self, ReloadError> {
        let limiter = Self {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            clock,
            reloading: Mutex::new(()),
        };
        limiter.reload(cfg)?;
        Ok(limiter)
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The live state of rule `name`, for inspection.
    pub(crate) fn rule(&self, name: &str) -> Option<Arc<RuleState>> {
        let snap = self.snapshot.load();
        let rule = snap.rules.iter().find(|r| *r.state.name == *name)?;
        Some(Arc::clone(&rule.state))
    }

    /// A per-service cache of the current snapshot.
    pub(crate) fn cache(&self) -> SnapshotCache {
        SnapshotCache::new(Arc::clone(&self.snapshot))
    }

    /// Checks `req` against every rule of `snap` that applies, taking one token from each, or
    /// none.
    pub(crate) fn check<B>(&self, snap: &Snapshot, req: &Request<B>) -> Decision {
        if snap.rules.is_empty() {
            return Decision::Go { info: None };
        }
        // Read the clock only once a rule applies (route rules of other routes cost nothing).
        let mut now = None;
        let mut info = None;
        let mut wait = 0u64;
        // Only requests that must wait allocate: the buckets they hold across the wait.
        let mut held: Vec<(Arc<RuleState>, Arc<Bucket>, bool)> = Vec::new();
        for (pos, rule) in snap.applicable(req).enumerate() {
            let now = *now.get_or_insert_with(|| self.clock.now_nanos());
            let out = rule.state.acquire(req, now, &rule.mode);
            let limit = rule.state.gcra.max_tokens;
            match out.acquire {
                Acquire::Admit {
                    wait: w,
                    remaining,
                    reset,
                } => {
                    info = tighter(
                        info,
                        RateInfo {
                            limit,
                            remaining,
                            reset,
                        },
                    );
                    if let Some(bucket) = out.held {
                        wait = wait.max(w);
                        held.push((Arc::clone(&rule.state), bucket, true));
                    }
                }
                Acquire::Reject { retry_after, reset } => {
                    // All or nothing: give back what the earlier rules took.
                    for earlier in snap.applicable(req).take(pos) {
                        if !held.iter().any(|(s, _, _)| Arc::ptr_eq(s, &earlier.state)) {
                            earlier.state.refund(req);
                        }
                    }
                    drop(WaitGuard { held, done: false });
                    let error = MeshError::RateLimited {
                        rule: rule.state.name.to_string(),
                        retry_after: nanos(retry_after),
                    };
                    let info = RateInfo {
                        limit,
                        remaining: 0,
                        reset: reset.max(retry_after),
                    };
                    return Decision::Reject(Box::new((error, info)));
                }
            }
        }
        if held.is_empty() {
            return Decision::Go { info };
        }
        // The immediate tokens go back too if the waiter is cancelled.
        for rule in snap.applicable(req) {
            if !held.iter().any(|(s, _, _)| Arc::ptr_eq(s, &rule.state)) {
                if let Some(b) = rule.state.with_existing_bucket(req) {
                    held.push((Arc::clone(&rule.state), b, false));
                }
            }
        }
        Decision::Wait {
            wait,
            guard: WaitGuard { held, done: false },
            info,
        }
    }
}

impl Reload<RateLimitConfig> for Limiter {
    fn reload(&self, update: RateLimitConfig) -> Result<(), ReloadError> {
        const KIND: &str = "rate_limit_config";
        update
            .validate()
            .map_err(|e| ReloadError::invalid(KIND, "local_rate_limit", e))?;
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.snapshot.load_full();
        let snap = Snapshot::build(&update, &old)
            .map_err(|e| ReloadError::new(KIND, "local_rate_limit", e))?;
        self.snapshot.store(Arc::new(snap));
        Ok(())
    }
}
