//! CDS / EDS reloads against real loopback servers: atomic swaps, carried state, draining.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mesh_core::{Cluster, ClusterLoadAssignment, Discovery, LbPolicy, Reload};
use mesh_lb::{LoadBalance, RemoveLoadAssignment};

fn eds_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn la(servers: &[&TestServer]) -> ClusterLoadAssignment {
    ClusterLoadAssignment::from_addrs("c", servers.iter().map(|s| s.addr))
}

#[tokio::test]
async fn eds_reloads_under_load_lose_no_request() {
    let s = servers(4).await;
    let m = manager(vec![eds_cluster("c")]);
    m.reload(la(&[&s[0], &s[1]])).unwrap();
    let svc = LoadBalance::upstream(m.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (svc, stop, ok, failed) = (svc.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    match send(&svc, "c", Opts::default()).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    n += 1;
                }
            })
        })
        .collect();
    let sets: [&[usize]; 4] = [&[1, 2], &[2, 3], &[0, 3], &[0, 1, 2, 3]];
    for i in 0..40 {
        let pick: Vec<&TestServer> = sets[i % 4].iter().map(|&j| &s[j]).collect();
        m.reload(la(&pick)).unwrap();
        // Some pauses outlast the drain, so removed endpoints close and come back fresh.
        let pause = if i % 3 == 0 { 60 } else { 5 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(s.iter().all(|x| x.served.load(Ordering::SeqCst) > 0));
}

#[tokio::test]
async fn staying_endpoints_keep_their_state_across_reloads() {
    let s = servers(3).await;
    let m = manager(vec![eds_cluster("c")]);
    m.reload(la(&[&s[0], &s[1]])).unwrap();
    let before = m.get("c").unwrap().endpoints()[&s[0].addr].clone();
    m.reload(la(&[&s[0], &s[2]])).unwrap();
    let after = m.get("c").unwrap().endpoints()[&s[0].addr].clone();
    assert!(Arc::ptr_eq(&before, &after), "EDS update keeps the state");
    // A CDS change of the cluster's policy rebuilds it but keeps the endpoint states.
    let mut changed = eds_cluster("c");
    changed.lb_policy = LbPolicy::Random;
    m.reload(vec![changed]).unwrap();
    let cluster = m.get("c").unwrap();
    assert_eq!(cluster.config().lb_policy, LbPolicy::Random);
    assert!(Arc::ptr_eq(&before, &cluster.endpoints()[&s[0].addr]));
    assert_eq!(
        cluster.endpoint_set().len(),
        2,
        "the EDS assignment carried over"
    );
}

#[tokio::test]
async fn eds_before_cds_and_removal() {
    let s = servers(1).await;
    let m = mesh_lb::ClusterManager::new();
    m.reload(la(&[&s[0]])).unwrap();
    m.reload(vec![eds_cluster("c")]).unwrap();
    let svc = LoadBalance::upstream(m.clone());
    assert_eq!(send(&svc, "c", Opts::default()).await.unwrap(), (200, 0));
    m.reload(RemoveLoadAssignment("c".into())).unwrap();
    let e = send(&svc, "c", Opts::default()).await.unwrap_err();
    assert_eq!(e.code(), "no_healthy_endpoint");
}

#[tokio::test]
async fn invalid_updates_are_refused_and_the_old_state_serves() {
    let s = servers(1).await;
    let m = manager(vec![cluster("c", LbPolicy::RoundRobin, &s, &[1])]);
    let mut bad = cluster("c", LbPolicy::Maglev { table_size: 100 }, &s, &[1]);
    bad.name = "c".into();
    let err = m.reload(vec![bad]).unwrap_err();
    assert!(err.to_string().contains("prime"), "{err}");
    let dup = vec![Cluster::new("x"), Cluster::new("x")];
    assert!(m.reload(dup).is_err());
    let mut bad_la = la(&[&s[0]]);
    bad_la.endpoints[0].lb_endpoints[0].weight = 0;
    assert!(m.reload(bad_la).is_err());
    let svc = LoadBalance::upstream(m);
    assert_eq!(send(&svc, "c", Opts::default()).await.unwrap(), (200, 0));
}

#[tokio::test]
async fn removed_endpoint_drains_then_its_connections_close() {
    let s = servers(2).await;
    let m = manager(vec![eds_cluster("c")]);
    m.reload(la(&[&s[0]])).unwrap();
    let svc = LoadBalance::upstream(m.clone());
    send(&svc, "c", Opts::default()).await.unwrap();
    assert_eq!(
        s[0].open.load(Ordering::SeqCst),
        1,
        "pooled connection open"
    );
    s[0].delay_ms.store(300, Ordering::SeqCst);
    let slow = {
        let svc = svc.clone();
        tokio::spawn(async move { send(&svc, "c", Opts::default()).await })
    };
    let ep0 = m.get("c").unwrap().endpoints()[&s[0].addr].clone();
    assert!(eventually(2, || ep0.in_flight() == 1).await);
    m.reload(la(&[&s[1]])).unwrap();
    // New requests go to the new set at once; the in-flight one finishes on the old endpoint.
    assert_eq!(send(&svc, "c", Opts::default()).await.unwrap(), (200, 1));
    assert!(!ep0.is_closed(), "still draining");
    assert_eq!(slow.await.unwrap().unwrap(), (200, 0));
    assert!(eventually(2, || ep0.is_closed()).await);
    assert!(
        eventually(2, || s[0].open.load(Ordering::SeqCst) == 0).await,
        "pool closed"
    );
    assert_eq!(s[1].open.load(Ordering::SeqCst), 1);
}

#[test]
fn reloads_work_without_a_runtime() {
    // No tokio runtime (a config loader thread, a benchmark): removed endpoints close at once.
    let a: std::net::SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let b: std::net::SocketAddr = "127.0.0.1:9002".parse().unwrap();
    let m = mesh_lb::ClusterManager::new();
    m.reload(vec![eds_cluster("c")]).unwrap();
    m.reload(ClusterLoadAssignment::from_addrs("c", [a, b]))
        .unwrap();
    let ep_a = m.get("c").unwrap().endpoints()[&a].clone();
    m.reload(ClusterLoadAssignment::from_addrs("c", [b]))
        .unwrap();
    assert!(ep_a.is_closed());
    assert_eq!(m.get("c").unwrap().pick(None).unwrap().address(), b);
}

#[tokio::test]
async fn an_update_of_the_same_hosts_keeps_their_states_and_applies_their_health() {
    let m = mesh_lb::ClusterManager::new();
    m.reload(vec![eds_cluster("c")]).unwrap();
    let addrs: Vec<std::net::SocketAddr> = (1..=3).map(|i| ([10, 0, 0, i], 80).into()).collect();
    m.reload(ClusterLoadAssignment::from_addrs("c", addrs.clone()))
        .unwrap();
    let c = m.get("c").unwrap();
    let before = c.endpoints();
    assert_eq!(c.endpoint_set().healthy(), 3);
    let mut update = ClusterLoadAssignment::from_addrs("c", addrs.clone());
    update.endpoints[0].lb_endpoints[1].health = mesh_core::HealthStatus::Unhealthy;
    m.reload(update).unwrap();
    assert!(Arc::ptr_eq(&before, &c.endpoints()), "the states are kept");
    assert_eq!(c.endpoint_set().healthy(), 2);
    assert_eq!(c.endpoint_set().len(), 3);
    // Another host set: the states of the hosts that stay are carried over.
    m.reload(ClusterLoadAssignment::from_addrs("c", addrs[..2].to_vec()))
        .unwrap();
    let after = c.endpoints();
    assert_eq!(after.len(), 2);
    assert!(Arc::ptr_eq(&before[&addrs[0]], &after[&addrs[0]]));
    assert_eq!(
        c.endpoint_set().healthy(),
        2,
        "health from the new assignment"
    );
}
