use super::*;
use mesh_core::{Endpoint, HealthStatus, LocalityEndpoints};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000 + i))
}

fn group(priority: u32, zone: &str, ids: &[u16]) -> LocalityEndpoints {
    LocalityEndpoints {
        locality: Locality {
            zone: zone.into(),
            ..Locality::default()
        },
        priority,
        load_balancing_weight: None,
        lb_endpoints: ids.iter().map(|&i| Endpoint::new(addr(i))).collect(),
    }
}

fn states(cla: &ClusterLoadAssignment) -> EndpointMap {
    cla.iter()
        .map(|(_, e)| {
            let s = Arc::new(EndpointState::new(e.address));
            s.eds_healthy
                .store(e.health.is_healthy(), Ordering::Relaxed);
            s.eds_degraded
                .store(e.health == HealthStatus::Degraded, Ordering::Relaxed);
            (e.address, s)
        })
        .collect()
}

fn opts(policy: &LbPolicy) -> BuildOptions<'_> {
    BuildOptions {
        policy,
        panic_threshold: 50.0,
        locality_weighted: false,
        local: None,
    }
}

fn count(set: &EndpointSet, n: usize) -> HashMap<u16, usize> {
    let mut c = HashMap::new();
    for _ in 0..n {
        let a = set.pick(None).unwrap().address();
        *c.entry(a.port() - 1000).or_default() += 1;
    }
    c
}

#[test]
fn empty_set_picks_nothing() {
    let set = EndpointSet::default();
    assert!(set.pick(None).is_none());
    assert!(set.is_empty());
}

#[test]
fn unhealthy_endpoints_are_skipped_until_panic() {
    let mut cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1, 2, 3, 4])],
        ..Default::default()
    };
    cla.endpoints[0].lb_endpoints[0].health = HealthStatus::Unhealthy;
    let st = states(&cla);
    let set = EndpointSet::build(&cla, &st, opts(&LbPolicy::RoundRobin));
    assert_eq!((set.len(), set.healthy()), (4, 3));
    assert!(!count(&set, 300).contains_key(&1));
    // 3 of 4 down: 25 % healthy is under the 50 % panic threshold: all four take traffic.
    for i in 2..=3 {
        st[&addr(i)].ejected.store(true, Ordering::Relaxed);
    }
    let set = EndpointSet::build(&cla, &st, opts(&LbPolicy::RoundRobin));
    assert!(set.in_panic());
    assert_eq!(count(&set, 400).len(), 4);
}

#[test]
fn priorities_spill_over_by_health_with_overprovisioning() {
    let cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1, 2, 3, 4, 5]), group(1, "b", &[6, 7])],
        ..Default::default()
    };
    let st = states(&cla);
    let set = EndpointSet::build(&cla, &st, opts(&LbPolicy::RoundRobin));
    assert_eq!(set.priority_loads(), vec![(0, 100)]);
    // 3 of 5 healthy in P0: health = 1.4 × 60 % = 84 %, so P1 gets 16 %.
    for i in 1..=2 {
        st[&addr(i)].hc_healthy.store(false, Ordering::Relaxed);
    }
    let set = EndpointSet::build(&cla, &st, opts(&LbPolicy::RoundRobin));
    assert_eq!(set.priority_loads(), vec![(0, 84), (1, 16)]);
    let c = count(&set, 20_000);
    let p1 = c.get(&6).unwrap_or(&0) + c.get(&7).unwrap_or(&0);
    assert!((2_800..3_600).contains(&p1), "{c:?}");
}

#[test]
fn locality_weights_split_traffic() {
    let mut cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1]), group(0, "b", &[2])],
        ..Default::default()
    };
    cla.endpoints[0].load_balancing_weight = Some(3);
    let st = states(&cla);
    let o = BuildOptions {
        locality_weighted: true,
        ..opts(&LbPolicy::RoundRobin)
    };
    let set = EndpointSet::build(&cla, &st, o);
    let c = count(&set, 20_000);
    assert!((14_500..15_500).contains(&c[&1]), "{c:?}");
}

