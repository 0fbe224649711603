//! The endpoint set of a cluster as the data path sees it: priority levels, locality buckets and
//! the pickers, all precomputed at rebuild (EDS update or health change) and swapped in whole.
//!
//! Envoy's model: each priority level gets a share of the traffic from its health
//! (`min(100, overprovisioning × healthy / total)`), lower priorities take what higher ones cannot;
//! a level whose healthy share is under the panic threshold balances across all its hosts; within
//! a level, traffic is split by locality weight (when the cluster is locality-weighted) or goes
//! to the local zone first (when the manager knows its own locality and that zone is healthy).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::{ClusterLoadAssignment, Endpoint, LbPolicy, Locality};

use crate::connector::EndpointMap;
use crate::endpoint::EndpointState;
use crate::policy::{bounded, mix64, random_u64, Picker};

/// What a rebuild needs besides the endpoints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BuildOptions<'a> {
    pub(crate) policy: &'a LbPolicy,
    pub(crate) panic_threshold: f64,
    pub(crate) locality_weighted: bool,
    pub(crate) local: Option<&'a Locality>,
}

/// The precomputed picking structure of one cluster.
#[derive(Debug, Default)]
pub struct EndpointSet {
    levels: Box<[Level]>,
    /// Cumulative traffic share of the levels, in percent (the last is 100).
    level_cum: Box<[u32]>,
    total: usize,
    healthy: usize,
    /// The only bucket when there is one level with one bucket (the common case), moved out of
    /// its level so that a pick reads this set and the hosts, not two more arrays between.
    single: Option<Bucket>,
}

#[derive(Debug)]
struct Level {
    priority: u32,
    panic: bool,
    buckets: Box<[Bucket]>,
    bucket_cum: Box<[u64]>,
}

#[derive(Debug)]
struct Bucket {
    hosts: Box<[Arc<EndpointState>]>,
    picker: Picker,
}

impl EndpointSet {
    /// Picks an endpoint; `hash` is the request's consistent-hash key when it has one.
    /// `None` when no endpoint may take traffic. No allocation, no lock.
    #[inline]
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<EndpointState>> {
        if let Some(bucket) = &self.single {
            return bucket.hosts.get(bucket.picker.pick(&bucket.hosts, hash));
        }
        let level = match self.levels.len() {
            0 => return None,
            1 => &self.levels[0],
            _ => {
                let r = bounded(level_key(hash) as u32, 100) as u32;
                let i = self.level_cum.partition_point(|&c| c <= r);
                self.levels.get(i).unwrap_or(&self.levels[0])
            }
        };
        let bucket = if level.buckets.len() == 1 {
            level.buckets.first()?
        } else {
            let total = level.bucket_cum.last().copied().unwrap_or(1);
            let r = ((u128::from(level_key(hash) >> 32) * u128::from(total)) >> 32) as u64;
            let i = level.bucket_cum.partition_point(|&c| c <= r);
            level.buckets.get(i).unwrap_or(&level.buckets[0])
        };
        let i = bucket.picker.pick(&bucket.hosts, hash);
        bucket.hosts.get(i)
    }

    /// Number of endpoints in the set.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the set has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of endpoints that are healthy (EDS, health checks, outlier detection).
    pub fn healthy(&self) -> usize {
        self.healthy
    }

    /// Whether some level takes traffic in panic mode (balancing across unhealthy hosts too).
    pub fn in_panic(&self) -> bool {
        self.levels.iter().any(|l| l.panic)
    }

    /// The traffic share of each priority that takes traffic, in percent.
    pub fn priority_loads(&self) -> Vec<(u32, u32)> {
        let mut prev = 0;
        self.levels
            .iter()
            .zip(self.level_cum.iter())
            .map(|(l, &c)| {
                let share = c - prev;
                prev = c;
                (l.priority, share)
            })
            .collect()
    }

    /// Builds the set from an assignment and the endpoints' live states (which must hold
    /// every address of the assignment).
    pub(crate) fn build(
        cla: &ClusterLoadAssignment,
        states: &EndpointMap,
        opts: BuildOptions<'_>,
    ) -> Self {
        Self::build_with(cla, |e| states.get(&e.address), opts)
    }

    /// Builds the set with the state of each endpoint of the assignment from `state_of`, called
    /// once per endpoint in the assignment's order (so a caller that already looked the states
    /// up can hand them over without a second lookup each).
    pub(crate) fn build_with<'s>(
        cla: &ClusterLoadAssignment,
        mut state_of: impl FnMut(&Endpoint) -> Option<&'s Arc<EndpointState>>,
        opts: BuildOptions<'_>,
    ) -> Self {
        // 0 only comes from `Default` (validation refuses it): read it as Envoy's default.
        let overprov = match cla.overprovisioning_factor {
            0 => 140,
            f => u64::from(f),
        };
        // Priority → its locality groups.
        let mut by_priority: BTreeMap<u32, Vec<Group<'_>>> = BTreeMap::new();
        let (mut total, mut healthy) = (0, 0);
        for g in &cla.endpoints {
            // Borrowed states: only the hosts that end up in a bucket are cloned (once).
            let hosts: Vec<_> = g
                .lb_endpoints
                .iter()
                .filter_map(|e| state_of(e).map(|s| (s, e.weight.max(1))))
                .map(|(s, w)| (s, w, s.is_healthy()))
                .collect();
            total += hosts.len();
            healthy += hosts.iter().filter(|h| h.2).count();
            by_priority.entry(g.priority).or_default().push((
                &g.locality,
                g.load_balancing_weight.unwrap_or(1),
                hosts,
            ));
        }
        // Degraded endpoints take traffic only when no healthy one is left anywhere: then they
        // count as the healthy ones (before falling back to panic over everything).
        if healthy == 0 {
            for host in by_priority
                .values_mut()
                .flat_map(|gs| gs.iter_mut())
                .flat_map(|g| g.2.iter_mut())
            {
                host.2 = host.0.is_degraded_usable();
                healthy += usize::from(host.2);
            }
        }
        // Per priority: health percentage (capped at 100) and panic flag.
        let stats: Vec<(u32, u64, bool)> = by_priority
            .iter()
            .map(|(&p, groups)| {
                let t: usize = groups.iter().map(|g| g.2.len()).sum();
                let h: usize = groups
                    .iter()
                    .map(|g| g.2.iter().filter(|x| x.2).count())
                    .sum();
                let health = if t == 0 {
                    0
                } else {
                    (overprov * h as u64 / t as u64).min(100)
                };
                let healthy_pct = if t == 0 {
                    0.0
                } else {
                    h as f64 * 100.0 / t as f64
                };
                (p, health, t > 0 && healthy_pct < opts.panic_threshold)
            })
            .collect();
        let loads = priority_loads(&stats.iter().map(|s| s.1).collect::<Vec<_>>());
        let mut levels = Vec::new();
        let mut level_cum = Vec::new();
        let mut cum = 0;
        for ((p, _, panic), load) in stats.iter().zip(loads) {
            if load == 0 {
                continue;
            }
            // With no healthy host anywhere, all traffic goes to the first level in panic,
            // unless the threshold is 0, which disables panic mode (Envoy: no host, 503).
            let groups = &by_priority[p];
            let any_healthy = groups.iter().any(|g| g.2.iter().any(|x| x.2));
            let panic = *panic || (!any_healthy && opts.panic_threshold > 0.0);
            let Some(level) = build_level(*p, panic, groups, overprov, opts) else {
                continue;
            };
            cum += load;
            levels.push(level);
            level_cum.push(cum);
        }
        // Rounding (or a level without hosts) may leave the sum short of 100: the last level
        // takes the rest.
        if let Some(last) = level_cum.last_mut() {
            *last = 100;
        }
        let single = match levels.as_mut_slice() {
            [level] if level.buckets.len() == 1 => {
                let mut buckets = std::mem::take(&mut level.buckets).into_vec();
                buckets.pop()
            }
            _ => None,
        };
        Self {
            levels: levels.into_boxed_slice(),
            level_cum: level_cum.into_boxed_slice(),
            total,
            healthy,
            single,
        }
    }
}