#[test]
fn local_zone_is_preferred_while_healthy() {
    let cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1, 2]), group(0, "b", &[3, 4])],
        ..Default::default()
    };
    let st = states(&cla);
    let local = Locality {
        zone: "a".into(),
        ..Locality::default()
    };
    let o = BuildOptions {
        local: Some(&local),
        ..opts(&LbPolicy::RoundRobin)
    };
    let set = EndpointSet::build(&cla, &st, o);
    let c = count(&set, 1_000);
    assert_eq!(c.len(), 2, "only the local zone: {c:?}");
    assert!(c.contains_key(&1) && c.contains_key(&2));
    // Half the local zone down: its health is 1.4 × 50 % = 70 %, the rest spills over.
    st[&addr(1)].hc_healthy.store(false, Ordering::Relaxed);
    let set = EndpointSet::build(&cla, &st, o);
    let c = count(&set, 20_000);
    assert!((13_500..14_500).contains(&c[&2]), "{c:?}");
    assert!(!c.contains_key(&1));
}

#[test]
fn hashed_requests_stick_to_one_endpoint() {
    let cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1, 2, 3, 4, 5])],
        ..Default::default()
    };
    let st = states(&cla);
    for policy in [
        LbPolicy::Maglev { table_size: 65537 },
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
            maximum_ring_size: 8 << 20,
        },
    ] {
        let set = EndpointSet::build(&cla, &st, opts(&policy));
        for key in 0..100u64 {
            let first = set.pick(Some(key)).unwrap().address();
            assert_eq!(set.pick(Some(key)).unwrap().address(), first);
        }
        assert_eq!(count(&set, 2_000).len(), 5, "random keys spread");
    }
}

#[test]
fn degraded_endpoints_serve_only_when_nothing_healthy_is_left() {
    let mut cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1, 2, 3])],
        ..Default::default()
    };
    cla.endpoints[0].lb_endpoints[1].health = HealthStatus::Degraded;
    cla.endpoints[0].lb_endpoints[2].health = HealthStatus::Unhealthy;
    let st = states(&cla);
    let o = BuildOptions {
        panic_threshold: 0.0,
        ..opts(&LbPolicy::RoundRobin)
    };
    let set = EndpointSet::build(&cla, &st, o);
    assert_eq!(count(&set, 30).keys().collect::<Vec<_>>(), vec![&1]);
    cla.endpoints[0].lb_endpoints[0].health = HealthStatus::Unhealthy;
    let st = states(&cla);
    let set = EndpointSet::build(&cla, &st, o);
    assert_eq!(count(&set, 30).keys().collect::<Vec<_>>(), vec![&2]);
    assert!(!set.in_panic());
}

#[test]
fn a_zero_panic_threshold_disables_panic_mode() {
    let mut cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1, 2])],
        ..Default::default()
    };
    for e in &mut cla.endpoints[0].lb_endpoints {
        e.health = HealthStatus::Unhealthy;
    }
    let st = states(&cla);
    let set = EndpointSet::build(&cla, &st, opts(&LbPolicy::RoundRobin));
    assert!(
        set.in_panic() && set.pick(None).is_some(),
        "threshold 50: panic"
    );
    let o = BuildOptions {
        panic_threshold: 0.0,
        ..opts(&LbPolicy::RoundRobin)
    };
    assert!(EndpointSet::build(&cla, &st, o).pick(None).is_none());
}

#[test]
fn one_bucket_is_picked_from_directly_and_several_through_their_level() {
    let cla = ClusterLoadAssignment {
        endpoints: vec![group(0, "a", &[1, 2]), group(0, "b", &[3])],
        ..Default::default()
    };
    let st = states(&cla);
    let set = EndpointSet::build(&cla, &st, opts(&LbPolicy::RoundRobin));
    assert!(set.single.is_some(), "one level, one bucket");
    let c = count(&set, 300);
    assert_eq!((c[&1], c[&2], c[&3]), (100, 100, 100), "{c:?}");
    assert_eq!(set.priority_loads(), [(0, 100)]);
    let o = BuildOptions {
        locality_weighted: true,
        ..opts(&LbPolicy::RoundRobin)
    };
    let set = EndpointSet::build(&cla, &st, o);
    assert!(set.single.is_none(), "two locality buckets");
    assert_eq!(count(&set, 300).len(), 3);
}