/// The key that chooses level and bucket: from the request hash (so a hashed request always
/// lands in the same place), or random.
#[inline]
fn level_key(hash: Option<u64>) -> u64 {
    hash.map_or_else(random_u64, mix64)
}

/// Envoy's priority load: each level takes its health share of what is left, normalised so the
/// shares sum to 100 when the total health is under 100. All to the first level when nothing
/// is healthy.
fn priority_loads(health: &[u64]) -> Vec<u32> {
    let normalized: u64 = health.iter().sum::<u64>().min(100);
    if normalized == 0 {
        return health
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { 100 } else { 0 })
            .collect();
    }
    let mut remaining = 100u64;
    health
        .iter()
        .map(|&h| {
            let l = (h * 100 / normalized).min(remaining);
            remaining -= l;
            l as u32
        })
        .collect()
}

/// A locality group: (locality, weight, [(state, endpoint weight, healthy)]).
type Group<'a> = (&'a Locality, u32, Vec<(&'a Arc<EndpointState>, u32, bool)>);

/// A host with its weight.
type Weighted = (Arc<EndpointState>, u32);

fn build_level(
    priority: u32,
    panic: bool,
    groups: &[Group<'_>],
    overprov: u64,
    opts: BuildOptions<'_>,
) -> Option<Level> {
    let chosen = |g: &Group<'_>| -> Vec<Weighted> {
        g.2.iter()
            .filter(|x| panic || x.2)
            .map(|x| (x.0.clone(), x.1))
            .collect()
    };
    let health = |g: &[&Group<'_>]| -> u64 {
        let t: usize = g.iter().map(|g| g.2.len()).sum();
        let h: usize = g.iter().map(|g| g.2.iter().filter(|x| x.2).count()).sum();
        if panic {
            100
        } else if t == 0 {
            0
        } else {
            (overprov * h as u64 / t as u64).min(100)
        }
    };
    // (share, hosts) per bucket.
    let mut buckets: Vec<(u64, Vec<Weighted>)> = Vec::new();
    if opts.locality_weighted && groups.len() > 1 {
        for g in groups {
            let share = u64::from(g.1) * health(&[g]);
            buckets.push((share, chosen(g)));
        }
    } else if let Some(local) = opts.local {
        let (mine, rest): (Vec<&Group<'_>>, Vec<&Group<'_>>) =
            groups.iter().partition(|g| g.0 == local);
        let local_health = health(&mine);
        let flat = |gs: &[&Group<'_>]| gs.iter().flat_map(|g| chosen(g)).collect::<Vec<_>>();
        buckets.push((local_health, flat(&mine)));
        buckets.push((100 - local_health, flat(&rest)));
    } else {
        buckets.push((1, groups.iter().flat_map(chosen).collect()));
    }
    buckets.retain(|b| b.0 > 0 && !b.1.is_empty());
    if buckets.is_empty() {
        // Every bucket lost its share (e.g. a local zone that is all the level has): keep the
        // hosts in one bucket rather than drop a level that has traffic.
        let all: Vec<_> = groups.iter().flat_map(chosen).collect();
        if all.is_empty() {
            return None;
        }
        buckets.push((1, all));
    }
    let mut cum = 0;
    let mut bucket_cum = Vec::with_capacity(buckets.len());
    let built = buckets
        .into_iter()
        .map(|(share, hosts)| {
            cum += share;
            bucket_cum.push(cum);
            let (hosts, addrs): (Vec<_>, Vec<(SocketAddr, u32)>) = hosts
                .into_iter()
                .map(|(s, w)| {
                    let a = s.address();
                    (s, (a, w))
                })
                .unzip();
            Bucket {
                picker: Picker::build(opts.policy, &addrs),
                hosts: hosts.into_boxed_slice(),
            }
        })
        .collect();
    Some(Level {
        priority,
        panic,
        buckets: built,
        bucket_cum: bucket_cum.into_boxed_slice(),
    })
}

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;
